"""Matmul peaks of XLA (jnp.dot) and PyTorch (torch.mm) on this device.

  python benchmarks/matmul_peak.py [--sizes=512,1024,2048] \
      [--dtypes=float32,bfloat16] [--torch] [--out=peaks.json]

Square n x n products, 2 n^3 FLOPs each, best of --reps after 2 warm-ups.
The throughput benchmarks measure the same peaks in their own run (MFU is
against those); this script is for looking at the machine alone.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top

_SIZES = flags.DEFINE_list("sizes", ["512", "1024", "2048"],
                           "square matrix sizes")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], "float32, bfloat16")
_REPS = flags.DEFINE_integer("reps", 5, "timed products per size")
_TORCH = flags.DEFINE_bool("torch", True, "also measure torch.mm (2 threads)")
_OUT = flags.DEFINE_string("out", "", "JSON results file")


def main(argv):
  del argv
  try:
    sizes = common.parse_sizes(_SIZES.value, "sizes")
    dtypes = common.parse_choices(_DTYPES.value, ("float32", "bfloat16"),
                                  "dtypes")
  except common.BenchmarkInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(common.load_average())
  rows = []
  for dtype in dtypes:
    xla = common.xla_matmul_peak(sizes, _REPS.value, dtype)
    rows.append({"library": "xla", "dtype": dtype, **{
        str(n): g for n, g in xla["per_size"].items()}})
    if _TORCH.value:
      import torch  # pylint: disable=g-import-not-at-top
      from benchmarks import hf_llava  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(2)
      peak = hf_llava.torch_matmul_peak(sizes, _REPS.value, dtype)
      rows.append({"library": "torch", "dtype": dtype, **{
          str(n): g for n, g in peak["per_size"].items()}})
  print("GFLOP/s by matrix size:")
  common.print_table(rows, [("library", "library", ""), ("dtype", "dtype", "")]
                     + [(f"n={n}", str(n), ".1f") for n in sizes])
  common.write_json(_OUT.value, {"benchmark": "matmul_peak", "rows": rows})


if __name__ == "__main__":
  app.run(main)
