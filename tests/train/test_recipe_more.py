"""The shapes recipe end to end: cross_attention, one_backbone; user folders."""
import numpy as np
import pytest

from tests.train.recipe_runner import run_main, run_recipe_and_check_report
from tests.train.recipe_runner import TOWER_FREE_ORDER

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("fusion", ("cross_attention", "one_backbone"))
def test_every_paradigm_runs_the_recipe(fusion, data_dir, tmp_path):
  args = [f"--config=configs/shapes.py:size=tiny,steps=3,fusion={fusion}"]
  if fusion == "cross_attention":  # (one_backbone has no tower stages)
    args.append(TOWER_FREE_ORDER[fusion])
  if fusion == "one_backbone":  # The preference stage as MPO here.
    args += ["--config.stages.dpo.loss=mpo", "--config.log_every=1"]
  run_recipe_and_check_report(args, tmp_path, data_dir)
  if fusion == "one_backbone":
    import json  # pylint: disable=g-import-not-at-top
    rows = [json.loads(l) for l in
            (tmp_path / "metrics.jsonl").read_text().splitlines()]
    counts = [r["reward_count"] for r in rows if "reward_count" in r]
    # BCO's delta is a running mean over the stage (2 rewards per pair,
    # batch 8), kept in the train state from step to step.
    assert counts == [16, 32, 48], counts


def test_llava_and_caption_folders_train(data_dir, tmp_path):
  """User data in the LLaVA-Instruct and image-caption formats trains."""
  import json  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = tmp_path / "images"
  images.mkdir()
  for i in range(4):
    Image.new("RGB", (48 + 8 * i, 64), (60 * i, 90, 200)).save(
        images / f"{i}.png")
  llava = [{"id": f"r{i}", "image": f"{i}.png", "conversations": [
      {"from": "human", "value": "<image>\nwhat colour is it?"},
      {"from": "gpt", "value": ["red", "blue", "green", "grey"][i]}]}
           for i in range(4)]
  (tmp_path / "llava.json").write_text(json.dumps(llava))
  (tmp_path / "captions.jsonl").write_text("\n".join(
      json.dumps({"image": f"{i}.png", "caption": f"a box number {i}."})
      for i in range(4)))
  for fmt, path in (("llava_conversations", "llava.json"),
                    ("image_caption", "captions.jsonl")):
    proc = run_main(["--config=configs/shapes.py:size=tiny,steps=3",
                  "--config.stage_order=('sft',)",
                  f"--config.stages.sft.data={fmt}",
                  "--config.stages.sft.evals=()", "--config.batch_size=4",
                  f"--config.data.folder_json={tmp_path / path}",
                  f"--config.data.folder_images={images}"],
                 tmp_path / fmt, data_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    losses = [json.loads(l)["loss"] for l in
              (tmp_path / fmt / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in l]
    assert losses and all(np.isfinite(losses))
