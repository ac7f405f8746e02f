"""Train-step throughput, FLOPs, MFU, compile time and memory, beside HF.

  python benchmarks/train_throughput.py --sizes=tiny,small,bench \
      --fusions=projection,resampler --steps=5 --out=results.json
  python benchmarks/train_throughput.py --quick           # tiny, 2 steps (CI)
  # N whole runs in fresh processes, medians across them (this machine's
  # processes drift +-15% between runs, HF's and mmjax's alike):
  python benchmarks/train_throughput.py --sizes=tiny,small --steps=40 --runs=3
  # CPU data parallel over 2 host devices (one per core):
  python benchmarks/train_throughput.py --sizes=tiny --host_devices=2
  # On a GPU (not run here): --dtype=bfloat16 --sizes=1b --hf_device=cuda

For each size (benchmarks/common.py SIZES) and fusion, builds mmjax's MLLM,
compiles the trainer's own jitted step (`trainer._make_train_step`: value
and grad of the LM loss, global-norm clipping, AdamW, the non-finite guard,
state donated) on a synthetic batch (8 examples: one image, then 64 random
text tokens) and times it step by step after a warm-up.

Reported per row: examples/s and tokens/s (median step); model FLOPs from
the analytic count (projection; see common.analytic_train_flops), the
matmul FLOPs of the step's jaxpr and XLA's `cost_analysis()['flops']` (their
ratio to the analytic count is printed); achieved GFLOP/s; MFU = achieved /
the XLA matmul peak measured in this run (best jnp.dot over square sizes);
compile seconds; compiled memory (arguments + outputs - aliased + temps)
and process RSS. Sizes run smallest first, so the peak RSS printed with a
row is that row's peak.

For projection rows the Hugging Face LLaVA step (benchmarks/hf_llava.py, run
as a subprocess with --hf_threads torch threads, default 2) is timed in the
same run; the table shows the mmjax/HF throughput ratio and HF's share of
the torch matmul peak. A second table gives the same comparison in CPU
seconds per step (all threads), steadier than wall time on a shared machine.
Generation is compared in benchmarks/generate_vs_hf.py.

With --runs=N > 1 the script runs itself N times, each run a fresh process
(HF subprocess first, then mmjax), prints each run's tables, and ends with
one row per size and fusion: every run's step and ratio, the median steps
and the ratio of the medians. A figure from one process can sit in a slow
mode for its whole life (docs/performance.md), so ratios meant to be
compared with a target come from --runs >= 3.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import hf_run  # pylint: disable=g-import-not-at-top
from benchmarks import host  # pylint: disable=g-import-not-at-top

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small", "bench"],
                           "sizes from benchmarks/common.py SIZES")
_FUSIONS = flags.DEFINE_list("fusions", ["projection"],
                             "fusion paradigms: " + ",".join(common.FUSIONS))
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps per row")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps after compiling")
_BATCH = flags.DEFINE_integer("batch", common.BATCH, "examples per step")
_TEXT_LEN = flags.DEFINE_integer("text_len", common.TEXT_LEN,
                                 "text tokens per example")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "compute dtype (bfloat16 for a GPU run)")
_REMAT = flags.DEFINE_enum("remat", "none", ["none", "full", "dots",
                                             "dots_all"],
                           "remat policy of the LM and ViT blocks")
_ATTENTION = flags.DEFINE_enum(
    "attention", "einsum", ["einsum", "xla", "cudnn"],
    "self-attention kernel of the LM and ViT blocks (cudnn: fused flash "
    "attention, NVIDIA GPU with bfloat16)")
_SCAN = flags.DEFINE_bool("scan_layers", False,
                          "run the LM blocks under nn.scan")
_LOSS_CHUNK = flags.DEFINE_integer(
    "loss_chunk", 0, "> 0: LM head + loss that many positions at a time, "
    "chunks without a loss token skipped (the model FLOPs still count the "
    "full head, as HF computes it)")
_HF = flags.DEFINE_bool("hf", True, "also time Hugging Face LLaVA")
_HF_STEPS = flags.DEFINE_integer("hf_steps", 0, "HF timed steps (0: --steps)")
_HF_DEVICE = flags.DEFINE_string("hf_device", "cpu", "torch device")
_HF_THREADS = flags.DEFINE_integer(
    "hf_threads", 2, "torch.set_num_threads of the HF run (1 gives clean CPU "
    "times on a loaded machine, where 2 spinning OpenMP threads inflate them)")
_HOST_DEVICES = flags.DEFINE_integer(
    "host_devices", 0, "CPU only: split the host into N XLA devices and the "
    "batch over them (mesh data=N); 0 leaves XLA_FLAGS alone")
_PEAK_SIZES = flags.DEFINE_list("peak_sizes", ["1024", "2048"],
                                "square matmul sizes for the peaks")
_OUT = flags.DEFINE_string("out", "", "JSON results file")
_QUICK = flags.DEFINE_bool("quick", False,
                           "smoke run: tiny, 2 steps, small peak matmuls")
_RUNS = flags.DEFINE_integer(
    "runs", 1, "> 1: that many whole runs, each in a fresh process, and a "
    "summary of medians across them")


def add_hf(row: dict, hf: dict) -> None:
  """Adds the HF step (same model FLOPs) and the ratios to an mmjax row."""
  row["hf"] = hf
  row["hf_cpu_s"] = hf["cpu_s"]
  row["hf_examples_per_s"] = row["batch"] / hf["step_s"]
  row["ratio_vs_hf"] = row["examples_per_s"] / row["hf_examples_per_s"]
  row["hf_torch_mfu"] = (row["model_flops"] / hf["step_s"] / 1e9 /
                         hf["torch_peak_gflops"])
  row["cpu_ratio_vs_hf"] = hf["cpu_s"] / row["cpu_s"]
  row["hf_torch_mfu_cpu"] = (row["model_flops"] / hf["cpu_s"] / 1e9 /
                             hf["torch_peak_gflops_per_cpu_s"])


COLUMNS = (
    ("size", "size", ""), ("fusion", "fusion", ""), ("dev", "devices", "d"),
    ("L", "seq_len", "d"),
    ("step s", "step_s", ".4f"), ("ex/s", "examples_per_s", ".1f"),
    ("tok/s", "tokens_per_s", ".0f"), ("HF ex/s", "hf_examples_per_s", ".1f"),
    ("x HF", "ratio_vs_hf", ".2f"), ("GFLOP/step", "gflop_step", ".2f"),
    ("XLA/model", "xla_ratio", ".3f"), ("GFLOP/s", "gflops", ".1f"),
    ("MFU", "mfu", ".1%"), ("HF %torch", "hf_torch_mfu", ".1%"),
    ("compile s", "compile_s", ".1f"), ("mem MiB/dev", "mem_peak_mib", ".0f"),
    ("RSS MiB", "peak_rss_mib", ".0f"))
CPU_COLUMNS = (
    ("size", "size", ""), ("fusion", "fusion", ""), ("dev", "devices", "d"),
    ("CPU s/step", "cpu_s", ".4f"), ("HF CPU s/step", "hf_cpu_s", ".4f"),
    ("x HF (CPU)", "cpu_ratio_vs_hf", ".2f"), ("MFU (CPU)", "mfu_cpu", ".1%"),
    ("HF %torch (CPU)", "hf_torch_mfu_cpu", ".1%"))


SUMMARY_COLUMNS = (
    ("size", "size", ""), ("fusion", "fusion", ""),
    ("step s per run", "step_s_runs", ""), ("median", "step_s", ".4f"),
    ("HF step s per run", "hf_step_s_runs", ""), ("HF median", "hf_step_s",
                                                  ".4f"),
    ("x HF per run", "ratio_runs", ""),
    ("x HF of medians", "ratio_vs_hf", ".2f"))


def run_repeated(argv: list[str], runs: int) -> None:
  """Runs this benchmark `runs` times in fresh processes and summarizes."""
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(runs):
      print(f"== run {i + 1} of {runs}, {common.load_average()}", flush=True)
      path = os.path.join(tmp, f"run{i}.json")
      done = subprocess.run(common.child_argv(argv, os.path.abspath(
          __file__), path), check=False)
      if done.returncode:
        print(f"error: run {i + 1} of {runs} exited with status "
              f"{done.returncode}; its output is above.", file=sys.stderr)
        sys.exit(done.returncode)
      with open(path, encoding="utf-8") as f:
        results.append(json.load(f))
  summary = common.summarize_runs(results)
  print(f"\nAcross {runs} runs, each a fresh process (HF first, then mmjax); "
        f"x HF of medians = HF median step / mmjax median step; "
        f"{common.load_average()}\n")
  common.print_table(summary, SUMMARY_COLUMNS)
  common.write_json(_OUT.value, {"benchmark": "train_throughput",
                                 "runs": len(results), "summary": summary,
                                 "per_run": results})


def main(argv):
  if _RUNS.value < 1:
    print(f"error: --runs={_RUNS.value}; give 1 or more.", file=sys.stderr)
    sys.exit(2)
  if _RUNS.value > 1:
    run_repeated(sys.argv, _RUNS.value)
    return
  del argv
  try:
    sizes = common.parse_choices(["tiny"] if _QUICK.value else _SIZES.value,
                                 tuple(common.SIZES), "sizes")
    fusions = common.parse_choices(_FUSIONS.value, common.FUSIONS, "fusions")
    peak_sizes = common.parse_sizes(["256"] if _QUICK.value
                                    else _PEAK_SIZES.value, "peak_sizes")
  except common.BenchmarkInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if _HOST_DEVICES.value:  # must precede the first jax import
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
        f"device_count={_HOST_DEVICES.value}").strip()
  steps = 2 if _QUICK.value else _STEPS.value
  order = [s for s in common.SIZES if s in sizes]  # smallest first (RSS)
  hf_env = host.prepare()
  # HF runs first, before this process starts JAX: on a GPU, JAX would hold
  # 75% of its memory while the HF subprocess runs.
  hf_rows = {}
  if _HF.value and "projection" in fusions:
    for size in order:
      hf_rows[size] = hf = hf_run.run_hf(
          size, _HF_STEPS.value or steps, _WARMUP.value, _BATCH.value,
          _TEXT_LEN.value, _DTYPE.value, _HF_DEVICE.value, peak_sizes,
          _HF_THREADS.value, env=hf_env)
      print(f"[{size}] HF LLaVA {hf['step_s']:.4f} s/step, "
            f"{hf['params'] / 1e6:.2f}M params; torch matmul peak "
            f"{hf['torch_peak_gflops']:.1f} GFLOP/s", flush=True)
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  print(f"mmjax train step, {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s)), {_DTYPE.value}, batch "
        f"{_BATCH.value}, host prepared as mmjax.main does: "
        f"{host.enabled()}, {common.load_average()}", flush=True)
  peaks, rows = [], []
  for size in order:
    # Re-measured before each size; MFU uses the best (least disturbed).
    peaks.append(common.xla_matmul_peak(peak_sizes, dtype=_DTYPE.value))
    print(f"XLA {_DTYPE.value} matmul peak: {peaks[-1]['gflops']:.1f} "
          f"GFLOP/s (per size "
          f"{ {n: round(g, 1) for n, g in peaks[-1]['per_size'].items()} })",
          flush=True)
    for fusion in fusions:
      row = train_step.measure(
          size, fusion, steps, _WARMUP.value, batch=_BATCH.value,
          text_len=_TEXT_LEN.value, dtype=_DTYPE.value, remat=_REMAT.value,
          scan_layers=_SCAN.value, attention=_ATTENTION.value,
          loss_chunk=_LOSS_CHUNK.value)
      row["gflop_step"] = row["model_flops"] / 1e9
      row["xla_ratio"] = row["xla_flops"] / row["model_flops"]
      row["mem_peak_mib"] = row.get("mem_peak", 0) / 2 ** 20
      row["peak_rss_mib"] = row["peak_rss_bytes"] / 2 ** 20
      if "analytic" in row:
        print(f"[{size}/{fusion}] model FLOPs/step: analytic "
              f"{row['model_flops'] / 1e9:.3f} G (jaxpr matmuls "
              f"{row['jaxpr_flops'] / 1e9:.3f} G, ratio "
              f"{row['jaxpr_flops'] / row['model_flops']:.4f}); XLA "
              f"cost_analysis {row['xla_flops'] / 1e9:.3f} G, ratio "
              f"{row['xla_ratio']:.3f}", flush=True)
      if size in hf_rows and fusion == "projection":
        add_hf(row, hf_rows[size])
      print(f"[{size}/{fusion}] {row['step_s']:.4f} s/step (min "
            f"{row['step_s_min']:.4f}, max {row['step_s_max']:.4f}), loss "
            f"{row['first_loss']:.3f} -> {row['last_loss']:.3f}, "
            f"{common.load_average()}", flush=True)
      rows.append(row)
  peak = max(peaks, key=lambda p: p["gflops"])
  peak_cpu = max(p["gflops_per_cpu_s"] for p in peaks)
  for row in rows:
    row["mfu"] = row["gflops"] / peak["gflops"]
    row["mfu_cpu"] = row["model_flops"] / row["cpu_s"] / 1e9 / peak_cpu
  print(f"\nMFU against the best XLA {_DTYPE.value} matmul peak of this run: "
        f"{peak['gflops']:.1f} GFLOP/s (n={peak['n']}); CPU-time columns "
        f"divide FLOPs by the CPU seconds of all threads (peak "
        f"{peak_cpu:.1f} GFLOP per CPU second), which a loaded machine "
        "inflates less than wall time.\n")
  common.print_table(rows, COLUMNS)
  print()
  common.print_table(rows, CPU_COLUMNS)
  common.write_json(_OUT.value, {
      "benchmark": "train_throughput", "dtype": _DTYPE.value,
      "batch": _BATCH.value, "text_len": _TEXT_LEN.value,
      "remat": _REMAT.value, "scan_layers": _SCAN.value,
      "attention": _ATTENTION.value, "loss_chunk": _LOSS_CHUNK.value,
      "hf_threads": _HF_THREADS.value, "prepare_host": host.enabled(),
      "xla_peak": peak, "xla_peaks": peaks,
      "rows": rows,
      "platform": jax.devices()[0].platform})


if __name__ == "__main__":
  app.run(main)
