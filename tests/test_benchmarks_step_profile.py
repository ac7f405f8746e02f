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


def test_library_fusions_are_matmuls_only_when_they_hold_a_dot():
  """YNNPACK runs reductions as well as matmuls, under the same kind of name
  (`ynn_fusion.N`): the optimized HLO, not the name, says which kernel is a
  matmul."""
  @jax.jit
  def f(a, b):
    return a @ b, jnp.sum(jnp.square(b))
  a = jnp.ones((256, 256))
  hlo = f.lower(a, a).compile().as_text()
  matmuls = xla_profile.matmul_kernels(hlo)
  meta = xla_profile.hlo_metadata(hlo)
  entry = hlo[hlo.index("\nENTRY"):].split("\n}")[0]
  kernels = [line.split(" = ")[0].split("%")[-1]
             for line in entry.splitlines()[1:] if " = " in line]
  dots = [k for k in kernels if "dot_general" in meta[k][1]]
  sums = [k for k in kernels if "reduce_sum" in meta[k][1]]
  assert dots and sums, kernels
  assert all(xla_profile.kernel_class(k, matmuls) == "matmul" for k in dots)
  assert all(xla_profile.kernel_class(k, matmuls) == "elementwise/reduce"
             for k in sums), [(k, meta[k]) for k in sums]
  assert xla_profile.kernel_class("ynn_fusion.3", {"ynn_fusion.7"}) == (
      "elementwise/reduce")


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
