"""Training with InternVL dynamic tiling (issue 23): `model.tiling='internvl'`
cuts every image into tiles of the tower's side (data/tiling.py), each tile
its own placeholders, and the model encodes the tiles as images.

  pipeline batches: tiles per image and placeholders per tile
  the training path (tiles as images) equals `models.tiling.encode_tiled`,
  the path the InternVL import parity test pins
  refusals: AnyRes training, square-only stages, packing
  end to end: train on mixed-size PNGs, answer through `python -m
  mmjax.generate` about a 37x91 image
"""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import inference, testing
from mmjax.config import ConfigError, load_config
from mmjax.data import images as images_lib
from mmjax.data import pipeline
from mmjax.data import tiling as tiling_lib
from mmjax.inference import media as media_lib
from mmjax.models import build
from mmjax.models import tiling as model_tiling
from mmjax.train import config_checks
from tests.conftest import REPO
from tests.data import any_size

SPEC = f"{REPO}/configs/llava.py:llava15_7b_tiny"
SIZES = any_size.SIZES[:4] + [(90, 60)]
_image = any_size.image


def _tiled_config(max_tiles=4):
  config = load_config(SPEC)
  config.model.tiling = "internvl"
  config.model.max_tiles = max_tiles
  return config


@pytest.fixture(scope="module")
def model():
  module = build.build_model(_tiled_config())
  return module, testing.random_params(module, seed=5)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return any_size.qwen_tokenizer(tmp_path_factory.mktemp("qwen"))


def test_pipeline_lays_out_every_tile(model, tokenizer):
  module, _ = model
  cfg = module.cfg
  source = any_size.chat_source(SIZES)
  it = pipeline.make_iterator(source, fmt="llava_conversations", cfg=cfg,
                              tokenizer=tokenizer, batch_size=5, seed=0,
                              max_len=320, train=False)
  batch = next(it)
  slots = tiling_lib.tile_slots(cfg)
  assert slots == 5 and batch["images"].shape[:2] == (5, slots)
  per_tile = cfg.vision.num_patches  # mlp projector: one token a patch
  counts = []
  for b, (h, w) in enumerate(SIZES):
    n = tiling_lib.tile_count(cfg, h, w)
    counts.append(n)
    assert batch["image_mask"][b].sum() == n
    assert batch["image_token_mask"][b].sum() == n * per_tile
    want = tiling_lib.internvl_tiles(_image(h, w, b), cfg.side, 1, 4, True)
    np.testing.assert_allclose(
        batch["images"][b, :n],
        images_lib.normalize(want.pixels, images_lib.normalization_kind(cfg)),
        atol=1e-6)
  assert set(counts) > {1}  # the mix has single- and multi-tile images


def test_tiles_as_images_equal_encode_tiled(model):
  module, params = model
  cfg = module.cfg
  tiled = media_lib.tiled_media(cfg, [_image(37, 91, 1), _image(64, 64, 2)])
  assert len(tiled) == 2 and sum(tiled.counts) == len(tiled.tiles)
  got = module.apply({"params": params}, jnp.asarray(tiled.tiles)[None],
                     method=type(module).encode_images)
  got = got.reshape(-1, got.shape[-1])
  layouts = [model_tiling.Layout((r, c), (h, w), n) for (r, c), (h, w), n in
             zip([tiling_lib.internvl_grid(s, cfg.side, 1, 4)
                  for s in ((37, 91), (64, 64))], ((37, 91), (64, 64)),
                 tiled.counts)]
  want = module.apply({"params": params}, jnp.asarray(tiled.tiles), layouts,
                      method=model_tiling.encode_tiled)
  np.testing.assert_allclose(np.asarray(got),
                             np.asarray(jnp.concatenate(want)), atol=1e-6)


def _data_checks(config):
  checks = config_checks._mllm_data_checks(config)  # pylint: disable=protected-access
  config_checks.C.validate(config, checks)


def test_refusals():
  config = load_config(SPEC)
  config.model.tiling = "anyres"
  with pytest.raises(ConfigError, match="does not cut anyres tiles"):
    config_checks._check_tiling_trains(config)  # pylint: disable=protected-access
  config = _tiled_config()
  config.stages.pretrain.data = "contrastive"
  with pytest.raises(ConfigError, match="cuts each image into tiles"):
    _data_checks(config)
  config = _tiled_config()
  config.data.packing = True
  with pytest.raises(ConfigError, match="InternVL tiling"):
    _data_checks(config)


@pytest.mark.slow
def test_trains_on_mixed_size_pngs_and_answers_about_a_37x91_image(
    tmp_path):
  workdir, images = any_size.train_on_folder_and_ask(
      tmp_path, SPEC, "--config.model.tiling=internvl",
      "--config.model.max_tiles=4")
  run = inference.load(str(workdir))
  media = run.prepare_media(str(images / "0.png"))  # the 37x91 image
  assert isinstance(media, media_lib.TiledMedia) and media.counts[0] > 1
