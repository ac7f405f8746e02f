"""experiments/hand_drawn.py: pictures not made by mmjax.data.shapes, and a
report against a run's own test accuracy (smoke run on a fabricated run)."""
import os
import subprocess
import sys

import numpy as np

from mmjax.data import shapes
from tests.conftest import REPO
from tests.helpers import make_workdir

sys.path.insert(0, os.path.join(REPO, "experiments"))
import hand_drawn  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_pictures_are_anti_aliased_in_other_colours():
  rng = np.random.default_rng(0)
  for _ in range(5):
    image, objects = hand_drawn.draw_picture(rng, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert 1 <= len(objects) <= 4
    pixels = {tuple(p) for p in image.reshape(-1, 3)}
    # Anti-aliased edges and a gradient: many distinct colours, and none of
    # the benchmark's exact object colours.
    assert len(pixels) > 100
    assert not pixels & set(shapes.COLOUR_RGB.values())
    for pair in objects:
      assert pair not in shapes.HELDOUT_PAIRS


def test_questions_use_the_benchmarks_wording():
  rng = np.random.default_rng(1)
  qa = hand_drawn.questions([("red", "circle"), ("blue", "square")], rng)
  types = [t for _, _, t in qa]
  assert types == ["colour", "shape", "existence", "existence"]
  assert qa[0] == ("what colour is the circle?", "red", "colour")
  assert qa[1] == ("what shape is the red object?", "circle", "shape")
  assert [a for _, a, _ in qa[2:]] == ["yes", "no"]


def test_reports_a_run(tmp_path):
  run = make_workdir(tmp_path / "run", tmp_path / "data")
  proc = subprocess.run([sys.executable, "experiments/hand_drawn.py",
                         f"--workdir={run}", "--n=4"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| shape |" in proc.stdout and "| all |" in proc.stdout
