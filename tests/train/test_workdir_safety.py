"""A run's work directory: one run at a time (WORKDIR/.lock), the config as
run, metrics records once each, damaged data-iterator states, unusable paths.

The rows of docs/bad-input.md, "Runs and work directories".
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grain
import jax
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax.data import pipeline, text_pipeline
from mmjax.train import checkpoint as ckpt_lib
from mmjax.train import metrics as metrics_lib
from mmjax.train import recipe, stages
from tests.conftest import REPO
from tests.train.test_trainer import _assert_trees_equal, _run


def _kind(record):
  """What a record logs (kept here so the test does not trust the code)."""
  if "compile_time_s" in record:
    return "compile"
  if any(k.startswith("eval") for k in record):
    return "eval"
  return "train"


def _lock(workdir, pid, host=None):
  """Writes WORKDIR/.lock as a run `pid` on `host` holds it."""
  os.makedirs(workdir, exist_ok=True)
  holder = {"host": host or socket.gethostname(), "pid": pid,
            "started": "2026-01-01T00:00:00+00:00"}
  with open(os.path.join(workdir, ".lock"), "w", encoding="utf-8") as f:
    json.dump(holder, f)
  return holder


@pytest.fixture
def nothing_built(monkeypatch):
  """Fails a test that builds a model: checks must come first."""
  def build(*args, **kwargs):
    raise AssertionError("a model was built before the workdir was checked")
  monkeypatch.setattr(stages, "model_initializer", build)
  monkeypatch.setattr(stages, "build_task", build)


# ---------------------------------------------------------------- lock --


@pytest.mark.parametrize("where", ["this host", "another host"])
def test_a_held_workdir_is_refused(where, lm_config, tmp_path, nothing_built):
  with subprocess.Popen(["sleep", "60"]) as holder:
    try:
      _lock(tmp_path, holder.pid,
            None if where == "this host" else "elsewhere.example")
      with pytest.raises(config_lib.ConfigError,
                         match=rf"in use by another run \(pid {holder.pid} "
                         r".*pass another --workdir") as e:
        recipe.run_recipe(lm_config(steps=2), tmp_path, verbose=False)
    finally:
      holder.kill()
  assert ("another host" in str(e.value)) == (where == "another host")
  assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
  assert sorted(os.listdir(tmp_path)) == [".lock"]  # nothing else written


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_held_and_released(lm_config, tmp_path,
                                                      capsys):
  gone = subprocess.Popen(["true"])
  gone.wait()  # reaped: its pid names no process
  _lock(tmp_path, gone.pid)
  seen = []
  after = lambda *_: seen.append(json.loads((tmp_path / ".lock").read_text()))
  recipe.run_recipe(lm_config(steps=2), tmp_path, verbose=False,
                    after_stage=after)
  out = capsys.readouterr().out
  assert f"(pid {gone.pid} on host {socket.gethostname()}" in out
  assert "is gone; taking over its lock" in out
  assert seen[0]["pid"] == os.getpid()  # held while training
  assert seen[0]["host"] == socket.gethostname()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".lock")]


def test_a_reused_pid_does_not_hold_the_lock(tmp_path, capsys):
  from mmjax.train import workdir_lock  # pylint: disable=g-import-not-at-top
  with subprocess.Popen(["sleep", "60"]) as other:
    try:
      holder = _lock(tmp_path, other.pid)
      holder["proc_start"] = 1  # the lock's process started at boot
      (tmp_path / ".lock").write_text(json.dumps(holder))
      with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
        assert json.loads((tmp_path / ".lock").read_text()) == lock.holder
    finally:
      other.kill()
  assert "is gone; taking over its lock" in capsys.readouterr().out
  assert not os.listdir(tmp_path)


_LONG = ["--config=configs/lm.py:tiny,steps=100000",
         "--config.data.num_sentences=800", "--config.data.seq_len=32",
         "--config.batch_size=8", "--config.log_every=1000",
         "--config.eval_every=0", "--config.checkpoint.every=100000",
         "--config.progress_bar=False"]


def _main(workdir, *args, **kwargs):
  return [sys.executable, "-m", "mmjax.main", f"--workdir={workdir}",
          *(args or _LONG)], dict(cwd=REPO, text=True, **kwargs)


@pytest.mark.slow
def test_two_processes_on_one_workdir(tmp_path):
  """The second exits 2 naming the first; SIGTERM releases the lock."""
  workdir = tmp_path / "w"
  log = tmp_path / "first.txt"
  with open(log, "w", encoding="utf-8") as out:
    cmd, kw = _main(workdir, stdout=out, stderr=subprocess.STDOUT)
    first = subprocess.Popen(cmd, **kw)
  try:
    deadline = time.time() + 300
    while "[lm] " not in log.read_text():  # training has started
      assert first.poll() is None, log.read_text()[-3000:]
      assert time.time() < deadline, "the first run did not start"
      time.sleep(0.1)
    cmd, kw = _main(workdir, capture_output=True, timeout=300)
    second = subprocess.run(cmd, check=False, **kw)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("error: ") and "in use by another run" in (
        lines[0]) and f"pid {first.pid} " in lines[0], lines[0]
  finally:
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=300)
  assert first.returncode != 0 and "SIGTERM: saved step" in log.read_text()
  assert not (workdir / ".lock").exists()


# ------------------------------------------------------------ metrics --


def test_a_half_written_line_is_skipped_and_counted(tmp_path, capsys):
  good = [{"stage": "lm", "step": s, "loss": 1.0} for s in (2, 4)]
  (tmp_path / "metrics.jsonl").write_text(
      json.dumps(good[0]) + "\n" + '{"stage": "lm", "st\n' +
      json.dumps(good[1]) + "\n" + '{"stage": "lm", "step": 6, "lo')
  assert metrics_lib.read_metrics(tmp_path) == good
  assert "skipped 2 line(s)" in capsys.readouterr().out
  # The next record starts on a line of its own.
  writer = metrics_lib.MetricWriter(str(tmp_path), "lm", tensorboard=False)
  writer.write(6, {"loss": 0.5})
  writer.close()
  assert metrics_lib.read_metrics(tmp_path)[-1] == {
      "stage": "lm", "step": 6, "loss": 0.5}


@pytest.mark.slow
def test_resumes_leave_each_record_once_and_drop_a_cut_line(lm_config,
                                                             tmp_path,
                                                             capsys):
  config = lm_config(steps=12)
  with pytest.raises(KeyboardInterrupt):
    _run(config, tmp_path, crash_after=10)  # checkpoints 4 and 8
  with pytest.raises(KeyboardInterrupt):
    _run(config, tmp_path, crash_after=2)  # resumes at 8, dies at 10
  path = tmp_path / "metrics.jsonl"
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"stage": "lm", "step": 12, "loss": 2.')  # the crash cut it
  capsys.readouterr()
  result = _run(config, tmp_path)
  assert result.resumed_from == 8 and result.step == 12
  assert "skipped 1 line(s)" in capsys.readouterr().out
  # What earlier code left: a record logged twice.
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines + [lines[2]]) + "\n")
  _run(config, tmp_path)  # finished: a clean rerun
  records = metrics_lib.read_metrics(tmp_path)
  assert "skipped" not in capsys.readouterr().out  # the file was repaired
  keys = [(r["stage"], r["step"], _kind(r)) for r in records]
  assert len(keys) == len(set(keys)), sorted(keys)
  assert [r["step"] for r in records if _kind(r) == "train"] == list(
      range(2, 13, 2))


# ------------------------------------------------------ config as run --


@pytest.mark.slow
def test_another_lr_on_a_trained_workdir_is_refused(lm_config, tmp_path,
                                                    capsys):
  recipe.run_recipe(lm_config(steps=2), tmp_path, verbose=False)
  before = (tmp_path / "config.json").read_text()
  other = lm_config(steps=2, **{"stages.lm.optimizer.lr": 1e-3})
  with pytest.raises(config_lib.ConfigError,
                     match=r"trained with another config "
                     r"\(stages\.lm\.optimizer\.lr: 0\.003 -> 0\.001\)"
                     r".*pass a new --workdir"):
    recipe.run_recipe(other, tmp_path, verbose=False)
  assert (tmp_path / "config.json").read_text() == before
  # Settings that do not change results may change; they are logged.
  again = lm_config(steps=2, progress_bar=True, log_every=1,
                    **{"checkpoint.keep": 5})
  capsys.readouterr()
  recipe.run_recipe(again, tmp_path, verbose=False)
  out = capsys.readouterr().out
  assert "config changed since the last run" in out
  assert "checkpoint.keep: 3 -> 5" in out and "log_every: 2 -> 1" in out
  change, = [json.loads(line) for line in
             (tmp_path / "config_changes.jsonl").read_text().splitlines()]
  assert change["changes"]["progress_bar"] == [False, True]
  assert json.loads((tmp_path / "config.json").read_text())[
      "checkpoint"]["keep"] == 5


@pytest.mark.slow
def test_a_config_may_change_until_a_checkpoint_is_saved(lm_config,
                                                         tmp_path):
  broken = lm_config(steps=2, **{"init_from.all": str(tmp_path / "missing")})
  with pytest.raises(config_lib.ConfigError, match="is not a directory"):
    recipe.run_recipe(broken, tmp_path, verbose=False)
  (_, result, _), = recipe.run_recipe(lm_config(steps=2), tmp_path,
                                      verbose=False)
  assert result.step == 2
  assert json.loads((tmp_path / "config.json").read_text())["init_from"][
      "all"] == ""


# ---------------------------------------------------------- data state --


def test_damaged_shapes_pipeline_state_is_refused():
  fingerprint = {"format": "shapes", "batch_size": 2, "seed": 0,
                 "max_len": 8, "train": True, "num_examples": 4}
  it = pipeline.BatchIterator(grain.MapDataset.range(4), num_workers=0,
                              read_options=grain.ReadOptions(),
                              fingerprint=fingerprint)
  good = json.loads(json.dumps(it.get_state()))
  it.set_state(good)
  for damaged in ({k: v for k, v in good.items() if k != "stats"},
                  dict(good, next_batch="3"), dict(good, next_batch=-1),
                  dict(good, stats={"truncated": "x"}),
                  dict(good, batch_size="2"), [1, 2]):
    with pytest.raises(ValueError, match="damaged data-iterator state"):
      it.set_state(damaged)
  with pytest.raises(ValueError, match="saved by another pipeline"):
    it.set_state(dict(good, batch_size=4))  # not damaged: another pipeline


def test_a_finished_step_is_restored_without_its_data_state(tmp_path):
  """A stage past its last step replays no batch: a later stage's data
  settings (max_len) may have changed; an unfinished one is still checked."""
  ckpt = ckpt_lib.StageCheckpointer(str(tmp_path), async_save=False)
  state = {"w": np.arange(3, dtype=np.float32)}
  for step in (4, 8):
    ckpt.save(step, state, {"max_len": 224}, {"step": step})
  ckpt.wait()
  abstract = {"w": jax.ShapeDtypeStruct(
      (3,), np.float32, sharding=jax.sharding.SingleDeviceSharding(
          jax.devices()[0]))}
  seen = []

  def another_pipeline(data_state):
    seen.append(data_state["max_len"])
    raise ckpt_lib.IncompatibleCheckpointError("saved by another pipeline")

  step, restored, _, _ = ckpt.restore_latest(
      abstract, restore_data=another_pipeline, data_needed_below=8)
  assert step == 8 and seen == []
  np.testing.assert_array_equal(restored["w"], state["w"])
  # Resumed short of its end (steps raised to 12), the state is checked.
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError,
                     match="another pipeline"):
    ckpt.restore_latest(abstract, restore_data=another_pipeline,
                        data_needed_below=12)
  assert seen == [224]


def test_damaged_text_pipeline_state_is_refused():
  data = text_pipeline.LMData.__new__(text_pipeline.LMData)
  data.train_windows = np.arange(10 * 9, dtype=np.int32).reshape(10, 9)
  data.seed = 0
  it = data.train_iterator(2)
  next(it)
  good = json.loads(json.dumps(it.get_state()))
  after = next(it)
  for damaged in ({}, {k: str(v) for k, v in good.items()}, "x"):
    with pytest.raises(ValueError, match="damaged data-iterator state"):
      it.set_state(damaged)
  it.set_state(good)
  np.testing.assert_array_equal(next(it)["tokens"], after["tokens"])


@pytest.mark.slow
def test_damaged_data_state_falls_back_to_the_previous_step(lm_config,
                                                            tmp_path, capsys):
  config = lm_config(steps=12)
  straight = _run(config, tmp_path / "a")
  with pytest.raises(KeyboardInterrupt):
    _run(config, tmp_path / "b", crash_after=10)  # checkpoints 4 and 8
  steps = tmp_path / "b" / "checkpoints" / "lm"
  (steps / "8" / "data" / "metadata").write_text('{"next_index": "x"}')
  capsys.readouterr()
  resumed = _run(config, tmp_path / "b")
  assert "checkpoint step 8" in capsys.readouterr().out
  assert resumed.resumed_from == 4
  assert (steps / "corrupt-8").is_dir()
  _assert_trees_equal(straight.params, resumed.params)


# ------------------------------------------------------ unusable paths --


def _can_create_in(path):
  try:
    fd, name = tempfile.mkstemp(dir=path)
  except OSError:
    return False
  os.close(fd)
  os.unlink(name)
  return True


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory no file can be created in (root ignores mode bits: then a
  sysfs directory, which refuses new files to everyone)."""
  path = tmp_path / "ro"
  path.mkdir()
  path.chmod(0o555)
  try:
    if not _can_create_in(path):
      yield path
    elif os.path.isdir("/sys/kernel") and not _can_create_in("/sys/kernel"):
      yield "/sys/kernel"
    else:
      pytest.skip("no read-only directory to test with")
  finally:
    path.chmod(0o755)


def test_a_workdir_that_is_a_file_is_refused(lm_config, tmp_path,
                                             nothing_built):
  (tmp_path / "w").write_text("")
  with pytest.raises(config_lib.ConfigError,
                     match=r"w is a file, not a directory; pass a directory "
                     "as --workdir"):
    recipe.run_recipe(lm_config(), tmp_path / "w", verbose=False)
  with pytest.raises(config_lib.ConfigError, match=r"w is a file"):
    recipe.run_recipe(lm_config(), tmp_path / "w" / "sub", verbose=False)


def test_checkpoints_that_is_a_file_is_refused(lm_config, tmp_path,
                                               nothing_built):
  (tmp_path / "checkpoints").write_text("")
  with pytest.raises(config_lib.ConfigError,
                     match=r"checkpoints is a file, not a directory; move it "
                     "away"):
    recipe.run_recipe(lm_config(), tmp_path, verbose=False)


def test_a_read_only_workdir_is_refused(lm_config, read_only_dir,
                                        nothing_built):
  with pytest.raises(config_lib.ConfigError,
                     match=r"is not writable \(.*\); make it writable or "
                     "pass another --workdir"):
    recipe.run_recipe(lm_config(), read_only_dir, verbose=False)


@pytest.mark.slow
def test_cli_workdir_that_is_a_file_exits_2_with_one_line(tmp_path):
  (tmp_path / "w").write_text("")
  cmd, kw = _main(tmp_path / "w", "--config=configs/lm.py:tiny",
                  capture_output=True, timeout=300)
  proc = subprocess.run(cmd, check=False, **kw)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: ") and len(
      proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "is a file, not a directory" in proc.stderr
