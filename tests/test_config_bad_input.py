"""Config mistakes get one clear error before anything is built: config and
sweep files that are missing or do not parse, and model / data values that
would build a model other than the one the config describes."""
import os

import pytest

from mmjax import config as C
from mmjax import testing
from mmjax.sweeps import plan as sweep_plan
from mmjax.train import config_checks
from tests import helpers

BROKEN = "def get_config(arg=None):\n  return dict(a=1\n"


# ------------------------------------------------ config and sweep files --
def test_main_with_a_missing_config_file_exits_2(tmp_path):
  line = helpers.one_error_line(helpers.run_cli("mmjax.main", "--config=nope.py:tiny",
                              f"--workdir={tmp_path / 'w'}"))
  assert "config file 'nope.py' does not exist" in line
  assert "configs/lm.py:tiny" in line
  assert not (tmp_path / "w").exists()


def test_main_with_a_config_file_that_does_not_parse_exits_2(tmp_path):
  bad = tmp_path / "broken.py"
  bad.write_text(BROKEN)
  line = helpers.one_error_line(helpers.run_cli("mmjax.main", f"--config={bad}:tiny",
                              f"--workdir={tmp_path / 'w'}",
                              "--config.seed=3"))
  assert f"config file {bad} has a syntax error at line 2" in line


def test_load_config_names_a_missing_or_broken_file(tmp_path):
  with pytest.raises(C.ConfigError, match="'nope.py' does not exist"):
    C.load_config("nope.py:tiny")
  bad = tmp_path / "broken.py"
  bad.write_text(BROKEN)
  with pytest.raises(C.ConfigError, match="syntax error at line 2"):
    C.load_config(f"{bad}:tiny")
  empty = tmp_path / "empty.py"
  empty.write_text("X = 1\n")
  with pytest.raises(C.ConfigError, match="defines no get_config"):
    C.load_config(str(empty))


def test_sweep_file_missing_or_broken_exits_2(tmp_path):
  line = helpers.one_error_line(helpers.run_cli("mmjax.sweep", "--sweep=missing.py",
                              f"--workdir={tmp_path / 'w'}"))
  assert "sweep file 'missing.py' does not exist" in line
  bad = tmp_path / "broken_sweep.py"
  bad.write_text("SWEEP = S.Sweep(config='configs/lm.py',\n")
  line = helpers.one_error_line(helpers.run_cli("mmjax.sweep", f"--sweep={bad}",
                              f"--workdir={tmp_path / 'w'}", "--dry_run"))
  assert f"sweep file {bad} has a syntax error at line 1" in line
  with pytest.raises(sweep_plan.SweepError, match="syntax error"):
    sweep_plan.load_sweep(str(bad))
  assert not (tmp_path / "w").exists()


# ------------------------------------------------------- model and data --
@pytest.mark.parametrize("fusion", testing.FUSIONS)
@pytest.mark.parametrize("positions", testing.POSITIONS)
def test_every_tiny_recipe_still_validates(fusion, positions):
  config_checks.validate_config(testing.tiny_recipe(fusion, positions))


def test_max_len_too_short_for_an_image():
  config = testing.tiny_recipe()
  config.data.max_len = 70  # one 64x64 image in 8x8 patches: 64 tokens
  with pytest.raises(C.ConfigError, match=(
      r"config.data.max_len=70 cannot hold an image and its text: one image "
      r"takes 64 tokens \(fusion='projection', 64x64 px\).*raise "
      r"config.data.max_len to >= 80")):
    config_checks.validate_config(config)
  config.data.max_len = 80
  config_checks.validate_config(config)
  # Fewer tokens per image need less: 2x2 merging leaves 16.
  config.data.max_len = 32
  config.model.projector = "pixel_shuffle"
  config_checks.validate_config(config)


def test_tokenizer_vocab_larger_than_the_model():
  config = testing.tiny_recipe()
  config.data.vocab_size = 1024
  with pytest.raises(C.ConfigError, match=(
      r"config.data.vocab_size=1024 exceeds config.model.lm.vocab_size=512: "
      r"token ids 512..1023 would have no embedding row.*raise "
      r"config.model.lm.vocab_size to >= 1024")):
    config_checks.validate_config(config)
  config.model.lm.vocab_size = 1024  # the SigLIP stage's text tower next
  with pytest.raises(C.ConfigError, match="config.model.text.vocab_size=512"):
    config_checks.validate_config(config)
  config.model.text.vocab_size = 1024
  config_checks.validate_config(config)


def test_text_lm_tokenizer_vocab_larger_than_the_model(lm_config):
  config = lm_config()
  config.tokenizer.vocab_size = config.model.vocab_size + 1
  with pytest.raises(C.ConfigError, match="exceeds config.model.vocab_size"):
    config_checks.validate_config(config)


@pytest.mark.parametrize("projector", ["pixel_shuffle", "patch_merger"])
def test_merging_projector_on_an_odd_patch_grid(projector):
  config = testing.tiny_recipe()
  config.model.projector = projector
  config.model.image_size = config.model.vision.image_size = 72  # 9x9
  with pytest.raises(C.ConfigError, match=(
      rf"projector='{projector}' merges 2x2 patches and needs an even patch "
      r"grid, but config.model.vision.image_size=72 with patch_size=8 gives "
      r"9x9: use an image size that is a multiple of 16 \(e.g. 80\)")):
    config_checks.validate_model(config)
  config.model.image_size = config.model.vision.image_size = 80
  config_checks.validate_model(config)


def test_model_image_size_must_match_the_one_in_use():
  config = testing.tiny_recipe("projection")
  config.model.image_size = 128  # only one_backbone reads it
  with pytest.raises(C.ConfigError, match=(
      r"config.model.image_size=128 and config.model.vision.image_size=64 "
      r"differ; fusion='projection' uses config.model.vision.image_size "
      r"\(64\) and ignores the other")):
    config_checks.validate_model(config)
  config = testing.tiny_recipe("one_backbone")
  config.model.vision.patch_size = 16
  with pytest.raises(C.ConfigError, match=(
      r"config.model.patch_size=8 and config.model.vision.patch_size=16 "
      r"differ; fusion='one_backbone' uses config.model.patch_size \(8\)")):
    config_checks.validate_model(config)


@pytest.mark.parametrize("fusion", ["projection", "one_backbone"])
def test_image_size_not_a_multiple_of_the_patch(fusion):
  config = testing.tiny_recipe(fusion)
  config.model.image_size = config.model.vision.image_size = 68
  where = "vision." if fusion != "one_backbone" else ""
  with pytest.raises(C.ConfigError, match=(
      rf"config.model.{where}image_size=68 is not a multiple of "
      rf"config.model.{where}patch_size=8: the last 4 px of every row and "
      r"column would be dropped; use 64 or 72")):
    config_checks.validate_model(config)
  # Imported weights keep their tower's native geometry (So400m/14 at 384).
  config.init_from.vision = os.path.join("converted", "siglip")
  config_checks.validate_model(config)
