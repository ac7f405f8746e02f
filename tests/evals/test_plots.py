"""Tests for mmjax.evals.plots: the PNGs are written and are real images."""
import numpy as np
from PIL import Image

from mmjax.evals import plots

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records():
  """metrics.jsonl-like records of two stages, with eval points and noise."""
  records = []
  for stage, start, steps in (("align", 6.0, 40), ("sft", 3.0, 60)):
    for step in range(2, steps + 1, 2):
      records.append({"stage": stage, "step": step,
                      "loss": start * np.exp(-step / 25) + 0.3,
                      "step_time_s": 0.05})
    for step in (steps // 2, steps):
      records.append({"stage": stage, "step": step,
                      "eval_loss": start * np.exp(-step / 25) + 0.5})
  records.append({"stage": "sft", "step": 1, "compile_s": 3.0})  # No loss.
  records.append({"stage": "sft", "step": 3, "loss": "nan"})  # Skipped.
  return records


def _read(path):
  with open(path, "rb") as f:
    assert f.read(8) == _PNG_MAGIC
  return np.asarray(Image.open(path).convert("RGB"))


def test_plot_losses_writes_png(tmp_path):
  path = plots.plot_losses(_records(), str(tmp_path / "plots" / "loss.png"))
  image = _read(path)
  assert image.shape[0] > 200 and image.shape[1] > 600  # Two panels wide.
  assert (image != 255).any(axis=-1).mean() > 0.02  # Something was drawn.
  assert not list((tmp_path / "plots").glob("*.tmp*"))


def test_plot_losses_without_records(tmp_path):
  image = _read(plots.plot_losses([], str(tmp_path / "empty.png")))
  assert image.size > 0


def test_plot_accuracy_writes_png(tmp_path):
  by_stage = {
      "align": {"colour": 0.2, "shape": 0.25, "count": 0.1, "all": 0.2},
      # evaluate_shapes_vqa metrics: only the acc/<qtype> keys are drawn.
      "sft": {"acc/colour": 0.9, "acc/shape": 0.8, "acc/count": 0.5,
              "acc/spatial": 0.7, "acc/existence": 0.85, "acc/all": 0.75,
              "count/all": 100, "pope/f1": 0.8},
  }
  assert plots._accuracies(by_stage["sft"]) == {
      "colour": 0.9, "shape": 0.8, "count": 0.5, "spatial": 0.7,
      "existence": 0.85, "all": 0.75}
  image = _read(plots.plot_accuracy(by_stage, str(tmp_path / "acc.png")))
  assert image.shape[1] > image.shape[0] > 200
  assert (image != 255).any(axis=-1).mean() > 0.02
