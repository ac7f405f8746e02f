"""The assembled multimodal LM: vision tower -> connector -> decoder LM.

`MLLMConfig.fusion` picks how visual information enters the LM:

  projection       ViT tokens -> projector (linear / mlp / pixel_shuffle /
                   patch_merger), scattered into the token stream (LLaVA).
  resampler        ViT tokens -> Perceiver resampler latents, scattered
                   (Flamingo resampler as early fusion, Idefics2).
  qformer          ViT tokens -> Q-Former queries -> linear, scattered (BLIP-2).
  cross_attention  ViT tokens -> resampler latents, read by tanh-gated
                   cross-attention blocks inside the LM (Flamingo); the token
                   stream holds only an `<image>` marker per image.
  one_backbone     raw patches -> linear -> LM, a learned newline vector after
                   each patch row; no vision encoder (Fuyu).

Audio (optional `MLLMConfig.audio`, models/audio_fusion.py): a Whisper
tower and an audio connector whose tokens go to their own placeholders
(`audio_token_mask`), beside or instead of the vision path.

Parameter groups (top-level names, used for freezing): `vision`,
`connector`, `llm` (cross-attention blocks are `llm/xattn_<i>`), `audio`,
`audio_connector`.

Batch contract (DESIGN.md section 3): tokens int32[B, L]; images
f32[B, M, H, W, C] (or [B, M, F, H, W, C] with F frames per media item);
image_mask bool[B, M]; image_token_mask bool[B, L] (early fusion: where the
visual tokens go, in order); media_locations bool[B, L] (cross-attention);
positions [B, L] / [3, B, L] (M-RoPE) / f32[B, L] (V2PE).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import audio_fusion
from mmjax.models import connectors as connectors_lib
from mmjax.models import cross_attention
from mmjax.models import naflex as naflex_lib
from mmjax.models import qformer as qformer_lib
from mmjax.models import qwen2vl_vision
from mmjax.models import resampler as resampler_lib
from mmjax.models import vision as vision_lib
from mmjax.models import visual_positions
from mmjax.models import whisper as whisper_lib
# The allowed switch values live in choices.py (jax-free); re-exported here.
from mmjax.models.choices import AUDIO_PROJECTORS, FUSIONS, IMAGE_ATTENTION
from mmjax.models.choices import POSITIONS
from mmjax.models.choices import PROJECTORS, TILINGS, VISUAL_POSITIONS
from mmjax.models.decoder import DecoderConfig, DecoderLM, KVCache


@dataclasses.dataclass(frozen=True)
class MLLMConfig:
  """Everything that shapes the assembled model.

  Attributes:
    fusion: one of FUSIONS.
    positions: one of POSITIONS ('mrope' needs lm.mrope_sections).
    lm: the decoder.
    vision: the vision tower (None for one_backbone, or for an audio-only
      model with `audio` set): a ViT `VisionConfig`
      or Qwen2-VL's `qwen2vl_vision.Qwen2VLVisionConfig` (2-D RoPE tower,
      used with projector 'patch_merger' and feature_layer None).
    projector: one of PROJECTORS (fusion 'projection' only).
    visual_positions: one of VISUAL_POSITIONS (models/visual_positions.py):
      'sincos2d' adds each token's (row, column) to it after a 'linear' or
      'mlp' projector, so the LM can copy where an object is.
    resampler: for fusions 'resampler' and 'cross_attention'.
    qformer: for fusion 'qformer'.
    feature_layer: ViT hidden state fed to the connector (HF hidden_states
      index; -2 = second-to-last, LLaVA); None = the final, post-LN output.
    image_attention: 'causal', or 'bidirectional' within each image block.
    patch_size: raw patch size of one_backbone.
    image_size: default image side (one_backbone; else vision.image_size).
    channels: image channels.
    frames: frames per media item (video when > 1).
    tiling: one of TILINGS (fusion 'projection'; models/tiling.py): 'anyres'
      adds the learned top-level `image_newline` [D].
    grid_pinpoints: AnyRes canvas sizes ((height, width), ...), multiples of
      the tower's image_size.
    min_tiles, max_tiles, thumbnail: InternVL tiling's tile-count range and
      whether a multi-tile image also gets a whole-image thumbnail.
    audio: an audio tower (`whisper.WhisperEncoderConfig`) or None.
    audio_projector: one of AUDIO_PROJECTORS (audio_fusion.CONNECTORS).
  """
  fusion: str
  lm: DecoderConfig
  positions: str = "rope"
  vision: (vision_lib.VisionConfig | qwen2vl_vision.Qwen2VLVisionConfig |
           None) = None
  projector: str = "mlp"
  visual_positions: str = "none"
  resampler: resampler_lib.ResamplerConfig | None = None
  qformer: qformer_lib.QFormerConfig | None = None
  feature_layer: int | None = -2
  image_attention: str = "causal"
  patch_size: int = 8
  image_size: int = 64
  channels: int = 3
  frames: int = 1
  tiling: str = "none"
  grid_pinpoints: tuple[tuple[int, int], ...] = ()
  min_tiles: int = 1
  max_tiles: int = 12
  thumbnail: bool = True
  audio: whisper_lib.WhisperEncoderConfig | None = None
  audio_projector: str = "qwen2_audio"

  def __post_init__(self):
    def bad(key, value, allowed):
      raise ValueError(f"{key}={value!r} is not allowed; allowed values: "
                       f"{', '.join(map(repr, allowed))}")
    if self.fusion not in FUSIONS:
      bad("fusion", self.fusion, FUSIONS)
    if self.positions not in POSITIONS:
      bad("positions", self.positions, POSITIONS)
    if self.image_attention not in IMAGE_ATTENTION:
      bad("image_attention", self.image_attention, IMAGE_ATTENTION)
    if self.fusion == "projection" and self.projector not in PROJECTORS:
      bad("projector", self.projector, PROJECTORS)
    if self.audio_projector not in AUDIO_PROJECTORS:
      bad("audio_projector", self.audio_projector, AUDIO_PROJECTORS)
    if self.audio is not None and self.fusion == "cross_attention":
      raise ValueError("audio needs an early fusion (its tokens are "
                       "scattered into the stream), not 'cross_attention'")
    if (self.fusion != "one_backbone" and self.vision is None and
        self.audio is None):
      raise ValueError(f"fusion={self.fusion!r} needs a vision tower config")
    if self.fusion in ("resampler", "cross_attention") and not self.resampler:
      raise ValueError(f"fusion={self.fusion!r} needs a resampler config")
    if self.fusion == "qformer" and self.qformer is None:
      raise ValueError("fusion='qformer' needs a qformer config")
    if (self.fusion == "cross_attention") != bool(self.lm.xattn_every):
      raise ValueError(
          "lm.xattn_every must be > 0 exactly when fusion='cross_attention' "
          f"(fusion={self.fusion!r}, xattn_every={self.lm.xattn_every})")
    if (self.positions == "mrope") != (self.lm.mrope_sections is not None):
      raise ValueError(
          "lm.mrope_sections must be set exactly when positions='mrope' "
          f"(positions={self.positions!r}, "
          f"mrope_sections={self.lm.mrope_sections})")
    if self.frames < 1:
      raise ValueError(f"frames={self.frames} must be >= 1")
    self._check_tiling(bad)
    self._check_visual_positions(bad)
    if isinstance(self.vision, qwen2vl_vision.Qwen2VLVisionConfig) and (
        self.fusion != "projection" or self.feature_layer is not None or
        self.frames != 1):
      raise ValueError(
          "a Qwen2-VL vision tower needs fusion='projection', "
          f"feature_layer=None and frames=1 (got fusion={self.fusion!r}, "
          f"feature_layer={self.feature_layer}, frames={self.frames}).")

    if isinstance(self.vision, naflex_lib.NaFlexConfig):
      naflex_lib.check_mllm(self.fusion, self.projector, self.feature_layer,
                            self.frames)

  def _check_visual_positions(self, bad) -> None:
    if self.visual_positions not in VISUAL_POSITIONS:
      bad("visual_positions", self.visual_positions, VISUAL_POSITIONS)
    if self.visual_positions == "none":
      return
    # One table per image grid: the projector must keep one token per patch
    # and the tower must be a fixed-grid ViT (tiles and native grids would
    # need a table per tile or per image).
    if (self.fusion != "projection" or self.projector not in (
        "linear", "mlp") or self.tiling != "none" or
        type(self.vision) is not vision_lib.VisionConfig):
      raise ValueError(
          f"visual_positions={self.visual_positions!r} needs fusion="
          "'projection' with a 'linear' or 'mlp' projector, tiling='none' "
          f"and a ViT tower (got fusion={self.fusion!r}, projector="
          f"{self.projector!r}, tiling={self.tiling!r}).")

  def _check_tiling(self, bad) -> None:
    # JSON / ConfigDict give lists; the frozen config keeps tuples.
    object.__setattr__(self, "grid_pinpoints", tuple(
        (int(h), int(w)) for h, w in self.grid_pinpoints))
    if self.tiling not in TILINGS:
      bad("tiling", self.tiling, TILINGS)
    if self.tiling == "none":
      return
    if self.fusion != "projection" or not isinstance(
        self.vision, vision_lib.VisionConfig):
      raise ValueError(f"tiling={self.tiling!r} needs fusion='projection' "
                       f"with a ViT tower (got fusion={self.fusion!r}).")
    if self.tiling == "anyres" and not self.grid_pinpoints:
      raise ValueError("tiling='anyres' needs grid_pinpoints, e.g. "
                       "((336, 672), (672, 336), (672, 672)).")
    if not 1 <= self.min_tiles <= self.max_tiles:
      raise ValueError(f"min_tiles={self.min_tiles}, max_tiles="
                       f"{self.max_tiles}: need 1 <= min_tiles <= max_tiles.")

  @property
  def has_vision(self) -> bool:
    """Whether the model reads images (an audio-only model does not)."""
    return self.vision is not None or self.fusion == "one_backbone"

  @property
  def side(self) -> int:
    return self.vision.image_size if self.vision else self.image_size

  @property
  def patch(self) -> int:
    return self.vision.patch_size if self.vision else self.patch_size


def scatter_visual(text: jax.Array, visual: jax.Array, mask: jax.Array
                   ) -> jax.Array:
  """Puts visual tokens, in order, at the True positions of `mask`.

  Args:
    text: [B, L, D] token embeddings.
    visual: [B, K, D] visual tokens of each example, images in order.
    mask: bool[B, L]; row b must have at most K True entries (the data
      pipeline checks the exact count on the host, see layout.py).

  Returns:
    [B, L, D]: text where mask is False, visual[b, k] at the k-th True.
  """
  idx = jnp.clip(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0,
                 visual.shape[1] - 1)
  gathered = jnp.take_along_axis(visual, idx[..., None], axis=1)
  return jnp.where(mask[..., None], gathered.astype(text.dtype), text)


def image_block_ids(image_token_mask: jax.Array) -> jax.Array:
  """bool[B, L] -> int32[B, L]: 1, 2, ... per contiguous visual run, else 0."""
  m = image_token_mask.astype(jnp.int32)
  starts = m * (1 - jnp.pad(m, ((0, 0), (1, 0)))[:, :-1])
  return jnp.cumsum(starts, axis=1) * m


class OneBackbonePatches(nn.Module):
  """Fuyu: raw patches -> Linear(p*p*C -> D); newline vector after each row.

  The newline is a learned vector (`image_newline`); importing Fuyu copies
  the text embedding of its newline token into it.
  """
  d_model: int
  patch: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images: [N, H, W, C] -> [N, gh * (gw + 1), D]."""
    patches = vision_lib.patchify(images, self.patch)
    gh, gw = images.shape[1] // self.patch, images.shape[2] // self.patch
    x = nn.Dense(self.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.lecun_normal(), (None, "embed")),
                 bias_init=nn.with_logical_partitioning(
                     nn.initializers.zeros, ("embed",)),
                 name="patch_embed")(patches)
    newline = self.param("image_newline", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("embed",)), (self.d_model,),
                         self.param_dtype)
    x = x.reshape(x.shape[0], gh, gw, self.d_model)
    nl = jnp.broadcast_to(newline.astype(x.dtype), (x.shape[0], gh, 1,
                                                    self.d_model))
    x = jnp.concatenate([x, nl], axis=2).reshape(x.shape[0], -1, self.d_model)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class MLLM(nn.Module):
  """Vision tower + connector + decoder LM, wired by `cfg.fusion`."""
  cfg: MLLMConfig

  def setup(self):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.lm.dtype)
    pdtype = jnp.dtype(cfg.lm.param_dtype)
    d = cfg.lm.d_model
    if cfg.audio is not None:
      self.audio = whisper_lib.WhisperEncoder(cfg.audio)
      self.audio_connector = audio_fusion.make_connector(
          cfg.audio_projector, d, cfg.audio, dtype, pdtype)
    if cfg.vision is not None and cfg.fusion != "one_backbone":
      self.vision = vision_tower(cfg.vision)
    if cfg.has_vision:  # an audio-only model has no vision connector
      self.connector = self._vision_connector()
    # Bidirectional image blocks are not causal: the LM scores full squares.
    self.llm = DecoderLM(
        dataclasses.replace(cfg.lm, causal_chunks=0)
        if cfg.image_attention == "bidirectional" else cfg.lm)
    if cfg.tiling == "anyres":  # LLaVA-NeXT's newline after each tile row
      self.image_newline = self.param(
          "image_newline", nn.with_logical_partitioning(
              nn.initializers.normal(d ** -0.5), ("embed",)), (d,), pdtype)

  def _vision_connector(self) -> nn.Module:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.lm.dtype)
    pdtype = jnp.dtype(cfg.lm.param_dtype)
    d = cfg.lm.d_model
    if cfg.fusion == "projection":
      return connectors_lib.make_projector(
          cfg.projector, d, dtype=dtype, param_dtype=pdtype)
    if cfg.fusion in ("resampler", "cross_attention"):
      return resampler_lib.PerceiverResampler(cfg.resampler)
    if cfg.fusion == "qformer":
      return qformer_lib.QFormerConnector(cfg.qformer, d)
    return OneBackbonePatches(d, cfg.patch_size, dtype=dtype,
                              param_dtype=pdtype)

  def encode_images(self, images: jax.Array) -> jax.Array:
    """Visual tokens per media item.

    Args:
      images: f32[B, M, H, W, C] or f32[B, M, F, H, W, C].

    Returns:
      [B, M, T, D]: T tokens per item in LM width (early fusion), or in the
      resampler's width for cross-attention.
    """
    cfg = self.cfg
    if images.ndim == 5:
      images = images[:, :, None]
    chex.assert_rank(images, 6)
    b, m, f = images.shape[:3]
    flat = images.reshape((b * m * f,) + images.shape[3:])
    if cfg.fusion == "one_backbone":
      tokens = self.connector(flat)
      return tokens.reshape(b, m, f * tokens.shape[1], tokens.shape[-1])
    if isinstance(cfg.vision, naflex_lib.NaFlexConfig):
      raise ValueError("a NaFlex tower reads patch rows, not images: pass "
                       "visual=MLLM.encode_naflex(...) instead of images.")
    out = self.vision(flat, feature_layer=cfg.feature_layer)
    tokens = out.tokens  # [b*m*f, N, Dv]
    n, dv = tokens.shape[1], tokens.shape[2]
    if cfg.fusion == "projection":
      projected = self.connector(tokens, out.grid)  # [b*m*f, T, D]
      projected = visual_positions.add(cfg.visual_positions, projected,
                                       out.grid)
      return projected.reshape(b, m, f * projected.shape[1], -1)
    if cfg.fusion in ("resampler", "cross_attention"):
      latents = self.connector(tokens.reshape(b, m, f, n, dv))
      return latents  # [b, m, n_latents, D']
    queries = self.connector(tokens.reshape(b * m, f * n, dv))
    return queries.reshape(b, m, queries.shape[1], queries.shape[2])

  def encode_audio(self, features: jax.Array,
                   frame_mask: jax.Array | None = None) -> jax.Array:
    """Audio tokens per clip.

    Args:
      features: f32[B, A, T, n_mels] log-mel frames (`data.audio.log_mel`),
        A clips per example, padded to T.
      frame_mask: bool[B, A, T] (True = the clip) or None (all frames).

    Returns:
      [B, A, K, D] in LM width; `audio_fusion.token_mask(frame_mask)` says
      which are real.
    """
    if self.cfg.audio is None:
      raise ValueError("this model has no audio tower (MLLMConfig.audio).")
    chex.assert_rank(features, 4)
    b, a, t, m = features.shape
    mask = None if frame_mask is None else frame_mask.reshape(b * a, t)
    hidden = self.audio(features.reshape(b * a, t, m), mask)
    tokens, _ = self.audio_connector(hidden)
    return tokens.reshape(b, a, tokens.shape[1], tokens.shape[2])

  def encode_native(self, patches: jax.Array, rope_ids: jax.Array,
                    segment_ids: jax.Array, row_index: jax.Array
                    ) -> jax.Array:
    """Qwen2-VL native resolution: packed media -> each prompt's tokens.

    Two layouts (`data/native_resolution.py`):
      flat (generation): patches [N, C*T*p*p], rope_ids [N, 2],
        segment_ids [N] hold the whole batch's media (`pack`); row_index
        int32[B, K] picks prompt b's merged tokens from the flat output.
      per row (training): patches [B, N, C*T*p*p], rope_ids [B, N, 2],
        segment_ids [B, N], one packed sequence per row (`pack_rows`);
        row_index int32[B, K] indexes row b's own merged tokens.

    Returns:
      visual [B, 1, K, D] (the `visual` argument of __call__).
    """
    if not isinstance(self.cfg.vision, qwen2vl_vision.Qwen2VLVisionConfig):
      raise ValueError("encode_native needs a Qwen2-VL vision tower "
                       "(vision.kind='qwen2vl').")
    flat = patches.ndim == 2
    tokens = self.vision.packed(patches, rope_ids, segment_ids)
    if flat:
      tokens = tokens[None]  # [1, N, Dv]
    m = self.cfg.vision.spatial_merge
    b, n, dv = tokens.shape
    k = n // (m * m)
    # Each merge window's m*m tokens are contiguous; laid out as an
    # (m, k*m) row-major grid, the connector's window gather takes window j
    # from columns j*m..j*m+m-1 and emits the windows in order.
    grid_tokens = tokens.reshape(b, k, m, m, dv).transpose(0, 2, 1, 3, 4)
    merged = self.connector(grid_tokens.reshape(b, n, dv), (m, k * m))
    if flat:
      return merged[0][row_index][:, None]
    picked = jnp.take_along_axis(merged, row_index[..., None], axis=1)
    return picked[:, None]

  def encode_naflex(self, patches: jax.Array, mask: jax.Array,
                    spatial_shapes: jax.Array) -> jax.Array:
    """Visual tokens of NaFlex images (`mmjax.data.naflex.batch` per item).

    Args:
      patches: [B, M, N, p*p*C]; mask: [B, M, N]; spatial_shapes:
        int[B, M, 2].

    Returns:
      [B, 1, M*N, D] for `__call__(visual=...)`: the projected valid tokens
      of image 0, then image 1, ..., then padding; the text needs
      mask[b].sum() image placeholders (the padding is never placed).
    """
    b, m, n = mask.shape
    out = self.vision(patches.reshape((b * m, n) + patches.shape[3:]),
                      mask.reshape(b * m, n),
                      spatial_shapes.reshape(b * m, 2))
    projected = self.connector(out.tokens, None)  # [b*m, N, D]
    x = naflex_lib.valid_first(projected.reshape(b, m * n, -1),
                               out.mask.reshape(b, m * n))
    return x[:, None]

  def __call__(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      *,
      images: jax.Array | None = None,
      image_mask: jax.Array | None = None,
      image_token_mask: jax.Array | None = None,
      media_locations: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      attention_mask: jax.Array | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | int | None = None,
      visual: jax.Array | None = None,
      media_times: jax.Array | None = None,
      prefix_len: jax.Array | None = None,
      logits: bool = True,
      native: Mapping[str, jax.Array] | None = None,
      naflex: Mapping[str, jax.Array] | None = None,
      audio: jax.Array | None = None,
      audio_mask: jax.Array | None = None,
      audio_token_mask: jax.Array | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Logits f32[B, L, V] (and the updated KV cache when one is given).

    `visual` ([B, M, T, D], from `encode_images`) may be passed instead of
    `images`, e.g. to encode once and decode many steps. `media_times`
    overrides the counts derived from `media_locations` (decoding).
    logits=False returns the LM's final-normed hidden state [B, L, D] instead
    (`head` maps it to logits). prefix_len int32[B] (lm.prefix_lm): slots
    before it attend bidirectionally (PaliGemma's image + prompt).
    native: the arguments of `encode_native` (a Qwen2-VL tower's packed
    media, `native_resolution.model_inputs` of a training batch) instead of
    `images`; naflex: the arguments of `encode_naflex` (a NaFlex tower's
    patch rows, `data.naflex.model_inputs`). audio f32[B, A, T, n_mels],
    audio_mask bool[B, A, T] (`encode_audio`'s arguments) and
    audio_token_mask bool[B, L] (where the clips' real tokens go, in order).
    """
    cfg = self.cfg
    if visual is None and native is not None:
      visual = self.encode_native(**native)
    if visual is None and naflex is not None:
      visual = self.encode_naflex(**naflex)
    if visual is None and images is not None:
      visual = self.encode_images(images)
    kwargs = dict(segment_ids=segment_ids, attention_mask=attention_mask,
                  cache=cache, cache_index=cache_index, logits=logits)
    if prefix_len is not None:
      kwargs["prefix_len"] = prefix_len
    if cfg.fusion == "cross_attention":
      if visual is not None:
        if media_times is None:
          if media_locations is None:
            raise ValueError("fusion='cross_attention' needs media_locations "
                             "(where each <image> marker sits)")
          media_times = cross_attention.text_time(media_locations)
        kwargs.update(media=visual, media_times=media_times,
                      media_valid=image_mask)
      return self.llm(tokens, positions, **kwargs)
    x, kwargs["block_ids"] = self.embed_inputs(tokens, visual,
                                               image_token_mask)
    if audio is not None:
      if audio_token_mask is None:
        raise ValueError("audio needs audio_token_mask (where the audio "
                         "tokens go)")
      heard = audio_fusion.valid_tokens(self.encode_audio(audio, audio_mask),
                                        audio_mask, cfg.audio_projector)
      x = scatter_visual(x, nn.with_logical_constraint(
          heard, ("batch", "length", "embed")), audio_token_mask)
    return self.llm(positions=positions, embeddings=x, **kwargs)

  def head(self, x: jax.Array) -> jax.Array:
    """The LM head: final-normed hidden [B, L, D] -> logits f32[B, L, V]."""
    return self.llm.head(x)

  def embed_inputs(self, tokens: jax.Array, visual: jax.Array | None,
                   image_token_mask: jax.Array | None
                   ) -> tuple[jax.Array, jax.Array | None]:
    """Early fusion: token embeddings with the visual tokens scattered in.

    Args:
      tokens: int32[B, L].
      visual: [B, M, T, D] from `encode_images`, or None (text only).
      image_token_mask: bool[B, L], where the visual tokens go.

    Returns:
      (embeddings [B, L, D], block_ids int32[B, L] for bidirectional image
      attention, else None).
    """
    x = self.llm.embed_tokens(tokens)
    if visual is None:
      return x, None
    if image_token_mask is None:
      raise ValueError(f"fusion={self.cfg.fusion!r} needs image_token_mask "
                       "(where the visual tokens go)")
    flat = nn.with_logical_constraint(
        visual.reshape(tokens.shape[0], -1, visual.shape[-1]),
        ("batch", "length", "embed"))
    x = scatter_visual(x, flat, image_token_mask)
    block_ids = (image_block_ids(image_token_mask)
                 if self.cfg.image_attention == "bidirectional" else None)
    return x, block_ids


# Vision tower module per config class.
_TOWERS = {vision_lib.VisionConfig: vision_lib.VisionEncoder,
           qwen2vl_vision.Qwen2VLVisionConfig:
               qwen2vl_vision.Qwen2VLVisionTower,
           naflex_lib.NaFlexConfig: naflex_lib.NaFlexVisionTower}


def vision_tower(cfg: Any) -> nn.Module:
  """The tower module of a vision config (ViT or Qwen2-VL)."""
  return _TOWERS[type(cfg)](cfg)


def vision_config_from_dict(d: Mapping[str, Any]) -> Any:
  """VisionConfig, or Qwen2VLVisionConfig when d['kind'] is 'qwen2vl', or
  NaFlexConfig when it is 'naflex'."""
  if d.get("kind") == qwen2vl_vision.KIND:
    return qwen2vl_vision.Qwen2VLVisionConfig.from_dict(d)
  if d.get("kind") == naflex_lib.KIND:
    return naflex_lib.NaFlexConfig.from_dict(d)
  return vision_lib.VisionConfig.from_dict(d)


def mllm_config_from_dict(d: Mapping[str, Any]) -> MLLMConfig:
  """Builds MLLMConfig from plain nested dicts (a ConfigDict's to_dict())."""
  d = dict(d)
  lm = DecoderConfig.from_dict(d.pop("lm"))
  vision = d.pop("vision", None)
  audio = d.pop("audio", None)
  resampler = d.pop("resampler", None)
  qformer = d.pop("qformer", None)
  d.pop("text", None)  # the SigLIP text tower of contrastive stages
  d.pop("vq", None)  # the VQ image tokenizer of `vq` stages (models/vq.py)
  # Where the `t2i` stage's LM writes each code (models/text_to_image.py).
  d.pop("code_positions", None)
  d.pop("scene_layout", None)  # whether it plans a layout first
  d.pop("cell_edges", None)  # what its code cells learn of the layout
  fusion = d.get("fusion")
  allowed = {f.name for f in dataclasses.fields(MLLMConfig)}
  unknown = sorted(set(d) - allowed)
  if unknown:
    raise ValueError(f"unknown model keys {unknown}; allowed: "
                     f"{sorted(allowed)}")
  return MLLMConfig(
      lm=lm,
      vision=(vision_config_from_dict(vision)
              if vision and fusion != "one_backbone" else None),
      resampler=(resampler_lib.ResamplerConfig.from_dict(resampler)
                 if resampler and fusion in ("resampler", "cross_attention")
                 else None),
      qformer=(qformer_lib.QFormerConfig.from_dict(qformer)
               if qformer and fusion == "qformer" else None),
      audio=(whisper_lib.WhisperEncoderConfig.from_dict(audio) if audio
             else None),
      **d)
