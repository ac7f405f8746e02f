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


def sliding_window_mask(q_len: int,
                        kv_len: int,
                        window: int,
                        q_offset: int | jax.Array = 0) -> jax.Array:
  """Keys less than `window` slots behind the query (Gemma 2, Mistral).

  The query's own slot counts: a window of w sees w keys including itself
  (transformers' `kv_idx > q_idx - sliding_window`). AND it with a causal
  mask; keys ahead of the query are not restricted here.

  Args:
    q_len: number of queries (static).
    kv_len: number of key slots (static).
    window: window size in slots (> 0).
    q_offset: slot of the first query; may be a traced int32 scalar.

  Returns:
    bool[q_len, kv_len].
  """
  q_slot = q_offset + jnp.arange(q_len, dtype=jnp.int32)[:, None]
  kv_slot = jnp.arange(kv_len, dtype=jnp.int32)[None, :]
  return kv_slot > q_slot - window


def prefix_mask(prefix_len: jax.Array, q_len: int, kv_len: int,
                q_offset: int | jax.Array = 0) -> jax.Array:
  """Bidirectional attention inside each example's prefix (prefix-LM).

  Query and key both in slots < prefix_len see each other; OR it with a
  causal mask (PaliGemma: image + prompt bidirectional, answer causal).

  Args:
    prefix_len: int32[B], prefix length (in slots) of each example.
    q_len: number of queries (static).
    kv_len: number of key slots (static).
    q_offset: slot of the first query; may be a traced int32 scalar.

  Returns:
    bool[B, q_len, kv_len].
  """
  q_slot = q_offset + jnp.arange(q_len, dtype=jnp.int32)
  kv_slot = jnp.arange(kv_len, dtype=jnp.int32)
  limit = jnp.asarray(prefix_len, jnp.int32)[:, None]
  return (q_slot[None] < limit)[:, :, None] & (kv_slot[None] < limit)[:, None]


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
