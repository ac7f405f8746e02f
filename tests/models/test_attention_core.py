"""models/attention_core.py: the custom-VJP attention gives autodiff's values
and gradients (grouped heads, masks, fully masked rows, cross-attention,
bfloat16), and its backward never transposes a score-sized array."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import attention_core


def _reference(q, k, v, mask, scale):
  """The plain formula, differentiated by JAX."""
  scores = jnp.einsum("blkgd,bskd->bkgls", q, k,
                      preferred_element_type=jnp.float32) * scale
  if mask is not None:
    scores = jnp.where(mask[:, None, None], scores,
                       attention_core.MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum("bkgls,bskd->blkgd", probs, v)


def _inputs(b, l, s, kh, g, d, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  # Scaled so the attention is far from uniform.
  q = jnp.asarray(rng.normal(0, 2, (b, l, kh, g, d)), dtype)
  k = jnp.asarray(rng.normal(0, 2, (b, s, kh, d)), dtype)
  v = jnp.asarray(rng.normal(size=(b, s, kh, d)), dtype)
  probe = jnp.asarray(rng.normal(size=(b, l, kh, g, d)), jnp.float32)
  return q, k, v, probe


def _value_and_grads(fn, q, k, v, mask, probe, scale):
  loss = lambda q, k, v: jnp.sum(fn(q, k, v, mask, scale).astype(
      jnp.float32) * probe)
  return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("kh,g,l,s,masked", [
    (2, 2, 7, 7, "causal"), (3, 1, 5, 5, "causal"), (1, 4, 6, 6, None),
    (2, 2, 4, 9, "random"), (2, 1, 5, 5, "empty_rows")])
def test_values_and_grads_match_autodiff(kh, g, l, s, masked):
  q, k, v, probe = _inputs(2, l, s, kh, g, 8)
  rng = np.random.default_rng(1)
  mask = {None: None,
          "causal": np.tril(np.ones((l, s), bool))[None].repeat(2, 0),
          "random": rng.random((2, l, s)) < 0.6,
          "empty_rows": np.tril(np.ones((l, s), bool))[None].repeat(2, 0)
          }[masked]
  if masked == "empty_rows":
    mask[0, 2] = False  # a row that sees nothing averages the values
  mask = None if mask is None else jnp.asarray(mask)
  scale = jnp.float32(1 / math.sqrt(8))
  ours = _value_and_grads(attention_core.attend, q, k, v, mask, probe, scale)
  ref = _value_and_grads(_reference, q, k, v, mask, probe, scale)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_bfloat16_close_to_float32():
  q, k, v, probe = _inputs(1, 6, 6, 2, 2, 8)
  mask = jnp.tril(jnp.ones((6, 6), bool))[None]
  scale = jnp.float32(0.35)
  f32 = _value_and_grads(attention_core.attend, q, k, v, mask, probe, scale)
  bf16 = _value_and_grads(attention_core.attend,
                          *(x.astype(jnp.bfloat16) for x in (q, k, v)),
                          mask, probe, scale)
  assert all(x.dtype == jnp.bfloat16 for x in bf16[1])
  for a, b in zip(jax.tree.leaves(f32), jax.tree.leaves(bf16)):
    np.testing.assert_allclose(np.asarray(b, np.float32), a, rtol=0.1,
                               atol=0.1)


def test_backward_transposes_only_small_tensors():
  """No transpose in the gradient's jaxpr moves a [.., L, S]-sized array:
  the point of the module (XLA:CPU fuses such transposes with the softmax
  arithmetic into slow strided loops)."""
  b, l, kh, g, d = 2, 16, 2, 2, 4
  q, k, v, probe = _inputs(b, l, l, kh, g, d)
  mask = jnp.tril(jnp.ones((l, l), bool))[None].repeat(b, 0)
  grad = jax.grad(lambda q, k, v: jnp.sum(attention_core.attend(
      q, k, v, mask, jnp.float32(0.5)) * probe), argnums=(0, 1, 2))
  jaxpr = jax.make_jaxpr(grad)(q, k, v).jaxpr
  # The custom_vjp's backward is inlined into the jaxpr of grad (autodiff
  # of the reference formula transposes [B, Kh, G, L, S] arrays here).
  sizes = [int(np.prod(e.invars[0].aval.shape)) for e in jaxpr.eqns
           if e.primitive.name == "transpose"]
  assert sizes and max(sizes) <= b * l * kh * g * d, sizes


@pytest.mark.parametrize("chunks,l", [(2, 8), (3, 7), (4, 9), (16, 5)])
def test_causal_chunks_give_the_full_squares_values_and_grads(chunks, l):
  """Query chunks scored only against the keys up to their end: autodiff's
  values and gradients of the full square, under a causal mask that also
  drops some earlier keys (padding, packed segments)."""
  q, k, v, probe = _inputs(2, l, l, 2, 2, 8, seed=3)
  mask = np.tril(np.ones((l, l), bool))[None].repeat(2, 0)
  mask[1, l - 1, :2] = False       # a later query that skips early keys
  mask = jnp.asarray(mask)
  scale = jnp.float32(1 / math.sqrt(8))
  chunked = lambda *a: attention_core.attend(*a, chunks)
  ours = _value_and_grads(chunked, q, k, v, mask, probe, scale)
  ref = _value_and_grads(_reference, q, k, v, mask, probe, scale)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_causal_chunks_cut_the_score_work():
  """The compiled forward + backward of 4 chunks does (4 + 1) / (2 * 4) of
  the full square's score matmul FLOPs (XLA's count), and cross-attention
  (fewer keys than queries) is refused."""
  q, k, v, probe = _inputs(1, 64, 64, 1, 1, 16)
  scale = jnp.float32(0.25)
  mask = jnp.asarray(np.tril(np.ones((64, 64), bool))[None])

  def flops(chunks):
    fn = jax.jit(lambda q, k, v: _value_and_grads(
        lambda *a: attention_core.attend(*a, chunks), q, k, v, mask, probe,
        scale))
    cost = fn.lower(q, k, v).compile().cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  # 4 score-sized products (q.k, p.v forward; dV, dP, dQ, dK backward: 6)
  # of 2 * 64 * 64 * 16 FLOPs each in the full square.
  full, chunked = flops(0), flops(4)
  square = 6 * 2 * 64 * 64 * 16
  assert full - chunked == pytest.approx(square * (1 - 5 / 8), rel=0.15)
  with pytest.raises(ValueError, match="needs self-attention"):
    attention_core.attend(q, k[:, :32], v[:, :32], None, scale, 4)
