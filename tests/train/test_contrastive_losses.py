"""Tests for the sigmoid (SigLIP) and softmax (CLIP) contrastive losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train import losses

jax.config.update("jax_default_matmul_precision", "highest")

_sigmoid = jax.jit(losses.sigmoid_contrastive_loss)
_softmax = jax.jit(losses.softmax_contrastive_loss)


def _embeddings(seed, n=5, e=8):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(2, n, e))
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  return z[0], z[1]


def _np_log_sigmoid(x):
  return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def test_sigmoid_loss_matches_double_loop():
  zimg, ztxt = _embeddings(0)
  t, b = 1.3, -2.0
  n = zimg.shape[0]
  total = 0.0
  for i in range(n):
    for j in range(n):
      logit = float(zimg[i] @ ztxt[j]) * math.exp(t) + b
      label = 1.0 if i == j else -1.0
      total -= _np_log_sigmoid(label * logit)
  loss, metrics = _sigmoid(jnp.asarray(zimg, jnp.float32),
                           jnp.asarray(ztxt, jnp.float32), t, b)
  np.testing.assert_allclose(loss, total / n, rtol=1e-5)
  assert metrics["loss"] == loss
  np.testing.assert_allclose(metrics["temperature"], math.exp(t), rtol=1e-6)


def test_sigmoid_loss_init_values_and_accuracy():
  # Perfect alignment: diagonal logits 10 - 10 = 0, so each positive costs
  # log 2; orthogonal negatives cost log(1 + e^-10).
  z = jnp.eye(4, dtype=jnp.float32)
  loss, metrics = _sigmoid(z, z, math.log(10.0), -10.0)
  expected = math.log(2) + 3 * math.log1p(math.exp(-10.0))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert metrics["i2t_accuracy"] == 1.0 and metrics["t2i_accuracy"] == 1.0
  np.testing.assert_allclose(metrics["pos_logit"], 0.0, atol=1e-5)
  np.testing.assert_allclose(metrics["neg_logit"], -10.0, atol=1e-5)
  # Texts shifted by one: no image retrieves its own text.
  _, metrics = _sigmoid(z, jnp.roll(z, 1, axis=0), math.log(10.0), -10.0)
  assert metrics["i2t_accuracy"] == 0.0


def test_softmax_loss_matches_numpy():
  zimg, ztxt = _embeddings(1, n=6)
  t = 2.0
  logits = zimg @ ztxt.T * math.exp(t)

  def ce_rows(m):
    m = m - m.max(1, keepdims=True)
    logp = m - np.log(np.exp(m).sum(1, keepdims=True))
    return -np.mean(np.diag(logp))

  expected = 0.5 * (ce_rows(logits) + ce_rows(logits.T))
  loss, metrics = _softmax(jnp.asarray(zimg, jnp.float32),
                           jnp.asarray(ztxt, jnp.float32), t)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["i2t_loss"], ce_rows(logits), rtol=1e-5)
  np.testing.assert_allclose(metrics["t2i_loss"], ce_rows(logits.T),
                             rtol=1e-5)
  acc = np.mean(np.argmax(logits, 1) == np.arange(6))
  np.testing.assert_allclose(metrics["i2t_accuracy"], acc)


def test_losses_reject_mismatched_shapes():
  a = jnp.zeros((4, 8))
  with pytest.raises(ValueError, match=r"\(4, 8\) and \(3, 8\)"):
    losses.sigmoid_contrastive_loss(a, jnp.zeros((3, 8)), 0.0, 0.0)
  with pytest.raises(ValueError, match="both be \\[B, E\\]"):
    losses.softmax_contrastive_loss(jnp.zeros((4,)), jnp.zeros((4,)), 0.0)
