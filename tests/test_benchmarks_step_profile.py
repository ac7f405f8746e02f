"""benchmarks/step_profile.py and xla_profile.py: the train step's kernels,
traced, classified and attributed to the part of the step they serve."""
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common
from benchmarks import xla_profile
from tests.test_benchmarks import run_script


@pytest.mark.parametrize("name,expected", [
    ("ynn_fusion.12", "matmul"), ("dot.3", "matmul"),
    ("copy_bitcast_fusion.61", "layout copy"), ("copy.940", "layout copy"),
    ("transpose_copy_fusion.5", "layout copy"),
    ("add_divide_fusion", "elementwise/reduce"),
    ("wrapped_reduce.65", "elementwise/reduce")])
def test_kernel_class(name, expected):
  assert xla_profile.kernel_class(name) == expected


@pytest.mark.parametrize("op_name,expected", [
    ("jit(step_fn)/transpose(jvp(MLLM))/llm/layers_0/mlp/jit(silu)", "mlp"),
    ("jit(step_fn)/jvp(MLLM)/llm/layers_1/attn/reshape", "attn"),
    ("jit(step_fn)/jvp(MLLM)/MLLM.encode_images/vision/layers_0/self_attn/"
     "div", "vision"),
    ("jit(step_fn)/jvp()/reduce", "loss"),
    ("jit(step_fn)/jit(_where)/select_n", "optimizer"), ("", "?")])
def test_component(op_name, expected):
  assert xla_profile.component(op_name) == expected


def test_profile_kernels_counts_a_known_program():
  """Two dots and an elementwise fusion per call, three calls: the tally
  finds the matmuls by class and names each kernel's op from the HLO."""
  @jax.jit
  def f(a, b):
    return jnp.tanh(a @ b) @ b
  a = jnp.ones((256, 256))
  compiled = f.lower(a, a).compile()
  compiled(a, a).block_until_ready()
  result = xla_profile.profile_kernels(
      lambda: compiled(a, a).block_until_ready(), 3, compiled.as_text())
  assert result["steps"] == 3
  matmul = result["by_class"]["matmul"]
  assert matmul["count"] == pytest.approx(2.0)
  assert 0 < matmul["ms"] <= result["kernel_ms"]
  assert result["wall_ms"] > 0
  named = [k for k in result["kernels"] if k["op_name"]]
  assert any("tanh" in k["op_name"] for k in named), result["kernels"]


def test_quick_run_profiles_the_tiny_step(tmp_path):
  out = tmp_path / "profile.json"
  proc = run_script("step_profile.py", "--quick", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "slowest kernels that are not matmuls" in proc.stdout
  result = json.loads(out.read_text())
  assert result["cpu"] == common.cpu_info()
  # Run as mmjax.main runs (computations inline on the calling thread), the
  # wall time comes from the caller's execution events.
  assert result["prepare_host"]
  (row,) = result["rows"]
  assert row["size"] == "tiny" and row["kernels_per_step"] > 100
  assert 0 < row["wall_ms"] < 10_000
  parts = row["by_component"]
  for part in ("attn", "mlp", "vision", "lm_head", "optimizer"):
    assert parts[part]["ms"] > 0, part
  assert parts["lm_head"]["matmul_ms"] > 0
  assert 0 < row["matmul_share"] < 1
  assert row["matmul_ms"] + row["copy_ms"] + row["elementwise_ms"] == (
      pytest.approx(row["kernel_ms"]))


def test_bad_size_exits_2_with_one_line():
  proc = run_script("step_profile.py", "--sizes=huge")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --sizes")
