"""FSDP memory of the compiled train step, and restore onto another mesh.

Runs in a fresh interpreter with 8 simulated CPU devices (see
tests/parallel/mesh_parity.py for why). configs/lm.py:tiny, shrunk, trains
through `trainer.run_stage`:

  ref      one device, 6 steps;
  fsdp8    mesh fsdp=8 (8 devices), 6 steps, checkpoints at 2, 4, 6;
  moved    the fsdp8 workdir without its step-6 checkpoint, resumed on a
           4-device mesh (data=2, fsdp=2): restores step 4 onto the new
           mesh's shardings and trains steps 5 and 6.

The script prints one JSON line (per-device compiled argument bytes, losses,
parameter differences) that the tests assert on.
"""
import json
import os
import shutil
import sys

import pytest

from tests.parallel import mesh_parity

STEPS = 6


def _config(workdir):
  from mmjax.config import load_config  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  config = load_config(os.path.join(REPO, "configs/lm.py") +
                       f":tiny,steps={STEPS}")
  config.data.num_sentences = 800
  config.data.seq_len = 32
  config.batch_size = 8
  config.log_every = 1
  config.eval_every = 0
  config.progress_bar = False
  config.checkpoint.every = 2
  config.checkpoint.keep = 3
  config.checkpoint.async_save = False
  config.matmul_precision = "highest"
  # One tokenizer for every run (trained once, by the first).
  config.tokenizer.path = os.path.join(workdir, "tokenizer.model")
  return config


def _worker(workdir):
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mmjax import parallel  # pylint: disable=g-import-not-at-top
  from mmjax.data import text_pipeline  # pylint: disable=g-import-not-at-top
  from mmjax.train import groups, metrics, trainer  # pylint: disable=g-import-not-at-top
  from mmjax.train import stages

  assert jax.device_count() == 8, jax.devices()
  config = _config(workdir)
  jax.config.update("jax_default_matmul_precision", config.matmul_precision)
  train, _ = text_pipeline.corpus_split(config)
  from mmjax.data.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  Tokenizer.train(train, config.tokenizer.vocab_size,
                  model_path=config.tokenizer.path, seed=config.data.seed)
  rules = parallel.logical_rules(None)

  def run(name, sizes, n_devices):
    mesh = parallel.make_mesh(sizes, jax.devices()[:n_devices])
    built = stages.build_task(config, "lm", workdir)
    task = dataclasses.replace(built.task, eval_batches=None)
    run_dir = os.path.join(workdir, name)
    result = trainer.run_stage(config, "lm", task, run_dir, mesh, rules)
    records = metrics.read_metrics(run_dir)
    params = {k: np.asarray(v) for k, v in
              groups.flatten(jax.device_get(result.params)).items()}
    shards = {k: [s.data.shape for s in v.addressable_shards] for k, v in
              groups.flatten(result.params).items()}
    return {"losses": {r["step"]: r["loss"] for r in records if "loss" in r},
            "argument_bytes": [r["step_argument_bytes"] for r in records
                               if "step_argument_bytes" in r],
            "temp_bytes": [r["step_temp_bytes"] for r in records
                           if "step_temp_bytes" in r],
            "resumed_from": result.resumed_from,
            "shard_shapes": shards}, params

  out = {}
  out["ref"], ref = run("ref", {"data": 1}, 1)
  out["fsdp8"], fsdp8 = run("fsdp8", {"data": 1, "fsdp": 8}, 8)
  shutil.rmtree(os.path.join(workdir, "fsdp8", "checkpoints", "lm",
                             str(STEPS)))
  shutil.copytree(os.path.join(workdir, "fsdp8"),
                  os.path.join(workdir, "moved"))
  out["moved"], moved = run("moved", {"data": 2, "fsdp": 2}, 4)
  diff = lambda a, b: max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  out["param_diff"] = {"fsdp8_vs_ref": diff(fsdp8, ref),
                       "moved_vs_ref": diff(moved, ref),
                       "moved_vs_fsdp8": diff(moved, fsdp8)}
  for run_out in out.values():
    if isinstance(run_out, dict) and "shard_shapes" in run_out:
      # Only the embedding's shard shapes go into the JSON.
      run_out["shard_shapes"] = {k: v for k, v in
                                 run_out["shard_shapes"].items()
                                 if k.endswith("embed/embedding")}
  return out


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  import subprocess  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("fsdp")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__),
                         str(workdir)], env=mesh_parity.env(),
                        capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  print("\nper-device bytes of the compiled train step (lm tiny): "
        f"1 device args {out['ref']['argument_bytes']} temp "
        f"{out['ref']['temp_bytes']}; fsdp=8 args "
        f"{out['fsdp8']['argument_bytes']} temp {out['fsdp8']['temp_bytes']}")
  return out


@pytest.mark.slow
def test_fsdp8_argument_bytes_are_an_eighth(result):
  (one,), (eight,) = (result["ref"]["argument_bytes"],
                      result["fsdp8"]["argument_bytes"])
  assert eight <= 1.15 * one / 8, (one, eight)
  # Sharded init: the embedding [vocab 512, embed 128] lives in 8 row
  # shards of 16 columns, never whole on one device.
  shapes = result["fsdp8"]["shard_shapes"]
  assert shapes and all(s == [[512, 16]] * 8 for s in shapes.values()), shapes


@pytest.mark.slow
def test_meshes_train_alike(result):
  ref, fsdp8 = result["ref"]["losses"], result["fsdp8"]["losses"]
  assert list(ref) == [str(s) for s in range(1, STEPS + 1)]
  for step, loss in ref.items():
    assert fsdp8[step] == pytest.approx(loss, rel=1e-5), step
  assert result["param_diff"]["fsdp8_vs_ref"] < 1e-4


@pytest.mark.slow
def test_checkpoint_from_8_devices_resumes_on_4(result):
  moved, fsdp8 = result["moved"], result["fsdp8"]
  assert moved["resumed_from"] == STEPS - 2
  # The resumed run logged steps 5 and 6 again, as the 8-device run did.
  for step in (str(STEPS - 1), str(STEPS)):
    assert moved["losses"][step] == pytest.approx(fsdp8["losses"][step],
                                                  rel=1e-5), step
  assert moved["shard_shapes"] and all(
      s == [[512, 64]] * 4 for s in moved["shard_shapes"].values())
  assert result["param_diff"]["moved_vs_fsdp8"] < 1e-4
  assert result["param_diff"]["moved_vs_ref"] < 1e-4


if __name__ == "__main__":
  print(json.dumps(_worker(sys.argv[1])))
