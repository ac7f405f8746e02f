"""experiments/region_probe.py: per-object accuracy of a run's region head,
held-out pairs apart (smoke run on a fabricated run)."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

from mmjax import config as config_lib
from mmjax import testing
from mmjax.data import datasets
from mmjax.train import checkpoint as ckpt_lib
from mmjax.train import stages
from tests.conftest import REPO


def test_probe_reports_held_out_pairs_apart(tmp_path):
  config = testing.tiny_recipe("projection")
  config.stages.regions.attributes = ("shape", "colour", "left", "top",
                                      "right", "bottom")
  config.data.update(dict(data_dir=str(tmp_path / "data"), num_train=16,
                          num_validation=4, num_test=8, num_heldout=8))
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  with open(workdir / "config.json", "w") as f:
    json.dump(config_lib.to_plain(config), f)
  datasets.shapes_dataset(config)
  _, init, _ = stages.stage_model(config, "regions")
  params = testing.random_params_like(
      nn.unbox(jax.eval_shape(init, jax.random.key(0))))
  ckpt = ckpt_lib.StageCheckpointer(str(workdir / "checkpoints" / "regions"),
                                    async_save=False)
  ckpt.save(2, {"step": np.int32(2), "params": params}, {},
            {"stage": "regions", "finished": True})
  ckpt.close()
  proc = subprocess.run(
      [sys.executable, "experiments/region_probe.py", f"--workdir={workdir}",
       "--images=8"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [l for l in proc.stdout.splitlines() if ": shape:" in l]
  assert lines[0].startswith("test: shape: other ")
  # Every heldout image has a held-out pair: that group is reported there.
  assert lines[1].startswith("heldout: shape: held-out pair ")
  assert "colour:" in lines[1]
  # Taught box edges: boxes from the pooled head and the centre token.
  boxed = [l for l in proc.stdout.splitlines() if "boxes at IoU" in l]
  assert boxed[0].startswith("test: boxes at IoU >= 0.5: pooled ")
  assert "centre token " in boxed[0] and len(boxed) == 2
  # A run without the stage: one line, not a traceback.
  bad = subprocess.run(
      [sys.executable, "experiments/region_probe.py", f"--workdir={workdir}",
       "--stage=nope"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "no stage 'nope'" in bad.stderr
