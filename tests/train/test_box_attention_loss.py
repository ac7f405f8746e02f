"""The box-attention loss: its probabilities are the layer's own, the sown
q and k change nothing, it teaches a head to look at the box, and its
options are checked before anything compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import config as C
from mmjax import testing
from mmjax.models import layers, masks
from mmjax.models.mllm import MLLM
from mmjax.train import box_attention_loss, config_checks
from mmjax.train.stages import lm


@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_head_probabilities_are_the_attention_functions(softcap):
  """Values one-hot over the key positions make the attention's output its
  probabilities: they must equal exp(head_log_probs) for every head."""
  b, length, heads, kv_heads, dh = 2, 7, 4, 2, 8
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(b, length, heads, dh)) * 2, jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, length, kv_heads, dh)) * 2, jnp.float32)
  v = jnp.broadcast_to(jnp.eye(length)[None, :, None, :],
                       (b, length, kv_heads, length))
  mask = jnp.broadcast_to(masks.causal_mask(length, length, 0)[None],
                          (b, length, length))
  out = layers.dot_product_attention(q, k, v, mask, scale=0.3,
                                     softcap=softcap)
  for head in range(heads):
    mine = jnp.exp(box_attention_loss.head_log_probs(
        q, k, head, scale=0.3, softcap=softcap))
    np.testing.assert_allclose(mine, out[:, :, head], atol=1e-6)


def _boxed_batch(cfg, seed=0):
  """dummy_batch rows whose answer writes a box over 4 of the 64 image
  tokens (a different 2 x 2 block per row)."""
  batch = testing.dummy_batch(cfg, 2, text_len=10, seed=seed)
  query = np.zeros(batch["tokens"].shape, np.int32)
  query[batch["loss_mask"] > 0] = 1
  keys = np.zeros(batch["tokens"].shape, np.int32)
  for row, (r, c) in enumerate([(1, 2), (5, 4)]):
    image = np.flatnonzero(batch["image_token_mask"][row])
    grid = int(len(image) ** 0.5)
    for dr in (0, 1):
      for dc in (0, 1):
        keys[row, image[(r + dr) * grid + c + dc]] = 1
  return dict(batch, box_query=query, box_keys=keys)


@pytest.fixture(scope="module")
def tiny():
  cfg = testing.tiny_mllm_config()
  model = MLLM(cfg)
  return cfg, model, testing.random_params(model, scale=2.0)


def test_sown_query_keys_leave_the_output_alone(tiny):
  cfg, model, params = tiny
  batch = _boxed_batch(cfg)
  plain = lm.mllm_apply(model, params, batch)
  logits, sown = lm.mllm_apply(model, params, batch, intermediates=True)
  np.testing.assert_array_equal(plain, logits)
  q, k = box_attention_loss.layer_query_keys(sown, -1, cfg.lm.n_layers)
  length = batch["tokens"].shape[1]
  assert q.shape == (2, length, cfg.lm.n_heads, cfg.lm.resolved_head_dim)
  assert k.shape == (2, length, cfg.lm.n_kv_heads, cfg.lm.resolved_head_dim)
  first = box_attention_loss.layer_query_keys(sown, 0, cfg.lm.n_layers)
  assert not np.allclose(first[0], q)  # another layer's
  with pytest.raises(ValueError, match="scan_layers=False"):
    box_attention_loss.layer_query_keys({}, -1, cfg.lm.n_layers)


def test_the_loss_teaches_one_head_to_look_at_the_box(tiny):
  cfg, model, params = tiny
  batch = jax.tree.map(jnp.asarray, _boxed_batch(cfg))
  options = dict(weight=1.0, layer=-1, head=1)

  def box_loss(p):
    _, metrics = lm.mllm_lm_loss(model, p, batch, 0, options)
    return metrics["box_attention_loss"], metrics

  opt = optax.adam(3e-3)

  @jax.jit
  def step(p, state):
    (_, metrics), grads = jax.value_and_grad(box_loss, has_aux=True)(p)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, metrics

  state = opt.init(params)
  first = None
  for _ in range(40):
    params, state, metrics = step(params, state)
    first = first or metrics
  # 4 of the ~76 keys before the answer: about 5% at the start.
  assert float(first["box_attention_mass"]) < 0.2
  assert float(metrics["box_attention_mass"]) > 0.6
  assert float(metrics["box_attention_loss"]) < 0.5 * float(
      first["box_attention_loss"])


def test_loss_adds_its_weighted_term_and_metrics(tiny):
  cfg, model, params = tiny
  batch = jax.tree.map(jnp.asarray, _boxed_batch(cfg))
  plain, plain_metrics = lm.mllm_lm_loss(model, params, batch)
  total, metrics = lm.mllm_lm_loss(model, params, batch, 0,
                                   dict(weight=0.5, layer=-1, head=0))
  assert "box_attention_loss" not in plain_metrics
  np.testing.assert_allclose(
      total, plain + 0.5 * metrics["box_attention_loss"], rtol=1e-6)
  assert 0 < float(metrics["box_attention_mass"]) < 1
  # head=-1: the mean of every head's term.
  per_head = [lm.mllm_lm_loss(model, params, batch, 0, dict(
      weight=1.0, layer=-1, head=h))[1] for h in range(cfg.lm.n_heads)]
  _, every = lm.mllm_lm_loss(model, params, batch, 0,
                             dict(weight=1.0, layer=-1, head=-1))
  for key in ("box_attention_loss", "box_attention_mass"):
    np.testing.assert_allclose(
        every[key], np.mean([m[key] for m in per_head]), rtol=1e-5)
  assert len({round(float(m["box_attention_mass"]), 6)
              for m in per_head}) == cfg.lm.n_heads  # the heads differ
  # No box in the batch: no term, no NaN in the gradient.
  empty = dict(batch, box_query=jnp.zeros_like(batch["box_query"]))
  grads = jax.grad(lambda p: lm.mllm_lm_loss(
      model, p, empty, 0, dict(weight=1.0, layer=-1, head=0))[0])(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("overrides, message", [
    (dict(box_attention_weight=-1.0), "box_attention_weight"),
    (dict(box_attention_weight=1.0, box_attention_head=4),
     "box_attention_head"),
    (dict(box_attention_weight=1.0, box_attention_head=-2),
     "box_attention_head"),
    (dict(box_attention_weight=1.0, box_attention_layer=2),
     "box_attention_layer"),
    (dict(box_attention_weight=1.0, box_attention_layer=-3),
     "box_attention_layer"),
    (dict(box_attention_weight=1.0, box_attention_target="corners"),
     "box_attention_target"),
])
def test_bad_options_are_config_errors(overrides, message):
  config = testing.tiny_recipe()
  config.stages.sft.update(overrides)
  with pytest.raises(C.ConfigError, match=message):
    config_checks.validate_config(config)


def test_needs_image_tokens_in_the_sequence():
  config = testing.tiny_recipe(fusion="cross_attention")
  config.stages.sft.box_attention_weight = 1.0
  with pytest.raises(C.ConfigError, match="model.fusion projection"):
    config_checks.validate_config(config)
  config = testing.tiny_recipe()
  config.stages.sft.box_attention_weight = 1.0
  config_checks.validate_config(config)  # the recipe's own model is fine
  config.stages.sft.box_attention_target = "edges"
  config_checks.validate_config(config)
