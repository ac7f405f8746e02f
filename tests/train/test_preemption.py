"""The real thing: `kill -9` and SIGTERM on `python -m mmjax.main`, resumed."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

_ARGS = ["--config=configs/lm.py:tiny,steps=120", "--config.log_every=20",
         "--config.checkpoint.every=20", "--config.eval_every=0",
         "--config.data.num_sentences=2000", "--config.progress_bar=False"]


def _start(workdir):
  return subprocess.Popen(
      [sys.executable, "-m", "mmjax.main", f"--workdir={workdir}", *_ARGS],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(workdir, step, proc, timeout=240):
  path = os.path.join(workdir, "checkpoints", "lm", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.02)


def _final_params(workdir):
  path = os.path.join(workdir, "checkpoints", "lm", "120", "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  proc = _start(workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  return _final_params(workdir)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_kill_9_then_rerun_equals_uninterrupted(straight, tmp_path):
  proc = _start(tmp_path)
  _wait_for_step(tmp_path, 40, proc)
  proc.kill()  # SIGKILL: no handler runs, an async save may be half done
  proc.wait()
  assert not os.path.isdir(tmp_path / "checkpoints" / "lm" / "120")
  proc = _start(tmp_path)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert "resuming from step" in out
  _assert_same(straight, _final_params(tmp_path))


def test_sigterm_saves_and_rerun_equals_uninterrupted(straight, tmp_path):
  proc = _start(tmp_path)
  _wait_for_step(tmp_path, 20, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0, out
  assert "SIGTERM: saved step" in out
  saved = int(out.split("SIGTERM: saved step ")[1].split()[0])
  assert 20 <= saved < 120
  assert os.path.isdir(tmp_path / "checkpoints" / "lm" / str(saved))
  proc = _start(tmp_path)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert f"resuming from step {saved}" in out
  _assert_same(straight, _final_params(tmp_path))
