"""The train step's kernels one by one: where the time that is not matmul
goes, and how many kernels a step launches (XLA:CPU).

  python benchmarks/step_profile.py --sizes=tiny,small [--out=profile.json]
  python benchmarks/step_profile.py --quick      # tiny, 2 steps (CI)

Compiles the trainer's own step (benchmarks/train_step.py: forward,
backward, clipping, AdamW, the non-finite guard) on the synthetic batch,
runs it `--warmup` times, then traces `--steps` steps with jax.profiler
(benchmarks/xla_profile.py) and prints, per size:

  - wall ms per step and the kernels it launched;
  - thread time by kernel class (matmul, layout copy, elementwise/reduce)
    and by part of the step (vision, attn, mlp, lm_head, loss, optimizer);
  - the time during which 0, 1 or 2 kernels ran (2 cores);
  - the `--top` slowest kernels that are not matmuls, with their op_name
    and shape.

Thread times are the kernels' own: a matmul that borrows the second
thread counts once, so they do not sum to the wall time. For the matmul
floor (each product timed alone) see benchmarks/step_matmuls.py.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import host  # pylint: disable=g-import-not-at-top

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"],
                           "sizes from benchmarks/common.py SIZES")
_FUSION = flags.DEFINE_enum("fusion", "projection", list(common.FUSIONS),
                            "fusion paradigm")
_STEPS = flags.DEFINE_integer("steps", 5, "traced steps per size")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untraced steps after compiling")
_TOP = flags.DEFINE_integer("top", 15, "slowest non-matmul kernels printed")
_OUT = flags.DEFINE_string("out", "", "JSON results file")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: tiny, 2 steps")

_SUMMARY = (("size", "size", ""), ("wall ms", "wall_ms", ".1f"),
            ("kernels", "kernels_per_step", ".0f"),
            ("kernel ms", "kernel_ms", ".1f"), ("matmul ms", "matmul_ms",
                                                 ".1f"),
            ("layout copy ms", "copy_ms", ".1f"),
            ("elementwise ms", "elementwise_ms", ".1f"),
            ("matmul share", "matmul_share", ".0%"),
            ("idle ms", "idle_ms", ".1f"), ("1 kernel ms", "one_ms", ".1f"),
            ("2 kernels ms", "two_ms", ".1f"))
_PARTS = (("part", "part", ""), ("ms", "ms", ".2f"),
          ("matmul ms", "matmul_ms", ".2f"), ("kernels", "count", ".0f"))
_KERNELS = (("ms", "ms", ".3f"), ("x/step", "count", ".0f"),
            ("kernel", "name", ""), ("class", "kernel_class", ""),
            ("part", "component", ""), ("shape", "shape", ""),
            ("op", "op_short", ""))


def profile_size(size: str, fusion: str, steps: int, warmup: int
                 ) -> dict:
  """Builds, compiles, warms up and profiles one size's train step."""
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  from benchmarks import xla_profile  # pylint: disable=g-import-not-at-top
  setup = train_step.build_step(size, fusion)
  compiled, compile_s = train_step.compile_step(setup)
  holder = {"state": setup.state}

  def run():
    holder["state"], metrics = compiled(holder["state"], setup.batch)
    float(metrics["loss"])  # blocks until the step is done
  for _ in range(warmup):
    run()
  result = xla_profile.profile_kernels(run, steps, compiled.as_text())
  cls = result["by_class"]
  ms = lambda name: cls.get(name, {}).get("ms", 0.0)
  conc = result["concurrency_ms"]
  result.update(
      size=size, fusion=fusion, compile_s=compile_s,
      matmul_ms=ms("matmul"), copy_ms=ms("layout copy"),
      elementwise_ms=ms("elementwise/reduce"),
      matmul_share=ms("matmul") / max(result["kernel_ms"], 1e-9),
      idle_ms=conc.get(0, 0.0), one_ms=conc.get(1, 0.0),
      two_ms=sum(v for k, v in conc.items() if k >= 2))
  return result


def main(argv):
  del argv
  try:
    sizes = common.parse_choices(["tiny"] if _QUICK.value else _SIZES.value,
                                 tuple(common.SIZES), "sizes")
  except common.BenchmarkInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  steps = 2 if _QUICK.value else _STEPS.value
  warmup = 1 if _QUICK.value else _WARMUP.value
  host.prepare()
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu":
    print("error: step_profile reads XLA:CPU's kernel events; this process "
          f"runs on {jax.default_backend()} (set JAX_PLATFORMS=cpu)",
          file=sys.stderr)
    sys.exit(2)
  print(f"train-step profile, {_FUSION.value}, batch {common.BATCH}, "
        f"{steps} traced steps; {common.cpu_line()}; host prepared as "
        f"mmjax.main does: {host.enabled()}; {common.load_average()}",
        flush=True)
  results = []
  for size in [s for s in common.SIZES if s in sizes]:
    r = profile_size(size, _FUSION.value, steps, warmup)
    results.append(r)
    print(f"\n[{size}] {r['wall_ms']:.1f} ms/step, {r['kernels_per_step']:.0f}"
          f" kernels/step; thread time by part of the step:", flush=True)
    common.print_table(
        [dict(part=k, **v) for k, v in sorted(
            r["by_component"].items(), key=lambda kv: -kv[1]["ms"])], _PARTS)
    print(f"\n[{size}] the {_TOP.value} slowest kernels that are not "
          "matmuls:")
    slow = [dict(k, op_short=k["op_name"][-70:]) for k in r["kernels"]
            if k["kernel_class"] != "matmul"][:_TOP.value]
    common.print_table(slow, _KERNELS)
  print("\nThread time per step by kernel class (matmul share = matmul / all "
        "kernel time); idle / 1 / 2 kernels: wall time with that many "
        "kernels running.")
  common.print_table(results, _SUMMARY)
  common.write_json(_OUT.value, {"benchmark": "step_profile",
                                 "fusion": _FUSION.value, "steps": steps,
                                 "prepare_host": host.enabled(),
                                 "rows": results})


if __name__ == "__main__":
  app.run(main)
