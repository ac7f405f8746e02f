"""Where each visual token sits, written into the token itself.

An LM reads image tokens through attention: with RoPE the *pattern* of an
attention head depends on positions, but what it copies (the values) does
not. To answer "is the red circle left of the blue square?" the LM must copy
the column of the tokens it found by content, so the column has to be in
the token. The ViT's own position embedding, added at its input, is mostly
gone after a tower trained to name objects (measured on the shapes recipe's
tower: a linear probe names a token's column 0.41 of the time among 8, an
object's third of the image 0.45 among 3; docs/recipes.md). Qwen-VL adds a
2-D absolute position embedding inside its resampler for the same reason.

Kinds (MLLMConfig.visual_positions; choices.VISUAL_POSITIONS):
  none      the projector's output unchanged (LLaVA; every import/export).
  sincos2d  + a fixed 2-D sine-cosine table (MAE's layout: the first half of
            the width encodes the row, the second the column), after the
            projector; no parameters, any grid.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from mmjax.models.choices import VISUAL_POSITIONS


def sincos_1d(positions: jax.Array, width: int) -> jax.Array:
  """f32[N] -> f32[N, width]: sin over the first half, cos over the second,
  frequencies 1 / 10000^(i / (width / 2)); width must be even."""
  half = width // 2
  omega = 1.0 / 10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * omega[None]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)


def sincos_2d(grid: tuple[int, int], width: int) -> jax.Array:
  """f32[gh * gw, width], row-major: [row table | column table].

  width must be a multiple of 4 (each axis gets width / 2, half sine, half
  cosine).
  """
  if width % 4:
    raise ValueError(f"sincos2d visual positions need a width divisible by "
                     f"4, got {width}")
  gh, gw = grid
  rows, cols = jnp.meshgrid(jnp.arange(gh), jnp.arange(gw), indexing="ij")
  return jnp.concatenate([sincos_1d(rows.reshape(-1), width // 2),
                          sincos_1d(cols.reshape(-1), width // 2)], axis=1)


def _none(tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
  del grid
  return tokens


def _sincos2d(tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
  if tokens.shape[-2] != grid[0] * grid[1]:
    raise ValueError(f"{tokens.shape[-2]} visual tokens do not fill the "
                     f"{grid[0]} x {grid[1]} grid")
  table = sincos_2d(grid, tokens.shape[-1])
  return tokens + table.astype(tokens.dtype)


_KINDS: dict[str, Callable[[jax.Array, tuple[int, int]], jax.Array]] = {
    "none": _none, "sincos2d": _sincos2d}
assert tuple(_KINDS) == VISUAL_POSITIONS


def add(kind: str, tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """tokens [..., gh * gw, D] (row-major) with `kind`'s positions added."""
  return _KINDS[kind](tokens, grid)
