"""experiments/heldout_existence.py: existence answers split by whether the
question names a held-out pair (smoke run on a fabricated run)."""
import re
import subprocess
import sys

from tests.conftest import REPO
from tests.helpers import make_workdir


def test_reports_the_four_groups(tmp_path):
  run = make_workdir(tmp_path / "run", tmp_path / "data")
  proc = subprocess.run([sys.executable, "experiments/heldout_existence.py",
                         f"--workdir={run}", "--images=4"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  test, heldout = [l for l in proc.stdout.splitlines()
                   if l.startswith(("test: ", "heldout: "))]
  # Every heldout image holds a held-out pair: 4 images, at least one
  # present-pair question about one is likely but not certain; the groups
  # printed are well-formed accuracies with their counts.
  for line in (test, heldout):
    for acc, n in re.findall(r"(\d\.\d{3}) \(n=(\d+)\)", line):
      assert 0.0 <= float(acc) <= 1.0 and int(n) > 0
  assert '"yes", other' in test
  pairs, = [l for l in proc.stdout.splitlines()
            if l.startswith("heldout colour / shape: ")]
  assert re.search(r"of (a held-out-pair object|other objects) "
                   r"\d\.\d{3} \(n=\d+\)", pairs), pairs
  assert "names a held-out pair" not in test.split('"yes"')[-1]
  bad = subprocess.run([sys.executable, "experiments/heldout_existence.py",
                        f"--workdir={tmp_path}"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "holds no config.json" in bad.stderr
