"""Choosing the next token: greedy, temperature, top-k, top-p."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen.

  Attributes:
    temperature: 0 = greedy (argmax); else logits / temperature.
    top_k: keep the k most likely tokens (0 = all).
    top_p: keep the smallest set whose probability reaches top_p (1 = all).
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 "
                       "(0 = greedy)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p} must lie in (0, 1] (1 = off)")


def sample_tokens(logits: jax.Array, keys: jax.Array, sampling: Sampling
                  ) -> jax.Array:
  """Next tokens int32[B] from logits f32[B, V]; keys: one PRNG key per row."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / sampling.temperature
  if sampling.top_k and sampling.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the better ones
    # The smallest kept logit: tokens whose better ones lack top_p stay.
    cut = jnp.min(jnp.where(before < sampling.top_p, ordered, jnp.inf),
                  axis=-1, keepdims=True)
    logits = jnp.where(logits < cut, -jnp.inf, logits)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
