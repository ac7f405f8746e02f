"""Perceiver resampler: a fixed set of latents reads any number of tokens.

Two styles, selected by `ResamplerConfig.style`:

'flamingo' (OpenFlamingo `helpers.PerceiverResampler`): LayerNorms with bias,
  no biases in attention or FFN, latents drawn from randn, optional learned
  frame and media-time embeddings, final LayerNorm. Module tree, mapped to
  OpenFlamingo's `perceiver.*` parameters (torch Linear [out, in] is
  transposed into our [in, ...] kernels):

    latents [n, D]                  latents
    frame_embs [max_frames, D]      frame_embs
    media_time_embs [max_media,1,D] media_time_embs
    layers_{i}/norm_media           layers.{i}.0.norm_media
    layers_{i}/norm_latents         layers.{i}.0.norm_latents
    layers_{i}/attn/q [D, H, Dh]    layers.{i}.0.to_q
    layers_{i}/attn/k, attn/v       layers.{i}.0.to_kv (first / second half of
                                    its H*Dh*2 outputs, torch `chunk(2)`)
    layers_{i}/attn/o [H, Dh, D]    layers.{i}.0.to_out
    layers_{i}/ff_norm              layers.{i}.1.0 (LayerNorm)
    layers_{i}/ff/fc1, ff/fc2       layers.{i}.1.1, layers.{i}.1.3
    norm                            norm

'idefics2' (HF `Idefics2Connector`): a SwiGLU modality projection (vision dim
  -> width) then the perceiver with RMSNorms, GQA attention without biases,
  SwiGLU FFN, latents initialised to ones, final RMSNorm. Mapped to HF
  `model.connector.*`:

    modality_projection/{gate,up,down}   modality_projection.{gate,up,down}_proj
    latents                              perceiver_resampler.latents
    layers_{i}/input_latents_norm        P.layers.{i}.input_latents_norm
    layers_{i}/input_context_norm        P.layers.{i}.input_context_norm
    layers_{i}/self_attn/{q,k,v,o}       P.layers.{i}.self_attn.{q,k,v,o}_proj
    layers_{i}/post_attention_layernorm  P.layers.{i}.post_attention_layernorm
    layers_{i}/mlp/{gate,up,down}        P.layers.{i}.mlp.{gate,up,down}_proj
    norm                                 perceiver_resampler.norm

  (P = perceiver_resampler; RMSNorm `weight` -> our `scale`.)

Both: keys/values are concat(norm(media), norm(latents)) in that order (media
first, as both references), queries are the normed latents, and the latents
themselves are never masked. An optional `out_proj` Linear (not in either
reference) maps the result to `out_dim`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import config_util
from mmjax.models import layers
from mmjax.models import vision

_logical = layers._logical  # pylint: disable=protected-access

STYLES = ("flamingo", "idefics2")
# torch.nn.LayerNorm's default (OpenFlamingo) and Idefics2's RMSNorm eps.
_DEFAULT_EPS = {"flamingo": 1e-5, "idefics2": 1e-6}


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
  """Sizes and style of a Perceiver resampler; defaults are test-tiny.

  Real sizes: OpenFlamingo depth 6, 8 heads x 64, 64 latents; Idefics2 depth 3,
  16 heads x 96, 4 KV heads, 64 latents, width = the LM width.
  """
  style: str = "flamingo"
  n_latents: int = 64
  depth: int = 2
  n_heads: int = 4
  head_dim: int = 16
  n_kv_heads: int | None = None  # GQA (Idefics2: 4); None = n_heads.
  ff_mult: int = 4  # FFN hidden = ff_mult * width.
  max_frames: int | None = None  # Flamingo frame embeddings; None = off.
  max_media: int | None = None  # Flamingo media-time embeddings; None = off.
  norm_eps: float | None = None  # None: 1e-5 (flamingo) / 1e-6 (idefics2).
  # Resampler width D. Flamingo: must equal the media width (None = it).
  # Idefics2: output of the modality projection (HF text hidden_size).
  width: int | None = None
  # Idefics2 modality projection hidden width (HF text intermediate_size);
  # None = 4 * width.
  projection_mlp_dim: int | None = None
  out_dim: int | None = None  # Optional final Linear(D, out_dim).
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.style not in STYLES:
      raise ValueError(f"ResamplerConfig.style={self.style!r}; allowed: "
                       f"{list(STYLES)}.")
    for name in ("n_latents", "depth", "n_heads", "head_dim", "ff_mult"):
      if getattr(self, name) < 1:
        raise ValueError(f"ResamplerConfig.{name} must be >= 1, got "
                         f"{getattr(self, name)}.")
    if self.n_heads % self.resolved_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of "
                       f"n_kv_heads={self.n_kv_heads}.")
    if self.style == "idefics2" and (self.max_frames or self.max_media):
      raise ValueError("max_frames / max_media are Flamingo time embeddings; "
                       "the idefics2 style has none. Set them to None.")
    config_util.check_dtypes(self)

  @property
  def resolved_kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def resolved_eps(self) -> float:
    return self.norm_eps if self.norm_eps is not None else (
        _DEFAULT_EPS[self.style])

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> ResamplerConfig:
    """Builds a config from a mapping, rejecting keys it does not know."""
    return config_util.from_dict(cls, d)


class GatedProjection(nn.Module):
  """`down(act(gate(x)) * up(x))` with its own output width (no biases).

  layers.GatedMLP always projects back to the input width; the Idefics2
  modality projection (HF `Idefics2MLP` with output_size != hidden_size)
  changes width, hence this module. Same submodule names: gate, up, down.
  """
  mlp_dim: int
  out_features: int
  activation: str = "silu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., Din] -> [..., out_features]."""

    def dense(features, names, name):
      return nn.Dense(features, use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name=name,
                      kernel_init=_logical(nn.initializers.lecun_normal(),
                                           names))

    h = (layers.activation_fn(self.activation)(
        dense(self.mlp_dim, ("embed", "mlp"), "gate")(x)) *
         dense(self.mlp_dim, ("embed", "mlp"), "up")(x))
    return dense(self.out_features, ("mlp", "embed"), "down")(h)


def _layer_norm(eps: float, name: str, dtype: Any,
                param_dtype: Any) -> nn.LayerNorm:
  return vision.layer_norm(eps, dtype, param_dtype, name)


class _PerceiverLayer(nn.Module):
  """One resampler layer; submodule names follow the style's reference."""
  cfg: ResamplerConfig

  @nn.compact
  def __call__(self, latents: jax.Array, media: jax.Array,
               mask: jax.Array) -> jax.Array:
    """latents [B, n, D], media [B, S, D], mask bool[B, 1, S+n] -> [B, n, D]."""
    cfg = self.cfg
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(
        cfg.param_dtype))
    d = latents.shape[-1]
    flamingo = cfg.style == "flamingo"
    if flamingo:
      norm = lambda name: _layer_norm(cfg.resolved_eps, name, **kw)
      names = ("norm_latents", "norm_media", "attn", "ff_norm")
    else:
      norm = lambda name: layers.RMSNorm(eps=cfg.resolved_eps, name=name, **kw)
      names = ("input_latents_norm", "input_context_norm", "self_attn",
               "post_attention_layernorm")
    q = norm(names[0])(latents)
    kv = jnp.concatenate([norm(names[1])(media), q], axis=1)
    latents = latents + layers.MultiHeadAttention(
        n_heads=cfg.n_heads, head_dim=cfg.head_dim,
        n_kv_heads=cfg.resolved_kv_heads, use_bias=False, name=names[2],
        **kw)(q, kv, mask=mask)
    h = norm(names[3])(latents)
    if flamingo:
      h = layers.MLP(hidden=cfg.ff_mult * d, activation="gelu",
                     use_bias=False, name="ff", **kw)(h)
    else:
      h = layers.GatedMLP(mlp_dim=cfg.ff_mult * d, activation="silu",
                          name="mlp", **kw)(h)
    return nn.with_logical_constraint(latents + h, ("batch", "length",
                                                    "embed"))


class PerceiverResampler(nn.Module):
  """Resamples media tokens into `n_latents` tokens per media item.

  See the module docstring for the parameter layout of each style.
  """
  cfg: ResamplerConfig

  @nn.compact
  def __call__(self, media: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """Runs the resampler.

    Args:
      media: f32[B, T, F, v, Dv]: T media items per example, F frames each,
        v tokens per frame. A rank-3 [B, N, Dv] input is one single-frame
        media item per example.
      mask: bool[B, T, F, v] (or [B, N] for rank-3 media), True = a real
        token, False = padding that the latents must ignore; None = all real.

    Returns:
      f32[B, T, n_latents, D'] ([B, n_latents, D'] for rank-3 media), where
      D' = out_dim or the resampler width.
    """
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    squeeze = media.ndim == 3
    if squeeze:
      media = media[:, None, None]
      mask = None if mask is None else mask[:, None, None]
    chex.assert_rank(media, 5)
    b, t, f, v, dv = media.shape
    if mask is not None:
      chex.assert_shape(mask, (b, t, f, v))

    if cfg.style == "idefics2":
      width = cfg.width or dv
      media = GatedProjection(
          mlp_dim=cfg.projection_mlp_dim or 4 * width, out_features=width,
          dtype=dtype, param_dtype=param_dtype,
          name="modality_projection")(media)
    else:
      width = dv
      if cfg.width is not None and cfg.width != dv:
        raise ValueError(f"flamingo resampler width={cfg.width} differs from "
                         f"the media width {dv}; OpenFlamingo has no input "
                         f"projection (set width=None or add a projector).")
    d = width

    def embedding(name, shape, init):
      return self.param(name, _logical(init, (None,) * (len(shape) - 1) +
                                       ("embed",)), shape, param_dtype)

    randn = nn.initializers.normal(stddev=1.0)
    if cfg.max_frames:
      if f > cfg.max_frames:
        raise ValueError(f"{f} frames per media item exceed max_frames="
                         f"{cfg.max_frames}.")
      frame_embs = embedding("frame_embs", (cfg.max_frames, d), randn)
      media = media + frame_embs[:f, None].astype(media.dtype)
    media = media.reshape(b, t, f * v, d)
    if cfg.max_media:
      if t > cfg.max_media:
        raise ValueError(f"{t} media items per example exceed max_media="
                         f"{cfg.max_media}.")
      time_embs = embedding("media_time_embs", (cfg.max_media, 1, d), randn)
      media = media + time_embs[:t].astype(media.dtype)

    # Every media item is resampled independently: fold T into the batch.
    media = media.reshape(b * t, f * v, d).astype(dtype)
    media = nn.with_logical_constraint(media, ("batch", "length", "embed"))
    latent_init = randn if cfg.style == "flamingo" else nn.initializers.ones
    latents = embedding("latents", (cfg.n_latents, d), latent_init)
    latents = jnp.broadcast_to(latents.astype(dtype), (b * t, cfg.n_latents, d))
    latents = nn.with_logical_constraint(latents, ("batch", "length", "embed"))
    kv_mask = jnp.ones((b * t, f * v + cfg.n_latents), bool)
    if mask is not None:
      kv_mask = kv_mask.at[:, :f * v].set(mask.reshape(b * t, f * v))
    kv_mask = kv_mask[:, None, :]

    for i in range(cfg.depth):
      latents = _PerceiverLayer(cfg, name=f"layers_{i}")(latents, media,
                                                         kv_mask)
    if cfg.style == "flamingo":
      latents = _layer_norm(cfg.resolved_eps, "norm", dtype, param_dtype)(
          latents)
    else:
      latents = layers.RMSNorm(eps=cfg.resolved_eps, dtype=dtype,
                               param_dtype=param_dtype, name="norm")(latents)
    if cfg.out_dim:
      latents = nn.Dense(
          cfg.out_dim, dtype=dtype, param_dtype=param_dtype, name="out_proj",
          kernel_init=_logical(nn.initializers.lecun_normal(),
                               ("embed", "mlp")),
          bias_init=_logical(nn.initializers.zeros, ("mlp",)))(latents)
    latents = nn.with_logical_constraint(latents, ("batch", "length", "embed"))
    latents = latents.reshape(b, t, cfg.n_latents, latents.shape[-1])
    return latents[:, 0] if squeeze else latents
