"""trainer.apply_if_finite: the update or the old state, both ways of
choosing, and on CPU without copying the donated optimizer state."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.train import trainer

_TX = optax.chain(optax.clip_by_global_norm(1.0),
                  optax.adamw(1e-2, weight_decay=0.1))
_SHAPES = {"a": (32, 48), "b": (48,)}


def _state():
  params = {k: jnp.asarray(np.random.default_rng(0).normal(size=s),
                           jnp.float32) for k, s in _SHAPES.items()}
  return params, _TX.init(params)


def _step(backend):
  def step(state, grads):
    finite = jnp.isfinite(optax.tree.norm(grads))

    def update(operand):
      params, opt_state = operand
      updates, opt_state = _TX.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    return trainer.apply_if_finite(finite, update, state, backend)
  return jax.jit(step, donate_argnums=0)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_update_when_finite_old_state_otherwise(backend):
  grads = {k: jnp.full(s, 0.3) for k, s in _SHAPES.items()}
  expected = optax.apply_updates(_state()[0], _TX.update(
      grads, _state()[1], _state()[0])[0])
  new_params, new_opt = _step(backend)(_state(), grads)
  for k in _SHAPES:
    np.testing.assert_allclose(new_params[k], expected[k], rtol=1e-6)
  assert int(new_opt[1][0].count) == 1
  bad = dict(grads, b=grads["b"].at[3].set(jnp.nan))
  kept_params, kept_opt = _step(backend)(_state(), bad)
  for k in _SHAPES:
    np.testing.assert_array_equal(kept_params[k], _state()[0][k])
  assert int(kept_opt[1][0].count) == 0
  np.testing.assert_array_equal(kept_opt[1][0].mu["a"], 0.0)


def test_cpu_conditional_copies_no_donated_buffer():
  """The reason for the conditional: with a leafwise select XLA:CPU copies
  each donated moment buffer before updating it."""
  grads = {k: jnp.ones(s) for k, s in _SHAPES.items()}

  def copies(backend):
    text = _step(backend).lower(_state(), grads).compile().as_text()
    return len(re.findall(r"= f32\[[^\]]*\]\{[^}]*\} copy\(", text))
  assert copies("cpu") == 0
  assert copies("gpu") > 0  # the select, compiled here for CPU
