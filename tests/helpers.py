"""Assertions and fixtures shared by the tests: CLI runs, a fabricated
trained run (`make_workdir`), a drawn picture (`draw_png`).

Tiny configs, dummy batches and random parameters are in mmjax/testing.py.
"""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
from PIL import Image, ImageDraw

from mmjax import config as config_lib
from mmjax import testing
from mmjax.data import datasets
from mmjax.train import checkpoint as ckpt_lib
from mmjax.train import stages
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


def make_workdir(path, data_dir, fusion="projection", params_fusion=None):
  """A run as `python -m mmjax.main` leaves it (config.json, a finished
  'dpo' checkpoint, the dataset with its tokenizer), with random weights of
  the `params_fusion` model (default: the config's own)."""
  def config_of(f):
    config = testing.tiny_recipe(f)
    config.data.update(dict(data_dir=str(data_dir), num_train=16,
                            num_validation=4, num_test=4, num_heldout=4))
    return config
  config = config_of(fusion)
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_lib.to_plain(config), f)
  datasets.shapes_dataset(config)  # the tokenizer lives with the data
  _, init, _ = stages.stage_model(config_of(params_fusion or fusion),
                                      "dpo")
  params = testing.random_params_like(
      nn.unbox(jax.eval_shape(init, jax.random.key(0))))
  params = jax.tree.map(lambda x: x * 3.0, params)  # peaky: varied tokens
  ckpt = ckpt_lib.StageCheckpointer(
      os.path.join(path, "checkpoints", "dpo"), async_save=False)
  ckpt.save(2, {"step": np.int32(2), "params": params}, {},
            {"stage": "dpo", "finished": True})
  ckpt.close()
  return str(path)


def draw_png(path, size=(80, 64)):
  """A hand-drawn-style picture: a red square and a blue circle."""
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  draw.rectangle([8, 8, 30, 30], fill="red")
  draw.ellipse([40, 30, 70, 60], fill="blue")
  image.save(path)
  return str(path)


def tiny_shapes_dataset(root, num_train=32, num_validation=4, num_test=4,
                        num_heldout=4):
  """(builder, tokenizer) of a small shapes TFDS build under `root`."""
  from mmjax.data import builders  # pylint: disable=g-import-not-at-top
  from mmjax.data.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  builder = builders.build(builders.ShapesBuilder, str(root),
                           num_train=num_train, num_validation=num_validation,
                           num_test=num_test, num_heldout=num_heldout)
  return builder, Tokenizer.load(
      os.path.join(builder.data_dir, builders.TOKENIZER_FILE))
