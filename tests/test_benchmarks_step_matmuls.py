"""benchmarks/step_matmuls.py: the step's matmuls, listed, timed, compared."""
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common
from benchmarks import train_step
from tests.test_benchmarks import run_script


def test_dot_generals_lists_each_matmul_with_its_run_count():
  def f(a, b, flag):
    def body(carry, _):
      return jnp.dot(carry, b), None
    a = jax.lax.scan(body, a, None, length=3)[0]
    # cond: the branch with more matmul FLOPs counts (two dots vs one).
    return jax.lax.cond(flag, lambda x: x @ b @ b, lambda x: x @ b, a)
  jaxpr = jax.make_jaxpr(f)(jnp.ones((4, 8)), jnp.ones((8, 8)), True).jaxpr
  found = common.dot_generals(jaxpr)
  assert sorted(n for _, n in found) == [1, 1, 3]
  assert all(common.dot_general_flops(e) == 2 * 4 * 8 * 8 for e, _ in found)
  assert common.dot_flops(jaxpr) == 5 * 2 * 4 * 8 * 8


def test_quick_run_lists_the_steps_matmuls_and_times_both_libraries(
    tmp_path):
  out = tmp_path / "matmuls.json"
  proc = run_script("step_matmuls.py", "--quick", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "x HF ceiling (XLA kernels)" in proc.stdout
  result = json.loads(out.read_text())
  (summary,) = result["summaries"]
  products = result["products"]["tiny"]
  # Every matmul of the tiny train step, nothing else: the analytic count.
  setup = train_step.build_step("tiny", "projection", abstract=True)
  analytic = common.analytic_train_flops(setup.cfg, 8, 128)["total"]
  assert sum(p["count"] * p["flops"] for p in products) == pytest.approx(
      analytic, rel=1e-9)
  assert summary["gflop"] == pytest.approx(analytic / 1e9, rel=1e-9)
  assert summary["matmuls"] == sum(p["count"] for p in products)
  assert summary["products"] == len(products) > 10
  # The torch einsum of each product computed XLA's numbers (the script
  # stops otherwise), and both were timed.
  for p in products:
    assert p["max_rel_diff"] < 1e-4, p
    assert p["xla_s"] > 0 and p["torch_s"] > 0
  assert summary["xla_ms"] == pytest.approx(
      sum(p["count"] * p["xla_s"] for p in products) * 1e3)
  assert summary["matmul_share"] == pytest.approx(
      summary["xla_ms"] / summary["step_ms"])
  assert "hf_ms" not in summary  # --quick runs no HF step


def test_bad_size_exits_2_with_one_line():
  proc = run_script("step_matmuls.py", "--sizes=huge")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --sizes")
