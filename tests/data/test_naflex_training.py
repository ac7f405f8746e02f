"""Training with a SigLIP2 NaFlex tower (issue 23): each image keeps its
aspect ratio as one padded patch row (`data/naflex.py`), placeholders =
its real patches (`configs/llava.py:naflex_qwen2_1_5b_tiny`).

  pipeline batches: patch rows, masks and placeholders per image
  the training path equals the tower on `data.naflex.batch` (the path the
  SigLIP2 parity test pins), valid tokens first
  refusals: square-only stages and packing
  end to end: train on mixed-size PNGs, answer about a 37x91 image through
  `python -m mmjax.generate`
"""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.config import ConfigError, load_config
from mmjax.data import naflex as naflex_lib
from mmjax.data import pipeline
from mmjax.models import build
from mmjax.models import naflex as naflex_model
from mmjax.models.mllm import MLLM
from mmjax.train import config_checks
from tests.conftest import REPO
from tests.data import any_size

SPEC = f"{REPO}/configs/llava.py:naflex_qwen2_1_5b_tiny"
SIZES = any_size.SIZES
_image = any_size.image


@pytest.fixture(scope="module")
def model():
  module = build.build_model(load_config(SPEC))
  return module, testing.random_params(module, seed=4)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return any_size.qwen_tokenizer(tmp_path_factory.mktemp("qwen"))


def test_pipeline_batch_keeps_each_aspect(model, tokenizer):
  module, params = model
  cfg = module.cfg
  source = any_size.chat_source(SIZES)
  it = pipeline.make_iterator(source, fmt="llava_conversations", cfg=cfg,
                              tokenizer=tokenizer, batch_size=5, seed=0,
                              max_len=320, train=False)
  batch = next(it)
  assert "images" not in batch and set(naflex_lib.BATCH_KEYS) <= set(batch)
  vision = cfg.vision
  for b, (h, w) in enumerate(SIZES):
    th, tw = naflex_lib.size_for(vision, h, w)
    n = (th // vision.patch_size) * (tw // vision.patch_size)
    assert n <= vision.max_num_patches
    assert batch["naflex_mask"][b, 0].sum() == n
    assert tuple(batch["naflex_spatial_shapes"][b, 0]) == (
        th // vision.patch_size, tw // vision.patch_size)
    assert batch["image_token_mask"][b].sum() == n
  # The training path's visual tokens equal the tower on `naflex.batch`
  # (what tests/hf/test_siglip2_naflex.py compares with transformers).
  got = module.apply({"params": params}, **naflex_lib.model_inputs(
      {k: jnp.asarray(batch[k]) for k in naflex_lib.BATCH_KEYS}),
                     method=MLLM.encode_naflex)
  ref = naflex_lib.batch([_image(h, w, i) for i, (h, w) in enumerate(SIZES)],
                         patch=vision.patch_size,
                         max_num_patches=vision.max_num_patches,
                         kind="naflex")
  tower = naflex_model.NaFlexVisionTower(vision)
  out = tower.apply({"params": params["vision"]}, jnp.asarray(ref["patches"]),
                    jnp.asarray(ref["mask"]),
                    jnp.asarray(ref["spatial_shapes"]))
  want = module.apply({"params": params}, out.tokens, None,
                      method=lambda m, t, g: m.connector(t, g))
  for b in range(len(SIZES)):
    n = int(ref["mask"][b].sum())
    np.testing.assert_allclose(np.asarray(got[b, 0, :n]),
                               np.asarray(want[b, :n]), atol=1e-5)


def test_refusals():
  config = load_config(SPEC)
  config.data.packing = True
  checks = config_checks._mllm_data_checks(config)  # pylint: disable=protected-access
  with pytest.raises(ConfigError, match="NaFlex"):
    config_checks.C.validate(config, checks)
  config = load_config(SPEC)
  config.stages.pretrain.data = "contrastive"
  checks = config_checks._mllm_data_checks(config)  # pylint: disable=protected-access
  with pytest.raises(ConfigError, match="naflex.*own size"):
    config_checks.C.validate(config, checks)


@pytest.mark.slow
def test_trains_on_mixed_size_pngs_and_answers_about_a_37x91_image(
    tmp_path):
  any_size.train_on_folder_and_ask(tmp_path, SPEC)
