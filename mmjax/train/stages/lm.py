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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmjax import config as C
from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import build
from mmjax.models.mllm import MLLM
from mmjax.train import groups, losses
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
               logits: bool = True):
  """Logits f32[B, L, V] of the MLLM on a pipeline batch (keys optionally
  prefixed); logits=False: the LM's final-normed hidden states [B, L, D].
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
  return model.apply(
      {"params": params}, get("tokens"), get("positions"),
      images=batch.get("images"), image_mask=batch.get("image_mask"),
      image_token_mask=get("image_token_mask"),
      media_locations=get("media_locations"), logits=logits, **kwargs)[0]


def head_fn(model: MLLM):
  """(params, hidden [B, L, D]) -> logits f32[B, L, V]: the LM head alone."""
  return lambda p, h: model.apply({"params": p}, h, method=MLLM.head)


def mllm_lm_loss(model: MLLM, params, batch, loss_chunk: int = 0):
  """Next-token loss on a pipeline batch (or a text batch: tokens only).

  loss_chunk > 0 runs the LM head and cross-entropy that many positions at
  a time and skips the chunks without a loss token (`losses.chunked_lm_loss`);
  0 computes the full [B, L, V] logits. Same loss either way.
  """
  if not loss_chunk:
    return losses.lm_loss(mllm_apply(model, params, batch), batch["targets"],
                          batch["loss_mask"])
  hidden = mllm_apply(model, params, batch, logits=False)
  head = functools.partial(head_fn(model), params)
  return losses.chunked_lm_loss(hidden, head, batch["targets"],
                                batch["loss_mask"], loss_chunk)


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

    def loss_fn(params, batch, rng):
      del rng  # no dropout
      return mllm_lm_loss(model, params, batch, chunk)
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


KIND = base.register(base.StageKind(
    name="lm", families=("lm", "mllm"),
    data_formats=(base.TEXT_FORMAT,) + base.IMAGE_TEXT_FORMATS,
    make_model=_model, make_loss=_loss, options={"loss_chunk": 0},
    checks=loss_chunk_checks))
