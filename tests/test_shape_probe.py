"""experiments/shape_probe.py trains and reports (tiny smoke run)."""
import re
import subprocess
import sys

from tests.conftest import REPO


def _probe(*flags):
  return subprocess.run(
      [sys.executable, "experiments/shape_probe.py", *flags], cwd=REPO,
      capture_output=True, text=True, timeout=300)


def test_probe_trains_and_prints_accuracy_per_evaluation():
  out = _probe("--steps=4", "--eval_every=2", "--num_train=32",
               "--num_test=16", "--batch=8", "--depth=1")
  assert out.returncode == 0, out.stderr[-2000:]
  rows = re.findall(r"step (\d+): loss ([\d.]+), per-label accuracy "
                    r"([\d.]+) \(circle", out.stdout)
  assert [int(r[0]) for r in rows] == [2, 4], out.stdout
  for _, loss, acc in rows:
    assert float(loss) > 0 and 0.0 <= float(acc) <= 1.0
  base = float(re.search(r"always-absent per-label accuracy ([\d.]+)",
                         out.stdout).group(1))
  assert 0.4 < base < 0.9  # 1 to 6 of 6 shapes in an image.


def test_bad_flag_is_a_usage_error():
  out = _probe("--steps=0")
  assert out.returncode != 0 and "--steps must be positive" in out.stderr
