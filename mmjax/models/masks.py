"""Attention masks, built in one place. True means "may attend"."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_mask(q_len: int,
                kv_len: int,
                q_offset: int | jax.Array = 0) -> jax.Array:
  """Lower-triangular mask for queries sitting at absolute slots.

  Query t sits at slot `q_offset + t` and sees keys at slots <= that. With a
  KV cache, `q_offset` is the cache index and `kv_len` the cache length, so
  unwritten slots (beyond the current query) stay masked.

  Args:
    q_len: number of queries (static).
    kv_len: number of key slots (static).
    q_offset: slot of the first query; may be a traced int32 scalar.

  Returns:
    bool[q_len, kv_len].
  """
  q_slot = q_offset + jnp.arange(q_len, dtype=jnp.int32)[:, None]
  kv_slot = jnp.arange(kv_len, dtype=jnp.int32)[None, :]
  return kv_slot <= q_slot


def segment_mask(q_segment_ids: jax.Array,
                 kv_segment_ids: jax.Array) -> jax.Array:
  """Block-diagonal mask for packed sequences; segment id 0 is padding.

  Args:
    q_segment_ids: int32[B, L].
    kv_segment_ids: int32[B, S].

  Returns:
    bool[B, L, S]: True where both ids are equal and non-zero.
  """
  q = q_segment_ids[:, :, None]
  kv = kv_segment_ids[:, None, :]
  return (q == kv) & (q != 0)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Positions that restart at 0 at the start of every packed segment.

  Args:
    segment_ids: int32[B, L]; a segment is a run of equal ids.

  Returns:
    int32[B, L].
  """
  length = segment_ids.shape[1]
  idx = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                         segment_ids.shape)
  is_start = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], dtype=bool),
       segment_ids[:, 1:] != segment_ids[:, :-1]],
      axis=1)
  # Index of the most recent segment start, carried forward by a running max.
  start = jax.lax.cummax(jnp.where(is_start, idx, 0), axis=1)
  return idx - start
