"""How the train step scales: visual tokens, text length, batch, fsdp devices.

  python benchmarks/scaling.py [--sections=visual,text,batch,fsdp] \
      [--sizes=tiny,small] [--fsdp_sizes=small,bench] [--steps=3] \
      [--out=scaling.json]
  python benchmarks/scaling.py --quick      # CI: tiny, 1 step, projection
                                            # at 32 px, fsdp 1 and 2

Sections (each prints a table; all rows go to --out):
  visual  step time vs image side (patches N = (side/8)^2) for projection
          (all N patches enter the LM), resampler and qformer (--latents
          tokens, whatever N is).
  text    step time vs text tokens per example (projection).
  batch   step time and examples/s vs batch (projection).
  fsdp    compiled per-device memory vs device count: a subprocess with
          XLA_FLAGS=--xla_force_host_platform_device_count=8 compiles the
          step (abstract state, nothing initialised) on meshes fsdp=1,2,4,8
          (`parallel.make_mesh`, `logical_shardings`); batch 8 splits over
          the fsdp devices.
The chunked vs plain sigmoid loss memory is in benchmarks/sigmoid_memory.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top

SECTIONS = ("visual", "text", "batch", "fsdp")
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), ",".join(SECTIONS))
_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"],
                           "sizes of the visual/text/batch sections")
_FSDP_SIZES = flags.DEFINE_list("fsdp_sizes", ["small", "bench"],
                                "sizes of the fsdp memory section")
_STEPS = flags.DEFINE_integer("steps", 3, "timed steps per point")
_LATENTS = flags.DEFINE_integer("latents", 32,
                                "resampler latents / Q-Former queries")
_OUT = flags.DEFINE_string("out", "", "JSON results file")
FSDP_DEVICES = (1, 2, 4, 8)
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: tiny, 1 step")
_SCAN = flags.DEFINE_bool("scan_layers", False,
                          "fsdp section: LM blocks under nn.scan")
_FSDP_DEVICES = flags.DEFINE_list("fsdp_devices", ["1", "2", "4", "8"],
                                  "internal: device counts of the child")
_FSDP_CHILD = flags.DEFINE_bool("fsdp_child", False,
                                "internal: run the fsdp section here")



def _timed(size, fusion, steps, **kwargs):
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  row = train_step.measure(size, fusion, steps, warmup=1, count_flops=False,
                           **kwargs)
  row["mem_peak_mib"] = row.get("mem_peak", 0) / 2 ** 20
  return row


def visual_section(sizes, steps, quick, latents=32):
  """Step time vs image side; resampler/qformer emit `latents` tokens."""
  sides = (32,) if quick else (32, 64, 128)
  fusions = ("projection",) if quick else (
      "projection", "resampler", "qformer")
  rows = []
  for size in sizes:
    for side in sides:
      for fusion in fusions:
        row = _timed(size, fusion, steps, image_size=side, latents=latents)
        row.update(section="visual", image_side=side,
                   patches=(side // common.SIZES[size]["vision"]
                            ["patch_size"]) ** 2,
                   visual_tokens=row["seq_len"] - common.TEXT_LEN)
        print(f"[visual] {size} {fusion} side {side}: "
              f"{row['step_s']:.4f} s/step", flush=True)
        rows.append(row)
  common.print_table(rows, (
      ("size", "size", ""), ("fusion", "fusion", ""),
      ("side", "image_side", "d"), ("patches", "patches", "d"),
      ("visual tok", "visual_tokens", "d"), ("L", "seq_len", "d"),
      ("step s", "step_s", ".4f"), ("CPU s", "cpu_s", ".4f"),
      ("ex/s", "examples_per_s", ".1f"),
      ("mem MiB", "mem_peak_mib", ".0f")))
  return rows


def text_section(sizes, steps, quick):
  """Step time vs text tokens per example (projection)."""
  lengths = (16,) if quick else (32, 64, 128, 256)
  rows = []
  for size in sizes:
    for n in lengths:
      row = _timed(size, "projection", steps, text_len=n)
      row.update(section="text", text_len=n)
      print(f"[text] {size} text {n}: {row['step_s']:.4f} s/step",
            flush=True)
      rows.append(row)
  common.print_table(rows, (
      ("size", "size", ""), ("text", "text_len", "d"), ("L", "seq_len", "d"),
      ("step s", "step_s", ".4f"), ("CPU s", "cpu_s", ".4f"),
      ("tok/s", "tokens_per_s", ".0f"),
      ("GFLOP/s", "gflops", ".1f"), ("mem MiB", "mem_peak_mib", ".0f")))
  return rows


def batch_section(sizes, steps, quick):
  """Step time and examples/s vs batch (projection)."""
  batches = (2,) if quick else (1, 2, 4, 8, 16)
  rows = []
  for size in sizes:
    for b in batches:
      row = _timed(size, "projection", steps, batch=b)
      row.update(section="batch")
      print(f"[batch] {size} batch {b}: {row['step_s']:.4f} s/step",
            flush=True)
      rows.append(row)
  common.print_table(rows, (
      ("size", "size", ""), ("batch", "batch", "d"),
      ("step s", "step_s", ".4f"), ("CPU s", "cpu_s", ".4f"),
      ("ex/s", "examples_per_s", ".1f"),
      ("GFLOP/s", "gflops", ".1f"), ("mem MiB", "mem_peak_mib", ".0f")))
  return rows


def fsdp_rows(sizes, device_counts=FSDP_DEVICES, scan_layers=False
              ) -> list[dict]:
  """Compiled per-device memory of the step on fsdp meshes (this process
  must have max(device_counts) devices)."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  rows = []
  for size in sizes:
    for n in device_counts:
      setup = train_step.build_step(
          size, "projection", mesh_sizes={"data": 1, "fsdp": n, "tensor": 1},
          devices=jax.devices()[:n], abstract=True, scan_layers=scan_layers)
      compiled, compile_s = train_step.compile_step(setup)
      row = dict(section="fsdp", size=size, devices=n, compile_s=compile_s,
                 scan_layers=scan_layers,
                 xla_flops=train_step.xla_flops(compiled),
                 **train_step.compiled_memory(compiled))
      print(f"[fsdp] {size} fsdp={n}: {row['mem_peak'] / 2**20:.1f} MiB per "
            "device", flush=True)
      rows.append(row)
  return rows


def fsdp_section(sizes, device_counts=FSDP_DEVICES, scan_layers=False):
  """Runs fsdp_rows in a child process with 8 simulated CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  cmd = [sys.executable, os.path.abspath(__file__), "--fsdp_child",
         f"--fsdp_sizes={','.join(sizes)}",
         f"--fsdp_devices={','.join(map(str, device_counts))}",
         f"--scan_layers={scan_layers}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                        check=False)
  rows = None
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      rows = json.loads(line[len("RESULT "):])
  if rows is None:
    raise RuntimeError(f"fsdp child failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  base = {r["size"]: r["mem_peak"] for r in rows if r["devices"] == 1}
  for r in rows:
    for key in ("argument", "temp", "peak"):
      r[key + "_mib"] = r["mem_" + key] / 2 ** 20
    r["vs_one"] = r["mem_peak"] / base[r["size"]]
    r["gflop_per_device"] = r["xla_flops"] / 1e9
  common.print_table(rows, (
      ("size", "size", ""), ("scan", "scan_layers", ""),
      ("fsdp devices", "devices", "d"),
      ("args MiB", "argument_mib", ".1f"), ("temp MiB", "temp_mib", ".1f"),
      ("peak MiB/device", "peak_mib", ".1f"), ("vs 1 device", "vs_one", ".2f"),
      ("GFLOP/device", "gflop_per_device", ".2f")))
  return rows


def main(argv):
  del argv
  if _FSDP_CHILD.value:
    rows = fsdp_rows(_FSDP_SIZES.value, [int(n) for n in _FSDP_DEVICES.value],
                     _SCAN.value)
    print("RESULT " + json.dumps(rows), flush=True)
    return
  try:
    sections = common.parse_choices(_SECTIONS.value, SECTIONS, "sections")
    if _QUICK.value:  # text and batch sweep the same step as visual
      sections = [s for s in sections if s in ("visual", "fsdp")]
    sizes = common.parse_choices(["tiny"] if _QUICK.value else _SIZES.value,
                                 tuple(common.SIZES), "sizes")
    fsdp_sizes = common.parse_choices(
        ["tiny"] if _QUICK.value else _FSDP_SIZES.value, tuple(common.SIZES),
        "fsdp_sizes")
  except common.BenchmarkInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  steps = 1 if _QUICK.value else _STEPS.value
  print(f"scaling: {common.load_average()}", flush=True)
  rows = []
  if "visual" in sections:
    rows += visual_section(sizes, steps, _QUICK.value, _LATENTS.value)
  if "text" in sections:
    rows += text_section(sizes, steps, _QUICK.value)
  if "batch" in sections:
    rows += batch_section(sizes, steps, _QUICK.value)
  if "fsdp" in sections:
    rows += fsdp_section(fsdp_sizes, (1, 2) if _QUICK.value else FSDP_DEVICES,
                         _SCAN.value)
  common.write_json(_OUT.value, {"benchmark": "scaling", "rows": rows,
                                 "latents": _LATENTS.value})


if __name__ == "__main__":
  app.run(main)
