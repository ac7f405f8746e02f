"""The train step's matmuls one by one, XLA beside PyTorch, and the floor
they put under the step.

  python benchmarks/step_matmuls.py --sizes=tiny,small [--out=matmuls.json]
  python benchmarks/step_matmuls.py --quick      # tiny, no HF, short (CI)

Lists every dot_general of mmjax's train step (the trainer's own step of
benchmarks/train_step.py: forward, backward, patch embedding and projector;
`common.dot_generals`), groups the ones with equal operand shapes and
dimension numbers, and times each group's product alone with its operands
resident: `lax.dot_general` jitted by XLA, and the same product as
`torch.einsum` with 2 threads (checked to give the same numbers). Summed
over the step with their counts, they are what its matmuls cost with each
library's kernels when nothing else runs: a floor under the step time.

It also times the whole mmjax step and (--hf) the Hugging Face LLaVA step
(benchmarks/hf_llava.py, a subprocess), and prints the ceiling each
library's kernels put on the mmjax/HF throughput ratio: HF's step time over
the matmul floor. A target above that ceiling cannot be reached by any
change outside the matmul kernels.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import hf_run  # pylint: disable=g-import-not-at-top
from benchmarks import host  # pylint: disable=g-import-not-at-top

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"],
                           "sizes from benchmarks/common.py SIZES")
_FUSION = flags.DEFINE_string("fusion", "projection",
                              "fusion paradigm: " + ",".join(common.FUSIONS))
_STEPS = flags.DEFINE_integer("steps", 10, "timed mmjax (and HF) steps")
_HF = flags.DEFINE_bool("hf", True, "also time the Hugging Face LLaVA step "
                        "(projection only)")
_TORCH = flags.DEFINE_bool("torch", True, "also time each product in torch")
_BUDGET = flags.DEFINE_float("budget_gflop", 0.3, "FLOPs per timed batch "
                             "of back-to-back calls of one product (GFLOP)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed batches per product "
                                "(the best counts)")
_TOP = flags.DEFINE_integer("top", 12, "products printed per size (by XLA "
                            "time in the step; the JSON has all)")
_OUT = flags.DEFINE_string("out", "", "JSON results file")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: tiny, no HF, 2 steps, "
                           "one short batch per product")

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def einsum_equation(lhs_ndim: int, rhs_ndim: int, dimension_numbers) -> str:
  """The einsum of a dot_general: output = batch, lhs free, rhs free dims.

  >>> einsum_equation(3, 2, (((2,), (0,)), ((), ())))
  'abc,cd->abd'
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  lhs, rhs = [""] * lhs_ndim, [""] * rhs_ndim
  letters = iter(_LETTERS)
  for pairs in (zip(lhs_batch, rhs_batch), zip(lhs_contract, rhs_contract)):
    for i, j in pairs:
      lhs[i] = rhs[j] = next(letters)
  lhs = [c or next(letters) for c in lhs]
  rhs = [c or next(letters) for c in rhs]
  lhs_free = [c for i, c in enumerate(lhs)
              if i not in lhs_batch and i not in lhs_contract]
  rhs_free = [c for i, c in enumerate(rhs)
              if i not in rhs_batch and i not in rhs_contract]
  out = [lhs[i] for i in lhs_batch] + lhs_free + rhs_free
  return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def step_products(jaxpr) -> list[dict]:
  """The step's dot_generals grouped by shapes, dims and dtype, with counts."""
  groups = {}
  for eqn, times in common.dot_generals(jaxpr):
    lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
    dims = eqn.params["dimension_numbers"]
    key = (lhs.shape, rhs.shape, str(dims), str(lhs.dtype))
    if key not in groups:
      groups[key] = dict(
          lhs=list(lhs.shape), rhs=list(rhs.shape), dtype=str(lhs.dtype),
          einsum=einsum_equation(len(lhs.shape), len(rhs.shape), dims),
          dims=dims, count=0, flops=common.dot_general_flops(eqn))
    groups[key]["count"] += times
  return list(groups.values())


def best_seconds_per_call(call, block, calls: int, repeats: int) -> float:
  """Best over `repeats` batches of `calls` back-to-back calls, per call."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = call()
    block(out)
    best = min(best, (time.perf_counter() - start) / calls)
  return best


def time_products(products: list[dict], budget: float, repeats: int,
                  with_torch: bool) -> float:
  """Fills xla_s (and torch_s, max_rel_diff) of each product in place.

  Returns the per-call floor of a jitted XLA call (an [8] increment), the
  dispatch overhead included in every xla_s.
  """
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  operands = [(rng.standard_normal(p["lhs"], np.float32),
               rng.standard_normal(p["rhs"], np.float32)) for p in products]
  outputs = []
  for p, (a, b) in zip(products, operands):
    f = jax.jit(lambda x, y, dims=p["dims"]: jax.lax.dot_general(x, y, dims))
    x, y = jax.device_put(a).astype(p["dtype"]), jax.device_put(b).astype(
        p["dtype"])
    outputs.append(np.asarray(f(x, y), np.float32))  # compiles
    calls = max(2, int(budget / p["flops"]))
    p["xla_s"] = best_seconds_per_call(lambda: f(x, y), jax.block_until_ready,
                                       calls, repeats)
  tick = jax.jit(lambda v: v + 1)
  v = tick(jax.numpy.zeros(8))
  floor = best_seconds_per_call(lambda: tick(v), jax.block_until_ready, 200,
                                repeats)
  if not with_torch:
    return floor
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  for p, (a, b), ref in zip(products, operands, outputs):
    ta = torch.from_numpy(a).to(getattr(torch, p["dtype"]))
    tb = torch.from_numpy(b).to(getattr(torch, p["dtype"]))
    got = torch.einsum(p["einsum"], ta, tb).float().numpy()
    # The einsum must be the same product, or its time means nothing.
    p["max_rel_diff"] = float(np.max(np.abs(got - ref)) /
                              max(np.max(np.abs(ref)), 1e-30))
    if got.shape != ref.shape or p["max_rel_diff"] > 1e-2:
      raise AssertionError(f"torch.einsum({p['einsum']}) differs from XLA's "
                           f"dot_general {p['dims']}: {p['max_rel_diff']}")
    calls = max(2, int(budget / p["flops"]))
    p["torch_s"] = best_seconds_per_call(
        lambda ta=ta, tb=tb, eq=p["einsum"]: torch.einsum(eq, ta, tb),
        lambda out: None, calls, repeats)
  return floor


PRODUCT_COLUMNS = (
    ("lhs", "lhs_str", ""), ("rhs", "rhs_str", ""), ("einsum", "einsum", ""),
    ("count", "count", "d"), ("MFLOP", "mflop", ".1f"),
    ("XLA us", "xla_us", ".0f"), ("torch us", "torch_us", ".0f"),
    ("XLA GFLOP/s", "xla_gflops", ".1f"),
    ("torch GFLOP/s", "torch_gflops", ".1f"),
    ("XLA ms in step", "xla_step_ms", ".2f"))
SUMMARY_COLUMNS = (
    ("size", "size", ""), ("products", "products", "d"),
    ("matmuls", "matmuls", "d"), ("GFLOP", "gflop", ".3f"),
    ("XLA matmuls ms", "xla_ms", ".1f"),
    ("torch matmuls ms", "torch_ms", ".1f"),
    ("mmjax step ms", "step_ms", ".1f"),
    ("matmul share", "matmul_share", ".0%"), ("HF step ms", "hf_ms", ".1f"),
    ("x HF now", "ratio_now", ".2f"),
    ("x HF ceiling (XLA kernels)", "ceiling_xla", ".2f"),
    ("x HF ceiling (torch kernels)", "ceiling_torch", ".2f"))


def main(argv):
  del argv
  try:
    sizes = common.parse_choices(["tiny"] if _QUICK.value else _SIZES.value,
                                 tuple(common.SIZES), "sizes")
    common.parse_choices([_FUSION.value], common.FUSIONS, "fusion")
  except common.BenchmarkInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  steps = 2 if _QUICK.value else _STEPS.value
  budget = 0.0 if _QUICK.value else _BUDGET.value * 1e9
  repeats = 1 if _QUICK.value else _REPEATS.value
  use_hf = _HF.value and not _QUICK.value and _FUSION.value == "projection"
  hf_env = host.prepare()
  hf = {s: hf_run.run_hf(s, steps, 1, common.BATCH, common.TEXT_LEN,
                         env=hf_env)
        for s in sizes} if use_hf else {}  # before JAX starts, as elsewhere
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  print(f"step matmuls, {jax.devices()[0].platform}, {_FUSION.value}, batch "
        f"{common.BATCH}, host prepared as mmjax.main does: "
        f"{host.enabled()}, {common.load_average()}", flush=True)
  summaries, all_products = [], {}
  for size in sizes:
    row = train_step.measure(size, _FUSION.value, steps, 1,
                             count_flops=False)
    setup = train_step.build_step(size, _FUSION.value, abstract=True)
    with setup.context():
      jaxpr = jax.make_jaxpr(setup.step)(setup.state, setup.batch).jaxpr
    products = step_products(jaxpr)
    floor = time_products(products, budget, repeats, _TORCH.value)
    for p in products:
      p.update(lhs_str="x".join(map(str, p["lhs"])),
               rhs_str="x".join(map(str, p["rhs"])), mflop=p["flops"] / 1e6,
               xla_us=p["xla_s"] * 1e6, xla_gflops=p["flops"] / p["xla_s"] / 1e9,
               xla_step_ms=p["count"] * p["xla_s"] * 1e3)
      if "torch_s" in p:
        p.update(torch_us=p["torch_s"] * 1e6,
                 torch_gflops=p["flops"] / p["torch_s"] / 1e9)
      p["dims"] = str(p["dims"])
    products.sort(key=lambda p: -p["xla_step_ms"])
    summary = dict(
        size=size, products=len(products),
        matmuls=sum(p["count"] for p in products),
        gflop=sum(p["count"] * p["flops"] for p in products) / 1e9,
        xla_ms=sum(p["xla_step_ms"] for p in products),
        step_ms=row["step_s"] * 1e3, xla_call_floor_us=floor * 1e6,
        load=common.load_average())
    summary["matmul_share"] = summary["xla_ms"] / summary["step_ms"]
    if _TORCH.value:
      summary["torch_ms"] = sum(p["count"] * p["torch_s"] for p in products
                                ) * 1e3
    if size in hf:
      summary["hf_ms"] = hf[size]["step_s"] * 1e3
      summary["ratio_now"] = summary["hf_ms"] / summary["step_ms"]
      summary["ceiling_xla"] = summary["hf_ms"] / summary["xla_ms"]
      if "torch_ms" in summary:
        summary["ceiling_torch"] = summary["hf_ms"] / summary["torch_ms"]
    print(f"\n[{size}] {summary['matmuls']} matmuls in "
          f"{summary['products']} distinct products, "
          f"{summary['gflop']:.3f} GFLOP; a jitted call costs at least "
          f"{summary['xla_call_floor_us']:.1f} us here; {summary['load']}")
    common.print_table(products[:_TOP.value], PRODUCT_COLUMNS)
    summaries.append(summary)
    all_products[size] = products
  print("\nFloors: each product timed alone, operands resident, times its "
        "count in the step. Ceiling = HF step / matmul floor: the best "
        "mmjax/HF ratio with those kernels if nothing but matmuls ran.")
  common.print_table(summaries, SUMMARY_COLUMNS)
  common.write_json(_OUT.value, {
      "benchmark": "step_matmuls", "fusion": _FUSION.value,
      "batch": common.BATCH, "text_len": common.TEXT_LEN,
      "prepare_host": host.enabled(), "summaries": summaries,
      "products": all_products,
      "hf": hf})


if __name__ == "__main__":
  app.run(main)
