"""What an imported checkpoint becomes: the families of mmjax models.

  family      module                          param tree (top level)
  lm          DecoderLM(DecoderConfig)        DecoderLM's own (embed, layers_*,
                                              final_norm, lm_head)
  mllm        MLLM(mllm_config_from_dict)     vision, connector, llm (and
                                              audio, audio_connector)
  vision      VisionEncoder(VisionConfig)     vision
  two_tower   TwoTower(vision, text, E)       vision_model, text_model,
                                              logit_scale, logit_bias
  naflex      NaFlexVisionTower(NaFlexConfig) vision (SigLIP2)
  connector   QFormerConnector (kind          connector
              'qformer') / OneBackbonePatches
              (kind 'one_backbone')
  audio       WhisperEncoder                  audio (Whisper's encoder)
              (WhisperEncoderConfig)

`vision` and `connector` trees are wrapped in the group name an `MLLM` uses,
so a stage can take them as that group of a larger model; `audio` (an audio
tower) likewise sits under `audio`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmjax.hf.safetensors_io import HFImportError
from mmjax.models import mllm as mllm_lib
from mmjax.models import naflex as naflex_lib
from mmjax.models import qformer as qformer_lib
from mmjax.models import text_tower
from mmjax.models import vision as vision_lib
from mmjax.models import whisper as whisper_lib
from mmjax.models.decoder import DecoderConfig, DecoderLM

FAMILIES = ("lm", "mllm", "vision", "two_tower", "connector", "naflex",
            "audio")
# Families whose module's params sit under one group name in the saved tree.
GROUP = {"vision": "vision", "connector": "connector", "naflex": "vision",
         "audio": "audio"}


def build_module(family: str, model: Mapping[str, Any]) -> nn.Module:
  """The flax module of an imported `family` with config dict `model`."""
  model = dict(model)
  if family == "lm":
    return DecoderLM(DecoderConfig.from_dict(model))
  if family == "mllm":
    return mllm_lib.MLLM(mllm_lib.mllm_config_from_dict(model))
  if family == "vision":
    return vision_lib.VisionEncoder(vision_lib.VisionConfig.from_dict(model))
  if family == "naflex":
    return naflex_lib.NaFlexVisionTower(
        naflex_lib.NaFlexConfig.from_dict(model))
  if family == "audio":
    return whisper_lib.WhisperEncoder(
        whisper_lib.WhisperEncoderConfig.from_dict(model))
  if family == "two_tower":
    return text_tower.TwoTower(
        vision_lib.VisionConfig.from_dict(model["vision"]),
        text_tower.TextTowerConfig.from_dict(model["text"]),
        int(model["embed_dim"]))
  if family == "connector":
    if model["kind"] == "qformer":
      return qformer_lib.QFormerConnector(
          qformer_lib.QFormerConfig.from_dict(model["qformer"]),
          int(model["out_dim"]))
    if model["kind"] == "one_backbone":
      return mllm_lib.OneBackbonePatches(int(model["d_model"]),
                                         int(model["patch_size"]))
    raise HFImportError(f"unknown connector kind {model['kind']!r}; allowed: "
                        f"'qformer', 'one_backbone'.")
  raise HFImportError(f"unknown family {family!r}; allowed: {FAMILIES}.")


def dummy_inputs(family: str, model: Mapping[str, Any],
                 media_width: int | None = None
                 ) -> tuple[tuple[Any, ...], dict[str, Any]]:
  """(args, kwargs) after the rng for `module.init`, creating every param.

  media_width: the media width a decoder's cross-attention blocks read
  (an 'lm' with xattn_every > 0; not part of DecoderConfig).
  """
  if family == "lm":
    tokens = jnp.zeros((1, 4), jnp.int32)
    if not model.get("xattn_every"):
      return (tokens,), {}
    if not media_width:
      raise HFImportError("a decoder with cross-attention blocks needs the "
                          "media width to build its parameters.")
    return (tokens,), dict(media=jnp.zeros((1, 1, 1, media_width)),
                           media_times=jnp.ones((1, 4), jnp.int32))
  if family == "mllm":
    kwargs = {}
    if model.get("vision") or model["fusion"] == "one_backbone":
      side = (model["vision"]["image_size"] if model.get("vision")
              else model["patch_size"])
      kwargs.update(images=jnp.zeros((1, 1, side, side, model["channels"]),
                                     jnp.float32),
                    image_token_mask=jnp.zeros((1, 4), bool))
    if model.get("audio"):  # 4 frames: one token after the pooling
      kwargs.update(audio=jnp.zeros((1, 1, 4, model["audio"]["n_mels"])),
                    audio_token_mask=jnp.zeros((1, 4), bool))
    if model["fusion"] == "cross_attention":
      kwargs["media_locations"] = jnp.zeros((1, 4), bool)
    return (jnp.zeros((1, 4), jnp.int32),), kwargs
  if family == "vision":
    s = model["image_size"]
    return (jnp.zeros((1, s, s, model["channels"]), jnp.float32),), {}
  if family == "naflex":
    cfg = naflex_lib.NaFlexConfig.from_dict(model)
    n = cfg.max_num_patches
    return (jnp.zeros((1, n, cfg.patch_dim), jnp.float32),
            jnp.ones((1, n), bool), jnp.ones((1, 2), jnp.int32)), {}
  if family == "audio":
    return (jnp.zeros((1, 2, model["n_mels"]), jnp.float32),), {}
  if family == "two_tower":
    v, t = model["vision"], model["text"]
    s = v["image_size"]
    return (jnp.zeros((1, s, s, v["channels"]), jnp.float32),
            jnp.zeros((1, t["max_len"]), jnp.int32)), {}
  if model["kind"] == "qformer":
    width = model["qformer"]["vision_width"]
    return (jnp.zeros((1, 2, width), jnp.float32),), {}
  p = model["patch_size"]
  return (jnp.zeros((1, p, p, model["channels"]), jnp.float32),), {}


def mllm_model_dict(fusion: str, vcfg, lm, **kw) -> dict[str, Any]:
  """The `model` block of an imported MLLM: an MLLMConfig as the nested dict
  of a recipe's config.model (rope positions, the mlp projector, the
  tower's final output and one frame unless `kw` says otherwise)."""
  d = dict(fusion=fusion, positions="rope", projector="mlp",
           feature_layer=None, image_attention="causal",
           patch_size=vcfg.patch_size, image_size=vcfg.image_size,
           channels=vcfg.channels, frames=1, lm=dataclasses.asdict(lm),
           vision=dataclasses.asdict(vcfg), resampler=None, qformer=None)
  d.update(kw)
  return d
