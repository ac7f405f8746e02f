"""Softmax attention over grouped KV heads with a hand-written backward pass
whose matmul operands suit XLA:CPU.

`attend(q, k, v, mask, scale)` computes the same values as autodiff of

  scores = (q . k) * scale, masked;  probs = softmax(scores);  out = probs . v

(it is `layers.dot_product_attention`'s 'einsum' kernel without a KV cache
or soft-capping). Why a custom VJP: every product here contracts an axis
that one operand holds major, and XLA:CPU's matmul wants the contracted axis
of its left operand minor, so it copies one operand into a transposed
layout. Autodiff's backward puts the [.., L, S] probabilities (and the score
gradient) in that place -- fused with the softmax arithmetic into strided
transposing loops that took ~1.1 ms each at the tiny size. Here every
product is written with its left operand chosen so that only the small
[B, L, H, Dh] tensors (q, k, v, the output gradient) are ever transposed,
and the softmax backward uses `sum(dout * out)` over Dh instead of
`sum(dprobs * probs)` over S (FlashAttention's identity).

Layouts (Kh KV heads, G = H // Kh query heads per KV head):
  q [B, L, Kh, G, Dh] -> heads-major [B, Kh, G*L, Dh] (row r = g*L + l);
  k, v [B, S, Kh, Dh] -> [B, Kh, S, Dh]; probs [B, Kh, G*L, S].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Finite stand-in for -inf: a fully masked row then softmaxes to a uniform
# distribution instead of NaN (0/0), as in layers.dot_product_attention.
MASK_VALUE = float(jnp.finfo(jnp.float32).min)

# dot_general dimension numbers over the two leading batch axes [B, Kh].
_BATCH = ((0, 1), (0, 1))


def _dot(a: jax.Array, b: jax.Array, a_axis: int, b_axis: int,
         out_dtype=None) -> jax.Array:
  """Batched matmul over [B, Kh], contracting a's `a_axis` with b's."""
  return jax.lax.dot_general(a, b, (((a_axis,), (b_axis,)), _BATCH),
                             preferred_element_type=out_dtype)


def _heads_major(x: jax.Array) -> jax.Array:
  """[B, L, Kh, G, D] -> [B, Kh, G*L, D]."""
  b, l, kh, g, d = x.shape
  return x.transpose(0, 2, 3, 1, 4).reshape(b, kh, g * l, d)


def _token_major(x: jax.Array, group: int) -> jax.Array:
  """[B, Kh, G*L, D] -> [B, L, Kh, G, D]."""
  b, kh, gl, d = x.shape
  return x.reshape(b, kh, group, gl // group, d).transpose(0, 3, 1, 2, 4)


def _rows_mask(mask, shape, group):
  """bool[B, L, S] -> [B, Kh, G*L, S] (every KV head and group)."""
  b, n_kv, gl, s = shape
  return jnp.broadcast_to(mask[:, None, None], (b, n_kv, group, gl // group,
                                                s)).reshape(shape)


def _probs(qh, kh, mask, scale, group):
  """Softmax over S of the masked, scaled scores: f32[B, Kh, G*L, S]."""
  scores = _dot(qh, kh, 3, 3, jnp.float32) * scale
  if mask is not None:
    scores = jnp.where(_rows_mask(mask, scores.shape, group), scores,
                       MASK_VALUE)
  top = jnp.max(scores, axis=-1, keepdims=True)
  e = jnp.exp(scores - top)
  return e / jnp.sum(e, axis=-1, keepdims=True)


def chunk_bounds(length: int, chunks: int) -> list[tuple[int, int]]:
  """[start, end) of each query chunk: `chunks` near-equal parts of
  [0, length) (one part when chunks <= 1)."""
  chunks = max(1, min(int(chunks), length))
  return [(length * i // chunks, length * (i + 1) // chunks)
          for i in range(chunks)]


def _core_fwd(q, kh, vh, mask, scale):
  """One query chunk against heads-major keys / values [B, Kh, S, D]."""
  group, dtype = q.shape[3], q.dtype
  qh = _heads_major(q)
  probs = _probs(qh, kh, mask, scale, group).astype(dtype)
  out = _token_major(_dot(probs, vh, 3, 2), group)
  return out, (qh, probs, out, mask)


def _core_bwd(kh, vh, scale, residuals, d_out):
  """Gradients of one chunk: dq [B, l, Kh, G, Dh], dk [B, Kh, Dh, S] and
  dv [B, Kh, Dv, S] (heads-major, S its keys)."""
  qh, probs, out, mask = residuals
  group, dtype = out.shape[3], out.dtype
  d_out_h = _heads_major(d_out)  # [B, Kh, G*L, Dv]
  # dV = P^T dO: the transposed dO (small) on the left, not P.
  dv = _dot(d_out_h.swapaxes(2, 3), probs, 3, 2)  # [B, Kh, Dv, S]
  dp = _dot(d_out_h, vh, 3, 3, jnp.float32)  # [B, Kh, G*L, S]
  # sum_s dP * P = sum_d dO * O (one value per query row), over [B, L,
  # Kh*G, Dv]: YNNPACK's fused multiply-and-reduce is ~12x slower on an
  # input with a unit axis (G = 1 without grouped queries: 302 against 26
  # us for [8, 64, 2, 1, 64] on a 2-core AVX-512 EPYC).
  b, l, n_kv, _, width = d_out.shape
  merged = lambda x: x.astype(jnp.float32).reshape(b, l, n_kv * group, width)
  row = _heads_major(jnp.sum(merged(d_out) * merged(out), axis=-1).reshape(
      b, l, n_kv, group, 1))  # [B, Kh, G*L, 1]
  d_scores = probs.astype(jnp.float32) * (dp - row) * scale
  if mask is not None:  # masked scores were constants (matters only for
    # a row with every key masked, whose probabilities are uniform, not 0)
    d_scores = jnp.where(_rows_mask(mask, d_scores.shape, group), d_scores,
                         0.0)
  d_scores = d_scores.astype(dtype)
  dq = _token_major(_dot(d_scores, kh, 3, 2), group)
  # dK = dS^T Q: the transposed Q (small) on the left, not dS.
  dk = _dot(qh.swapaxes(2, 3), d_scores, 3, 2)  # [B, Kh, Dh, S]
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
           scale: jax.Array, causal_chunks: int = 0) -> jax.Array:
  """Grouped-query softmax attention.

  Args:
    q: [B, L, Kh, G, Dh] queries (G query heads per KV head).
    k: [B, S, Kh, Dh] keys.
    v: [B, S, Kh, Dv] values.
    mask: bool[B, L, S] (True = attend) or None.
    scale: f32 scalar score scale.
    causal_chunks: > 1 (self-attention, S = L, a mask that never lets a
      query see a later key): the queries in that many chunks, each against
      only the keys up to its own end. The same values: the keys skipped
      are masked for all of the chunk's queries, whose probabilities on them
      are exactly 0 (exp of MASK_VALUE - max underflows). The score and
      softmax work is (n + 1) / (2 n) of the full square. 0 or 1: one chunk.

  Returns:
    [B, L, Kh, G, Dv] in q's dtype. Scores and softmax are float32; the
    probabilities are cast to q's dtype before they weight the values.
  """
  return _attend_fwd(q, k, v, mask, scale, causal_chunks)[0]


def _bounds(q, k, causal_chunks):
  """(query start, query end = key end) per chunk; one chunk over all S."""
  length, kv_len = q.shape[1], k.shape[1]
  if causal_chunks <= 1:
    return [(0, length, kv_len)]
  if kv_len != length:
    raise ValueError(f"causal_chunks={causal_chunks} needs self-attention "
                     f"(as many keys as queries); got {length} queries and "
                     f"{kv_len} keys")
  return [(s, e, e) for s, e in chunk_bounds(length, causal_chunks)]


def _attend_fwd(q, k, v, mask, scale, causal_chunks):
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  outs, chunk_residuals = [], []
  for start, end, keys in _bounds(q, k, causal_chunks):
    out, res = _core_fwd(q[:, start:end], kh[:, :, :keys], vh[:, :, :keys],
                         None if mask is None else mask[:, start:end, :keys],
                         scale)
    outs.append(out)
    chunk_residuals.append(res)
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
  return out, (kh, vh, scale, chunk_residuals)


def _attend_bwd(causal_chunks, residuals, d_out):
  kh, vh, scale, chunk_residuals = residuals
  length, kv_len = d_out.shape[1], kh.shape[2]
  bounds = ([(0, length, kv_len)] if causal_chunks <= 1 else
            [(s, e, e) for s, e in chunk_bounds(length, causal_chunks)])
  dqs, dk, dv = [], None, None
  for (start, end, keys), res in zip(bounds, chunk_residuals):
    dq_c, dk_c, dv_c = _core_bwd(kh[:, :, :keys], vh[:, :, :keys], scale,
                                 res, d_out[:, start:end])
    dqs.append(dq_c)
    # Keys past the chunk got nothing from it: pad its dK, dV with zeros.
    pad = ((0, 0), (0, 0), (0, 0), (0, kv_len - keys))
    dk_c, dv_c = jnp.pad(dk_c, pad), jnp.pad(dv_c, pad)
    dk = dk_c if dk is None else dk + dk_c
    dv = dv_c if dv is None else dv + dv_c
  dtype = d_out.dtype
  dq = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=1)
  return (dq.astype(dtype), dk.transpose(0, 3, 1, 2).astype(dtype),
          dv.transpose(0, 3, 1, 2).astype(dtype), None, None)


attend.defvjp(_attend_fwd, _attend_bwd)
