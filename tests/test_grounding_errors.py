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


def test_question_sensitivity_by_hand():
  a, b, c = (0, 0, 100, 100), (500, 500, 600, 600), (0, 500, 100, 600)
  m = grounding_eval.question_sensitivity([
      # the same box whatever is asked: right once of two, IoU 1 between
      [("[0, 0, 100, 100]", a), ("[0, 0, 100, 100]", b)],
      # each object found; the third answer is no box
      [("[0, 0, 100, 100]", a), ("[500, 500, 600, 600]", b), ("no", c)],
      [("[0, 0, 100, 100]", a)],  # one object: skipped
  ])
  assert m["images"] == 2 and m["answers"] == 5
  assert m["identical"] == 0.5
  # pairs: (a, a) 1.0; (a, b) 0, (a, none) 0, (b, none) 0
  assert abs(m["answer_iou"] - 0.25) < 1e-9
  assert m["gold_iou"] == 0.0
  assert abs(m["acc@0.5"] - 3 / 5) < 1e-9


def test_smoke_run_prints_every_group(tmp_path):
  run = make_workdir(tmp_path / "run", tmp_path / "data")
  proc = subprocess.run([sys.executable, "experiments/grounding_errors.py",
                         f"--workdir={run}", "--images=4",
                         "--per_object_images=2"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  line, = [l for l in proc.stdout.splitlines() if l.startswith("test: ")]
  shares = [float(v) for v in re.findall(r" (\d\.\d{3})", line)]
  assert len(shares) == 6 and abs(sum(shares) - 1.0) < 0.01, line
  asked, = [l for l in proc.stdout.splitlines()
            if l.startswith("every object asked: ")]
  assert re.match(r"every object asked: [12] images", asked), asked
