"""experiments/grounding_errors.py: where a grounding run's boxes land
(`grounding.where_box_lands` by hand, and a smoke run on a fabricated
run)."""
import re
import subprocess
import sys

from mmjax.evals import grounding as grounding_eval
from tests.conftest import REPO
from tests.helpers import make_workdir


def test_landing_groups_by_hand():
  landing = grounding_eval.where_box_lands
  objects = [("red", "circle", (0, 0, 100, 100)),
             ("red", "star", (200, 0, 300, 100)),
             ("blue", "circle", (400, 0, 500, 100)),
             ("green", "square", (600, 0, 700, 100))]
  ask = lambda answer: landing(answer, "red", "circle", objects)
  assert ask("[0, 0, 100, 90]") == "named object"
  assert ask("[200, 0, 300, 100]") == "same colour, other shape"
  assert ask("[400, 0, 500, 100]") == "same shape, other colour"
  assert ask("[600, 0, 700, 100]") == "neither colour nor shape"
  assert ask("[800, 800, 900, 900]") == "on no object"
  assert ask("the red circle") == "no box"


def test_smoke_run_prints_every_group(tmp_path):
  run = make_workdir(tmp_path / "run", tmp_path / "data")
  proc = subprocess.run([sys.executable, "experiments/grounding_errors.py",
                         f"--workdir={run}", "--images=4"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  line, = [l for l in proc.stdout.splitlines() if l.startswith("test: ")]
  shares = [float(v) for v in re.findall(r" (\d\.\d{3})", line)]
  assert len(shares) == 6 and abs(sum(shares) - 1.0) < 0.01, line
