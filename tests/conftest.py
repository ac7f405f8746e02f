"""Shared test setup: tiny configs, quiet logs, no network."""
import os

import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests build the same tiny programs many times: a persistent XLA cache
# halves the suite (it is keyed by program and versions, so it cannot go stale).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mmjax-test-xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Compile fast (tests/xla_flags.py; subprocesses inherit XLA_FLAGS): the
# whole suite 1,923 s -> 1,491 s on 2 cores with the cuts of stop 50
# (docs/development.md).
from tests import xla_flags  # pylint: disable=g-import-not-at-top

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                             xla_flags.SUITE).strip()

import pytest  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def lm_config():
  """configs/lm.py:tiny shrunk to seconds: a handful of steps, small data."""
  from mmjax.config import load_config  # pylint: disable=g-import-not-at-top

  def make(steps=12, **overrides):
    config = load_config(os.path.join(REPO, "configs/lm.py") +
                         f":tiny,steps={steps}")
    config.data.num_sentences = 800
    config.data.seq_len = 32
    config.batch_size = 8
    config.log_every = 2
    config.eval_every = 0
    config.eval_batches = 1
    config.checkpoint.every = 4
    config.progress_bar = False
    for path, value in overrides.items():
      node = config
      *parents, leaf = path.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
    return config
  return make
