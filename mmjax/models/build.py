"""Models from a run config: the one place that turns `config.model` into
Linen modules and initialises them.

  cfg = build.mllm_config(config)            # MLLMConfig of config.model
  model = build.build_model(config)          # DecoderLM ('lm') or MLLM ('mllm')
  init = build.mllm_init(model, image_token_id=4)   # rng -> boxed params

`config.family` names the kind of model a recipe trains: `lm` (a text-only
decoder, `configs/lm.py`) or `mllm` (the multimodal model,
`configs/shapes.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.models import audio_fusion
from mmjax.models import layout
from mmjax.models import naflex as naflex_lib
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.models.mllm import MLLM, MLLMConfig, mllm_config_from_dict
from mmjax.models.text_tower import TextTowerConfig, TwoTower

FAMILIES = ("lm", "mllm")


def mllm_config(config: ml_collections.ConfigDict) -> MLLMConfig:
  """The MLLMConfig of config.model (a multimodal recipe)."""
  return mllm_config_from_dict(config.model.to_dict())


def decoder_config(config: ml_collections.ConfigDict) -> DecoderConfig:
  """The DecoderConfig of config.model (a text-only LM recipe)."""
  return DecoderConfig.from_dict(config.model.to_dict())


def build_model(config: ml_collections.ConfigDict) -> DecoderLM | MLLM:
  """The model the config describes: DecoderLM ('lm') or MLLM ('mllm')."""
  if config.family == "lm":
    return DecoderLM(decoder_config(config))
  if config.family == "mllm":
    return MLLM(mllm_config(config))
  raise ValueError(f"config.family={config.family!r}; allowed values: "
                   f"{', '.join(map(repr, FAMILIES))}")


def dummy_inputs(cfg: MLLMConfig, image_token_id: int
                 ) -> dict[str, jax.Array]:
  """One tiny example with one image: enough to initialise the MLLM.

  Returns tokens int32[1, L], positions [1, L] (or [3, 1, L] for M-RoPE),
  images f32[1, 1, S, S, C] (or [1, 1, F, S, S, C] for video; a NaFlex
  tower gets `naflex` patch rows instead, `MLLM.encode_naflex`), image_mask
  bool[1, 1], image_token_mask / media_locations bool[1, L]; with audio
  also audio f32[1, 1, T, n_mels], audio_mask bool[1, 1, T] (T: the
  shortest clip with one token, `audio_fusion.one_token_frames`) and
  audio_token_mask bool[1, L] (no images for an audio-only model).
  """
  side = cfg.side
  # With MLLMConfig.audio, also a clip of one audio token so the audio
  # groups are initialised; an audio-only model gets no image.
  media = [layout.Media(side, side, cfg.frames)] if cfg.has_vision else []
  frames = (audio_fusion.one_token_frames(cfg.audio_projector)
            if cfg.audio is not None else 0)
  clip = [layout.Audio(frames)] if cfg.audio is not None else []
  ex = layout.assemble(cfg, [[5, 6]] + media + clip + [[7]], image_token_id,
                       v2pe_stride=256, audio_token_id=image_token_id)
  shape = (1, 1) + ((cfg.frames,) if cfg.frames > 1 else ()) + (
      side, side, cfg.channels)
  out = {"tokens": jnp.asarray(ex["tokens"])[None],
         "positions": jnp.asarray(ex["positions"])[..., None, :],
         "images": jnp.zeros(shape, jnp.float32),
         "image_mask": jnp.ones((1, 1), bool),
         "image_token_mask": jnp.asarray(ex["image_token_mask"])[None],
         "media_locations": jnp.asarray(ex["media_locations"])[None]}
  if cfg.audio is not None:
    out.update(audio=jnp.zeros((1, 1, frames, cfg.audio.n_mels),
                               jnp.float32),
               audio_mask=jnp.ones((1, 1, frames), bool),
               audio_token_mask=jnp.asarray(ex["audio_token_mask"])[None])
  if not cfg.has_vision:
    out.pop("images")
  if isinstance(cfg.vision, naflex_lib.NaFlexConfig):
    # A NaFlex tower reads patch rows (MLLM(naflex=...)): one image at the
    # position grid's size, g x g real patches of max_num_patches.
    v, g = cfg.vision, cfg.vision.posemb_grid
    n = v.max_num_patches
    out.pop("images")
    out["naflex"] = {
        "patches": jnp.zeros((1, 1, n, v.patch_dim), jnp.float32),
        "mask": (jnp.arange(n) < g * g).astype(jnp.int32)[None, None],
        "spatial_shapes": jnp.asarray([[[g, g]]], jnp.int32)}
  return out


def mllm_init(model: MLLM, image_token_id: int
              ) -> Callable[[jax.Array], Any]:
  """rng -> the MLLM's boxed params (initialised on `dummy_inputs`)."""
  dummy = dummy_inputs(model.cfg, image_token_id)
  return lambda rng: model.init(rng, **dummy)["params"]


def decoder_init(model: DecoderLM, seq_len: int = 8
                 ) -> Callable[[jax.Array], Any]:
  """rng -> a text-only decoder's boxed params."""
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return lambda rng: model.init(rng, tokens)["params"]


def two_tower(config: ml_collections.ConfigDict, cfg: MLLMConfig) -> TwoTower:
  """The contrastive model: the MLLM's vision tower (with a MAP head and all
  its layers) and a SigLIP text tower from config.model.text."""
  vision = dataclasses.replace(cfg.vision, pool="map")
  text = TextTowerConfig.from_dict(config.model.text.to_dict())
  return TwoTower(vision, text, embed_dim=config.model.text.embed_dim)


def image_text_init(model: Any, cfg: MLLMConfig, text_len: int
                    ) -> Callable[[jax.Array], Any]:
  """rng -> boxed params of a model called as model(images, text_tokens)
  (the two-tower and Q-Former pretraining models)."""
  images = jnp.zeros((1, cfg.side, cfg.side, cfg.channels))
  text = jnp.zeros((1, text_len), jnp.int32)
  return lambda rng: model.init(rng, images, text)["params"]
