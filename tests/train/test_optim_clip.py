"""optim.clip_by_global_norm: optax's clip (to an ulp: it multiplies by
one scalar factor where optax divides every element), reusing the norm the
train step has already computed."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.train import optim

_GRADS = {"a": jnp.arange(12.0).reshape(3, 4) - 5.0, "b": jnp.full((5,), 3.0)}
_PARAMS = {"a": jnp.ones((3, 4)), "b": jnp.zeros((5,))}


@pytest.mark.parametrize("max_norm", [1.0, 1e3])  # clips / leaves alone
def test_same_updates_as_optax_with_or_without_the_norm(max_norm):
  ref = optax.chain(optax.clip_by_global_norm(max_norm), optax.adamw(1e-2))
  ours = optax.chain(optim.clip_by_global_norm(max_norm), optax.adamw(1e-2))
  expected, _ = ref.update(_GRADS, ref.init(_PARAMS), _PARAMS)
  state = ours.init(_PARAMS)
  assert jax.tree.structure(state) == jax.tree.structure(ref.init(_PARAMS))
  for kwargs in ({}, {"grad_norm": optax.tree.norm(_GRADS)}):
    got, _ = ours.update(_GRADS, state, _PARAMS, **kwargs)
    for k in _GRADS:
      np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=0)


def test_the_norm_handed_in_is_the_one_used():
  clip = optim.clip_by_global_norm(1.0)
  true_norm = float(optax.tree.norm(_GRADS))
  got, _ = clip.update(_GRADS, clip.init(_PARAMS),
                       grad_norm=jnp.float32(2 * true_norm))
  np.testing.assert_allclose(got["b"], _GRADS["b"] / (2 * true_norm),
                             rtol=1e-6)


def test_the_clip_divides_once_not_per_element():
  """One scalar factor (max_norm / norm) multiplies every leaf: a division
  per leaf made XLA:CPU write each divided gradient to memory."""
  clip = optim.clip_by_global_norm(1.0)
  jaxpr = jax.make_jaxpr(lambda g, n: clip.update(g, clip.init(_PARAMS),
                                                  grad_norm=n)[0])(
      _GRADS, optax.tree.norm(_GRADS))
  divs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "div"]
  assert [d.outvars[0].aval.shape for d in divs] == [()]
  got = jax.jit(lambda g: clip.update(g, clip.init(_PARAMS))[0])(_GRADS)
  norm = float(optax.tree.norm(_GRADS))
  np.testing.assert_allclose(got["a"], _GRADS["a"] / norm, rtol=1e-6)


def test_the_train_step_reduces_the_gradient_once():
  """The guarded update (the CPU conditional) takes the clip's norm from the
  step: with optax's clip it held one scalar reduction per trainable leaf."""
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  setup = train_step.build_step("tiny", "projection", abstract=True)
  with setup.context():
    jaxpr = jax.make_jaxpr(setup.step)(setup.state, setup.batch)

  def scalar_sums(eqns, inside_cond):
    n = 0
    for eqn in eqns:
      if (inside_cond and eqn.primitive.name == "reduce_sum"
          and eqn.outvars[0].aval.shape == ()):
        n += 1
      for sub in _subjaxprs(eqn):
        n += scalar_sums(sub.eqns, inside_cond or eqn.primitive.name == "cond")
    return n
  assert scalar_sums(jaxpr.jaxpr.eqns, False) == 0


def _subjaxprs(eqn):
  """The jaxprs an equation calls (pjit's, a cond's branches, ...)."""
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
        yield v.jaxpr
      elif hasattr(v, "eqns"):
        yield v
