"""Training with data.packing: the sft stage runs on packed rows and
metrics.jsonl logs the packing efficiency (padded rows: the pipeline test
tests/data/test_packing.py compares the two)."""
import pytest

from mmjax import config as config_lib
from mmjax import testing
from mmjax.train import metrics
from mmjax.train.recipe import run_recipe


def _efficiency(tmp_path, packing):
  config = testing.tiny_recipe(steps=2, batch=4)
  config.data.update(data_dir=str(tmp_path / "data"), num_train=24,
                     num_validation=4, num_test=4, num_heldout=4,
                     max_len=256, packing=packing)
  config.stage_order = ("sft",)
  config.stages.sft.evals = ()
  config.update(log_every=1, progress_bar=False, eval_batches=1)
  workdir = str(tmp_path / f"run_{packing}")
  run_recipe(config, workdir, verbose=False)
  return [r["data/packing_efficiency"] for r in metrics.read_metrics(workdir)
          if "data/packing_efficiency" in r]


@pytest.mark.slow
def test_packed_training_logs_its_efficiency(tmp_path):
  packed = _efficiency(tmp_path, True)
  print("packing efficiency", packed)
  # Shapes questions are ~90 tokens: two or more share each 256-token row.
  assert len(packed) == 2 and 0.6 < packed[-1] <= 1


def test_a_run_config_without_data_packing_resumes():
  new = config_lib.to_plain(testing.tiny_recipe())
  old = dict(new, data={k: v for k, v in new["data"].items()
                        if k != "packing"})
  assert config_lib.upgrade_legacy(old, new) == new
  assert "packing" not in old["data"]  # the caller's tree is not changed
