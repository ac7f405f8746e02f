"""Text to image in the one loop: a tiny tokenizer run, then a `t2i` run on
it (the codes' loss falls, the tokenizer rides frozen in the checkpoint),
then `python -m mmjax.generate --out` draws a caption and `python -m
mmjax.evaluate` scores pictures with the independent checker; bad input
exits 2 with one line."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax.inference import text_to_image as t2i_lib
from mmjax.train import config_checks, recipe
from mmjax.train import metrics as metrics_lib
from tests.conftest import REPO


def _small_data(config, data_dir):
  config.data.update(data_dir=data_dir, num_train=32, num_validation=8,
                     num_test=6, num_heldout=4)
  config.update(log_every=2, eval_batches=1, progress_bar=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("t2i")
  data_dir = str(root / "data")
  vq = config_lib.load_config(os.path.join(REPO, "configs/vq.py") +
                              ":steps=6,batch=8,codes=32,levels=3")
  vq.model.vq.channels = (8, 8, 16)
  vq.model.vq.res_blocks = 1
  _small_data(vq, data_dir)
  recipe.run_recipe(vq, str(root / "vq"), verbose=False)
  t2i, result = _train_t2i(root, "t2i", "steps=40")
  return root, t2i, result


def _train_t2i(root, name: str, args: str):
  """(config, result) of a tiny configs/t2i.py run (its args plus `args`)
  on the fixture's tokenizer, in root / name."""
  config = config_lib.load_config(
      os.path.join(REPO, "configs/t2i.py") +
      f":tokenizer={root / 'vq'},batch=8,codes=32,levels=3,size=tiny,"
      f"layers=2,{args}")
  config.model.vq.channels = (8, 8, 16)
  config.model.vq.res_blocks = 1
  _small_data(config, str(root / "data"))
  config_checks.validate_config(config)
  (_, result, _), = recipe.run_recipe(config, str(root / name), verbose=False)
  return config, result


@pytest.fixture(scope="module")
def no_layout_run(runs):
  """A t2i run of the recipe before layouts, on the same tokenizer."""
  root, _, _ = runs
  config, result = _train_t2i(
      root, "t2i_plain", "steps=20,layout=0,positions=none,plain=0,lr=1e-3")
  return root / "t2i_plain", config, result


def test_a_run_without_a_layout_draws_from_the_caption_alone(no_layout_run):
  work, config, result = no_layout_run
  train = [r for r in metrics_lib.read_metrics(str(work)) if "loss" in r]
  assert "layout_loss" not in train[0]
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  assert all(p.startswith("llm/") for p in result.global_params)
  run = t2i_lib.load_text_to_image(str(work))
  assert run.model.layout_len == 0
  assert run.model.lm.vocab_size == config.model.lm.vocab_size + 2 + 32
  images, layouts = run.draw(["a red circle."], seed=1, with_layout=True)
  assert images.shape == (1, 64, 64, 3) and layouts == [[]]


def test_a_layout_run_learns_its_plans_and_draws_from_them(runs):
  root, _, result = runs
  work = root / "t2i"
  train = [r for r in metrics_lib.read_metrics(str(work)) if "loss" in r]
  assert {"layout_loss", "layout_accuracy", "code_accuracy"} <= set(train[0])
  assert train[-1]["layout_loss"] < train[0]["layout_loss"] - 1.0
  assert {p.split("/")[0] for p in result.global_params} == {
      "llm", "scene_layout"}
  run = t2i_lib.load_text_to_image(str(work))
  assert run.model.layout_len == 37
  images, layouts = run.draw(["a red circle.", "two blue stars."], seed=1,
                             with_layout=True)
  assert images.shape == (2, 64, 64, 3) and len(layouts) == 2
  assert all(isinstance(o, tuple) and len(o) == 3 for row in layouts
             for o in row)
  proc = _cli("mmjax.generate", f"--workdir={work}",
              "--prompt=a red circle and a blue star.",
              f"--out={work / 'drawn.png'}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count("layout: ") == 1, proc.stdout
  bad = json.loads((work / "config.json").read_text())
  bad["model"]["scene_layout"] = 1
  bad = ml_collections.ConfigDict(bad)
  with pytest.raises(config_lib.ConfigError, match="must be True or False"):
    config_checks.validate_config(bad)


def test_t2i_stage_learns_the_codes(runs):
  root, config, result = runs
  train = [r for r in metrics_lib.read_metrics(str(root / "t2i"))
           if "loss" in r]
  assert {"loss", "code_accuracy"} <= set(train[0])
  # 8 x 8 codes of 32: the loss starts near log(32 + 2 + 77 + text vocab).
  assert train[-1]["loss"] < train[0]["loss"] - 1.0
  run = t2i_lib.load_text_to_image(str(root / "t2i"))
  assert run.model.n_codes == 64 and run.model.vocab.codes == 32
  assert run.model.lm.vocab_size == config.model.lm.vocab_size + 2 + 32 + 77
  images = run.draw(["a red circle.", "two blue stars."], seed=1)
  assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8


def _cli(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args],
                        capture_output=True, text=True, cwd=REPO,
                        check=False, env=dict(os.environ, PYTHONPATH=REPO))


def test_generate_writes_the_picture_and_refuses_bad_input(runs):
  root, _, _ = runs
  work, out = str(root / "t2i"), str(root / "drawn.png")
  proc = _cli("mmjax.generate", f"--workdir={work}",
              "--prompt=a red circle and a blue star.", f"--out={out}",
              "--guidance=2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  assert Image.open(out).size == (64, 64)
  for args, message in (
      (["--prompt=six red circles and a blue star.", f"--out={out}"],
       "asks for 7 objects"),
      (["--prompt=a red circle.", f"--out={out}", "--guidance=0"],
       "guidance=0.0 must be > 0"),
      (["--prompt=" + "a red circle and " * 12 + "a star.", f"--out={out}"],
       "the model reads at most 32"),
      (["--prompt=a red circle."], "give --out=image.png"),
      (["--prompt=a red circle.", f"--out={root}/none/x.png"],
       "does not exist"),
      (["--prompt=a red circle.", f"--out={out}", "--image=x.png"],
       "takes no --image")):
    proc = _cli("mmjax.generate", f"--workdir={work}", *args)
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (args, lines)
  proc = _cli("mmjax.generate", f"--workdir={root / 'vq'}",
              "--prompt=a red circle.", f"--out={out}")
  assert proc.returncode == 2 and "not a text-to-image run" in proc.stderr


def test_evaluate_scores_pictures_with_the_checker(runs):
  root, _, _ = runs
  work = str(root / "t2i")
  proc = _cli("mmjax.evaluate", f"--workdir={work}", "--split=test",
              "--max_examples=6")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(work, "eval", "t2i_test.json"),
            encoding="utf-8") as f:
    m = json.load(f)
  assert m["pictures"] == 6
  # The checker reads the renderer's own pictures right; a 30-step model
  # draws nothing it can confirm.
  assert m["renders/pairs"] >= 5 / 6
  assert 0 <= m["generated/pairs"] <= 1
  assert os.path.exists(m["grid"])
  proc = _cli("mmjax.evaluate", f"--workdir={work}", "--grounding=4")
  assert proc.returncode == 2 and "do not apply" in proc.stderr


def test_a_tokenizer_of_other_sizes_or_none_is_one_line(runs, tmp_path):
  root, config, _ = runs
  from mmjax.train.stages import t2i  # pylint: disable=g-import-not-at-top
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.vq.codebook_size = 64
  with pytest.raises(config_lib.ConfigError, match="was trained with"):
    t2i.load_tokenizer(other, "t2i")
  other = ml_collections.ConfigDict(config.to_dict())
  other.stages.t2i.tokenizer = str(tmp_path / "nothing")
  with pytest.raises(config_lib.ConfigError, match="holds no run"):
    config_checks.validate_config(other)
  assert os.path.isdir(root / "vq")
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.code_positions = "rope2d"
  with pytest.raises(config_lib.ConfigError, match=(
      "config.model.code_positions='rope2d': choose one of none, sincos2d")):
    config_checks.validate_config(other)
  other = ml_collections.ConfigDict(config.to_dict())
  other.stages.t2i.object_weight = -1.0
  with pytest.raises(config_lib.ConfigError, match=(
      r"config.stages.t2i.object_weight=-1.0 must lie in \[0.0, None\]")):
    config_checks.validate_config(other)
  other = ml_collections.ConfigDict(config.to_dict())
  other.stages.t2i.merge_codes = -0.5
  with pytest.raises(config_lib.ConfigError, match=(
      r"config.stages.t2i.merge_codes=-0.5 must lie in \[0.0, None\]")):
    config_checks.validate_config(other)
  other = ml_collections.ConfigDict(config.to_dict())
  other.stages.t2i.layout_order = "random"
  with pytest.raises(config_lib.ConfigError, match=(
      "config.stages.t2i.layout_order='random': choose one of caption, "
      "left_to_right")):
    config_checks.validate_config(other)
  # Merged near-duplicates: the LM's tokenizer holds fewer distinct codes.
  other = ml_collections.ConfigDict(config.to_dict())
  other.stages.t2i.merge_codes = 1e9
  merged = t2i.load_tokenizer(other, "t2i")["codebook"]
  assert len(np.unique(np.asarray(merged), axis=0)) == 1
  with pytest.raises(config_lib.ConfigError, match="layers=-1 must be >= 0"):
    config_lib.load_config(os.path.join(REPO, "configs/t2i.py") +
                           ":layers=-1")


def test_flatten_background_keeps_the_objects_and_flattens_the_rest():
  from mmjax.data import images as images_lib, shapes  # pylint: disable=g-import-not-at-top
  from mmjax.train.stages import t2i  # pylint: disable=g-import-not-at-top
  kinds = set()
  for index in range(40):
    scene = shapes.example_scene("train", index)
    if scene.background.kind == "plain" or scene.background.kind in kinds:
      continue
    kinds.add(scene.background.kind)
    rgb = shapes.draw(scene)
    palette = np.array(list(shapes.COLOUR_RGB.values()))
    drawn = (rgb[:, :, None, :] == palette[None, None]).all(-1).any(-1)
    pixels = images_lib.normalize(rgb)[None]
    flat = np.asarray(t2i.flatten_background(pixels))[0]
    np.testing.assert_array_equal(flat[drawn], pixels[0][drawn])
    background = flat[~drawn]
    assert np.ptp(background, axis=0).max() < 1e-6   # one colour
    assert np.ptp(pixels[0][~drawn], axis=0).max() > 0.04  # was textured
  assert kinds == {"noise", "stripes", "checker"}


def test_object_weight_counts_the_codes_of_covered_cells():
  from mmjax.train.stages import t2i  # pylint: disable=g-import-not-at-top
  labels = np.zeros((2, 4, 2), np.int32)
  labels[0, 1] = labels[1, 3] = (3, 2)  # an object covers these cells
  valid = np.array([[1.0], [0.0]], np.float32)  # row 1 is padding
  cells = (labels, np.zeros((2, 4, 5), np.float32))
  np.testing.assert_array_equal(
      np.asarray(t2i.code_weights(valid, 5, cells, 3.0)),
      [[1, 3, 1, 1, 1], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(
      np.asarray(t2i.code_weights(valid, 5, cells)), [[1] * 5, [0] * 5])
  np.testing.assert_array_equal(
      np.asarray(t2i.code_weights(valid, 5, None, 3.0)), [[1] * 5, [0] * 5])


def test_a_run_draws_with_its_own_settings_unless_told():
  for arg, want in (("layout=1", (1.0, 0.0, 0.0, 0.0)),
                    ("layout=0", (3.0, 1.0, 0.0, 0.0))):
    config = config_lib.load_config(
        os.path.join(REPO, "configs/t2i.py") + ":" + arg)
    guidance, sampling, layout = t2i_lib.drawing_settings(config)
    assert (guidance, sampling.temperature, layout.what.temperature,
            layout.where.temperature) == want
  # A run of an older config (no config.drawing) draws as it always did.
  del config["drawing"]
  guidance, sampling, layout = t2i_lib.drawing_settings(config)
  assert (guidance, sampling.temperature, layout.where.temperature) == (
      3.0, 1.0, 1.0)
