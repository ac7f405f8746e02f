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


def _check_embeddings(zimg: jax.Array, ztxt: jax.Array) -> None:
  if zimg.ndim != 2 or zimg.shape != ztxt.shape:
    raise ValueError(f"zimg and ztxt must both be [B, E] with the same shape "
                     f"(row i of each is pair i); got {zimg.shape} and "
                     f"{ztxt.shape}.")


def _retrieval_accuracy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Top-1 image->text and text->image accuracy of a [B, B] logit matrix."""
  target = jnp.arange(logits.shape[0])
  i2t = jnp.mean((jnp.argmax(logits, axis=1) == target).astype(jnp.float32))
  t2i = jnp.mean((jnp.argmax(logits, axis=0) == target).astype(jnp.float32))
  return i2t, t2i


def sigmoid_contrastive_loss(zimg: jax.Array, ztxt: jax.Array,
                             logit_scale: jax.Array, logit_bias: jax.Array
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SigLIP pairwise sigmoid loss over a local batch.

  `logits = zimg @ ztxt.T * exp(t') + b`; labels +1 on the diagonal (matching
  pairs) and -1 elsewhere; `loss = mean_i(-sum_j log_sigmoid(labels *
  logits))`, i.e. summed over texts, averaged over images.

  Args:
    zimg: f32[B, E] L2-normalised image embeddings.
    ztxt: f32[B, E] L2-normalised text embeddings; row i pairs with zimg[i].
    logit_scale: scalar t' (raw; the temperature is exp(t')).
    logit_bias: scalar b.

  Returns:
    (loss, {'loss', 'i2t_accuracy', 't2i_accuracy', 'pos_logit',
    'neg_logit', 'temperature'}); the logit metrics are means.
  """
  _check_embeddings(zimg, ztxt)
  n = zimg.shape[0]
  logits = (jnp.dot(zimg.astype(jnp.float32), ztxt.astype(jnp.float32).T)
            * jnp.exp(jnp.asarray(logit_scale, jnp.float32))
            + jnp.asarray(logit_bias, jnp.float32))
  eye = jnp.eye(n, dtype=jnp.float32)
  labels = 2.0 * eye - 1.0
  loss = jnp.mean(-jnp.sum(jax.nn.log_sigmoid(labels * logits), axis=-1))
  i2t, t2i = _retrieval_accuracy(logits)
  n_neg = max(n * (n - 1), 1)
  return loss, {"loss": loss, "i2t_accuracy": i2t, "t2i_accuracy": t2i,
                "pos_logit": jnp.sum(logits * eye) / n,
                "neg_logit": jnp.sum(logits * (1.0 - eye)) / n_neg,
                "temperature": jnp.exp(jnp.asarray(logit_scale, jnp.float32))}


def softmax_contrastive_loss(zimg: jax.Array, ztxt: jax.Array,
                             logit_scale: jax.Array
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CLIP loss: symmetric cross-entropy with the matching pair as the target.

  `logits = zimg @ ztxt.T * exp(t')`; loss = (CE over each image's row +
  CE over each text's column) / 2, each averaged over the batch.

  Args:
    zimg: f32[B, E] L2-normalised image embeddings.
    ztxt: f32[B, E] L2-normalised text embeddings; row i pairs with zimg[i].
    logit_scale: scalar t' (raw; the temperature is exp(t')).

  Returns:
    (loss, {'loss', 'i2t_loss', 't2i_loss', 'i2t_accuracy', 't2i_accuracy',
    'temperature'}).
  """
  _check_embeddings(zimg, ztxt)
  logits = (jnp.dot(zimg.astype(jnp.float32), ztxt.astype(jnp.float32).T)
            * jnp.exp(jnp.asarray(logit_scale, jnp.float32)))
  target = jnp.arange(zimg.shape[0])
  i2t_loss = jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, target))
  t2i_loss = jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits.T, target))
  loss = 0.5 * (i2t_loss + t2i_loss)
  i2t, t2i = _retrieval_accuracy(logits)
  return loss, {"loss": loss, "i2t_loss": i2t_loss, "t2i_loss": t2i_loss,
                "i2t_accuracy": i2t, "t2i_accuracy": t2i,
                "temperature": jnp.exp(jnp.asarray(logit_scale, jnp.float32))}
