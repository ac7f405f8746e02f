"""NaFlex SigLIP2 vision tower: one padded row of patches per image.

Images keep their aspect ratio (see `mmjax.data.naflex`): each arrives as
`max_num_patches` flattened patches of which the first h*w are real (a row-
major h x w grid) and the rest zero padding. The tower is SigLIP's ViT with:

  * the patch embedding a Dense over the flattened (dy, dx, c) patch;
  * a learned `posemb_grid` x `posemb_grid` position grid resized to each
    image's own (h, w) by antialiased bilinear interpolation (PyTorch
    `F.interpolate(mode='bilinear', align_corners=False, antialias=True)`,
    what transformers' Siglip2 uses); padded rows get the grid's cell (0, 0)
    as transformers does, so every output row matches it;
  * padded patches masked as keys in every block and in the MAP head, so
    valid outputs do not depend on the padding.

Param tree (the names `VisionEncoder` uses, so `hf.vision` plans fit):
patch_embedding (Dense [p*p*C, D] + bias), position_embedding [g*g, D],
layers_{i} (`vision.EncoderBlock`), post_layernorm, head (`vision.MAPHead`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import config_util
from mmjax.models import layers
from mmjax.models import remat as remat_lib
from mmjax.models import vision as vision_lib

KIND = "naflex"
_POOLS = ("none", "map")
_ACT = ("batch", "length", "embed")
_logical = layers._logical  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class NaFlexConfig:
  """Sizes of a NaFlex SigLIP2 tower.

  `posemb_grid` is the side of the learned position grid (transformers'
  `sqrt(num_patches)`); `max_num_patches` the padded patch count N of a
  batch (the preprocessing's, a default for `dummy_inputs`; the module takes
  any N). Defaults are a tiny test size.
  """
  kind: str = KIND
  patch_size: int = 16
  channels: int = 3
  width: int = 64
  depth: int = 2
  mlp_dim: int = 256
  n_heads: int = 2
  posemb_grid: int = 4
  max_num_patches: int = 16
  norm_eps: float = 1e-6
  activation: str = "gelu_tanh"
  pool: str = "map"
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  attention: str = "einsum"

  def __post_init__(self):
    if self.kind != KIND:
      raise ValueError(f"NaFlexConfig.kind={self.kind!r}; must be {KIND!r}.")
    for name in ("patch_size", "channels", "width", "depth", "mlp_dim",
                 "n_heads", "posemb_grid", "max_num_patches"):
      if getattr(self, name) <= 0:
        raise ValueError(f"NaFlexConfig.{name} must be positive, got "
                         f"{getattr(self, name)}.")
    if self.width % self.n_heads:
      raise ValueError(f"width={self.width} is not divisible by n_heads="
                       f"{self.n_heads}; change one so heads split the width.")
    if self.pool not in _POOLS:
      raise ValueError(f"NaFlexConfig.pool={self.pool!r}; allowed: "
                       f"{list(_POOLS)}.")
    remat_lib.check_remat(self.remat, "NaFlexConfig.remat")
    layers.check_attention(self.attention, "NaFlexConfig.attention")
    layers.activation_fn(self.activation)
    config_util.check_dtypes(self)

  @property
  def image_size(self) -> int:
    """Side of the square image whose patch grid is the position grid (the
    tower's nominal size; `MLLMConfig.side`)."""
    return self.posemb_grid * self.patch_size

  @property
  def num_patches(self) -> int:
    """Patch rows per image the tower computes, padding included
    (`max_num_patches`): what FLOP counts (`models/flops.py`) charge."""
    return self.max_num_patches

  @property
  def patch_dim(self) -> int:
    """Length of one flattened patch, p*p*C."""
    return self.patch_size * self.patch_size * self.channels

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> NaFlexConfig:
    return config_util.from_dict(cls, d)


def _aa_bilinear_weights(out_size: jax.Array, in_size: int,
                         n_out: int) -> jax.Array:
  """[..., n_out, in_size] rows of an antialiased bilinear resize.

  PyTorch's separable antialias kernel (align_corners=False): output o has
  centre c = s (o + 0.5) in input units, s = in/out; input j weighs
  max(0, 1 - |j + 0.5 - c| / max(s, 1)), rows normalised to sum 1. When
  enlarging (s < 1) this is plain bilinear with edge clamping; when
  shrinking the triangle widens to s inputs (antialiasing). `out_size` may
  be traced ([...] int); rows o >= out_size are junk but finite.
  """
  scale = in_size / out_size.astype(jnp.float32)[..., None, None]
  support = jnp.maximum(scale, 1.0)
  centre = scale * (jnp.arange(n_out, dtype=jnp.float32)[:, None] + 0.5)
  j = jnp.arange(in_size, dtype=jnp.float32)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(j + 0.5 - centre) / support)
  total = w.sum(-1, keepdims=True)
  return w / jnp.where(total > 0, total, 1.0)


def resize_posemb_naflex(posemb: jax.Array, spatial_shapes: jax.Array,
                         n_tokens: int) -> jax.Array:
  """Each image's position rows, padded with the first one.

  Args:
    posemb: [g*g, D] row-major grid.
    spatial_shapes: int[B, 2] (h, w) patch grid per image (traced is fine).
    n_tokens: N, the padded patch count (static).

  Returns:
    [B, N, D]: row t < h*w is the resized grid at (t // w, t % w); rows
    after h*w repeat row 0 (transformers' padding).
  """
  n, d = posemb.shape
  g = math.isqrt(n)
  if g * g != n:
    raise ValueError(f"position embedding with {n} rows is not a square grid.")
  h, w = spatial_shapes[:, 0], spatial_shapes[:, 1]
  wh = _aa_bilinear_weights(h, g, n_tokens)  # [B, N, g]
  ww = _aa_bilinear_weights(w, g, n_tokens)
  t = jnp.arange(n_tokens)[None]
  valid = t < (h * w)[:, None]
  row = jnp.where(valid, t // w[:, None], 0)  # [B, N]
  col = jnp.where(valid, t % w[:, None], 0)
  take = lambda m, i: jnp.take_along_axis(m, i[..., None], axis=1)
  out = jnp.einsum("bti,btj,ijd->btd", take(wh, row), take(ww, col),
                   posemb.reshape(g, g, d).astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(posemb.dtype)


MLLM_PROJECTORS = ("linear", "mlp")  # per-token: no fixed grid needed


def check_mllm(fusion: str, projector: str, feature_layer: int | None,
               frames: int) -> None:
  """ValueError unless an MLLM can carry a NaFlex tower: projection fusion
  with a per-token projector, the final output, one frame."""
  if (fusion != "projection" or projector not in MLLM_PROJECTORS or
      feature_layer is not None or frames != 1):
    raise ValueError(
        f"a NaFlex vision tower needs fusion='projection', projector in "
        f"{list(MLLM_PROJECTORS)}, feature_layer=None and frames=1 (got "
        f"fusion={fusion!r}, projector={projector!r}, feature_layer="
        f"{feature_layer}, frames={frames}).")


def valid_first(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Moves each row's valid entries to its front, keeping their order.

  x: [B, K, D], mask: bool[B, K] -> [B, K, D] (padding after the valid rows),
  so `mllm.scatter_visual` puts the k-th valid token at the k-th
  placeholder.
  """
  order = jnp.argsort(~mask, axis=1, stable=True)
  return jnp.take_along_axis(x, order[..., None], axis=1)


@flax.struct.dataclass
class NaFlexOutput:
  """tokens [B, N, D] (post-LN; padded rows defined but meaningless),
  pooled [B, D] (MAP head over valid tokens) or None, mask bool[B, N]."""
  tokens: jax.Array
  pooled: jax.Array | None
  mask: jax.Array


class NaFlexVisionTower(nn.Module):
  """SigLIP2 NaFlex ViT (see the module docstring)."""
  cfg: NaFlexConfig

  @nn.compact
  def __call__(self, patches: jax.Array, mask: jax.Array,
               spatial_shapes: jax.Array) -> NaFlexOutput:
    """Encodes a padded batch of patch rows.

    Args:
      patches: [B, N, p*p*C] (`mmjax.data.naflex.batch`'s 'patches').
      mask: [B, N], nonzero on real patches (the first h*w of each row).
      spatial_shapes: int[B, 2], (h, w) per image.

    Returns:
      NaFlexOutput.
    """
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    chex.assert_rank(patches, 3)
    if patches.shape[-1] != cfg.patch_dim:
      raise ValueError(f"patches have length {patches.shape[-1]}, the tower "
                       f"expects p*p*C = {cfg.patch_dim} (patch_size "
                       f"{cfg.patch_size}, channels {cfg.channels}).")
    keep = mask.astype(bool)
    x = nn.Dense(cfg.width, name="patch_embedding",
                 kernel_init=_logical(nn.initializers.lecun_normal(),
                                      (None, "embed")),
                 bias_init=_logical(nn.initializers.zeros, ("embed",)),
                 **kw)(patches.astype(dtype))
    pos = self.param(
        "position_embedding", _logical(nn.initializers.normal(
            1.0 / math.sqrt(cfg.width)), (None, "embed")),
        (cfg.posemb_grid ** 2, cfg.width), param_dtype)
    x = x + resize_posemb_naflex(pos, spatial_shapes,
                                 patches.shape[1]).astype(dtype)
    x = nn.with_logical_constraint(x, _ACT)
    block_kw = dict(n_heads=cfg.n_heads, mlp_dim=cfg.mlp_dim,
                    activation=cfg.activation, norm_eps=cfg.norm_eps,
                    attention=cfg.attention, **kw)
    block = remat_lib.remat_block(vision_lib.EncoderBlock, cfg.remat)
    key_mask = keep[:, None, :]  # [B, 1, N]: every query sees valid keys.
    for i in range(cfg.depth):
      x = block(name=f"layers_{i}", **block_kw)(x, key_mask)
    x = vision_lib.layer_norm(cfg.norm_eps, name="post_layernorm", **kw)(x)
    x = nn.with_logical_constraint(x, _ACT)
    pooled = None
    if cfg.pool == "map":
      pooled = vision_lib.MAPHead(name="head", **block_kw)(x, mask=keep)
    return NaFlexOutput(tokens=x, pooled=pooled, mask=keep)
