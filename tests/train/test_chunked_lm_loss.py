"""losses.chunked_lm_loss, stage_lm.mllm_lm_loss(loss_chunk=...) and the
per-token losses.token_losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common
from mmjax import testing
from mmjax.config import ConfigError
from mmjax.train import config_checks, losses
from mmjax.train.stages import lm as stage_lm
from tests.inference.test_inference import make_model


def _problem(seed=0, b=2, length=10, d=8, vocab=11):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, vocab)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, (b, length)), jnp.int32)
  mask = np.ones((b, length), np.float32)
  mask[:, :4] = 0  # an "image prefix" without loss
  mask[1, 7] = 0
  return hidden, w, targets, jnp.asarray(mask)


def _head(w):
  return lambda h: 5.0 * jnp.tanh(h @ w / 5.0)  # soft-capped, as Gemma


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 16])
def test_chunked_equals_full_loss_and_gradients(chunk):
  hidden, w, targets, mask = _problem()

  def full(hidden, w):
    return losses.lm_loss(_head(w)(hidden), targets, mask)

  def chunked(hidden, w):
    return losses.chunked_lm_loss(hidden, _head(w), targets, mask, chunk)

  (want, want_m), want_g = jax.value_and_grad(full, (0, 1), has_aux=True)(
      hidden, w)
  (got, got_m), got_g = jax.jit(jax.value_and_grad(
      chunked, (0, 1), has_aux=True))(hidden, w)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for key in ("accuracy", "tokens"):
    np.testing.assert_allclose(got_m[key], want_m[key], rtol=1e-6)
  for g, h in zip(got_g, want_g):
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-6)


def test_chunks_without_loss_are_not_computed():
  """NaN hidden states in the loss-free prefix poison the full logits
  (0 * NaN) but never reach the head when their chunk is skipped."""
  hidden, w, targets, mask = _problem()
  hidden = hidden.at[:, :4].set(jnp.nan)
  full = losses.lm_loss(_head(w)(hidden), targets, mask)[0]
  assert np.isnan(full)
  loss_grad = jax.jit(jax.value_and_grad(lambda h: losses.chunked_lm_loss(
      h, _head(w), targets, mask, 4)[0]))
  loss, grad = loss_grad(hidden)
  assert np.isfinite(loss)
  assert np.isfinite(grad).all() and not np.asarray(grad[:, :4]).any()
  # A chunk that straddles the prefix is computed: the NaN comes through.
  assert np.isnan(jax.jit(lambda h: losses.chunked_lm_loss(
      h, _head(w), targets, mask, 3)[0])(hidden))


def test_chunk_must_be_positive():
  hidden, w, targets, mask = _problem()
  with pytest.raises(ValueError, match="chunk=0"):
    losses.chunked_lm_loss(hidden, _head(w), targets, mask, 0)


def test_mllm_lm_loss_chunked_equals_full():
  model, params = make_model("projection", "rope")
  batch = {k: jnp.asarray(v) for k, v in
           common.synthetic_batch(model.cfg, 2, 8).items()}
  # The synthetic layout puts the image first: those positions take no loss.
  assert not np.asarray(batch["loss_mask"])[:, :16].any()

  def loss(params, chunk):
    return stage_lm.mllm_lm_loss(model, params, batch, chunk)

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True),
                    static_argnums=1)
  (want, _), want_g = grad_fn(params, 0)
  for chunk in (16, 5):
    (got, _), got_g = grad_fn(params, chunk)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda g, h: np.testing.assert_allclose(
        g, h, rtol=1e-4, atol=3e-5), got_g, want_g)


def test_config_checks_loss_chunk():
  config = testing.tiny_recipe()
  config.stages.sft.loss_chunk = 64
  config_checks.validate_config(config)
  config.stages.sft.loss_chunk = -1
  with pytest.raises(ConfigError, match=r"sft.loss_chunk=-1 must be >= 0"):
    config_checks.validate_config(config)
  config.stages.sft.loss_chunk = 0
  config.stages.dpo.loss_chunk = 64
  config_checks.validate_config(config)
  config.stages.siglip.loss_chunk = 64
  with pytest.raises(ConfigError,
                     match=r"siglip.loss_chunk=64.*'sigmoid_contrastive'"):
    config_checks.validate_config(config)


def test_token_losses_count_a_hit_where_argmax_is_the_target():
  import optax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (3, 7))
  targets[0] = logits[0].argmax(-1)  # a row of hits
  ce, hit = losses.token_losses(logits, targets)
  np.testing.assert_array_equal(np.asarray(hit),
                                logits.argmax(-1) == targets)
  np.testing.assert_allclose(
      np.asarray(ce), optax.softmax_cross_entropy_with_integer_labels(
          logits, targets), rtol=1e-6)
