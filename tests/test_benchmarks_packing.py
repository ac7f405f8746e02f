"""benchmarks/packing.py runs (efficiency only: no timing), packing beats
bucketed padding on its LLaVA-like length mix, and the fill policy packs
at least as well as first-fit where rows hold several examples."""
import os
import subprocess
import sys

from tests.conftest import REPO


def test_packing_benchmark_quick():
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", "packing.py"),
       "--examples=3000", "--max_lens=1024,2048", "--visual_tokens=144"],
      capture_output=True, text=True, cwd=REPO, check=False,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines()
          if line.startswith("| 144 |")]
  assert len(rows) == 2
  for row in rows:
    padded, fill, first_fit = (float(row[i].strip(" %")) for i in (4, 5, 6))
    assert fill > padded + 20 and first_fit > padded + 20, row
  assert float(rows[0][5].strip(" %")) >= 95.0, rows  # 144 / 1024
