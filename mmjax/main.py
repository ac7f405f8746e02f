"""Runs a recipe: every stage of the config, in order, resumable.

  python -m mmjax.main --config=configs/lm.py:tiny --workdir=runs/lm_tiny
  python -m mmjax.main --config=configs/lm.py:tiny --workdir=W \
      --config.stages.lm.optimizer.lr=1e-3

Multi-host: every process runs the same command plus its index (on TPU pod
slices and in SLURM / Open MPI jobs JAX finds all three by itself):
  python -m mmjax.main --config=... --workdir=SHARED_DIR \
      --coordinator_address=HOST0:1234 --num_processes=N --process_id=I

Running the same command again resumes from the newest good checkpoint, at
the exact batch; a finished recipe does no work and says where its results
are. User mistakes exit with status 2 and one line saying what to fix.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mmjax import config as config_lib
from mmjax import host_memory

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file and args, e.g. configs/lm.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Where checkpoints, metrics and reports go.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index (multi-host).")


def _config_spec(argv: list[str]) -> str | None:
  """The value of --config in argv (`--config=X` or `--config X`), if any."""
  for i, arg in enumerate(argv[1:], start=1):
    name, sep, value = arg.lstrip("-").partition("=")
    if arg.startswith("-") and name == "config":
      return value if sep else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with unknown --config.KEY overrides explained clearly."""
  spec = _config_spec(argv)
  if spec:
    # absl defers a missing file to the first use of the config, and a
    # syntax error in it surfaces as a traceback: check the file first.
    try:
      config_lib.check_python_file(spec.split(":", 1)[0])
    except config_lib.ConfigError as e:
      config_lib.fail(f"--config={spec}: {e}")
    argv = _current_override_keys(argv, spec)
    # config_flags registers the --config.KEY flags from sys.argv.
    sys.argv[:] = argv
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _explain_override_error(argv, e)
  except flags.Error as e:
    # get_config's own errors arrive wrapped, with a traceback in the text.
    text = str(e)
    if "ConfigError: " in text:
      text = text.rsplit("ConfigError: ", 1)[1].strip()
    config_lib.fail(text)
  return []


def _current_override_keys(argv: list[str], spec: str) -> list[str]:
  """Old spellings of --config.KEY overrides (config_lib.LEGACY_KEYS, e.g.
  --config.init_from=DIR) rewritten to the names the config has now."""
  prefix = "--config."
  legacy = [a for a in argv if a.startswith(prefix) and
            a[len(prefix):].partition("=")[0] in config_lib.LEGACY_KEYS]
  if not legacy:
    return argv
  try:
    config = config_lib.load_config(spec)
  except config_lib.ConfigError as e:
    config_lib.fail(f"--config={spec}: {e}")
  out = []
  for arg in argv:
    if arg in legacy:
      key, sep, value = arg[len(prefix):].partition("=")
      arg = f"{prefix}{config_lib.current_key(config, key)}{sep}{value}"
    out.append(arg)
  return out


def _explain_override_error(argv: list[str], error: Exception):
  """Names the --config.KEY override that does not exist, and its siblings."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
              None)
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv
               if a.startswith("--config.")]
  if spec:
    config = config_lib.load_config(spec)
    for path in overrides:
      try:
        config_lib.get_path(config, path)
      except config_lib.ConfigError as e:
        config_lib.fail(f"--config.{path}: {e}")
  config_lib.fail(f"bad config override among {overrides}: {error}")


def _check_multihost_flags() -> bool:
  """Validates the multi-host flags; True when they are given."""
  values = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if all(v is None for v in values):
    return False
  if None in values:
    config_lib.fail("multi-host runs need --coordinator_address, --num_processes "
          "and --process_id together")
  host, _, port = _COORDINATOR.value.rpartition(":")
  if not host or not port.isdigit():
    config_lib.fail(f"--coordinator_address={_COORDINATOR.value!r} must be HOST:PORT "
          "of process 0, e.g. 10.0.0.1:1234")
  if _NUM_PROCESSES.value < 1 or not 0 <= _PROCESS_ID.value < (
      _NUM_PROCESSES.value):
    config_lib.fail(f"--process_id={_PROCESS_ID.value} must be in 0.."
          f"{_NUM_PROCESSES.value - 1} (--num_processes="
          f"{_NUM_PROCESSES.value})")
  return True


def _cluster_detected() -> bool:
  """A launcher whose environment jax.distributed reads by itself: a Cloud
  TPU VM (pod slice), or a SLURM / Open MPI job with more than one task."""
  env = os.environ
  return bool(env.get("TPU_WORKER_HOSTNAMES") or
              env.get("MEGASCALE_COORDINATOR_ADDRESS") or
              os.path.exists("/dev/accel0") or  # TPU VM (v2-v4)
              env.get("TPU_ACCELERATOR_TYPE") or
              int(env.get("SLURM_NTASKS", "1") or 1) > 1 or
              int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1)


def _initialize_distributed(explicit: bool) -> None:
  """jax.distributed.initialize, before any other JAX call: explicit flags,
  else auto-detection on TPU pods and SLURM / Open MPI clusters."""
  import jax  # pylint: disable=g-import-not-at-top
  if explicit:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  elif _cluster_detected():
    try:
      jax.distributed.initialize()
    except ValueError as e:  # the launcher's variables are incomplete
      config_lib.fail(f"could not start jax.distributed from the environment ({e}); "
            "pass --coordinator_address, --num_processes and --process_id")


def main(argv):
  del argv
  if _CONFIG.value is None:
    config_lib.fail("--config is required, e.g. --config=configs/lm.py:tiny")
  if not _WORKDIR.value:
    config_lib.fail("--workdir is required, e.g. --workdir=runs/lm_tiny")
  multihost = _check_multihost_flags()
  # Before JAX starts its CPU client: each step's temporaries reuse freed
  # pages instead of faulting in fresh ones (mmjax/host_memory.py).
  host_memory.prepare_host()
  # Heavy imports after flag checks: a typo fails in a second, not ten.
  from mmjax import evals, hf  # pylint: disable=g-import-not-at-top
  from mmjax.data import builders  # pylint: disable=g-import-not-at-top
  from mmjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from mmjax.train import trainer  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  try:
    _initialize_distributed(multihost)
    evals.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, ckpt_lib.IncompatibleCheckpointError,
          builders.BadRecordError,
          hf.HFImportError) as e:  # e.g. init_from names a Hugging Face dir
    config_lib.fail(str(e))
  except trainer.NonFiniteLossError as e:
    config_lib.fail(str(e), code=3)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
