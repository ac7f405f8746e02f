"""Per-stage folder data (datasets.folder_paths / check_folder_config)."""
import pytest

from mmjax.config import ConfigError, load_config
from mmjax.data import datasets


def test_a_stage_may_read_its_own_folder(tmp_path):
  config = load_config("configs/shapes.py:size=tiny")
  config.data.folder_json = str(tmp_path / "all.json")
  config.data.folder_images = str(tmp_path)
  assert datasets.folder_paths(config, "sft") == (str(tmp_path / "all.json"),
                                                  str(tmp_path))
  config.stages.sft.folder_json = str(tmp_path / "sft.json")
  assert datasets.folder_paths(config, "sft") == (str(tmp_path / "sft.json"),
                                                  str(tmp_path))
  assert datasets.folder_paths(config, "align")[0] == str(
      tmp_path / "all.json")
  with pytest.raises(ConfigError, match=(
      r"data='llava_conversations' needs config.stages.sft.folder_json \(a "
      r"llava_conversations JSON file\) and config.data.folder_images; got "
      r"'.*sft.json'")):
    datasets.check_folder_config(config, "llava_conversations", "sft")
