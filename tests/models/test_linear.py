"""models/linear.py: same values and gradients as autodiff of x @ W, the
weight gradient with x on the left, the same parameters as nn.Dense, and the
dot remat policies still saving its output."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import linear
from mmjax.models import remat


def _random(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


@pytest.mark.parametrize("x_shape", [(5, 6), (2, 3, 6), (2, 2, 3, 6)])
def test_value_and_grads_match_autodiff(x_shape):
  x, w = _random(x_shape, 0), _random((6, 4), 1)
  probe = _random(x_shape[:-1] + (4,), 2)  # a non-uniform cotangent

  def loss(f):
    return lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * probe)
  ours = jax.value_and_grad(loss(linear.linear), argnums=(0, 1))(x, w)
  ref = jax.value_and_grad(loss(lambda x, w: x @ w), argnums=(0, 1))(x, w)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_keeps_dtypes():
  x, w = _random((3, 8), 0, jnp.bfloat16), _random((8, 5), 1, jnp.bfloat16)
  y, (dx, dw) = jax.value_and_grad(
      lambda x, w: jnp.sum(linear.linear(x, w).astype(jnp.float32)),
      argnums=(0, 1))(x, w)
  assert (dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16)
  np.testing.assert_allclose(float(y), float(jnp.sum(
      (x.astype(jnp.float32) @ w.astype(jnp.float32)))), rtol=2e-2)


def test_weight_gradient_puts_the_input_on_the_left():
  """The point of the module: dW = dot(x, dy) contracting tokens, so
  XLA:CPU transposes x (a plain copy), not the fused chain behind dy."""
  x, w = _random((2, 7, 6), 0), _random((6, 4), 1)
  jaxpr = jax.make_jaxpr(jax.grad(
      lambda w: jnp.sum(jnp.sin(linear.linear(x, w)))))(w)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  weight_grads = [e for e in dots if e.outvars[0].aval.shape == (6, 4)]
  assert len(weight_grads) == 1, dots
  eqn = weight_grads[0]
  assert eqn.invars[0].aval.shape == (14, 6)  # x, tokens flattened
  assert eqn.invars[1].aval.shape == (14, 4)  # dy
  assert eqn.params["dimension_numbers"] == (((0,), (0,)), ((), ()))


@pytest.mark.parametrize("use_bias,dtype", [(True, None), (False, None),
                                            (True, jnp.bfloat16)])
def test_dense_matches_flax_dense(use_bias, dtype):
  x = _random((2, 3, 6), 0)
  kw = dict(features=5, use_bias=use_bias, dtype=dtype,
            bias_init=nn.initializers.normal(1.0))
  ours, ref = linear.Dense(**kw), nn.Dense(**kw)
  params = ref.init(jax.random.key(0), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
          == jax.tree.map(jnp.shape, params))
  y, y_ref = ours.apply(params, x), ref.apply(params, x)
  assert y.dtype == y_ref.dtype
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(y_ref, np.float32), rtol=1e-5,
                             atol=1e-5)


def _residual_bytes(fn, *args) -> int:
  """Bytes of what `jax.vjp(fn)` keeps for the backward pass."""
  vjp_fn = jax.eval_shape(lambda *a: jax.vjp(fn, *a)[1], *args)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(vjp_fn))


@pytest.mark.parametrize("policy", ["dots", "dots_all"])
def test_dot_policies_save_the_linear_output(policy):
  x, w = _random((4, 6), 0), _random((6, 5), 1)

  def block(x, w):
    return jnp.sum(jnp.sin(linear.linear(jnp.cos(x), w)))
  policy_fn = remat._POLICIES[policy]  # pylint: disable=protected-access
  kept = _residual_bytes(jax.checkpoint(block, policy=policy_fn), x, w)
  recomputed = _residual_bytes(jax.checkpoint(block), x, w)
  # The policy sees the dot inside the custom_vjp and keeps its output
  # [4, 5] instead of recomputing it.
  assert kept - recomputed == 4 * 5 * 4, (kept, recomputed)
