"""Tests for mmjax.models.layers and mmjax.models.masks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import layers
from mmjax.models import masks
from mmjax.models import positions as positions_lib
from tests import helpers

jax.config.update("jax_default_matmul_precision", "highest")

_rope = jax.jit(positions_lib.apply_rope, static_argnums=2)
_ALLOWED_NAMES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"}
B, L, D, H, KH, DH = 2, 6, 32, 4, 2, 8


def _attention(qkv_bias=False):
  return layers.Attention(n_heads=H, n_kv_heads=KH, head_dim=DH,
                          rope_theta=10_000.0, qkv_bias=qkv_bias)


def _normal(seed, shape, scale=1.0):
  # numpy noise: jax.random would compile a kernel per shape.
  rng = np.random.default_rng(seed)
  return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)


def _randomize(params, seed, scale=1.0):
  """Replaces every leaf (incl. zero biases) by scaled normal noise."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), params)


@functools.lru_cache(maxsize=None)
def _init_attention(qkv_bias, key=0):
  """Cached so tests share one jitted apply (and its compiled shapes)."""
  x = _normal(key, (B, L, D))
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  mod = _attention(qkv_bias)
  # Only shapes are needed from init: every leaf is replaced by noise, larger
  # than init so attention is far from uniform and mistakes show.
  shapes = nn.unbox(jax.eval_shape(mod.init, jax.random.key(1), x, pos,
                                   mask=None))
  params = _randomize(shapes, 2, scale=0.5)
  # One jit compile is cheaper than dispatching dozens of eager ops.
  return jax.jit(mod.apply), params, x, pos


def _assert_all_boxed(variables):
  helpers.assert_all_boxed(variables, _ALLOWED_NAMES)


# ----------------------------------------------------------------- masks


def test_causal_mask_values():
  np.testing.assert_array_equal(masks.causal_mask(3, 3),
                                np.tril(np.ones((3, 3), bool)))
  # Two queries at slots 2 and 3 of a 5-slot cache.
  np.testing.assert_array_equal(
      masks.causal_mask(2, 5, q_offset=2),
      [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])


def test_causal_mask_traced_offset():
  fn = jax.jit(lambda off: masks.causal_mask(1, 4, off))
  np.testing.assert_array_equal(fn(jnp.int32(1)), [[1, 1, 0, 0]])


def test_segment_mask_and_positions():
  seg = jnp.array([[1, 1, 2, 2, 2, 0]])
  m = masks.segment_mask(seg, seg)[0]
  assert m[0, 1] and m[3, 2] and not m[2, 1]
  assert not m[5].any()  # Padding sees nothing.
  np.testing.assert_array_equal(masks.segment_positions(seg),
                                [[0, 1, 0, 1, 2, 0]])


# --------------------------------------------------------------- RMSNorm


def test_rmsnorm_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32) * 3
  mod = layers.RMSNorm(eps=1e-5)
  variables = mod.init(jax.random.key(0), x)
  _assert_all_boxed(variables)
  scale = np.linspace(0.5, 2.0, 16).astype(np.float32)
  out = jax.jit(mod.apply)({"params": {"scale": scale}}, x)
  want = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-5) * scale
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_rmsnorm_offset_one():
  x = np.random.default_rng(1).normal(size=(2, 16)).astype(np.float32)
  mod = layers.RMSNorm(eps=1e-6, offset_one=True)
  apply = jax.jit(mod.apply)
  params = nn.unbox(mod.init(jax.random.key(0), x))
  np.testing.assert_array_equal(params["params"]["scale"], np.zeros(16))
  normed = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6)
  # Zero-initialised scale is the identity gain.
  np.testing.assert_allclose(apply(params, x), normed, rtol=1e-5)
  scale = np.full(16, 0.5, np.float32)
  np.testing.assert_allclose(apply({"params": {"scale": scale}}, x),
                             normed * 1.5, rtol=1e-5)


def test_rmsnorm_bf16_output():
  mod = layers.RMSNorm(dtype=jnp.bfloat16)
  x = jnp.ones((1, 8), jnp.bfloat16)
  out = jax.jit(mod.apply)(nn.unbox(mod.init(jax.random.key(0), x)), x)
  assert out.dtype == jnp.bfloat16


# ------------------------------------------------------------------- MLP


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_mlp_matches_numpy(activation):
  x = _normal(0, (2, 3, D))
  mod = layers.GatedMLP(mlp_dim=48, activation=activation)
  variables = jax.jit(mod.init)(jax.random.key(1), x)
  _assert_all_boxed(variables)
  p = nn.unbox(variables)["params"]
  assert set(p) == {"gate", "up", "down"}
  assert all(set(v) == {"kernel"} for v in p.values())  # No biases.
  xn = np.asarray(x, np.float64)
  g = xn @ np.asarray(p["gate"]["kernel"])
  u = xn @ np.asarray(p["up"]["kernel"])
  if activation == "silu":
    act = g / (1 + np.exp(-g))
  else:
    act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
  want = (act * u) @ np.asarray(p["down"]["kernel"])
  np.testing.assert_allclose(jax.jit(mod.apply)(nn.unbox(variables), x), want,
                             rtol=1e-4, atol=1e-5)


def test_gated_mlp_bad_activation():
  with pytest.raises(ValueError, match="gelu_tanh"):
    layers.GatedMLP(mlp_dim=8, activation="swish2").init(
        jax.random.key(0), jnp.ones((1, 1, 4)))


# ------------------------------------------------------------- attention


def _numpy_attention(params, x, pos, mask):
  """Explicit GQA reference: repeat each KV head for its query group."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  x = np.asarray(x, np.float64)

  def proj(name):
    out = np.einsum("bld,dhk->blhk", x, p[name]["kernel"])
    return out + p[name]["bias"] if "bias" in p[name] else out

  q, k, v = proj("q"), proj("k"), proj("v")
  rope = lambda t: np.asarray(_rope(jnp.asarray(t, jnp.float32), pos, 1e4),
                              np.float64)
  q, k = rope(q), rope(k)
  k = np.repeat(k, H // KH, axis=2)
  v = np.repeat(v, H // KH, axis=2)
  s = np.einsum("blhd,bshd->bhls", q, k) / np.sqrt(DH)
  s = np.where(mask[:, None], s, -1e30)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum("bhls,bshd->blhd", w, v)
  return np.einsum("blhd,hde->ble", o, p["o"]["kernel"])


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_attention_matches_reference(qkv_bias):
  apply, params, x, pos = _init_attention(qkv_bias)
  mask = np.asarray(masks.causal_mask(L, L))[None] & (
      np.random.default_rng(0).random((B, L, L)) > 0.3)
  mask[:, :, 0] = True  # Keep every row non-empty for the reference.
  out, cache = apply(params, x, pos, mask=jnp.asarray(mask))
  assert cache is None
  want = _numpy_attention(params, x, pos, mask)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_attention_params_and_names():
  x = jnp.ones((1, 2, D))
  pos = jnp.zeros((1, 2), jnp.int32)
  with_bias = jax.jit(_attention(True).init)(jax.random.key(0), x, pos,
                                             mask=None)
  no_bias = jax.eval_shape(_attention(False).init, jax.random.key(0), x, pos,
                           mask=None)
  _assert_all_boxed(with_bias)
  specs = nn.get_partition_spec(with_bias)["params"]
  assert tuple(specs["q"]["kernel"]) == ("embed", "heads", "head_dim")
  assert tuple(specs["k"]["bias"]) == ("kv_heads", "head_dim")
  assert tuple(specs["o"]["kernel"]) == ("heads", "head_dim", "embed")
  shapes = jax.tree.map(jnp.shape, nn.unbox(with_bias))["params"]
  assert shapes["q"] == {"kernel": (D, H, DH), "bias": (H, DH)}
  assert shapes["v"] == {"kernel": (D, KH, DH), "bias": (KH, DH)}
  assert shapes["o"] == {"kernel": (H, DH, D)}
  assert all("bias" not in v for v in nn.unbox(no_bias)["params"].values())


def test_causal_attention_ignores_future():
  apply, params, x, pos = _init_attention(True)
  mask = jnp.broadcast_to(masks.causal_mask(L, L), (B, L, L))
  out1, _ = apply(params, x, pos, mask=mask)
  x2 = x.at[:, 4:].set(_normal(9, (B, L - 4, D)))
  out2, _ = apply(params, x2, pos, mask=mask)
  np.testing.assert_allclose(out1[:, :4], out2[:, :4], atol=1e-6)
  assert np.abs(out1[:, 4:] - out2[:, 4:]).max() > 1e-3


def test_segment_mask_isolates_packed_sequences():
  apply, params, x, _ = _init_attention(True)
  seg = jnp.array([[1, 1, 1, 2, 2, 2]] * B)
  pos = masks.segment_positions(seg)
  mask = masks.causal_mask(L, L)[None] & masks.segment_mask(seg, seg)
  packed, _ = apply(params, x, pos, mask=mask)
  for sl in (slice(0, 3), slice(3, 6)):
    alone, _ = apply(params, x[:, sl], pos[:, sl],
                         mask=masks.causal_mask(3, 3)[None])
    np.testing.assert_allclose(packed[:, sl], alone, rtol=1e-5, atol=1e-5)


def test_fully_masked_row_is_finite():
  apply, params, x, pos = _init_attention(False)
  mask = jnp.zeros((B, L, L), bool)
  out, _ = apply(params, x, pos, mask=mask)
  assert np.isfinite(np.asarray(out)).all()


def test_attention_cache_writes_slots_and_matches_full():
  apply, params, x, pos = _init_attention(True)
  full, _ = apply(params, x, pos,
                      mask=jnp.broadcast_to(masks.causal_mask(L, L), (B, L, L)))
  s_max = L + 2
  zeros = jnp.zeros((B, KH, s_max, DH))  # heads-major, as init_kv_cache
  cache = {"k": zeros, "v": zeros}
  out_a, cache = apply(params, x[:, :4], pos[:, :4], cache=cache,
                           cache_index=jnp.int32(0),
                           mask=masks.causal_mask(4, s_max, 0)[None])
  assert np.abs(np.asarray(cache["k"][:, :, :4])).min() > 0
  np.testing.assert_array_equal(cache["k"][:, :, 4:], 0)
  out_b, cache = apply(params, x[:, 4:], pos[:, 4:], cache=cache,
                           cache_index=jnp.int32(4),
                           mask=masks.causal_mask(2, s_max, 4)[None])
  np.testing.assert_array_equal(cache["v"][:, :, L:], 0)
  np.testing.assert_allclose(jnp.concatenate([out_a, out_b], 1), full,
                             atol=1e-5)


def test_attention_cache_without_mask_raises():
  apply, params, x, pos = _init_attention(False)
  cache = {"k": jnp.zeros((B, 8, KH, DH)), "v": jnp.zeros((B, 8, KH, DH))}
  with pytest.raises(ValueError, match="mask"):
    apply(params, x, pos, mask=None, cache=cache, cache_index=0)
