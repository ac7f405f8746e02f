"""Tests for mmjax.models.positions (1-D RoPE)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import positions

jax.config.update("jax_default_matmul_precision", "highest")

# Jitted once per shape: much cheaper than compiling each eager op.
_rope = jax.jit(positions.apply_rope, static_argnums=2)


def _numpy_rope(x, pos, theta):
  """Plain HF LLaMA rotate_half RoPE. x: [B, L, H, Dh], pos: [B, L]."""
  dh = x.shape[-1]
  inv_freq = 1.0 / theta**(np.arange(0, dh, 2, dtype=np.float64) / dh)
  freqs = pos[..., None].astype(np.float64) * inv_freq  # [B, L, Dh/2]
  emb = np.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  rotated = np.concatenate([-x[..., dh // 2:], x[..., :dh // 2]], axis=-1)
  return x * np.cos(emb) + rotated * np.sin(emb)


def test_inv_freq_values():
  got = positions.rope_inv_freq(8, 10_000.0)
  np.testing.assert_allclose(got, [1.0, 0.1, 0.01, 0.001], rtol=1e-6)
  assert got.dtype == jnp.float32


def test_odd_head_dim_rejected():
  with pytest.raises(ValueError, match="even head_dim"):
    positions.rope_inv_freq(7, 10_000.0)


def test_position_zero_is_identity():
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 16)).astype(np.float32)
  out = _rope(x, jnp.zeros((2, 3), jnp.int32), 10_000.0)
  np.testing.assert_array_equal(out, x)


def test_matches_numpy_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 3, 16)).astype(np.float32)
  pos = rng.integers(0, 1000, size=(2, 5))
  got = _rope(jnp.asarray(x), jnp.asarray(pos, jnp.int32), 1e4)
  np.testing.assert_allclose(got, _numpy_rope(x, pos, 1e4), atol=2e-4)


def test_float_positions_match_reference():
  # V2PE feeds fractional positions.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 4, 2, 8)).astype(np.float32)
  pos = np.array([[0.0, 0.25, 0.5, 3.75]])
  got = _rope(jnp.asarray(x), jnp.asarray(pos, jnp.float32), 1e4)
  np.testing.assert_allclose(got, _numpy_rope(x, pos, 1e4), atol=1e-5)


def test_relative_property():
  """<rope(q, m), rope(k, n)> depends only on m - n."""
  rng = np.random.default_rng(1)
  q = rng.normal(size=(1, 1, 1, 32)).astype(np.float32)
  k = rng.normal(size=(1, 1, 1, 32)).astype(np.float32)

  def dot(m, n):
    qm = _rope(q, jnp.full((1, 1), m, jnp.float32), 1e4)
    kn = _rope(k, jnp.full((1, 1), n, jnp.float32), 1e4)
    return float(np.sum(np.asarray(qm) * np.asarray(kn)))

  base = dot(7, 3)
  assert dot(104, 100) == pytest.approx(base, abs=1e-4)
  assert dot(4, 0) == pytest.approx(base, abs=1e-4)
  # A different offset gives a different score, so the test can fail.
  assert abs(dot(8, 3) - base) > 1e-3


def test_preserves_dtype_and_norm():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 2, 16)),
                  jnp.bfloat16)
  out = _rope(x, jnp.arange(4)[None] * 50, 1e4)
  assert out.dtype == jnp.bfloat16
  # A rotation keeps each head vector's length.
  np.testing.assert_allclose(
      np.linalg.norm(np.asarray(out, np.float32), axis=-1),
      np.linalg.norm(np.asarray(x, np.float32), axis=-1), rtol=2e-2)


def test_shape_mismatch_raises():
  with pytest.raises(ValueError, match="positions"):
    positions.apply_rope(jnp.zeros((2, 3, 1, 8)), jnp.zeros((2, 4)), 1e4)


def test_written_once_returns_the_tables_unchanged():
  angles = jnp.linspace(-50.0, 50.0, 2 * 3 * 8).reshape(2, 3, 8)
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  got_cos, got_sin = jax.jit(positions.written_once)(cos, sin)
  np.testing.assert_array_equal(got_cos, cos)
  np.testing.assert_array_equal(got_sin, sin)


def test_rotary_tables_dispatch_on_the_rank_of_the_ids():
  pos = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
  cos, sin = positions.rotary_tables(pos, 8, 1e4)
  assert cos.shape == sin.shape == (2, 3, 8)
  x = jnp.ones((2, 3, 1, 8))
  np.testing.assert_allclose(positions.apply_rotary(x, cos, sin),
                             positions.apply_rope(x, pos, 1e4), rtol=1e-6)
  with pytest.raises(ValueError, match="need mrope_sections"):
    positions.rotary_tables(jnp.stack([pos] * 3), 8, 1e4)
  with pytest.raises(ValueError, match=r"\[B, L\] .* \[3, B, L\]"):
    positions.rotary_tables(pos[0], 8, 1e4)


def test_a_decoder_train_step_evaluates_cos_and_sin_once():
  """XLA:CPU evaluates a fused producer inside every consumer: without
  `written_once` a 2-layer decoder's gradient computed cos 8 times (q and k,
  forward and backward, per layer), at ~4 ns an element."""
  from mmjax import testing  # pylint: disable=g-import-not-at-top
  from mmjax.models import decoder  # pylint: disable=g-import-not-at-top
  cfg = testing.tiny_decoder_config()
  assert cfg.n_layers >= 2
  model = decoder.DecoderLM(cfg)
  tokens = jnp.zeros((2, 8), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)

  def loss(p):
    return model.apply(p, tokens)[0].sum()

  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  assert hlo.count(" cosine(") == 1, hlo.count(" cosine(")
  assert hlo.count(" sine(") == 1, hlo.count(" sine(")
