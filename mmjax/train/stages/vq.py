"""Stage kind `vq`: trains the VQ-VAE image tokenizer (models/vq.py) on the
images of an image format ('contrastive' or 'regions': shapes images).

The model is `VQVAE(config.model.vq)`, the global group `vq`. The codebook
is the loop's loss state (`vq_codebook.CodebookState`): updated by EMA with
dead-code restarts every step, not by the optimizer, and checkpointed with
the parameters, so a resumed stage continues exactly.

Loss: reconstruction (option `recon`: 'mse' or 'l1', in the pipeline's
[-1, 1] units) + commitment ||z_e - sg(e)||^2 (option `commitment`, 0.25; not `beta`,
which the preference and grpo stages use for another thing). With EMA
codebook updates there is no codebook loss term. Options `decay` (0.99) and
`dead_threshold` (1.0: a code whose EMA count per batch falls below it
restarts at a random encoder output of the batch).
Metrics: recon_loss, commit_loss, psnr (dB, images mapped to [0, 1]),
codebook_usage (share of codes used in the batch), perplexity,
restarted_codes.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmjax import config as C
from mmjax import parallel
from mmjax.models import build
from mmjax.models import vq as vq_lib
from mmjax.models import vq_codebook
from mmjax.train import checkpoint as checkpoint_lib
from mmjax.train import groups
from mmjax.train import trainer as trainer_lib
from mmjax.train.stages import base
from mmjax.train.stages.contrastive import single_image

RECON = ("mse", "l1")
_OPTIONS = {"commitment": 0.25, "decay": 0.99, "dead_threshold": 1.0,
            "recon": "mse"}


def vq_config(config: ml_collections.ConfigDict) -> vq_lib.VQConfig:
  """config.model.vq -> VQConfig."""
  d = config.model.vq
  return vq_lib.VQConfig(
      codebook_size=int(d.codebook_size), code_dim=int(d.code_dim),
      channels=tuple(int(c) for c in d.channels),
      res_blocks=int(d.res_blocks))


def load_trained(workdir: str, stage: str = "vq", with_usage: bool = False
                 ) -> tuple[Any, ...]:
  """(VQConfig, encoder/decoder params, codebook f32[K, D]) of the newest
  finished checkpoint of a run's `vq` stage (the codebook is that stage's
  loss state); with_usage: and the codes' EMA cluster sizes f32[K].

  Raises:
    C.ConfigError: the workdir holds no such run or checkpoint (one line).
  """
  run = C.read_run_config(workdir)
  if run is None or "vq" not in run.get("model", {}):
    raise C.ConfigError(
        f"{workdir} holds no VQ tokenizer run (a config.json with model.vq): "
        "train one with python -m mmjax.main --config=configs/vq.py")
  found = checkpoint_lib.finished_steps(workdir, stage)
  if not found:
    raise C.ConfigError(
        f"{workdir} has no finished checkpoint of stage {stage!r}: run "
        "configs/vq.py (python -m mmjax.main) to the end of the stage")
  state = parallel.restore_on_one_device(
      os.path.join(found[0], "state"), keys=("params", "loss_state"))
  # orbax gives the CodebookState back as a dict of its fields.
  book = state["loss_state"]
  book = (vq_codebook.CodebookState(**book) if isinstance(book, dict)
          else vq_codebook.CodebookState(*book))
  loaded = (vq_config(run), state["params"], jnp.asarray(book.codebook))
  return loaded + (jnp.asarray(book.cluster_size),) if with_usage else loaded


def _model(config: ml_collections.ConfigDict, stage_name: str
           ) -> base.StageModel:
  del stage_name
  cfg = vq_config(config)
  side = build.mllm_config(config).side
  model = vq_lib.VQVAE(cfg)
  images = jnp.zeros((1, side, side, cfg.image_channels))
  return base.StageModel(model,
                         lambda rng: model.init(rng, images)["params"],
                         groups.prefix_mapper({"*": "vq"}))


def _initial_state(config: ml_collections.ConfigDict, stage_name: str):
  del stage_name
  cfg = vq_config(config)
  return vq_codebook.initial_state(cfg.codebook_size, cfg.code_dim)


def psnr(recon: jax.Array, images: jax.Array, weights: jax.Array
         ) -> jax.Array:
  """Mean over real images of 10 log10(1 / MSE), pixels in [0, 1].

  recon, images: f32[b, S, S, 3] in [-1, 1]; weights f32[b]."""
  # [-1, 1] -> [0, 1] halves errors: MSE_01 = MSE / 4. Clipping is what an
  # image written to disk would hold.
  mse = jnp.mean((jnp.clip(recon, -1, 1) - images) ** 2, (1, 2, 3)) / 4.0
  per = 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))
  return (per * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def _loss(model, stage: ml_collections.ConfigDict):
  commitment = float(stage.get("commitment", 0.25))
  decay = float(stage.get("decay", 0.99))
  threshold = float(stage.get("dead_threshold", 1.0))
  recon_kind = stage.get("recon", "mse")

  def loss_fn(params, batch, rng, state: vq_codebook.CodebookState):
    state = vq_codebook.CodebookState(*state)
    images = single_image(batch["images"]).astype(jnp.float32)
    w = batch["valid"].astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    z_e = model.apply({"params": params}, images, method=vq_lib.VQVAE.encode)
    q = vq_codebook.quantize(z_e, state.codebook)
    recon = model.apply({"params": params}, q.z_st,
                        method=vq_lib.VQVAE.decode)
    err = recon - images
    err = err ** 2 if recon_kind == "mse" else jnp.abs(err)
    recon_loss = (err.mean((1, 2, 3)) * w).sum() / n
    commit = (((z_e - q.z_q) ** 2).mean((1, 2, 3)) * w).sum() / n
    loss = recon_loss + commitment * commit
    code_w = jnp.broadcast_to(w[:, None, None], q.codes.shape)
    new_state, restarted = vq_codebook.ema_update(
        state, z_e, q.codes, rng, code_w, decay=decay, threshold=threshold)
    used, perplexity = vq_codebook.usage(q.codes, state.codebook.shape[0],
                                         code_w)
    return loss, {"loss": loss, "recon_loss": recon_loss,
                  "commit_loss": commit,
                  "psnr": psnr(recon, images, w),
                  "codebook_usage": used, "perplexity": perplexity,
                  "restarted_codes": restarted.astype(jnp.float32),
                  trainer_lib.LOSS_STATE: new_state}
  return loss_fn


def _checks(config, path: str, stage) -> list[C.Check]:
  def side(c):
    return build.mllm_config(c).side

  return [
      C.check_that(
          lambda c: "vq" in c.model,
          lambda c: f"config.{path}.loss='vq' needs config.model.vq "
          "(codebook_size, code_dim, channels, res_blocks): use "
          "configs/vq.py or add that block"),
      C.check_int("model.vq.codebook_size", 2),
      C.check_int("model.vq.code_dim", 1),
      C.check_int("model.vq.res_blocks", 0),
      C.check_that(
          lambda c: (len(c.model.vq.channels) > 0 and all(
              isinstance(x, int) and x > 0 for x in c.model.vq.channels)),
          lambda c: f"config.model.vq.channels={c.model.vq.channels!r}: give "
          "one positive width per stride-2 level, e.g. (32, 64)"),
      C.check_that(
          lambda c: side(c) % (2 ** len(c.model.vq.channels)) == 0,
          lambda c: f"config.model.vq.channels has "
          f"{len(c.model.vq.channels)} levels (downsampling "
          f"{2 ** len(c.model.vq.channels)}), which does not divide the "
          f"image side {side(c)}: drop a level or change the image size"),
  ] + [check for key, check in (
      ("commitment", C.check_number(f"{path}.commitment", 0.0)),
      ("decay", C.check_number(f"{path}.decay", 0.0, 0.9999)),
      ("dead_threshold", C.check_number(f"{path}.dead_threshold", 0.0)),
      ("recon", C.check_choice(f"{path}.recon", RECON))) if key in stage]


KIND = base.register(base.StageKind(
    name="vq", families=("mllm",), data_formats=("contrastive", "regions"),
    make_model=_model, make_loss=_loss, initial_loss_state=_initial_state,
    options=_OPTIONS, checks=_checks))
