"""kill -9 anywhere in the recipe, then the same command: same result."""
import os
import random
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train.recipe_runner import run_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _final(workdir):
  path = os.path.join(workdir, "checkpoints", "sft", "8", "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def test_kill_9_anywhere_in_the_recipe_then_rerun(data_dir, tmp_path):
  args = ["--config=configs/shapes.py:size=tiny,steps=8",
          "--config.stage_order=('text_lm','align','sft')",
          "--config.checkpoint.every=2", "--config.stages.sft.evals=()"]
  ref = run_main(args, tmp_path / "ref", data_dir)
  out, _ = ref.communicate(timeout=900)
  assert ref.returncode == 0, out[-3000:]
  # Kill at a random moment after training started (seeded: reproducible).
  victim = run_main(args, tmp_path / "run", data_dir)
  ckpts = tmp_path / "run" / "checkpoints"
  while not (ckpts / "text_lm").is_dir():
    assert victim.poll() is None, victim.stdout.read()[-3000:]
    time.sleep(0.05)
  time.sleep(random.Random(0).uniform(0.5, 6.0))
  victim.kill()
  victim.wait()
  assert not (ckpts / "sft" / "8").is_dir(), "killed too late to test"
  resumed = run_main(args, tmp_path / "run", data_dir)
  out, _ = resumed.communicate(timeout=900)
  assert resumed.returncode == 0, out[-3000:]
  for a, b in zip(jax.tree.leaves(_final(tmp_path / "ref")),
                  jax.tree.leaves(_final(tmp_path / "run")), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
