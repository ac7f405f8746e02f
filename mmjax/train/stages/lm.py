"""Stage kind `lm`: next-token loss on the answer tokens.

Family 'lm': the text-only decoder on corpus windows. Family 'mllm': the MLLM
on text windows (data 'text': its LM alone) or on image-text conversations
(every other format), with the loss masked to the answers.

Option `loss_chunk` (default 0): > 0 runs the LM head and cross-entropy that
many positions at a time and skips the chunks without a loss token (image
tokens and prompts in front of the answers); the same loss either way.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from mmjax import config as C
from mmjax.data import box_attention as box_attention_lib
from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import build
from mmjax.models.mllm import MLLM
from mmjax.train import box_attention_loss, groups, losses
from mmjax.train.stages import base


def prefix_len_from_loss_mask(loss_mask: jax.Array) -> jax.Array:
  """Prefix-LM prefix length int32[B] of a batch: up to the first answer.

  Position t predicts token t + 1 (targets = tokens shifted), so the first
  loss position still holds a prompt token: the prefix is everything up to
  and including it (PaliGemma's token_type_ids == 0). A row without a loss
  token gets 0 (causal).
  """
  has = loss_mask > 0
  first = jnp.argmax(has, axis=1).astype(jnp.int32)
  return jnp.where(has.any(axis=1), first + 1, 0)


def mllm_apply(model: MLLM, params, batch, prefix: str = "",
               logits: bool = True, intermediates: bool = False):
  """Logits f32[B, L, V] of the MLLM on a pipeline batch (keys optionally
  prefixed); logits=False: the LM's final-normed hidden states [B, L, D];
  intermediates=True: (that output, the values the modules sowed, e.g.
  each decoder layer's rotated q and k).
  A prefix-LM (model.cfg.lm.prefix_lm) gets `prefix_len` from loss_mask;
  packed batches pass their `segment_ids` (attention within each example);
  native-resolution batches their packed patches (`native_*` keys), NaFlex
  ones their patch rows (`naflex_*`), audio ones their clips (`audio`,
  `audio_mask`, `audio_token_mask`)."""
  get = lambda k: batch.get(prefix + k, batch.get(k))
  kwargs = {}
  lm_cfg = getattr(model.cfg, "lm", model.cfg)
  if getattr(lm_cfg, "prefix_lm", False) and get("loss_mask") is not None:
    kwargs["prefix_len"] = prefix_len_from_loss_mask(get("loss_mask"))
  if get("segment_ids") is not None:  # packed rows (data.packing)
    kwargs["segment_ids"] = get("segment_ids")
  native = native_lib.model_inputs(batch)  # a Qwen2-VL tower's own sizes
  if native is not None:
    kwargs["native"] = native
  naflex = naflex_lib.model_inputs(batch)  # a NaFlex tower's patch rows
  if naflex is not None:
    kwargs["naflex"] = naflex
  if batch.get("audio") is not None:  # clips (data/audio_batch.py)
    kwargs.update(audio=batch["audio"], audio_mask=batch["audio_mask"],
                  audio_token_mask=get("audio_token_mask"))
  out = model.apply(
      {"params": params}, get("tokens"), get("positions"),
      images=batch.get("images"), image_mask=batch.get("image_mask"),
      image_token_mask=get("image_token_mask"),
      media_locations=get("media_locations"), logits=logits,
      mutable=["intermediates"] if intermediates else False, **kwargs)
  if intermediates:
    (out, _), sown = out
    return out, sown["intermediates"]
  return out[0]


def head_fn(model: MLLM):
  """(params, hidden [B, L, D]) -> logits f32[B, L, V]: the LM head alone."""
  return lambda p, h: model.apply({"params": p}, h, method=MLLM.head)


def mllm_lm_loss(model: MLLM, params, batch, loss_chunk: int = 0,
                 box_attention: Mapping[str, Any] | None = None):
  """Next-token loss on a pipeline batch (or a text batch: tokens only).

  loss_chunk > 0 runs the LM head and cross-entropy that many positions at
  a time and skips the chunks without a loss token (`losses.chunked_lm_loss`);
  0 computes the full [B, L, V] logits. Same loss either way.
  box_attention: {'weight', 'layer', 'head'} (weight > 0) adds the
  attention supervision of box answers (`train/box_attention_loss.py`;
  the batch carries `box_query`, `box_keys`; head -1: every head of the
  layer, their mean), with metrics `box_attention_loss` and
  `box_attention_mass`.
  """
  sown = None
  if box_attention:
    out, sown = mllm_apply(model, params, batch, logits=not loss_chunk,
                           intermediates=True)
  else:
    out = mllm_apply(model, params, batch, logits=not loss_chunk)
  if not loss_chunk:
    loss, metrics = losses.lm_loss(out, batch["targets"], batch["loss_mask"])
  else:
    head = functools.partial(head_fn(model), params)
    loss, metrics = losses.chunked_lm_loss(out, head, batch["targets"],
                                           batch["loss_mask"], loss_chunk)
  if sown is None:
    return loss, metrics
  lm_cfg = model.cfg.lm
  q, k = box_attention_loss.layer_query_keys(sown, box_attention["layer"],
                                             lm_cfg.n_layers)
  scale = lm_cfg.attn_scale or lm_cfg.resolved_head_dim ** -0.5
  head = box_attention["head"]
  terms = [box_attention_loss.box_attention_loss(
      box_attention_loss.head_log_probs(q, k, h, scale=scale,
                                        softcap=lm_cfg.attn_logit_softcap),
      batch["box_query"], batch["box_keys"])
           for h in (range(lm_cfg.n_heads) if head < 0 else [head])]
  extra = sum(t[0] for t in terms) / len(terms)
  mass = sum(t[1] for t in terms) / len(terms)
  metrics = dict(metrics, box_attention_loss=extra, box_attention_mass=mass)
  return loss + box_attention["weight"] * extra, metrics


def mllm_model(config: ml_collections.ConfigDict, stage_name: str
               ) -> base.StageModel:
  """The MLLM a stage trains, its paths the global store's (the
  `make_model` of every kind that trains the whole MLLM)."""
  del stage_name
  model = build.build_model(config)
  return base.StageModel(model, build.mllm_init(model, IMAGE_ID),
                         lambda path: path)


def _model(config: ml_collections.ConfigDict, stage_name: str
           ) -> base.StageModel:
  if config.family != "lm":
    return mllm_model(config, stage_name)
  model = build.build_model(config)  # the text-only decoder
  return base.StageModel(model, build.decoder_init(model, config.data.seq_len),
                         groups.prefix_mapper(groups.LM_PATHS))


def _loss(model: Any, stage: ml_collections.ConfigDict):
  if isinstance(model, MLLM):
    chunk = stage.get("loss_chunk", 0)
    weight = float(stage.get("box_attention_weight", 0.0))
    box_attention = dict(
        weight=weight, layer=int(stage.get("box_attention_layer", -1)),
        head=int(stage.get("box_attention_head", 0))) if weight > 0 else None

    def loss_fn(params, batch, rng):
      del rng  # no dropout
      return mllm_lm_loss(model, params, batch, chunk, box_attention)
    return loss_fn

  def decoder_loss(params, batch, rng):
    del rng  # no dropout in the LM
    logits, _ = model.apply({"params": params}, batch["tokens"])
    return losses.lm_loss(logits, batch["targets"], batch["loss_mask"])
  return decoder_loss


def loss_chunk_checks(config, path: str, stage) -> list[C.Check]:
  """`loss_chunk`: an integer >= 0 (shared by the kinds that chunk the head)."""
  del config
  return [C.check_int(f"{path}.loss_chunk", 0)] if "loss_chunk" in stage else []


def _checks(config, path: str, stage) -> list[C.Check]:
  """loss_chunk, and the box-attention options: a weight >= 0, a layer and
  a head the LM has, and an MLLM whose LM reads the image tokens."""
  checks = loss_chunk_checks(config, path, stage)
  if "box_attention_weight" not in stage:
    return checks
  checks.append(C.check_number(f"{path}.box_attention_weight", 0.0))
  weight = stage.box_attention_weight
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or (
      weight <= 0):
    return checks
  layers, heads = config.model.lm.n_layers, config.model.lm.n_heads
  layer = stage.get("box_attention_layer", -1)
  head = stage.get("box_attention_head", 0)
  target = stage.get("box_attention_target", "box")
  return checks + [
      C.check_that(
          lambda c: target in box_attention_lib.TARGETS,
          lambda c: f"config.{path}.box_attention_target={target!r} must be "
          f"one of {box_attention_lib.TARGETS} (what a box answer looks at: "
          "the whole box, or per coordinate its edge)"),
      C.check_that(
          lambda c: c.family == "mllm" and
          c.model.fusion in ("projection", "one_backbone") and
          not c.model.lm.get("scan_layers", False) and
          not c.data.get("packing", False),
          lambda c: f"config.{path}.box_attention_weight > 0 needs an MLLM "
          "whose image tokens are in the LM's sequence (model.fusion "
          "projection or one_backbone), model.lm.scan_layers=False and "
          "data.packing=False"),
      C.check_that(
          lambda c: _is_int(layer) and -layers <= layer < layers,
          lambda c: f"config.{path}.box_attention_layer={layer!r} must be "
          f"an integer in [-{layers}, {layers}) (the LM's layers; -1 = the "
          "last)"),
      C.check_that(
          lambda c: _is_int(head) and -1 <= head < heads,
          lambda c: f"config.{path}.box_attention_head={head!r} must be an "
          f"integer in [0, {heads}) (a query head of the LM), or -1 (every "
          "head of the layer)")]


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


KIND = base.register(base.StageKind(
    name="lm", families=("lm", "mllm"),
    data_formats=(base.TEXT_FORMAT,) + base.IMAGE_TEXT_FORMATS,
    make_model=_model, make_loss=_loss,
    options={"loss_chunk": 0, "box_attention_weight": 0.0,
             "box_attention_layer": -1, "box_attention_head": 0,
             "box_attention_target": "box"},
    checks=_checks))
