"""Qwen2-VL's vision tower: Conv3d patches, 2-D RoPE ViT (fixed-size images).

Module tree of `Qwen2VLVisionTower` (hf/qwen2vl.py maps Hugging Face's
`visual.*` onto it):

  patch_embed                Dense [T*p*p*C, D], no bias (the Conv3d over
                             temporal_patch_size frames x p x p, see
                             `frame_patches`)
  layers_{i}                 Qwen2VLBlock
    norm1, attn{q,k,v,o}, norm2, mlp{fc1,fc2}

The PatchMerger (LN -> 2x2 merge -> MLP to the LM width) is not part of the
tower: it is the MLLM's connector (`connectors.PatchMerger`, projector
'patch_merger'), as in mmjax's other projection models.

Token order: the tower keeps patch tokens row-major over the (gh, gw) patch
grid, like every mmjax tower; Hugging Face orders them so each 2x2 merge
window is contiguous. Inside one image attention is full and bidirectional
and each token carries its own (row, col) rotary ids, so the two orders give
the same tokens, permuted; `connectors.PatchMerger` gathers the windows.

2-D RoPE: head_dim Dh; the first Dh/4 rotary frequencies rotate by the patch
row, the next Dh/4 by the patch column (theta 10000, frequencies
1/theta^(2i / (Dh/2))), in the rotate-half layout (angles repeated twice).

Two entries:
  __call__  still images of one size [B, H, W, C], sides multiples of
            p * merge (28), each repeated to temporal_patch_size frames, as
            Qwen2-VL's image processor does.
  packed    native resolution: the patches of several images and videos of
            any sizes in one flat sequence (`data/native_resolution.pack`,
            Hugging Face's pixel_values order), attention only within each
            item (block-diagonal mask from segment ids), 2-D RoPE from each
            item's own (row, col) ids.
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
from mmjax.models import positions as positions_lib
from mmjax.models.vision import VisionOutput

KIND = "qwen2vl"
# Qwen2-VL's image processor budget (HF `Qwen2VLImageProcessor` defaults):
# an image is resized to at least MIN_PIXELS and at most MAX_PIXELS pixels.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
_ACT = ("batch", "length", "embed")
_logical = layers._logical  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class Qwen2VLVisionConfig:
  """Sizes of the Qwen2-VL ViT (HF `Qwen2VLVisionConfig`).

  Attributes:
    kind: always 'qwen2vl' (tells MLLM configs which tower this is).
    image_size: default image side in pixels (init, dummy inputs); any side
      that is a multiple of patch_size * spatial_merge works.
    patch_size: p (14).
    temporal_patch_size: frames per patch (2); a still image is repeated.
    spatial_merge: merge window side of the connector (2); images must be
      multiples of patch_size * spatial_merge.
    channels: C.
    width: embed_dim D.
    depth: blocks.
    mlp_dim: embed_dim * mlp_ratio.
    n_heads: attention heads.
    activation: MLP activation (HF hidden_act; 'quick_gelu' by default).
    norm_eps: LayerNorm epsilon (1e-6).
    rope_theta: base of the 2-D rotary frequencies.
    min_pixels, max_pixels: the pixel budget every image is resized into,
      aspect ratio kept (`data/native_resolution.smart_resize`); part of
      the model because training and generation must resize alike.
  """
  kind: str = KIND
  image_size: int = 56
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge: int = 2
  channels: int = 3
  width: int = 64
  depth: int = 2
  mlp_dim: int = 256
  n_heads: int = 2
  activation: str = "quick_gelu"
  norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  min_pixels: int = MIN_PIXELS
  max_pixels: int = MAX_PIXELS
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.kind != KIND:
      raise ValueError(f"Qwen2VLVisionConfig.kind must be {KIND!r}, got "
                       f"{self.kind!r}.")
    for name in ("image_size", "patch_size", "temporal_patch_size",
                 "spatial_merge", "channels", "width", "depth", "mlp_dim",
                 "n_heads"):
      if getattr(self, name) <= 0:
        raise ValueError(f"Qwen2VLVisionConfig.{name} must be positive, got "
                         f"{getattr(self, name)}.")
    if self.width % self.n_heads or (self.width // self.n_heads) % 4:
      raise ValueError(f"width={self.width} / n_heads={self.n_heads} must "
                       f"give a head_dim divisible by 4 (2-D RoPE).")
    if self.image_size % self.unit:
      raise ValueError(f"image_size={self.image_size} must be a multiple of "
                       f"patch_size * spatial_merge = {self.unit}.")
    if not self.unit ** 2 <= self.min_pixels <= self.max_pixels:
      raise ValueError(
          f"min_pixels={self.min_pixels}, max_pixels={self.max_pixels}: need "
          f"(patch_size * spatial_merge)^2 = {self.unit ** 2} <= min_pixels "
          "<= max_pixels.")
    layers.activation_fn(self.activation)  # ValueError listing the names.
    config_util.check_dtypes(self)

  @property
  def unit(self) -> int:
    """Image sides must be multiples of this (28 for Qwen2-VL)."""
    return self.patch_size * self.spatial_merge

  @property
  def grid(self) -> int:
    """Patches per side at image_size."""
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    """Patch tokens at image_size (before the 2x2 merge)."""
    return self.grid * self.grid

  @property
  def head_dim(self) -> int:
    return self.width // self.n_heads

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Qwen2VLVisionConfig:
    """Builds a config from a mapping, rejecting keys it does not know."""
    return config_util.from_dict(cls, d)


def frame_patches(images: jax.Array, patch: int, temporal: int) -> jax.Array:
  """Still images -> row-major patch vectors of `temporal` repeated frames.

  Args:
    images: [B, H, W, C]; H and W divisible by `patch`.
    patch: p.
    temporal: frames per patch T; the image is repeated T times.

  Returns:
    [B, (H/p) * (W/p), T * p * p * C], each vector ordered (t, ph, pw, C).
    A Conv3d weight [D, C, T, p, p] becomes the Dense kernel as
    `w.transpose(2, 3, 4, 1, 0).reshape(T * p * p * C, D)`.
  """
  chex.assert_rank(images, 4)
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image of {h}x{w} px is not divisible by the patch size "
                     f"{patch}.")
  gh, gw = h // patch, w // patch
  x = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, gh * gw, 1, patch * patch * c)
  x = jnp.broadcast_to(x, (b, gh * gw, temporal, patch * patch * c))
  return x.reshape(b, gh * gw, temporal * patch * patch * c)


def rope_2d(grid: tuple[int, int], head_dim: int, theta: float
            ) -> tuple[jax.Array, jax.Array]:
  """Cos/sin tables f32[1, gh*gw, head_dim] of row-major patches.

  Frequencies 1/theta^(2i / (Dh/2)), i < Dh/4; a token's angles are
  [row * f, col * f], repeated twice for the rotate-half layout.
  """
  gh, gw = grid
  inv_freq = positions_lib.rope_inv_freq(head_dim // 2, theta)  # [Dh/4]
  rows = jnp.repeat(jnp.arange(gh, dtype=jnp.float32), gw)
  cols = jnp.tile(jnp.arange(gw, dtype=jnp.float32), gh)
  angles = jnp.concatenate([rows[:, None] * inv_freq, cols[:, None] * inv_freq],
                           axis=-1)  # [N, Dh/2]
  return positions_lib.tables_from_angles(angles[None])


def rope_from_ids(ids: jax.Array, head_dim: int, theta: float
                  ) -> tuple[jax.Array, jax.Array]:
  """Cos/sin tables of patches with (row, col) ids (any order; `rope_2d` is
  the row-major special case): ids int32[N, 2] -> f32[1, N, head_dim],
  int32[B, N, 2] -> f32[B, N, head_dim]."""
  inv_freq = positions_lib.rope_inv_freq(head_dim // 2, theta)  # [Dh/4]
  ids = ids.astype(jnp.float32)
  if ids.ndim == 2:
    ids = ids[None]
  angles = jnp.concatenate([ids[..., :1] * inv_freq, ids[..., 1:] * inv_freq],
                           axis=-1)  # [B, N, Dh/2]
  return positions_lib.tables_from_angles(angles)


def _layer_norm(eps: float, name: str, **kw) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, name=name,
                      scale_init=_logical(nn.initializers.ones, ("embed",)),
                      bias_init=_logical(nn.initializers.zeros, ("embed",)),
                      **kw)


class Qwen2VLAttention(nn.Module):
  """Full self-attention with biased q/k/v/o and 2-D RoPE on q and k."""
  cfg: Qwen2VLVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """x: [B, N, D]; cos, sin: f32[1, N, Dh]; mask bool[B, N, N] or None
    (full attention) -> [B, N, D]."""
    cfg = self.cfg
    kw = dict(dtype=jnp.dtype(cfg.dtype),
              param_dtype=jnp.dtype(cfg.param_dtype))
    heads = lambda name, hn: layers.HeadsIn(cfg.n_heads, cfg.head_dim, True,
                                            hn, name=name, **kw)(x)
    q = positions_lib.apply_rotary(heads("q", "heads"), cos, sin)
    k = positions_lib.apply_rotary(heads("k", "kv_heads"), cos, sin)
    v = heads("v", "kv_heads")
    out = layers.dot_product_attention(q, k, v, mask, dtype=kw["dtype"])
    out = nn.with_logical_constraint(out, ("batch", "length", "heads",
                                           "head_dim"))
    return layers.HeadsOut(cfg.width, use_bias=True, name="o", **kw)(out)


class Qwen2VLBlock(nn.Module):
  """Pre-LN block: x + attn(norm1(x)) with 2-D RoPE, x + mlp(norm2(x))."""
  cfg: Qwen2VLVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """x: [B, N, D]; cos, sin: f32[1, N, Dh]; mask as Qwen2VLAttention."""
    cfg = self.cfg
    kw = dict(dtype=jnp.dtype(cfg.dtype),
              param_dtype=jnp.dtype(cfg.param_dtype))
    h = _layer_norm(cfg.norm_eps, "norm1", **kw)(x)
    x = nn.with_logical_constraint(
        x + Qwen2VLAttention(cfg, name="attn")(h, cos, sin, mask), _ACT)
    h = _layer_norm(cfg.norm_eps, "norm2", **kw)(x)
    h = layers.MLP(hidden=cfg.mlp_dim, activation=cfg.activation, name="mlp",
                   **kw)(h)
    return nn.with_logical_constraint(x + h, _ACT)


class Qwen2VLVisionTower(nn.Module):
  """Qwen2-VL ViT without its merger: images -> patch tokens."""
  cfg: Qwen2VLVisionConfig

  def setup(self):
    cfg = self.cfg
    self.patch_embed = nn.Dense(
        cfg.width, use_bias=False, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=_logical(nn.initializers.lecun_normal(), (None, "embed")))
    # A list attribute names its modules layers_0, layers_1, ...
    self.layers = [Qwen2VLBlock(cfg) for _ in range(cfg.depth)]

  def _blocks(self, patches: jax.Array, cos: jax.Array, sin: jax.Array,
              mask: jax.Array | None) -> jax.Array:
    """patches [B, N, T*p*p*C] -> [B, N, D] through the blocks."""
    x = self.patch_embed(patches.astype(jnp.dtype(self.cfg.dtype)))
    x = nn.with_logical_constraint(x, _ACT)
    cos, sin = positions_lib.written_once(cos, sin)  # read by every block
    for block in self.layers:
      x = block(x, cos, sin, mask)
    return x

  def __call__(self, images: jax.Array,
               feature_layer: int | None = None) -> VisionOutput:
    """Encodes still images.

    Args:
      images: f32[B, H, W, C], H and W multiples of patch_size *
        spatial_merge (already normalised, Qwen2-VL's mean / std).
      feature_layer: must be None (Qwen2-VL reads the last block); kept for
        the call signature MLLM uses for every tower.

    Returns:
      VisionOutput(tokens [B, gh*gw, D] row-major, pooled None, grid).
    """
    cfg = self.cfg
    if feature_layer is not None:
      raise ValueError(f"the Qwen2-VL tower has no feature_layer option "
                       f"(got {feature_layer}); set feature_layer=None.")
    chex.assert_rank(images, 4)
    if images.shape[-1] != cfg.channels:
      raise ValueError(f"images have {images.shape[-1]} channels, the tower "
                       f"expects {cfg.channels} (images are [B, H, W, C]).")
    h, w = images.shape[1:3]
    if h % cfg.unit or w % cfg.unit:
      raise ValueError(f"image of {h}x{w} px: Qwen2-VL's tower needs sides "
                       f"that are multiples of {cfg.unit}; resize it.")
    grid = (h // cfg.patch_size, w // cfg.patch_size)
    patches = frame_patches(images, cfg.patch_size, cfg.temporal_patch_size)
    cos, sin = rope_2d(grid, cfg.head_dim, cfg.rope_theta)
    return VisionOutput(tokens=self._blocks(patches, cos, sin, None),
                        pooled=None, grid=grid)

  def packed(self, patches: jax.Array, rope_ids: jax.Array,
             segment_ids: jax.Array) -> jax.Array:
    """Encodes media items of any sizes packed into one sequence.

    Args:
      patches: f32[N, C*T*p*p], Hugging Face's pixel_values layout (each
        vector ordered (C, T, p, p); `native_resolution.pack`), or
        f32[B, N, C*T*p*p]: one packed sequence per batch row (training:
        the rows shard over the mesh like any batch array).
      rope_ids: int32[(B,) N, 2], each patch's (row, col) in its own item.
      segment_ids: int32[(B,) N]: item of each patch (0 = padding).

    Returns:
      [(B,) N, D] tokens in the input order; a token saw only its own item.
    """
    cfg = self.cfg
    flat = patches.ndim == 2
    if flat:
      patches, rope_ids, segment_ids = (patches[None], rope_ids[None],
                                        segment_ids[None])
    chex.assert_rank(patches, 3)
    c, t, p = cfg.channels, cfg.temporal_patch_size, cfg.patch_size
    if patches.shape[-1] != c * t * p * p:
      raise ValueError(f"patch vectors of {patches.shape[-1]} values; this "
                       f"tower takes C*T*p*p = {c * t * p * p}.")
    b, n = patches.shape[:2]
    # (C, T, p, p) -> (T, p, p, C), the kernel's row order (frame_patches).
    x = patches.reshape(b, n, c, t, p, p).transpose(0, 1, 3, 4, 5, 2)
    x = x.reshape(b, n, t * p * p * c)
    cos, sin = rope_from_ids(rope_ids, cfg.head_dim, cfg.rope_theta)
    mask = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, N, N]
    out = self._blocks(x, cos, sin, mask)
    return out[0] if flat else out
