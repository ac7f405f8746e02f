"""Tests for mmjax.train.sigmoid_ring (ring-exchanged sigmoid loss).

The multi-device checks need 8 simulated CPU devices, and the device count is
fixed when JAX's CPU backend starts, for the whole process. The rest of the
suite runs with 1 device in the pytest process (and pytest imports every test
module, hence jax, before running any test), so a conftest flag would either
come too late or change the device count for every other test. Instead, a
module-scoped fixture runs this file as a script in a fresh interpreter with
XLA_FLAGS=--xla_force_host_platform_device_count=8; the script prints one JSON
line of measurements (differences to the plain loss, compiled memory) and the
tests assert on it. Single-device behaviour is tested in-process.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import parallel
from mmjax.train import losses
from mmjax.train import sigmoid_ring

_N_DEVICES = 8
# (mesh shape, block_size) pairs compared with the plain loss.
_CASES = (((8, 1, 1), None), ((2, 4, 1), None), ((2, 4, 1), 4))
_MEMORY_BATCHES = (1024, 2048, 4096)
_MEMORY_EMBED = 64


def _embeddings(batch, dim, seed=0):
  """Unit-norm zimg, ztxt f32[batch, dim]; text i correlates with image i."""
  rng = np.random.default_rng(seed)
  zimg = rng.normal(size=(batch, dim))
  ztxt = 0.7 * zimg + rng.normal(size=(batch, dim))
  unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)
  return (jnp.asarray(unit(zimg), jnp.float32),
          jnp.asarray(unit(ztxt), jnp.float32))


def _args(batch, dim, seed=0):
  zimg, ztxt = _embeddings(batch, dim, seed)
  return zimg, ztxt, jnp.float32(np.log(10.0)), jnp.float32(-5.0)


def _plain(*args):
  return losses.sigmoid_contrastive_loss(*args)


def _max_differences(mesh, block_size, batch=64, dim=16):
  """Largest |chunked - plain| over the loss, each gradient and the metrics."""
  args = _args(batch, dim)
  argnums = (0, 1, 2, 3)

  def chunked(*a):
    return sigmoid_ring.chunked_sigmoid_loss(*a, mesh, block_size=block_size)

  (loss, metrics), grads = jax.jit(
      jax.value_and_grad(chunked, argnums, has_aux=True))(*args)
  (loss0, metrics0), grads0 = jax.jit(
      jax.value_and_grad(_plain, argnums, has_aux=True))(*args)
  out = {"loss": float(abs(loss - loss0)), "loss_value": float(loss0)}
  for name, g, g0 in zip(("zimg", "ztxt", "scale", "bias"), grads, grads0):
    # Relative to the gradient's size, so the tolerance is scale-free.
    out[f"grad_{name}"] = float(jnp.max(jnp.abs(g - g0))
                                / jnp.maximum(jnp.max(jnp.abs(g0)), 1e-12))
  for key, value in metrics0.items():
    out[f"metric_{key}"] = float(abs(metrics[key] - value))
  return out


def _temp_bytes(fn, batch, mesh):
  """Compiled temp bytes per device of value_and_grad(fn) on a sharded batch."""
  sharding = parallel.batch_sharding(mesh, parallel.DEFAULT_RULES)
  z = jax.ShapeDtypeStruct((batch, _MEMORY_EMBED), jnp.float32,
                           sharding=sharding)
  s = jax.ShapeDtypeStruct((), jnp.float32)
  grad = jax.value_and_grad(lambda *a: fn(*a)[0], (0, 1, 2, 3))
  compiled = jax.jit(grad).lower(z, z, s, s).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def _worker() -> dict:
  """Runs in the 8-device subprocess; returns the measurements."""
  assert jax.device_count() == _N_DEVICES, jax.devices()
  result = {"diff": {}, "memory": {}}
  for shape, block_size in _CASES:
    mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))
    key = f"{shape}/block_size={block_size}"
    result["diff"][key] = _max_differences(mesh, block_size)
  mesh = parallel.make_mesh({"data": -1})
  try:
    sigmoid_ring.chunked_sigmoid_loss(*_args(60, 8), mesh)
  except ValueError as e:
    result["indivisible_error"] = str(e)
  variants = {
      "plain": _plain,
      "chunked": lambda *a: sigmoid_ring.chunked_sigmoid_loss(*a, mesh),
      "chunked_block64": lambda *a: sigmoid_ring.chunked_sigmoid_loss(
          *a, mesh, block_size=64),
  }
  for batch in _MEMORY_BATCHES:
    # At the smallest batch only the plain loss is asserted on.
    names = ["plain"] if batch == _MEMORY_BATCHES[0] else list(variants)
    result["memory"][batch] = {name: _temp_bytes(variants[name], batch, mesh)
                               for name in names}
  return result


@pytest.fixture(scope="module")
def multi_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                      f"device_count={_N_DEVICES}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  print("\ntemp bytes per device, value_and_grad, E=64, 8 devices:")
  for batch, row in result["memory"].items():
    print(f"  B={batch:>5}: " + ", ".join(f"{k} {v:,}" for k, v in row.items()))
  return result


@pytest.mark.slow
@pytest.mark.parametrize("shape,block_size", _CASES, ids=str)
def test_loss_grads_metrics_match_plain(multi_device, shape, block_size):
  diff = multi_device["diff"][f"{shape}/block_size={block_size}"]
  assert diff["loss_value"] > 1.0  # A loss that is not trivially ~0.
  assert diff["loss"] < 1e-5
  for name in ("zimg", "ztxt", "scale", "bias"):
    assert diff[f"grad_{name}"] < 1e-5, (name, diff)
  for key in ("i2t_accuracy", "t2i_accuracy", "temperature"):
    assert diff[f"metric_{key}"] == 0.0, (key, diff)
  for key in ("pos_logit", "neg_logit"):
    assert diff[f"metric_{key}"] < 1e-5, (key, diff)


@pytest.mark.slow
def test_memory_linear_in_batch_not_quadratic(multi_device):
  mem = {int(b): row for b, row in multi_device["memory"].items()}
  # The plain loss holds [B/8, B] logits stripes: x4 per batch doubling.
  assert mem[4096]["plain"] > 3.5 * mem[2048]["plain"]
  assert mem[2048]["plain"] > 3.0 * mem[1024]["plain"]
  # The ring loss is far below it, and with a fixed block grows linearly.
  assert mem[2048]["chunked"] * 3 < mem[2048]["plain"]
  assert mem[4096]["chunked"] * 5 < mem[4096]["plain"]
  assert mem[4096]["chunked_block64"] < 2.3 * mem[2048]["chunked_block64"]
  assert mem[4096]["chunked_block64"] < mem[4096]["chunked"]


@pytest.mark.slow
def test_indivisible_batch_is_a_clear_error(multi_device):
  message = multi_device["indivisible_error"]
  assert "60" in message and "multiple of 8" in message


def test_single_device_matches_plain():
  mesh = parallel.make_mesh({"data": -1}, jax.devices()[:1])
  args = _args(12, 8, seed=3)
  for block_size in (None, 4):
    loss, metrics = jax.jit(lambda *a, bs=block_size: (
        sigmoid_ring.chunked_sigmoid_loss(*a, mesh, block_size=bs)))(*args)
    loss0, metrics0 = _plain(*args)
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    for key, value in metrics0.items():
      np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-6,
                                 err_msg=key)


def test_rejects_bad_block_size_and_axes():
  mesh = parallel.make_mesh({"data": -1}, jax.devices()[:1])
  args = _args(12, 8)
  with pytest.raises(ValueError, match="block_size=5 must divide"):
    sigmoid_ring.chunked_sigmoid_loss(*args, mesh, block_size=5)
  with pytest.raises(ValueError, match="not mesh axes"):
    sigmoid_ring.chunked_sigmoid_loss(*args, mesh, axes=("batch",))
  with pytest.raises(ValueError, match="same shape"):
    sigmoid_ring.chunked_sigmoid_loss(args[0], args[1][:6], *args[2:], mesh)


if __name__ == "__main__":
  print(json.dumps(_worker()))
