"""The multimodal recipe end to end: every paradigm, and kill -9 + resume."""
import os
import random
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

FUSIONS = ("projection", "resampler", "qformer", "cross_attention",
           "one_backbone")
# A small dataset and short evaluations: CI checks that the recipe runs,
# README's table reports what the full recipe reaches.
_SMALL = ["--config.data.num_train=48", "--config.data.num_validation=8",
          "--config.data.num_test=8", "--config.data.num_heldout=8",
          "--config.batch_size=8", "--config.eval.max_examples=8",
          "--config.eval.batch_size=8", "--config.eval_batches=1",
          "--config.progress_bar=False",
          # Evaluate once (after instruction tuning) to keep CI short.
          "--config.stages.align.evals=()", "--config.stages.dpo.evals=()"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _main(args, workdir, data_dir, **kw):
  # --config first: absl applies --config.KEY overrides after it.
  cmd = [sys.executable, "-m", "mmjax.main", f"--workdir={workdir}", args[0],
         f"--config.data.data_dir={data_dir}", *_SMALL, *args[1:]]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_paradigm_runs_the_recipe(fusion, data_dir, tmp_path):
  proc = _main([f"--config=configs/shapes.py:size=tiny,steps=3,fusion={fusion}"],
               tmp_path, data_dir)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  report = (tmp_path / "report.md").read_text()
  for stage in ("text_lm", "align", "sft", "dpo"):
    assert f"## Stage `{stage}`" in report
  assert "test/acc/all" in report and "heldout/acc/all" in report
  assert (tmp_path / "losses.png").stat().st_size > 1000
  if fusion != "projection":
    return
  # Rerunning a finished recipe does no work and says where results are.
  again = _main([f"--config=configs/shapes.py:size=tiny,steps=3,fusion={fusion}"],
                tmp_path, data_dir)
  out, _ = again.communicate(timeout=900)
  assert again.returncode == 0, out[-3000:]
  assert "[dpo] already finished (3 steps)" in out


def _final(workdir):
  path = os.path.join(workdir, "checkpoints", "sft", "8", "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def test_kill_9_anywhere_in_the_recipe_then_rerun(data_dir, tmp_path):
  args = ["--config=configs/shapes.py:size=tiny,steps=8",
          "--config.stage_order=('text_lm','align','sft')",
          "--config.checkpoint.every=2", "--config.stages.sft.evals=()"]
  ref = _main(args, tmp_path / "ref", data_dir)
  out, _ = ref.communicate(timeout=900)
  assert ref.returncode == 0, out[-3000:]
  # Kill at a random moment after training started (seeded: reproducible).
  victim = _main(args, tmp_path / "run", data_dir)
  ckpts = tmp_path / "run" / "checkpoints"
  while not (ckpts / "text_lm").is_dir():
    assert victim.poll() is None, victim.stdout.read()[-3000:]
    time.sleep(0.05)
  time.sleep(random.Random(0).uniform(0.5, 6.0))
  victim.kill()
  victim.wait()
  assert not (ckpts / "sft" / "8").is_dir(), "killed too late to test"
  resumed = _main(args, tmp_path / "run", data_dir)
  out, _ = resumed.communicate(timeout=900)
  assert resumed.returncode == 0, out[-3000:]
  for a, b in zip(jax.tree.leaves(_final(tmp_path / "ref")),
                  jax.tree.leaves(_final(tmp_path / "run")), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


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
    proc = _main(["--config=configs/shapes.py:size=tiny,steps=3",
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
