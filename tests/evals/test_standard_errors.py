"""Standard errors, the shape confusion matrix and the report's table."""
import math

import pytest
from PIL import Image

from mmjax.evals import after_stage, plots, vqa


def test_standard_error_per_question_type():
  preds = ["circle", "square", "red", "red", "blue", "yes"]
  answers = ["circle", "circle", "red", "red", "red", "yes"]
  qtypes = ["shape", "shape", "colour", "colour", "colour", "existence"]
  m = vqa.vqa_accuracy(preds, answers, qtypes)
  assert m["se/shape"] == pytest.approx(math.sqrt(0.5 * 0.5 / 2))
  assert m["se/colour"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 3))
  assert m["se/existence"] == 0.0  # all right: no spread
  assert m["se/all"] == pytest.approx(math.sqrt(4 / 6 * 2 / 6 / 6))
  assert vqa.standard_error(0.5, 0) == 0.0


def test_confusion_of_shape_answers():
  preds = ["circle", "square.", "Square", "star", "red"]
  answers = ["circle", "circle", "square", "square", "circle"]
  qtypes = ["shape"] * 4 + ["colour"]
  c = vqa.answer_confusion(preds, answers, qtypes, "shape")
  assert c["labels"] == ["circle", "square"]
  assert c["predicted"] == ["circle", "square", vqa.OTHER]
  # rows gold; "star" is no label: (other)
  assert c["matrix"] == [[1, 1, 0], [0, 1, 1]]


def test_confusion_plot_and_accuracy_table(tmp_path):
  confusion = {"labels": ["circle", "square"],
               "predicted": ["circle", "square", vqa.OTHER],
               "matrix": [[3, 1, 0], [0, 2, 2]]}
  png = plots.plot_confusion(confusion, str(tmp_path / "c.png"))
  assert Image.open(png).size[0] > 100
  results = {"sft": {"test/acc/shape": 0.5, "test/se/shape": 0.1,
                     "test/count/shape": 25, "test/acc/all": 0.75,
                     "test/se/all": 0.02, "test/count/all": 400,
                     "heldout/acc/all": 0.5, "heldout/se/all": 0.03,
                     "heldout/count/all": 300}}
  table = after_stage._accuracy_table(results)  # pylint: disable=protected-access
  assert "| sft | test | 0.500 +- 0.100 (25) | 0.750 +- 0.020 (400) |" in table
  assert "| sft | heldout | n/a | 0.500 +- 0.030 (300) |" in table
