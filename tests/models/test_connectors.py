"""Tests for mmjax.models.connectors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import connectors
from tests import helpers

jax.config.update("jax_default_matmul_precision", "highest")

_ALLOWED_NAMES = {"embed", "heads", "kv_heads", "head_dim", "mlp", "vocab",
                  None}
B, GH, GW, C, D = 2, 4, 6, 8, 16


def _normal(seed, shape, scale=1.0):
  rng = np.random.default_rng(seed)
  return scale * rng.normal(size=shape).astype(np.float32)


def _init(module, x, grid=None, seed=3):
  """Boxed abstract variables and unboxed params made of noise.

  Only shapes come from init (compiling a random init costs seconds here);
  noise on every leaf, zero biases included, makes wiring mistakes show.
  """
  variables = jax.eval_shape(
      lambda key, x: module.init(key, x, grid), jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda v: jnp.asarray(0.5 * rng.normal(size=v.shape), v.dtype),
      nn.unbox(variables))
  return variables, params


def _assert_all_boxed(variables):
  helpers.assert_all_boxed(variables, _ALLOWED_NAMES)


def _internvl_pixel_shuffle(x, scale_factor=0.5):
  """numpy transcription of InternVL's `pixel_shuffle` (ps_version 'v2')."""
  n, w, h, c = x.shape
  x = x.reshape(n, w, int(h * scale_factor), int(c / scale_factor))
  x = x.transpose(0, 2, 1, 3)
  x = x.reshape(n, int(h * scale_factor), int(w * scale_factor),
                int(c / (scale_factor * scale_factor)))
  return x.transpose(0, 2, 1, 3)


def _grid_tokens(gh, gw, c):
  """[1, gh*gw, c] tokens whose channel 0 is the row and channel 1 the col."""
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  x = np.zeros((gh, gw, c), np.float32)
  x[..., 0], x[..., 1] = rows, cols
  x[..., 2:] = _normal(0, (gh, gw, c - 2))
  return x.reshape(1, gh * gw, c)


def _windows(x, gh, gw):
  """Explicit-loop 2x2 gather: [B, gh*gw, C] -> [B, gh*gw/4, 4C]."""
  x = x.reshape(x.shape[0], gh, gw, -1)
  out = [np.concatenate([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1],
                         x[:, 2 * i + 1, 2 * j], x[:, 2 * i + 1, 2 * j + 1]],
                        axis=-1)
         for i in range(gh // 2) for j in range(gw // 2)]
  return np.stack(out, axis=1)


def test_pixel_shuffle_matches_internvl_transcription():
  x = _normal(1, (B, GH * GW, C))
  y, grid = connectors.pixel_shuffle(jnp.asarray(x), (GH, GW))
  # InternVL feeds reshape(n, h, w, c) of row-major tokens.
  ref = _internvl_pixel_shuffle(x.reshape(B, GH, GW, C))
  assert grid == (GH // 2, GW // 2)
  assert y.shape == (B, GH * GW // 4, 4 * C)
  np.testing.assert_array_equal(np.asarray(y), ref.reshape(B, -1, 4 * C))
  np.testing.assert_array_equal(np.asarray(y), _windows(x, GH, GW))


def test_pixel_shuffle_channel_order_decodes_to_neighbours():
  x = _grid_tokens(GH, GW, 4)
  y, _ = connectors.pixel_shuffle(jnp.asarray(x), (GH, GW))
  y = np.asarray(y).reshape(GH // 2, GW // 2, 4, 4)  # (i, j, block, channel)
  for i in range(GH // 2):
    for j in range(GW // 2):
      got = [tuple(y[i, j, k, :2].astype(int)) for k in range(4)]
      assert got == [(2 * i, 2 * j), (2 * i, 2 * j + 1),
                     (2 * i + 1, 2 * j), (2 * i + 1, 2 * j + 1)]


@pytest.mark.parametrize("grid", [(3, 4), (4, 5)])
def test_pixel_shuffle_rejects_odd_grid(grid):
  x = jnp.zeros((1, grid[0] * grid[1], C))
  with pytest.raises(ValueError, match="divisible by 2"):
    connectors.pixel_shuffle(x, grid)


def test_pixel_shuffle_rejects_wrong_grid():
  with pytest.raises(ValueError, match="cells"):
    connectors.pixel_shuffle(jnp.zeros((1, 10, C)), (4, 4))


def test_mlp_projector_equals_numpy():
  x = _normal(2, (B, GH * GW, C))
  mod = connectors.MLPProjector(D)
  variables, params = _init(mod, x)
  _assert_all_boxed(variables)
  p = params["params"]
  assert set(p) == {"linear_1", "linear_2"}
  assert p["linear_1"]["kernel"].shape == (C, D)
  assert p["linear_2"]["kernel"].shape == (D, D)
  y = jax.jit(mod.apply)(params, x)
  p = jax.tree.map(np.asarray, p)
  h = x @ p["linear_1"]["kernel"] + p["linear_1"]["bias"]
  erf = np.vectorize(math.erf)
  h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))  # Exact GELU, not tanh.
  ref = h @ p["linear_2"]["kernel"] + p["linear_2"]["bias"]
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_linear_projector_shape():
  x = _normal(3, (B, GH * GW, C))
  mod = connectors.LinearProjector(D)
  variables, params = _init(mod, x)
  _assert_all_boxed(variables)
  assert jax.jit(mod.apply)(params, x).shape == (B, GH * GW, D)


def test_pixel_shuffle_projector():
  x = _normal(4, (B, GH * GW, C))
  mod = connectors.PixelShuffleProjector(D)
  variables, params = _init(mod, x, (GH, GW))
  _assert_all_boxed(variables)
  p = params["params"]
  assert set(p) == {"layer_norm", "linear_1", "linear_2"}
  assert p["layer_norm"]["scale"].shape == (4 * C,)
  assert p["linear_1"]["kernel"].shape == (4 * C, D)
  y = jax.jit(mod.apply, static_argnums=2)(params, x, (GH, GW))
  assert y.shape == (B, GH * GW // 4, D)
  with pytest.raises(ValueError, match="grid"):
    mod.apply(params, x)


def test_patch_merger_windows():
  x = jnp.asarray(_grid_tokens(GH, GW, C))
  mod = connectors.PatchMerger(D)
  variables, params = _init(mod, x, (GH, GW))
  _assert_all_boxed(variables)
  p = params["params"]
  assert set(p) == {"ln_q", "mlp"}
  assert p["ln_q"]["scale"].shape == (C,)
  assert p["mlp"]["fc1"]["kernel"].shape == (4 * C, 4 * C)
  assert p["mlp"]["fc2"]["kernel"].shape == (4 * C, D)

  # The MLP's input must be the 2x2 windows of the layer-normed tokens.
  @jax.jit
  def run(params, x):
    seen = []

    def grab(next_fn, args, kwargs, context):
      if context.module.name == "mlp":
        seen.append(args[0])
      return next_fn(*args, **kwargs)

    with nn.intercept_methods(grab):
      y = mod.apply(params, x, (GH, GW))
    return y, seen[0]

  y, mlp_in = run(params, x)
  assert y.shape == (1, GH * GW // 4, D)
  xn = np.asarray(x)
  mu = xn.mean(-1, keepdims=True)
  ln = (xn - mu) / np.sqrt(((xn - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
  ln = ln * np.asarray(p["ln_q"]["scale"]) + np.asarray(p["ln_q"]["bias"])
  np.testing.assert_allclose(np.asarray(mlp_in), _windows(ln, GH, GW),
                             rtol=1e-5, atol=1e-5)

  # Perturbing patch (r, c) changes exactly merged token (r//2, c//2).
  for r, c in [(0, 0), (1, 3), (3, 5), (2, 4)]:
    x2 = x.at[0, r * GW + c, 2].add(3.0)
    diff = np.abs(np.asarray(run(params, x2)[0] - y)).max(-1)[0]
    assert set(np.flatnonzero(diff > 1e-6)) == {(r // 2) * (GW // 2) + c // 2}


@pytest.mark.parametrize("kind,tokens", [("linear", GH * GW), ("mlp", GH * GW),
                                         ("pixel_shuffle", GH * GW // 4),
                                         ("patch_merger", GH * GW // 4)])
def test_make_projector(kind, tokens):
  mod = connectors.make_projector(kind, D)
  x = jnp.zeros((B, GH * GW, C))
  variables = jax.eval_shape(
      lambda k, x: mod.init(k, x, (GH, GW)), jax.random.key(0), x)
  out = jax.eval_shape(lambda v, x: mod.apply(v, x, (GH, GW)), variables, x)
  assert out.shape == (B, tokens, D)


def test_make_projector_unknown():
  with pytest.raises(ValueError, match="linear, mlp, pixel_shuffle"):
    connectors.make_projector("conv", D)
