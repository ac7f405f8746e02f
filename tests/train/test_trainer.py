"""The training loop: learning, checkpoints, fall-back, NaN guard, resume."""
import os

import jax
import numpy as np
import pytest

from mmjax import parallel
from mmjax.train import checkpoint as ckpt_lib
from mmjax.train import metrics as metrics_lib
from mmjax.train import recipe, trainer
from mmjax.train import stages


class CrashAfter:
  """Wraps a data iterator; raises after `n` batches, like a killed job."""

  def __init__(self, it, n, poison_at=None):
    self.it, self.n, self.count, self.poison_at = it, n, 0, poison_at

  def __next__(self):
    if self.count >= self.n:
      raise KeyboardInterrupt("simulated crash")
    batch = dict(next(self.it))
    if self.count == self.poison_at:
      batch["loss_mask"] = np.full_like(batch["loss_mask"], np.nan)
    self.count += 1
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def _run(config, workdir, crash_after=None, poison_at=None):
  """One stage of `config`, optionally crashing or poisoning a batch."""
  mesh = parallel.make_mesh(config.mesh.to_dict())
  rules = parallel.logical_rules()
  built = stages.build_task(config, "lm", str(workdir))
  if crash_after is not None or poison_at is not None:
    built.task.train_iterator = CrashAfter(
        built.task.train_iterator, crash_after or 10**9, poison_at)
  return trainer.run_stage(config, "lm", built.task, str(workdir), mesh,
                           rules)


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_recipe_learns_and_writes_outputs(lm_config, tmp_path):
  config = lm_config(steps=60)
  config.eval_every = 30
  done = recipe.run_recipe(config, tmp_path, verbose=False)
  (name, result, info), = done
  records = metrics_lib.read_metrics(tmp_path)
  train = [r for r in records if "loss" in r]
  assert all(r["stage"] == "lm" for r in records)
  assert [r["step"] for r in train] == list(range(2, 61, 2))
  assert {"lr", "grad_norm", "tokens_per_s", "step_time_s"} <= set(train[0])
  assert train[-1]["loss"] < 0.6 * info["unigram_entropy"] < train[0]["loss"]
  assert any("eval_loss" in r for r in records)
  assert sorted(os.listdir(tmp_path / "checkpoints" / "lm")) == ["52", "56",
                                                                 "60"]
  assert (tmp_path / "report.md").read_text().count("unigram_entropy") == 1
  assert os.listdir(tmp_path / "tb" / "lm")  # TensorBoard events
  # A finished recipe does no work when run again.
  again = recipe.run_recipe(config, tmp_path, verbose=False)
  assert again[0][1].resumed_from == 60
  assert len(metrics_lib.read_metrics(tmp_path)) == len(records)


def test_crash_resume_is_bit_identical(lm_config, tmp_path):
  config = lm_config(steps=12)
  straight = _run(config, tmp_path / "a")
  with pytest.raises(KeyboardInterrupt):
    _run(config, tmp_path / "b", crash_after=10)  # checkpoints 4 and 8
  resumed = _run(config, tmp_path / "b")
  assert resumed.resumed_from == 8
  _assert_trees_equal(straight.params, resumed.params)
  steps = [r["step"] for r in metrics_lib.read_metrics(tmp_path / "b")
           if "loss" in r]
  assert steps == sorted(set(steps))  # redone steps are not logged twice


def test_corrupt_newest_checkpoint_falls_back(lm_config, tmp_path, capsys):
  config = lm_config(steps=12)
  straight = _run(config, tmp_path / "a")
  with pytest.raises(KeyboardInterrupt):
    _run(config, tmp_path / "b", crash_after=10)
  state_dir = tmp_path / "b" / "checkpoints" / "lm" / "8" / "state"
  for root, _, files in os.walk(state_dir):  # truncate every data file
    for f in files:
      open(os.path.join(root, f), "w").close()
  resumed = _run(config, tmp_path / "b")
  assert "checkpoint step 8" in capsys.readouterr().out
  assert resumed.resumed_from == 4
  _assert_trees_equal(straight.params, resumed.params)


def test_non_finite_loss_stops_without_poisoned_checkpoint(lm_config,
                                                           tmp_path):
  config = lm_config(steps=12)
  with pytest.raises(trainer.NonFiniteLossError, match="at step 5"):
    _run(config, tmp_path, poison_at=5)
  assert os.listdir(tmp_path / "checkpoints" / "lm") == ["4"]
  ckpt = ckpt_lib.StageCheckpointer(str(tmp_path / "checkpoints" / "lm"))
  assert ckpt.newest_meta()[0] == 4


def test_incompatible_workdir_is_refused_untouched(lm_config, tmp_path):
  recipe.run_recipe(lm_config(steps=4), tmp_path, verbose=False)
  before = {p: os.path.getmtime(os.path.join(r, p))
            for r, _, fs in os.walk(tmp_path) for p in fs}
  other = lm_config(steps=4, **{"model.d_model": 96})
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError,
                     match=r"embed/embedding: checkpoint \[512, 128\], "
                     r"config \[512, 96\]"):
    recipe.run_recipe(other, tmp_path, verbose=False)
  after = {p: os.path.getmtime(os.path.join(r, p))
           for r, _, fs in os.walk(tmp_path) for p in fs}
  assert before == after


def test_sigterm_right_after_a_periodic_save(lm_config, tmp_path):
  """SIGTERM during the step that also saves periodically: one save, exit."""
  import os as _os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top

  class TermAt(CrashAfter):
    def __next__(self):
      if self.count == 3:  # fetching the batch of step 4 (a checkpoint step)
        _os.kill(_os.getpid(), signal.SIGTERM)
      return super().__next__()

  config = lm_config(steps=12)
  built = stages.build_task(config, "lm", str(tmp_path))
  built.task.train_iterator = TermAt(built.task.train_iterator, 10**9)
  with pytest.raises(trainer.Preempted, match="saved step 4"):
    trainer.run_stage(config, "lm", built.task, str(tmp_path),
                      parallel.make_mesh(config.mesh.to_dict()),
                      parallel.logical_rules())
  assert sorted(_os.listdir(tmp_path / "checkpoints" / "lm")) == ["4"]


def test_a_stage_can_have_its_own_batch_size(lm_config, tmp_path):
  config = lm_config(steps=2)
  config.stages.lm.batch_size = 4
  built = stages.build_task(config, "lm", str(tmp_path))
  assert next(built.task.train_iterator)["tokens"].shape[0] == 4
