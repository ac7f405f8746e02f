"""GRPO's objective: group-normalised advantages, the clipped ratio loss over
completion tokens and the k3 KL to a frozen reference (stage kind `grpo`).

  adv, equal = group_advantages(rewards, valid, dr_grpo=False)   # [P, G]
  loss, m = clipped_loss(logp, old_logp, ref_logp, adv.reshape(-1), mask,
                         weights, clip_eps=0.2, beta=0.04)

Formulas (DeepSeekMath; Dr. GRPO; DAPO):
  A_i   = (r_i - mean_g r) / (std_g r + eps)      GRPO (std with Bessel's
                                                  correction, as TRL)
  A_i   = r_i - mean_g r                          Dr. GRPO
  p_t   = exp(logp_t - old_logp_t)
  KL_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1      (k3, >= 0)
  l_t   = -(min(p_t A_i, clip(p_t, 1 - e, 1 + e) A_i) - beta KL_t)
  L     = sum_i w_i (1/|o_i|) sum_t l_t / sum_i w_i       GRPO
  L     = sum_i w_i (1/N) sum_t l_t / sum_i w_i           Dr. GRPO (N =
                                                  max_new_tokens, a constant)
w_i is 1 for a real prompt's completion, 0 for padding rows and, with
dynamic sampling, for groups whose rewards are all equal (DAPO).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

STD_EPS = 1e-4  # TRL's epsilon under the group std


def group_advantages(rewards: jax.Array, *, dr_grpo: bool = False,
                     eps: float = STD_EPS) -> tuple[jax.Array, jax.Array]:
  """Advantages f32[P, G] of rewards f32[P, G] (P prompts, G completions),
  and equal bool[P]: the groups whose G rewards are all the same (their
  advantages are 0: no signal)."""
  mean = rewards.mean(axis=1, keepdims=True)
  centred = rewards - mean
  spread = rewards.max(axis=1) - rewards.min(axis=1)
  equal = spread <= 1e-6 * jnp.maximum(jnp.abs(mean[:, 0]), 1.0)
  if dr_grpo:
    return centred, equal
  std = jnp.sqrt((centred ** 2).sum(axis=1, keepdims=True) /
                 (rewards.shape[1] - 1))
  return centred / (std + eps), equal


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Per-token k3 estimate of KL(pi_theta || pi_ref), >= 0."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def clipped_loss(logp: jax.Array, old_logp: jax.Array,
                 ref_logp: jax.Array | None, advantages: jax.Array,
                 mask: jax.Array, weights: jax.Array, *, clip_eps: float,
                 beta: float, dr_grpo: bool = False,
                 max_new_tokens: int | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The GRPO loss (module docstring) and its metrics.

  Args:
    logp, old_logp, ref_logp: f32[R, T] log-probs of the sampled tokens
      under the policy (with gradient), the sampling policy and the
      reference (None when beta = 0).
    advantages: f32[R]; mask: f32[R, T], 1 on completion tokens;
    weights: f32[R], each row's weight (0 = left out).
    clip_eps: e; beta: the KL weight; dr_grpo: divide by max_new_tokens
      (required then) instead of each completion's length.

  Returns:
    (loss, {kl: mean per-token KL, clip_fraction: share of completion
    tokens whose ratio was clipped where it mattered}).
  """
  ratio = jnp.exp(logp - old_logp)
  adv = advantages[:, None]
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
  objective = jnp.minimum(unclipped, clipped)
  kl = (k3_kl(logp, ref_logp) if ref_logp is not None
        else jnp.zeros_like(logp))
  per_token = -(objective - beta * kl) * mask
  if dr_grpo:
    if not max_new_tokens:
      raise ValueError("dr_grpo=True needs max_new_tokens (the constant "
                       "length normaliser)")
    per_row = per_token.sum(1) / max_new_tokens
  else:
    per_row = per_token.sum(1) / jnp.maximum(mask.sum(1), 1.0)
  total_w = jnp.maximum(weights.sum(), 1e-9)
  loss = (per_row * weights).sum() / total_w
  # Token metrics over the rows that count.
  tok_w = mask * weights[:, None]
  n_tok = jnp.maximum(tok_w.sum(), 1.0)
  was_clipped = (clipped < unclipped).astype(jnp.float32)
  metrics = {"kl": jax.lax.stop_gradient((kl * tok_w).sum() / n_tok),
             "clip_fraction": jax.lax.stop_gradient(
                 (was_clipped * tok_w).sum() / n_tok)}
  return loss, metrics
