"""Whisper's audio encoder (HF `WhisperModel.encoder`), with frame masks.

  cfg = whisper_variant("tiny")                 # 384 x 4 layers x 6 heads
  enc = WhisperEncoder(cfg)
  hidden = enc.apply({"params": p}, features)   # [B, 3000, 80] -> [B, 1500, 384]
  hidden = enc.apply({"params": p}, features, mask)   # variable length

Input: log-mel features `f32[B, T, n_mels]` (frames first:
`data.audio.log_mel`'s layout, the transpose of HF's input_features).
HF requires T = 3000 exactly; here any T <= 2 * max_positions works and a
frame mask `bool[B, T]` (True = the clip) makes padding frames irrelevant:
they are zeroed before each conv and never attended to, so the valid
outputs equal those of the clip alone (`output_mask` gives the outputs'
mask). Without a mask every frame counts, as in HF.

Module tree (hf/whisper.py maps `encoder.*` onto it):

  conv1     Conv [3, n_mels, D] + bias, pad 1, then GELU (erf)
  conv2     Conv [3, D, D] + bias, stride 2, pad 1, then GELU -> T/2 frames
            + sinusoidal positions [max_positions, D] (computed, fixed:
              `sinusoids`, Whisper's table; not a parameter)
  layers_{i}  WhisperBlock, pre-LN:
    norm1, attn{q, k, v, o}  (q, v, o biased; k without), norm2,
    mlp{fc1, fc2}            (GELU, mlp_dim = 4 D)
  (pool)    Qwen2-Audio only (`pool=2`): average over pairs of frames
  norm      final LayerNorm
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import config_util
from mmjax.models import layers
from mmjax.models.vision import layer_norm

_ACT = ("batch", "length", "embed")
_logical = layers._logical  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig:
  """Sizes of a Whisper encoder (HF `WhisperConfig`'s encoder half).

  Attributes:
    n_mels: mel bins of the input (80; 128 for large-v3).
    width: d_model D.
    depth: encoder_layers.
    n_heads: encoder_attention_heads.
    mlp_dim: encoder_ffn_dim (4 D).
    max_positions: max_source_positions, output frames of 30 s (1500).
    activation: MLP activation (HF activation_function 'gelu' = erf).
    norm_eps: LayerNorm epsilon (1e-5, torch's default).
    attention: `layers.ATTENTION_IMPLS`.
    pool: average-pool the outputs over windows of `pool` frames (stride
      `pool`, a trailing partial window dropped) before the final
      LayerNorm: Qwen2-Audio's encoder (2; 40 ms per output); 1 = Whisper.
    mask_convs: with a frame mask, zero padded frames before each conv so
      padding is irrelevant (True). False reproduces Qwen2-Audio in HF,
      whose convs read the padding frames and whose mask only hides them
      as attention keys: exact only for features padded as HF's processor
      pads them (to 30 s, log-mel of silence).
  """
  n_mels: int = 80
  width: int = 384
  depth: int = 4
  n_heads: int = 6
  mlp_dim: int = 1536
  max_positions: int = 1500
  activation: str = "gelu"
  norm_eps: float = 1e-5
  attention: str = "einsum"
  pool: int = 1
  mask_convs: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    for name in ("n_mels", "width", "depth", "n_heads", "mlp_dim",
                 "max_positions", "pool"):
      if getattr(self, name) <= 0:
        raise ValueError(f"WhisperEncoderConfig.{name} must be positive, got "
                         f"{getattr(self, name)}.")
    if self.width % self.n_heads or self.width % 2:
      raise ValueError(f"WhisperEncoderConfig: width={self.width} must be "
                       f"even and divisible by n_heads={self.n_heads}.")
    layers.activation_fn(self.activation)
    layers.check_attention(self.attention, "WhisperEncoderConfig.attention")
    config_util.check_dtypes(self)

  @property
  def head_dim(self) -> int:
    return self.width // self.n_heads

  @property
  def max_frames(self) -> int:
    """Input frames of a full window (3000 = 30 s)."""
    return 2 * self.max_positions

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> WhisperEncoderConfig:
    return config_util.from_dict(cls, d)


# (width, depth, heads, n_mels) of Whisper's checkpoints (DESIGN.md s. 5);
# 'test' is a seconds-fast twin for tests.
_VARIANTS = {
    "test": (32, 2, 2, 80),
    "tiny": (384, 4, 6, 80),
    "base": (512, 6, 8, 80),
    "small": (768, 12, 12, 80),
    "medium": (1024, 24, 16, 80),
    "large-v3": (1280, 32, 20, 128),
}


def whisper_variant(name: str, **overrides: Any) -> WhisperEncoderConfig:
  """The encoder of Whisper `name` ('tiny', 'base', ..., 'large-v3')."""
  if name not in _VARIANTS:
    raise ValueError(f"unknown Whisper variant {name!r}; allowed: "
                     f"{', '.join(_VARIANTS)}.")
  width, depth, heads, mels = _VARIANTS[name]
  kw = dict(n_mels=mels, width=width, depth=depth, n_heads=heads,
            mlp_dim=4 * width)
  kw.update(overrides)
  return WhisperEncoderConfig(**kw)


def sinusoids(length: int, channels: int,
              max_timescale: float = 10_000.0) -> np.ndarray:
  """Whisper's positions f32[length, channels]: [sin(t w_i), cos(t w_i)],
  w_i = max_timescale^(-i / (channels/2 - 1)), i < channels / 2."""
  inc = np.log(max_timescale) / (channels // 2 - 1)
  inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32))
  t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
  return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def pool_frames(x: jax.Array, window: int) -> jax.Array:
  """Mean over non-overlapping windows of frames (torch AvgPool1d(w, w)):
  [B, N, D] -> [B, N // window, D]; a trailing partial window is dropped."""
  if window == 1:
    return x
  b, n, d = x.shape
  n = n // window * window
  return x[:, :n].reshape(b, n // window, window, d).mean(axis=2)


def pool_mask(mask: jax.Array, window: int) -> jax.Array:
  """bool[B, N] -> bool[B, N // window] for `pool_frames`: a window is valid
  when all of it is."""
  if window == 1:
    return mask
  b, n = mask.shape
  n = n // window * window
  return mask[:, :n].reshape(b, n // window, window).all(axis=-1)


def output_mask(mask: jax.Array, pool: int = 1) -> jax.Array:
  """Frame mask bool[B, T] -> the encoder outputs' mask: bool[B, ceil(T/2)]
  (output j is centred on input frame 2 j), then with `pool` > 1
  bool[B, ceil(T/2) // pool], a pooled output valid when its whole window
  is (Qwen2-Audio's lengths: (L - 2) // 2 + 1 of L conv outputs)."""
  return pool_mask(mask[:, ::2], pool)


class WhisperAttention(nn.Module):
  """Bidirectional attention; q, v and o biased, k not (Whisper's)."""
  n_heads: int
  attention: str = "einsum"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x: [B, L, D], mask: bool[B, 1, L] keys or None -> [B, L, D]."""
    d = x.shape[-1]
    dh = d // self.n_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = layers.HeadsIn(self.n_heads, dh, True, name="q", **kw)(x)
    k = layers.HeadsIn(self.n_heads, dh, False, name="k", **kw)(x)
    v = layers.HeadsIn(self.n_heads, dh, True, name="v", **kw)(x)
    out = layers.dot_product_attention(q, k, v, mask, dtype=self.dtype,
                                       impl=self.attention)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads",
                                           "head_dim"))
    return layers.HeadsOut(d, use_bias=True, name="o", **kw)(out)


class WhisperBlock(nn.Module):
  """Pre-LN block: `x + attn(LN(x))`, then `x + mlp(LN(x))`."""
  cfg: WhisperEncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    cfg = self.cfg
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(
        cfg.param_dtype))
    h = layer_norm(cfg.norm_eps, name="norm1", **kw)(x)
    h = WhisperAttention(cfg.n_heads, cfg.attention, name="attn", **kw)(h,
                                                                        mask)
    x = nn.with_logical_constraint(x + h, _ACT)
    h = layer_norm(cfg.norm_eps, name="norm2", **kw)(x)
    h = layers.MLP(hidden=cfg.mlp_dim, activation=cfg.activation, name="mlp",
                   **kw)(h)
    return nn.with_logical_constraint(x + h, _ACT)


class WhisperEncoder(nn.Module):
  """Whisper's encoder: log-mel frames -> hidden states at half the rate."""
  cfg: WhisperEncoderConfig

  @nn.compact
  def __call__(self, features: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """features: f32[B, T, n_mels], T <= 2 * max_positions; mask: bool[B, T]
    (True = the clip) or None -> f32[B, ceil(T / 2) // pool, D].

    Outputs where `output_mask(mask, cfg.pool)` is False are padding:
    ignore them.
    """
    cfg = self.cfg
    chex.assert_rank(features, 3)
    b, t, m = features.shape
    if m != cfg.n_mels:
      raise ValueError(f"the Whisper encoder takes {cfg.n_mels} mel bins per "
                       f"frame; got features of shape {features.shape} "
                       f"([B, T, n_mels], frames first).")
    if t > cfg.max_frames:
      raise ValueError(f"{t} frames ({t / 100:.2f} s) exceed the encoder's "
                       f"window of {cfg.max_frames} frames "
                       f"({cfg.max_frames / 100:.0f} s); cut the clip.")
    dtype = jnp.dtype(cfg.dtype)
    kw = dict(dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype),
              kernel_init=_logical(nn.initializers.lecun_normal(),
                                   (None, None, "embed")),
              bias_init=_logical(nn.initializers.zeros, ("embed",)))
    if mask is not None:
      chex.assert_shape(mask, (b, t))
    keep = (mask[..., None].astype(bool)
            if mask is not None and cfg.mask_convs else None)
    x = features.astype(dtype)
    if keep is not None:
      x = jnp.where(keep, x, 0)
    x = nn.gelu(nn.Conv(cfg.width, (3,), padding=((1, 1),), name="conv1",
                        **kw)(x), approximate=False)
    if keep is not None:
      x = jnp.where(keep, x, 0)
    x = nn.gelu(nn.Conv(cfg.width, (3,), strides=(2,), padding=((1, 1),),
                        name="conv2", **kw)(x), approximate=False)
    n = x.shape[1]
    pos = jnp.asarray(sinusoids(cfg.max_positions, cfg.width)[:n], dtype)
    x = nn.with_logical_constraint(x + pos[None], _ACT)
    attn_mask = None if mask is None else mask[:, None, ::2]
    for i in range(cfg.depth):
      x = WhisperBlock(cfg, name=f"layers_{i}")(x, attn_mask)
    x = pool_frames(x, cfg.pool)
    return layer_norm(cfg.norm_eps, dtype=dtype,
                      param_dtype=jnp.dtype(cfg.param_dtype), name="norm")(x)
