"""Training at native resolution (issue 23): a Qwen2-VL-tower recipe
(`configs/llava.py:qwen2vl_2b_tiny`) reads each image at its own
`smart_resize` size, one packed sequence of patches per batch row.

  per-row encoding == the flat packing that generation uses (and the
  Hugging Face parity tests pin, tests/hf/test_qwen2vl_native.py)
  pipeline batches: placeholders per image = its merged tokens, M-RoPE
  grids of the real size, bad sizes counted, refusals
  end to end: train on a folder of mixed-size PNGs, answer about a 37x91
  image through `python -m mmjax.generate`
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.config import ConfigError, load_config
from mmjax.data import native_resolution as native_lib
from mmjax.data import pipeline
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import build, layout
from mmjax.models.mllm import MLLM
from mmjax.train import config_checks
from mmjax.train.stages import lm as lm_stage
from tests.conftest import REPO
from tests.data import any_size

SPEC = f"{REPO}/configs/llava.py:qwen2vl_2b_tiny"
SIZES = any_size.SIZES
_image = any_size.image


@pytest.fixture(scope="module")
def model():
  config = load_config(SPEC)
  module = build.build_model(config)
  return module, testing.random_params(module, seed=3)


def test_budget_resizes_down_and_up_keeping_the_aspect():
  vision = build.mllm_config(load_config(SPEC)).vision
  unit = vision.unit
  for h, w in SIZES:
    rh, rw = native_lib.size_for(vision, h, w)
    assert rh % unit == 0 and rw % unit == 0
    assert vision.min_pixels <= rh * rw <= vision.max_pixels
    assert abs(np.log(rh / rw) - np.log(h / w)) < 0.7  # aspect kept
  # 300x260 is over the 64-token budget: shrunk, never cropped.
  assert native_lib.size_for(vision, 300, 260) == (128, 112)


def test_per_row_encoding_equals_the_flat_packing(model):
  module, params = model
  vision = module.cfg.vision
  rows = [[native_lib.preprocess_for(vision, _image(h, w, i))]
          for i, (h, w) in enumerate(SIZES[:3])]
  rows[1].append(native_lib.preprocess_for(vision, _image(50, 70, 9)))
  rows.append([])  # a pad row
  sizes = [[im.shape[:2] for im in row] for row in rows]
  n = native_lib.row_length(max(native_lib.still_patches(vision, s)
                                for s in sizes), vision.spatial_merge)
  per_row = native_lib.pack_rows(vision, rows, n)
  assert per_row["native_patches"].shape[:2] == (4, n)
  got = module.apply({"params": params},
                     **native_lib.model_inputs(per_row),
                     method=MLLM.encode_native)
  flat = native_lib.pack_for(vision, rows)
  want = module.apply({"params": params}, **flat.arrays(),
                      method=MLLM.encode_native)
  for b, row in enumerate(sizes):
    k = sum(native_lib.merged_tokens((1, h // vision.patch_size,
                                      w // vision.patch_size))
            for h, w in row)
    np.testing.assert_allclose(np.asarray(got[b, 0, :k]),
                               np.asarray(want[b, 0, :k]), atol=2e-5,
                               err_msg=f"row {b}")
    assert k == 0 or np.abs(np.asarray(got[b, 0, :k])).max() > 1e-3


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return any_size.qwen_tokenizer(tmp_path_factory.mktemp("qwen"))


def test_pipeline_batch_places_each_image_at_its_own_size(model, tokenizer):
  module, params = model
  cfg = module.cfg
  # A 1x300 strip (aspect ratio over 200) is refused and counted.
  source = any_size.chat_source(SIZES + [(1, 300)])
  it = pipeline.make_iterator(source, fmt="llava_conversations", cfg=cfg,
                              tokenizer=tokenizer, batch_size=6, seed=0,
                              max_len=320, train=False)
  batch = next(it)
  assert "images" not in batch
  assert set(native_lib.BATCH_KEYS) <= set(batch)
  assert it.stats()["skipped_image_size"] == 1
  assert it.stats()["downscaled"] == 1  # 300x260: over the budget
  vision = cfg.vision
  for b in range(5):
    h, w = native_lib.size_for(vision, *SIZES[b])
    k = native_lib.merged_tokens((1, h // vision.patch_size,
                                  w // vision.patch_size))
    assert batch["image_token_mask"][b].sum() == k
    assert batch["native_segment_ids"][b].max() == 1
    assert (batch["native_segment_ids"][b] > 0).sum() == 4 * k
    # M-RoPE: the image block spans the real merged grid (t, h/16, w/16).
    at = batch["image_token_mask"][b]
    pos = batch["positions"][:, b][:, at]
    assert pos[1].max() - pos[1].min() + 1 == h // (2 * vision.patch_size)
    assert pos[2].max() - pos[2].min() + 1 == w // (2 * vision.patch_size)
  assert not batch["valid"][5]
  loss = lm_stage.mllm_lm_loss(module, params, jax.tree.map(jnp.asarray,
                                                           batch))
  assert np.isfinite(float(loss[0] if isinstance(loss, tuple) else loss))


def _data_checks(config):
  checks = config_checks._mllm_data_checks(config)  # pylint: disable=protected-access
  config_checks.C.validate(config, checks)


def test_native_tower_refuses_square_only_stages_and_packing():
  config = load_config(SPEC)
  config.data.packing = True
  with pytest.raises(ConfigError, match="native-resolution"):
    _data_checks(config)
  config = load_config(SPEC)
  config.stages.pretrain.data = "contrastive"
  with pytest.raises(ConfigError, match="needs one square image"):
    _data_checks(config)


def test_layout_counts_match_the_tower(model):
  module, _ = model
  cfg = module.cfg
  for h, w in SIZES[:4]:
    rh, rw = native_lib.size_for(cfg.vision, h, w)
    grid = layout.media_grid(cfg, rh, rw)
    assert grid == (1, rh // 16, rw // 16)


@pytest.mark.slow
def test_trains_on_mixed_size_pngs_and_answers_about_a_37x91_image(
    tmp_path):
  any_size.train_on_folder_and_ask(tmp_path, SPEC)
