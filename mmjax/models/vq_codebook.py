"""The VQ codebook as pure functions: nearest code, straight-through
gradient, EMA update with dead-code restarts, usage statistics.

The codebook and its EMA statistics are one small pytree, `CodebookState`
(codebook f32[K, D], cluster_size f32[K], embed_sum f32[K, D]); the VQ stage
carries it as the loop's loss state, so it is checkpointed and resumed with
the parameters (train/stages/vq.py).

EMA (van den Oord et al. 2017, appendix; Jukebox's restarts):
  n_k  = codes of the batch assigned to k, s_k = sum of those z_e
  N_k <- d N_k + (1 - d) n_k;  S_k <- d S_k + (1 - d) s_k
  e_k  = S_k / N~_k, N~_k Laplace-smoothed so an unused code divides by > 0
  a code whose N_k falls below `threshold` restarts at a random z_e of the
  batch with N_k = 1, S_k = z_e (so it is not dead again at once).
A fresh state (`initial_state`) has N = 0 everywhere: the first update
restarts every code from encoder outputs, a data-dependent initialisation.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class CodebookState(NamedTuple):
  codebook: jax.Array       # f32[K, D]
  cluster_size: jax.Array   # f32[K], EMA of codes assigned per batch
  embed_sum: jax.Array      # f32[K, D], EMA of the z_e assigned


class Quantized(NamedTuple):
  codes: jax.Array          # int32[...], index of the nearest code
  z_q: jax.Array            # f32[..., D], the codes' vectors (no gradient)
  z_st: jax.Array           # f32[..., D], z_e + sg(z_q - z_e): forward z_q,
                            # gradient of the decoder passed to z_e


def initial_state(codebook_size: int, code_dim: int) -> CodebookState:
  """Every code unused (restarted from the first batch)."""
  return CodebookState(jnp.zeros((codebook_size, code_dim), jnp.float32),
                       jnp.zeros((codebook_size,), jnp.float32),
                       jnp.zeros((codebook_size, code_dim), jnp.float32))


def nearest(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """z f32[..., D], codebook f32[K, D] -> int32[...] argmin_k ||z - e_k||^2."""
  flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  # ||z||^2 is the same for every k: only -2 z.e + ||e||^2 decides.
  dist = (-2.0 * flat @ codebook.T.astype(jnp.float32)
          + jnp.sum(codebook.astype(jnp.float32) ** 2, -1)[None])
  return jnp.argmin(dist, -1).astype(jnp.int32).reshape(z.shape[:-1])


def quantize(z: jax.Array, codebook: jax.Array) -> Quantized:
  """z f32[..., D] -> its nearest codes, their vectors, and the
  straight-through vector the decoder reads."""
  codes = nearest(z, codebook)
  z_q = jax.lax.stop_gradient(codebook[codes])
  return Quantized(codes, z_q, z + jax.lax.stop_gradient(z_q - z))


def ema_update(state: CodebookState, z: jax.Array, codes: jax.Array,
               rng: jax.Array, weights: jax.Array | None = None, *,
               decay: float = 0.99, threshold: float = 1.0,
               eps: float = 1e-5) -> tuple[CodebookState, jax.Array]:
  """One EMA step and the restarts of dead codes.

  Args:
    z: f32[..., D] encoder outputs (the gradient is stopped).
    codes: int32[...] their nearest codes.
    weights: f32[...] 1 for real rows, 0 for padding (None = all real).
    threshold: a code whose EMA count is below it restarts.
  Returns:
    (new state, number of codes restarted).
  """
  k = state.codebook.shape[0]
  flat = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]).astype(
      jnp.float32)
  w = (jnp.ones(flat.shape[:1], jnp.float32) if weights is None
       else weights.reshape(-1).astype(jnp.float32))
  onehot = jax.nn.one_hot(codes.reshape(-1), k, dtype=jnp.float32) * w[:, None]
  counts, sums = onehot.sum(0), onehot.T @ flat
  size = decay * state.cluster_size + (1 - decay) * counts
  embed_sum = decay * state.embed_sum + (1 - decay) * sums
  total = size.sum()
  smoothed = (size + eps) / (total + k * eps) * total
  codebook = embed_sum / jnp.maximum(smoothed, eps)[:, None]
  # Restarts draw real rows only (padding rows have weight 0), uniformly:
  # inverse CDF of the real rows (k draws cost k log n, where Gumbel
  # noise over [k, n] cost a fifth of a vq train step).
  real = (w > 0).astype(jnp.float32)
  cdf = jnp.cumsum(real)
  u = jax.random.uniform(rng, (k,)) * jnp.maximum(cdf[-1], 1.0)
  pick = jnp.minimum(jnp.searchsorted(cdf, u, side="right"),
                     flat.shape[0] - 1)
  fresh = flat[pick]
  dead = size < threshold
  new = CodebookState(
      jnp.where(dead[:, None], fresh, codebook),
      jnp.where(dead, 1.0, size),
      jnp.where(dead[:, None], fresh, embed_sum))
  return new, dead.sum()


def merge_nearby(codebook, cluster_size, radius: float
                 ) -> tuple[np.ndarray, int]:
  """(codebook f32[K, D], kept codes): every code within `radius` (L2) of
  a more used code that is kept takes that code's vector; codes are visited
  from the most used (cluster_size f32[K]) down, and a code is kept when no
  kept one is that near.

  Why: a codebook trained to high usage holds near-duplicates (the EMA
  restarts move unused codes onto common encoder outputs), which the
  decoder draws alike but an LM over the codes must tell apart. With
  duplicated rows `nearest` returns the lowest index of a group
  (argmin's first), so a model trained on the merged codebook's codes
  writes only kept codes, and decoding them is unchanged in form.
  """
  book = np.asarray(codebook, np.float32).copy()
  kept = np.zeros(len(book), bool)
  for k in np.argsort(-np.asarray(cluster_size, np.float32), kind="stable"):
    near = np.nonzero(kept)[0]
    if len(near):
      dist = np.sqrt(((book[near] - book[k]) ** 2).sum(-1))
      j = int(dist.argmin())
      if dist[j] < radius:
        book[k] = book[near[j]]
        continue
    kept[k] = True
  return book, int(kept.sum())


def usage(codes: jax.Array, codebook_size: int,
          weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(share of the codebook used at least once, perplexity exp(H(p))) of
  the codes of a batch; perplexity is K when every code is equally used."""
  w = (jnp.ones(codes.size, jnp.float32) if weights is None
       else weights.reshape(-1).astype(jnp.float32))
  counts = (jax.nn.one_hot(codes.reshape(-1), codebook_size,
                           dtype=jnp.float32) * w[:, None]).sum(0)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)),
                               0.0))
  return (counts > 0).mean(), jnp.exp(entropy)
