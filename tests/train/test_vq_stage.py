"""Stage kind `vq` in the one loop: it lowers the loss, keeps its codebook
in the checkpointed loss state, resumes bit-identically, and refuses bad
config with one line."""
import os

import jax
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import parallel
from mmjax.evals.vq_reconstruction import evaluate_vq, write_grid
from mmjax.inference.vq_tokenizer import load_vq_tokenizer
from mmjax.train import config_checks, recipe, stages, trainer
from mmjax.train import metrics as metrics_lib
from tests.conftest import REPO
from tests.train.test_trainer import CrashAfter


@pytest.fixture
def vq_config(tmp_path_factory):
  data_dir = str(tmp_path_factory.getbasetemp() / "vq_data")

  def make(steps=12):
    config = config_lib.load_config(
        os.path.join(REPO, "configs/vq.py") + f":steps={steps},batch=8")
    config.model.vq.channels = (8, 16)
    config.model.vq.codebook_size = 32
    config.model.vq.res_blocks = 1
    config.data.update(data_dir=data_dir, num_train=32, num_validation=8,
                       num_test=4, num_heldout=4)
    config.update(log_every=2, eval_batches=1, progress_bar=False)
    config.checkpoint.every = 4
    return config
  return make


def _run(config, workdir, crash_after=None):
  mesh = parallel.make_mesh(config.mesh.to_dict())
  built = stages.build_task(config, "vq", str(workdir))
  if crash_after is not None:
    built.task.train_iterator = CrashAfter(built.task.train_iterator,
                                           crash_after)
  return trainer.run_stage(config, "vq", built.task, str(workdir), mesh,
                           parallel.logical_rules())


def test_vq_stage_learns_in_the_loop(vq_config, tmp_path):
  config = vq_config(steps=40)
  config_checks.validate_config(config)
  (_, result, _), = recipe.run_recipe(config, tmp_path, verbose=False)
  train = [r for r in metrics_lib.read_metrics(tmp_path) if "loss" in r]
  assert {"recon_loss", "commit_loss", "psnr", "codebook_usage",
          "perplexity", "restarted_codes"} <= set(train[0])
  assert train[-1]["recon_loss"] < 0.5 * train[0]["recon_loss"]
  assert train[-1]["psnr"] > train[0]["psnr"] + 3
  assert 0 < train[-1]["codebook_usage"] <= 1
  assert "eval_psnr" in result.final_metrics
  # The tokenizer's weights go to the global store as group `vq`.
  assert all(p.startswith("vq/") for p in result.global_params)
  # The trained tokenizer reads back from the workdir: images <-> codes,
  # and the test-split figures agree with the loop's own held-out PSNR.
  tok = load_vq_tokenizer(str(tmp_path))
  codes = tok.encode(np.zeros((2, 64, 64, 3), np.float32))
  assert codes.shape == (2, 16, 16) and codes.dtype == np.int32
  assert tok.decode(codes).shape == (2, 64, 64, 3)
  figures = evaluate_vq(str(tmp_path), "test")
  assert figures["images"] == 4 and figures["codebook_size"] == 32
  assert abs(figures["psnr"] - result.final_metrics["eval_psnr"]) < 3
  assert 0 < figures["batch_usage"] <= figures["split_usage"] <= 1
  from PIL import Image  # pylint: disable=g-import-not-at-top
  png = write_grid(str(tmp_path), str(tmp_path / "grid.png"), n=4)
  assert Image.open(png).size == (4 * 64 * 2, 2 * 64 * 2)


def test_vq_stage_resumes_bit_identically(vq_config, tmp_path):
  config = vq_config(steps=12)
  straight = _run(config, tmp_path / "a")
  with pytest.raises(KeyboardInterrupt):
    _run(config, tmp_path / "b", crash_after=10)  # checkpoints 4 and 8
  resumed = _run(config, tmp_path / "b")
  assert resumed.resumed_from == 8
  for a, b in zip(jax.tree.leaves(straight.params),
                  jax.tree.leaves(resumed.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The codebook (loss state) resumed too: the final checkpoints agree.
  states = [parallel.restore_on_one_device(
      str(tmp_path / run / "checkpoints" / "vq" / "12" / "state"),
      keys=("loss_state",))["loss_state"] for run in ("a", "b")]
  leaves = [jax.tree.leaves(s) for s in states]
  assert len(leaves[0]) == 3
  for a, b in zip(*leaves, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("key,value,message", [
    ("model.vq.channels", (8, 8, 8, 8, 8, 8, 8), "does not divide the image"),
    ("model.vq.codebook_size", 1, "must be >= 2"),
    ("stages.vq.recon", "l3", "recon='l3' is not allowed"),
    ("stages.vq.decay", 1.5, "decay=1.5 must lie in"),
])
def test_bad_vq_config_is_one_line(vq_config, key, value, message):
  config = vq_config()
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    config_checks.validate_config(config)
  assert "\n" not in str(e.value)


def test_a_vq_option_on_another_stage_is_refused(vq_config):
  config = vq_config()
  config.stages.other = config.stages.vq.copy_and_resolve_references()
  config.stages.other.loss = "sigmoid_contrastive"
  config.stages.other.trainable = ("vision",)
  config.stages.other.decay = 0.9  # a vq option away from its neutral value
  config.stage_order = ("vq", "other")
  with pytest.raises(config_lib.ConfigError, match="only stages with loss"):
    config_checks.validate_config(config)


def test_a_vq_stage_without_its_model_block_is_one_line(vq_config):
  config = vq_config()
  del config.model["vq"]
  with pytest.raises(config_lib.ConfigError, match="needs config.model.vq"):
    config_checks.validate_config(config)
