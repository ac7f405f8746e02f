"""benchmarks/native_resolution.py runs (a smoke run: no timing is judged):
the three inputs encode the same pixel budget, rows pad to a power of two,
and bad flags exit 2."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "native_resolution.py")


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                        text=True, cwd=REPO, check=False,
                        env=dict(os.environ, PYTHONPATH=REPO))


def test_native_resolution_benchmark_quick(tmp_path):
  out = tmp_path / "native.json"
  proc = _run("--sizes=tiny", "--steps=1", "--images=3", "--side=84",
              f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r["input"]: r for r in json.loads(out.read_text())["rows"]}
  assert set(rows) == {"square", "native", "native flat"}
  assert rows["square"]["real_patches"] == 3 * 6 * 6
  # Mixed aspects within the same budget: never more pixels than the square.
  assert 0 < rows["native"]["real_patches"] <= rows["square"]["real_patches"]
  assert rows["native"]["real_patches"] == rows["native flat"]["real_patches"]
  # Rows padded to a power of two from 64 patches, one image a row.
  assert rows["native"]["patches"] % (3 * 64) == 0
  assert 0 <= rows["native"]["padding"] < 1
  assert all(r["step_ms"] > 0 for r in rows.values())


def test_bad_side_exits_2():
  proc = _run("--side=100")
  assert proc.returncode == 2
  assert "multiple of 28" in proc.stderr
