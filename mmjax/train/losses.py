"""Training losses. Each takes model outputs and a batch, returns a scalar."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def lm_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy averaged over the tokens the mask selects.

  Args:
    logits: f32[B, L, V].
    targets: int32[B, L], the token each position should predict.
    loss_mask: f32[B, L], 1 where the position counts (answers, real text).

  Returns:
    (mean loss in nats, {'loss', 'accuracy', 'tokens'}).
  """
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  mask = loss_mask.astype(jnp.float32)
  n = jnp.maximum(mask.sum(), 1.0)
  loss = (ce * mask).sum() / n
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return loss, {"loss": loss, "accuracy": (correct * mask).sum() / n,
                "tokens": mask.sum()}
