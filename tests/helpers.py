"""Assertions shared by the model tests.

Tiny configs, dummy batches and random parameters are in mmjax/testing.py.
"""
import subprocess
import sys

import flax.linen as nn
import jax

from tests.conftest import REPO


def assert_all_boxed(variables, allowed_names):
  """Every parameter carries logical axis names, one per dim, all allowed."""
  leaves = jax.tree.leaves(
      variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert set(leaf.names) <= allowed_names, leaf.names
    assert len(leaf.names) == leaf.value.ndim


def run_cli(module, *args, timeout=600, env=None):
  """`python -m MODULE ARGS` from the repository root; the CompletedProcess."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def one_error_line(proc):
  """The only stderr line of a CLI that exited 2 (the user-error contract)."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  return lines[0]
