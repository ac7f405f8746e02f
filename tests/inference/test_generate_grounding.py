"""`python -m mmjax.generate` with box answers: the box line, --draw, and its
bad input (exit 2, one line); `grounding.draw_box` from Python."""
import numpy as np
import pytest
from PIL import Image

from mmjax import generate
from mmjax.data import grounding
from tests.helpers import draw_png, make_workdir, one_error_line, run_cli

MAGENTA = (255, 0, 255)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("generate_grounding")
  return make_workdir(root / "run", root / "data")


def test_draw_without_an_image_exits_2_before_loading(tmp_path):
  proc = run_cli("mmjax.generate", f"--workdir={tmp_path / 'nothing'}",
                 "--prompt=where is the red square?",
                 f"--draw={tmp_path / 'out.png'}")
  line = one_error_line(proc)
  assert "needs an --image to draw the box on" in line
  assert proc.stdout == "" and not (tmp_path / "out.png").exists()


def test_draw_to_an_unknown_format_exits_2(tmp_path):
  png = draw_png(tmp_path / "in.png")
  proc = run_cli("mmjax.generate", f"--workdir={tmp_path / 'nothing'}",
                 f"--image={png}", "--prompt=where?",
                 f"--draw={tmp_path / 'out.box'}")
  assert "unknown image extension '.box'" in one_error_line(proc)


def test_answer_that_is_no_box_prints_it_then_exits_2(run_dir, tmp_path):
  png = draw_png(tmp_path / "in.png")
  out = tmp_path / "out.png"
  proc = run_cli("mmjax.generate", f"--workdir={run_dir}", f"--image={png}",
                 "--prompt=where is the red square?", "--max_new_tokens=4",
                 f"--draw={out}")
  line = one_error_line(proc)
  answer = proc.stdout.strip()
  assert grounding.parse_box(answer) is None  # a random model's words
  assert f"the answer {answer!r} is no box" in line
  assert not out.exists()


def test_box_line_and_drawing(tmp_path, capsys):
  png = draw_png(tmp_path / "in.png")  # 80 x 64
  image = np.asarray(Image.open(png).convert("RGB"))
  out = tmp_path / "out.png"
  generate._report_box("[100, 125, 500, 1000].", [image], str(out), "square")
  assert capsys.readouterr().out == (
      "box: [100, 125, 500, 1000] (0..1000) = pixels [8, 8, 40, 64] of a "
      "80x64 image\n")
  drawn = np.asarray(Image.open(out).convert("RGB"))
  assert drawn.shape == image.shape
  # The outline: the box's corners and edges, nothing far inside or out.
  assert tuple(drawn[8, 8]) == MAGENTA and tuple(drawn[63, 39]) == MAGENTA
  assert tuple(drawn[8, 20]) == MAGENTA and tuple(drawn[30, 8]) == MAGENTA
  assert tuple(drawn[30, 20]) == tuple(image[30, 20])
  assert tuple(drawn[4, 60]) == tuple(image[4, 60])
  # No box, no --draw: nothing printed, nothing written.
  generate._report_box("red", [image], None, "square")
  assert capsys.readouterr().out == ""


def test_draw_box_python_api(tmp_path):
  png = draw_png(tmp_path / "in.png")
  pil = Image.open(png)
  array = np.asarray(pil.convert("RGB"))
  results = []
  for i, image in enumerate((png, pil, array)):
    path = grounding.draw_box(image, (0, 0, 500, 500), str(tmp_path /
                                                             f"{i}.png"))
    results.append(np.asarray(Image.open(path).convert("RGB")))
  for drawn in results[1:]:
    np.testing.assert_array_equal(drawn, results[0])
  assert tuple(results[0][0, 0]) == MAGENTA
  assert tuple(results[0][31, 39]) == MAGENTA  # exclusive corner: 40 x 32
  assert tuple(results[0][32, 40]) == tuple(array[32, 40])


def test_grounded_caption_answer_prints_and_draws_every_box(tmp_path, capsys):
  png = draw_png(tmp_path / "in.png")  # 80 x 64
  image = np.asarray(Image.open(png).convert("RGB"))
  out = tmp_path / "out.png"
  generate._report_box("a red circle [100, 125, 500, 1000] and a blue star "
                       "[625, 0, 1000, 250].", [image], str(out), "square")
  assert capsys.readouterr().out == (
      "box: red circle: [100, 125, 500, 1000] (0..1000) = pixels [8, 8, 40, "
      "64] of a 80x64 image\n"
      "box: blue star: [625, 0, 1000, 250] (0..1000) = pixels [50, 0, 80, "
      "16] of a 80x64 image\n")
  drawn = np.asarray(Image.open(out).convert("RGB"))
  assert tuple(drawn[8, 8]) == MAGENTA and tuple(drawn[0, 50]) == MAGENTA
  assert tuple(drawn[15, 79]) == MAGENTA
  assert tuple(drawn[30, 20]) == tuple(image[30, 20])
