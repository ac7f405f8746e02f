"""Rotary position embeddings.

Only 1-D RoPE lives here for now. The code is split into three steps so that
M-RoPE (Qwen2-VL) and V2PE (InternVL) can reuse the last two:

  1. `rope_inv_freq`: the rotary frequencies of one head.
  2. `rope_cos_sin`: angles `outer(pos, inv_freq)` -> cos/sin tables. M-RoPE
     will build its tables from three position ids, one per frequency section.
  3. `apply_rotary`: rotate a tensor by given cos/sin tables.

The layout follows Hugging Face LLaMA ("rotate_half"): frequency i rotates the
pair (x[i], x[i + Dh/2]), so q/k projection weights from HF checkpoints import
without any permutation of the head dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_inv_freq(head_dim: int, theta: float) -> jax.Array:
  """Inverse frequencies `1 / theta^(2i / head_dim)`.

  Args:
    head_dim: size of one attention head; must be even.
    theta: RoPE base (10_000 for LLaMA, 1e6 for Qwen2).

  Returns:
    inv_freq: f32[head_dim // 2].
  """
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {head_dim}.")
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  return 1.0 / (theta**exponents)


def rope_cos_sin(positions: jax.Array,
                 inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cos/sin tables for `apply_rotary`.

  Args:
    positions: [..., L], int or float (V2PE uses fractional positions).
    inv_freq: f32[Dh // 2].

  Returns:
    (cos, sin): each f32[..., L, Dh]; the Dh/2 angles are repeated twice to
    match the rotate_half layout.
  """
  # float32 even for bf16 models: angles reach ~1e5 and bf16 would wreck them.
  angles = positions.astype(jnp.float32)[..., None] * inv_freq.astype(
      jnp.float32)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def rotate_half(x: jax.Array) -> jax.Array:
  """[x1, x2] -> [-x2, x1] over the last axis (halves, not interleaved)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates heads by precomputed tables.

  Args:
    x: [B, L, H, Dh], any float dtype.
    cos: f32[B, L, Dh] (or broadcastable, e.g. [1, L, Dh]).
    sin: f32[B, L, Dh].

  Returns:
    [B, L, H, Dh] in x.dtype.
  """
  # Insert the head axis so one table serves every head.
  cos = cos[..., None, :]
  sin = sin[..., None, :]
  xf = x.astype(jnp.float32)
  out = xf * cos + rotate_half(xf) * sin
  return out.astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """1-D RoPE, Hugging Face LLaMA convention.

  Args:
    x: [B, L, H, Dh] queries or keys.
    positions: [B, L] int or float positions.
    theta: RoPE base.

  Returns:
    [B, L, H, Dh] in x.dtype.
  """
  if x.ndim != 4 or positions.shape != x.shape[:2]:
    raise ValueError(
        f"apply_rope expects x [B, L, H, Dh] and positions [B, L]; got "
        f"x {x.shape} and positions {positions.shape}.")
  cos, sin = rope_cos_sin(positions, rope_inv_freq(x.shape[-1], theta))
  return apply_rotary(x, cos, sin)
