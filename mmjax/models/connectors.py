"""Projectors from vision tokens to the LM width (early-fusion connectors).

Every projector maps vision tokens `x: f32[B, N, Dv]`, laid out row-major on a
(gh, gw) grid (N = gh * gw, row r / column c is token r * gw + c), to LM-width
tokens `f32[B, N', D]`. All share the call signature `(x, grid=None)`; only the
token-merging ones need the grid.

Module trees and the Hugging Face parameters they map to (torch Linear weights
are [out, in]; Flax kernels are [in, out], i.e. transposed):

  LinearProjector        linear                 LLaVA v1 `mm_projector`
  MLPProjector           linear_1, linear_2     `LlavaMultiModalProjector`
                                                (`multi_modal_projector.*`)
  PixelShuffleProjector  layer_norm, linear_1,  `InternVLMultiModalProjector`
                         linear_2               (original InternVL `mlp1.0`,
                                                `mlp1.1`, `mlp1.3`)
  PatchMerger            ln_q, mlp.fc1, mlp.fc2 Qwen2-VL `visual.merger.ln_q`,
                                                `merger.mlp.0`, `merger.mlp.2`

The Perceiver resampler and the Q-Former live in resampler.py and qformer.py;
how many tokens each connector emits is answered by layout.py (one place).
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models import linear

Dtype = Any
_logical = layers._logical  # pylint: disable=protected-access
_ACT = ("batch", "length", "embed")  # [B, N, D] token activations
Grid = tuple[int, int]


# torch.nn.LayerNorm's default; InternVL's `mlp1` LayerNorm keeps it.
_TORCH_LN_EPS = 1e-5


def _dense(features: int, names: tuple[str, str], name: str, *,
           use_bias: bool = True, dtype: Dtype = jnp.float32,
           param_dtype: Dtype = jnp.float32) -> linear.Dense:
  """A dense layer (linear.Dense) with logically named kernel and bias."""
  return linear.Dense(features, use_bias=use_bias, dtype=dtype,
                      param_dtype=param_dtype, name=name,
                      kernel_init=_logical(nn.initializers.lecun_normal(),
                                           names),
                      bias_init=_logical(nn.initializers.zeros, (names[1],)))


def _layer_norm(eps: float, name: str, dtype: Dtype = jnp.float32,
                param_dtype: Dtype = jnp.float32,
                axis_name: str = "embed") -> nn.LayerNorm:
  """nn.LayerNorm with boxed scale/bias; statistics in float32."""
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=_logical(nn.initializers.ones, (axis_name,)),
      bias_init=_logical(nn.initializers.zeros, (axis_name,)))


def _check_grid(x: jax.Array, grid: Grid | None, who: str) -> Grid:
  if grid is None:
    raise ValueError(f"{who} merges neighbouring tokens and needs the token "
                     f"grid (gh, gw); got grid=None.")
  gh, gw = grid
  if gh * gw != x.shape[1]:
    raise ValueError(f"{who}: grid {tuple(grid)} has {gh * gw} cells but the "
                     f"input has {x.shape[1]} tokens.")
  return gh, gw


def pixel_shuffle(x: jax.Array, grid: Grid,
                  scale: float = 0.5) -> tuple[jax.Array, Grid]:
  """InternVL's pixel shuffle (space-to-depth), `ps_version='v2'`.

  A transcription of InternVL's `pixel_shuffle(x, scale_factor)` on the
  (n, w, h, c) view that InternVL builds with `reshape(n, h, w, -1)` from
  row-major ViT tokens (so its "w" axis is really the row axis). With
  r = 1/scale: view (n, gh, gw/r, r*C) [merges r adjacent columns],
  permute(0, 2, 1, 3), view (n, gw/r, gh/r, r*r*C) [merges r adjacent rows],
  permute(0, 2, 1, 3) back to row-major windows.

  Channel order of an output token at window (i, j), for r = 2: four
  C-blocks from input cells (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1),
  i.e. window-internal row-major (0,0),(0,1),(1,0),(1,1); output tokens are
  row-major over the (gh/2, gw/2) grid.

  Args:
    x: [B, N, C] tokens, row-major over grid (N = gh * gw).
    grid: (gh, gw).
    scale: InternVL `downsample_ratio`; 1/scale must be an integer r.

  Returns:
    ([B, N / r^2, r^2 * C], (gh / r, gw / r)).

  Raises:
    ValueError: 1/scale is not an integer, or gh or gw is not divisible by r.
  """
  r = round(1.0 / scale)
  if r < 1 or abs(r * scale - 1.0) > 1e-6:
    raise ValueError(f"pixel_shuffle needs 1/scale to be an integer, got "
                     f"scale={scale}.")
  gh, gw = _check_grid(x, grid, "pixel_shuffle")
  if gh % r or gw % r:
    raise ValueError(f"pixel_shuffle with scale {scale} needs a grid divisible "
                     f"by {r}; got (gh, gw)=({gh}, {gw}). Pick an image size "
                     f"whose patch grid is a multiple of {r}.")
  b, _, c = x.shape
  y = x.reshape(b, gh, gw // r, r * c)
  y = jnp.transpose(y, (0, 2, 1, 3))
  y = y.reshape(b, gw // r, gh // r, r * r * c)
  y = jnp.transpose(y, (0, 2, 1, 3))
  return y.reshape(b, (gh // r) * (gw // r), r * r * c), (gh // r, gw // r)


class LinearProjector(nn.Module):
  """One Linear(Dv, D) with bias (LLaVA v1 `mm_projector`).

  Attributes:
    out_dim: LM width D.
  """
  out_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, grid: Grid | None = None) -> jax.Array:
    """x: [B, N, Dv] -> [B, N, D]; grid is ignored."""
    del grid
    chex.assert_rank(x, 3)
    y = _dense(self.out_dim, ("embed", "mlp"), "linear", dtype=self.dtype,
               param_dtype=self.param_dtype)(x)
    return nn.with_logical_constraint(y, _ACT)


class MLPProjector(nn.Module):
  """LLaVA-1.5 `mlp2x_gelu`: Linear(Dv, D) -> GELU -> Linear(D, D).

  Parameters map 1:1 to HF `LlavaMultiModalProjector`: `linear_1`, `linear_2`
  (both with bias). GELU is exact (erf), HF's "gelu".

  Attributes:
    out_dim: LM width D.
    activation: a name from `layers.activation_fn` ('gelu' = exact erf).
  """
  out_dim: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, grid: Grid | None = None) -> jax.Array:
    """x: [B, N, Dv] -> [B, N, D]; grid is ignored."""
    del grid
    chex.assert_rank(x, 3)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _dense(self.out_dim, ("embed", "mlp"), "linear_1", **kw)(x)
    h = layers.activation_fn(self.activation)(h)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    y = _dense(self.out_dim, ("mlp", "embed"), "linear_2", **kw)(h)
    return nn.with_logical_constraint(y, _ACT)


class PixelShuffleProjector(nn.Module):
  """InternVL: pixel shuffle, then LN(4C) -> Linear(4C, D) -> GELU -> Linear.

  Parameters map to HF `InternVLMultiModalProjector` (`layer_norm`,
  `linear_1`, `linear_2`), i.e. original InternVL `mlp1.0`, `mlp1.1`,
  `mlp1.3`. LayerNorm eps is torch's default 1e-5, as in both.

  Attributes:
    out_dim: LM width D.
    scale: pixel-shuffle downsample ratio (InternVL: 0.5, 4x fewer tokens).
    activation: activation between the Linears ('gelu' = exact erf).
    norm_eps: LayerNorm epsilon.
  """
  out_dim: int
  scale: float = 0.5
  activation: str = "gelu"
  norm_eps: float = _TORCH_LN_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, grid: Grid | None = None) -> jax.Array:
    """x: [B, gh*gw, C], grid (gh, gw) -> [B, gh*gw/4, D] (scale 0.5)."""
    chex.assert_rank(x, 3)
    grid = _check_grid(x, grid, "PixelShuffleProjector")
    y, _ = pixel_shuffle(x, grid, self.scale)
    y = nn.with_logical_constraint(y, _ACT)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = _layer_norm(self.norm_eps, "layer_norm", **kw)(y)
    h = _dense(self.out_dim, ("embed", "mlp"), "linear_1", **kw)(y)
    h = layers.activation_fn(self.activation)(h)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    y = _dense(self.out_dim, ("mlp", "embed"), "linear_2", **kw)(h)
    return nn.with_logical_constraint(y, _ACT)


class PatchMerger(nn.Module):
  """Qwen2-VL `PatchMerger`: LN(C), 2x2 windows -> 4C, Linear, GELU, Linear.

  Qwen2-VL's image processor orders patches so each m x m window is
  contiguous and `view(-1, 4C)` concatenates a window's tokens. Our ViT emits
  row-major tokens, so the windows are gathered here; the window-internal
  order is (0,0),(0,1),(1,0),(1,1) (row-major), exactly Qwen2-VL's, which is
  also the channel order of `pixel_shuffle`, so that function does the gather.
  Output tokens are row-major over the (gh/m, gw/m) grid, matching the
  (h, w) order of Qwen2-VL's M-RoPE position ids.

  Parameters: `ln_q` (eps 1e-6, HF `merger.ln_q`), `mlp` = layers.MLP with
  fc1 = Linear(4C, 4C) (HF `merger.mlp.0`) and fc2 = Linear(4C, D)
  (HF `merger.mlp.2`), exact GELU between them.

  Attributes:
    out_dim: LM width D.
    spatial_merge: window side m (Qwen2-VL: 2).
    norm_eps: LayerNorm epsilon.
  """
  out_dim: int
  spatial_merge: int = 2
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, grid: Grid | None = None) -> jax.Array:
    """x: [B, gh*gw, C], grid (gh, gw) -> [B, gh*gw/m^2, D]."""
    chex.assert_rank(x, 3)
    grid = _check_grid(x, grid, "PatchMerger")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # LN is per token, so applying it before the gather equals Qwen2-VL's
    # LN-then-view on window-contiguous tokens.
    y = _layer_norm(self.norm_eps, "ln_q", **kw)(x)
    y, _ = pixel_shuffle(y, grid, 1.0 / self.spatial_merge)
    y = nn.with_logical_constraint(y, _ACT)
    y = layers.MLP(hidden=y.shape[-1], out_features=self.out_dim,
                   activation="gelu", name="mlp", **kw)(y)
    return nn.with_logical_constraint(y, _ACT)


_PROJECTORS = {"linear": LinearProjector, "mlp": MLPProjector,
               "pixel_shuffle": PixelShuffleProjector,
               "patch_merger": PatchMerger}


def make_projector(kind: str, out_dim: int, **kwargs: Any) -> nn.Module:
  """The projector called `kind` ('linear', 'mlp', 'pixel_shuffle',
  'patch_merger') with output width `out_dim`; kwargs go to its constructor
  (e.g. dtype). Every projector is called as `(x [B, N, Dv], grid)`."""
  if kind not in _PROJECTORS:
    raise ValueError(f"unknown projector {kind!r}; allowed: "
                     f"{', '.join(_PROJECTORS)}.")
  return _PROJECTORS[kind](out_dim, **kwargs)
