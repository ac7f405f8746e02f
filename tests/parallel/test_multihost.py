"""Two JAX processes x 4 CPU devices on 127.0.0.1, killed and resumed.

`python -m mmjax.main` runs twice per process (coordinator on 127.0.0.1):
the first run is killed (SIGKILL, both processes) after a checkpoint and
before the end; the second resumes from that checkpoint. Its final parameters
and losses must match one process with 8 devices running the same recipe,
and only process 0 may print progress, write metrics and the report.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmjax.train import groups
from tests.conftest import REPO
from tests.parallel import mesh_parity

pytestmark = pytest.mark.slow

STEPS = 20
EVERY = 5
_ARGS = [f"--config=configs/lm.py:tiny,steps={STEPS}",
         "--config.data.num_sentences=800", "--config.data.seq_len=32",
         "--config.batch_size=8", "--config.log_every=5",
         "--config.eval_every=0", "--config.eval_batches=1",
         f"--config.checkpoint.every={EVERY}",
         "--config.matmul_precision=highest"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  env = mesh_parity.env()
  env["XLA_FLAGS"] = env["XLA_FLAGS"].replace(
      "device_count=8", f"device_count={devices}")
  return env


def _start(workdir, process_id=None, port=None):
  """One `mmjax.main` process: of 2 (with process_id) or alone on 8 devices."""
  cmd = [sys.executable, "-m", "mmjax.main", f"--workdir={workdir}", *_ARGS]
  if process_id is not None:
    cmd += [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
            f"--process_id={process_id}"]
  return subprocess.Popen(
      cmd, cwd=REPO, env=_env(8 if process_id is None else 4),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True)


def _start_pair(workdir):
  port = _free_port()
  return [_start(workdir, i, port) for i in range(2)]


def _finish(procs, timeout=600):
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    outs.append(out)
  return outs


def _final(workdir):
  """The final train state, restored onto this process's one device."""
  path = os.path.join(workdir, "checkpoints", "lm", str(STEPS), "state")
  ckptr = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      ckptr.metadata(path).item_metadata.tree)
  return ckptr.restore(path, target)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  ref = _start(root / "ref")
  _finish([ref])
  # Killed after the first checkpoint, before the last.
  pair = _start_pair(root / "run")
  first = root / "run" / "checkpoints" / "lm" / str(EVERY)
  deadline = time.time() + 600
  while not first.is_dir():
    assert all(p.poll() is None for p in pair), [
        p.stdout.read()[-3000:] for p in pair]
    assert time.time() < deadline, "no checkpoint within 600 s"
    time.sleep(0.02)
  for p in pair:
    os.killpg(p.pid, signal.SIGKILL)
  for p in pair:
    p.wait()
  killed_at = sorted(os.listdir(first.parent))
  resumed = _finish(_start_pair(root / "run"))
  return {"root": root, "killed_at": killed_at, "outputs": resumed}


def test_killed_run_resumes_and_matches_one_process(runs):
  root = runs["root"]
  assert str(STEPS) not in runs["killed_at"], "killed too late to test"
  assert "[lm] resuming from step" in runs["outputs"][0]
  ref, run = _final(root / "ref"), _final(root / "run")
  assert int(run["step"]) == STEPS
  flat_ref, flat_run = groups.flatten(ref["params"]), groups.flatten(
      run["params"])
  assert flat_ref.keys() == flat_run.keys()
  for key, value in flat_ref.items():
    np.testing.assert_allclose(flat_run[key], value, rtol=1e-4, atol=1e-5,
                               err_msg=str(key))
  ref_losses, run_losses = _losses(root / "ref"), _losses(root / "run")
  assert sorted(run_losses) == list(range(5, STEPS + 1, 5))
  for step, loss in ref_losses.items():
    assert run_losses[step] == pytest.approx(loss, rel=1e-4), step


def test_only_process_0_reports(runs):
  out0, out1 = runs["outputs"]
  assert "[lm]" in out0 and "done. report:" in out0
  assert "[lm]" not in out1 and "done. report:" not in out1
  assert "step/s" not in out1 and "s/step" not in out1  # no progress bar
  assert "step/s" in out0 or "s/step" in out0
  assert (runs["root"] / "run" / "report.md").exists()


@pytest.mark.parametrize("flags,message", [
    (["--num_processes=2"], "need --coordinator_address, --num_processes and "
     "--process_id together"),
    (["--coordinator_address=host", "--num_processes=2", "--process_id=0"],
     "must be HOST:PORT"),
    (["--coordinator_address=h:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be in 0..1"),
])
def test_bad_multihost_flags_exit_2_with_one_line(flags, message, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "mmjax.main", "--config=configs/lm.py:tiny",
       f"--workdir={tmp_path}", *flags], cwd=REPO, capture_output=True,
      text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
