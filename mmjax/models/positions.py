"""Rotary position embeddings: 1-D RoPE and M-RoPE (Qwen2-VL).

This file holds the device-side half (jnp, jit-safe): turning position ids into
rotations. The host-side builders of the ids themselves (M-RoPE t/h/w ids, V2PE
fractional ids) live in `mmjax.models.position_ids`.

The code is split into three steps:

  1. `rope_inv_freq`: the rotary frequencies of one head.
  2. `rope_angles` / `mrope_angles`: angles `pos * inv_freq` (Dh/2 of
     them); `rope_cos_sin` / `mrope_cos_sin` turn them into cos/sin tables
     (`tables_from_angles`). M-RoPE picks, per frequency, which of its
     three ids (temporal, height, width) supplies `pos`.
  3. `apply_rotary`: rotate a tensor by given cos/sin tables.

`rotary_tables` looks at the rank of the position ids and picks 1-D RoPE (also
used by V2PE, whose ids are simply fractional) or M-RoPE; a decoder computes
the tables once per forward pass (written to memory once: `written_once`)
and every attention layer rotates its q and k by them. `apply_positions` does both steps for one tensor.

The layout follows Hugging Face LLaMA ("rotate_half"): frequency i rotates the
pair (x[i], x[i + Dh/2]), so q/k projection weights from HF checkpoints import
without any permutation of the head dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def rope_angles(positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """The Dh/2 rotation angles `pos * inv_freq` of 1-D RoPE.

  Args:
    positions: [..., L], int or float (V2PE uses fractional positions).
    inv_freq: f32[Dh // 2].

  Returns:
    f32[..., L, Dh // 2].
  """
  # float32 even for bf16 models: angles reach ~1e5 and bf16 would wreck them.
  return positions.astype(jnp.float32)[..., None] * inv_freq.astype(
      jnp.float32)


def tables_from_angles(angles: jax.Array, write_once: bool = False
                       ) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) of the Dh/2 angles, each repeated twice over the last axis
  to match the rotate_half layout: f32[..., Dh] each.

  cos and sin are taken of the Dh/2 angles before they are repeated (the
  same values as taking them of the repeated angles: half the work of
  XLA:CPU's scalar cos and sin). `write_once` passes the Dh/2-wide halves
  through `written_once` before the repeat: the repeat (a concatenation)
  fuses into each rotation that reads it, the cosines do not, and the
  reduction reads half as much (the `small` benchmark step: q and k rotated
  with their tables, 0.87 -> 0.62 ms in a micro-benchmark on a 2-core
  AVX-512 EPYC).
  """
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if write_once:
    cos, sin = written_once(cos, sin)
  return (jnp.concatenate([cos, cos], axis=-1),
          jnp.concatenate([sin, sin], axis=-1))


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
  return tables_from_angles(rope_angles(positions, inv_freq))


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


def check_mrope_sections(sections: Sequence[int], head_dim: int) -> None:
  """Raises ValueError unless `sections` splits the Dh/2 frequencies in three.

  Args:
    sections: (temporal, height, width) frequency counts, e.g. (16, 24, 24).
    head_dim: Dh; the sections must sum to Dh // 2.
  """
  sections = tuple(sections)
  if len(sections) != 3 or any(int(s) != s or s < 0 for s in sections):
    raise ValueError(
        f"mrope_sections must be three non-negative ints (temporal, height, "
        f"width), got {sections}.")
  if sum(sections) != head_dim // 2:
    raise ValueError(
        f"mrope_sections {sections} sum to {sum(sections)} but head_dim "
        f"{head_dim} has {head_dim // 2} rotary frequencies; they must sum to "
        f"head_dim // 2 (Qwen2-VL: head_dim 128, sections (16, 24, 24)).")


def mrope_angles(positions: jax.Array, inv_freq: jax.Array,
                 sections: Sequence[int]) -> jax.Array:
  """The Dh/2 rotation angles of M-RoPE.

  Frequency i (of Dh/2) rotates by the temporal id for i < s0, by the height
  id for s0 <= i < s0 + s1 and by the width id for the rest.

  Args:
    positions: [3, ..., L] (t, h, w) ids, int or float.
    inv_freq: f32[Dh // 2].
    sections: (s0, s1, s2), summing to Dh // 2.

  Returns:
    f32[..., L, Dh // 2].
  """
  s0, s1, _ = sections
  pos = positions.astype(jnp.float32)[..., None]  # [3, ..., L, 1]
  inv_freq = inv_freq.astype(jnp.float32)
  return jnp.concatenate([
      pos[0] * inv_freq[:s0],
      pos[1] * inv_freq[s0:s0 + s1],
      pos[2] * inv_freq[s0 + s1:],
  ], axis=-1)


def mrope_cos_sin(positions: jax.Array, inv_freq: jax.Array,
                  sections: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Cos/sin tables for M-RoPE (`mrope_angles`).

  As in 1-D RoPE the Dh/2 angles are repeated for the second half of the
  head; this equals Hugging Face's `apply_multimodal_rotary_pos_emb`, which
  splits the Dh-wide tables with `mrope_section * 2` and takes chunk j from
  axis `j % 3`.

  Args:
    positions: [3, ..., L] (t, h, w) ids, int or float.
    inv_freq: f32[Dh // 2].
    sections: (s0, s1, s2), summing to Dh // 2.

  Returns:
    (cos, sin): each f32[..., L, Dh].
  """
  return tables_from_angles(mrope_angles(positions, inv_freq, sections))


def apply_mrope(x: jax.Array, positions: jax.Array, theta: float,
                sections: Sequence[int]) -> jax.Array:
  """Multimodal RoPE (Qwen2-VL), Hugging Face rotate_half convention.

  With all three ids equal (text) this is exactly `apply_rope`.

  Args:
    x: [B, L, H, Dh] queries or keys.
    positions: [3, B, L] (temporal, height, width) ids, int or float.
    theta: RoPE base (Qwen2-VL: 1e6).
    sections: frequencies per axis, summing to Dh // 2 (Qwen2-VL 7B with
      Dh = 128: (16, 24, 24)).

  Returns:
    [B, L, H, Dh] in x.dtype.
  """
  if x.ndim != 4 or positions.shape != (3,) + x.shape[:2]:
    raise ValueError(
        f"apply_mrope expects x [B, L, H, Dh] and positions [3, B, L]; got "
        f"x {x.shape} and positions {positions.shape}.")
  check_mrope_sections(sections, x.shape[-1])
  inv_freq = rope_inv_freq(x.shape[-1], theta)
  cos, sin = mrope_cos_sin(positions, inv_freq, tuple(sections))
  return apply_rotary(x, cos, sin)


def rotary_tables(positions: jax.Array,
                  head_dim: int,
                  theta: float,
                  mrope_sections: Sequence[int] | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """Cos/sin tables for whatever position ids the batch carries.

  Dispatch on the rank of `positions` (see the data contract):
    * [B, L] int (`rope`) or float (`v2pe`): 1-D RoPE (`rope_cos_sin`).
      `mrope_sections` is ignored: 1-D ids are M-RoPE with t = h = w.
    * [3, B, L] (`mrope`): `mrope_cos_sin`; `mrope_sections` is required.

  A decoder computes the tables once and hands them to every layer
  (`apply_rotary` on q and k); they come out of `written_once`, so XLA:CPU
  does not compute them again inside each of those consumers.

  Args:
    positions: [B, L] or [3, B, L].
    head_dim: Dh.
    theta: RoPE base.
    mrope_sections: (t, h, w) frequency split for M-RoPE ids.

  Returns:
    (cos, sin): each f32[B, L, Dh].
  """
  inv_freq = rope_inv_freq(head_dim, theta)
  if positions.ndim == 2:
    return tables_from_angles(rope_angles(positions, inv_freq),
                              write_once=True)
  if positions.ndim == 3:
    if mrope_sections is None:
      raise ValueError(
          f"positions of shape {positions.shape} are M-RoPE ids [3, B, L], "
          f"which need mrope_sections (e.g. (16, 24, 24) for head_dim 128); "
          f"set the model's mrope_sections or pass 1-D positions [B, L].")
    check_mrope_sections(mrope_sections, head_dim)
    return tables_from_angles(
        mrope_angles(positions, inv_freq, tuple(mrope_sections)),
        write_once=True)
  raise ValueError(
      f"positions must be [B, L] (RoPE / V2PE) or [3, B, L] (M-RoPE); got "
      f"shape {positions.shape}.")


def written_once(cos: jax.Array,
                 sin: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The same tables, which XLA:CPU then writes to memory once.

  Why: XLA:CPU fuses an elementwise producer into every consumer fusion and
  evaluates it there per output element, and it drops
  `jax.lax.optimization_barrier` before fusing. Its cos and sin are scalar
  library calls (~4 ns an element on a 2-core EPYC), so a decoder's q and k
  rotations, forward and backward, evaluated the tables 4 times per layer,
  once per head (measured: 8 rotations of [8, 128, 4, 64] took 8 ms with
  the tables fused in, 1.7 ms with them written once). A reduction is never
  fused into its consumers, so adding zero over a trailing axis of two
  writes each table once (x + 0 == x exactly). On GPU and TPU this is one
  small extra kernel.

  Args:
    cos, sin: f32[..., D] tables of any width (`rotary_tables` passes the
      Dh/2-wide halves).

  Returns:
    (cos, sin), equal to the inputs.
  """
  zero = jnp.zeros_like(cos)
  pairs = jnp.stack([jnp.stack([cos, zero], axis=-1),
                     jnp.stack([sin, zero], axis=-1)])  # [2, ..., Dh, 2]
  summed = pairs.sum(axis=-1)
  return summed[0], summed[1]


def apply_positions(x: jax.Array,
                    positions: jax.Array,
                    theta: float,
                    mrope_sections: Sequence[int] | None = None) -> jax.Array:
  """Rotates queries or keys by whatever position ids the batch carries.

  `rotary_tables` (which see for the dispatch on the rank of `positions`)
  followed by `apply_rotary`.

  Args:
    x: [B, L, H, Dh] queries or keys.
    positions: [B, L] or [3, B, L].
    theta: RoPE base.
    mrope_sections: (t, h, w) frequency split for M-RoPE ids.

  Returns:
    [B, L, H, Dh] in x.dtype.
  """
  if x.ndim != 4 or positions.shape not in (x.shape[:2],
                                             (3,) + x.shape[:2]):
    raise ValueError(
        f"apply_positions expects x [B, L, H, Dh] and positions [B, L] or "
        f"[3, B, L]; got x {x.shape} and positions {positions.shape}.")
  return apply_rotary(x, *rotary_tables(positions, x.shape[-1], theta,
                                        mrope_sections))
