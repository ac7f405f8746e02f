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
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax import inference, testing
from mmjax.config import ConfigError, load_config
from mmjax.data import images as images_lib
from mmjax.data import pipeline
from mmjax.data import tiling as tiling_lib
from mmjax.inference import media as media_lib
from mmjax.models import build
from mmjax.models import tiling as model_tiling
from mmjax.train import config_checks
from tests import helpers
from tests.conftest import REPO
from tests.data import hf_tokenizers

SPEC = f"{REPO}/configs/llava.py:llava15_7b_tiny"
SIZES = [(37, 91), (120, 40), (20, 20), (64, 64), (90, 60)]


def _tiled_config(max_tiles=4):
  config = load_config(SPEC)
  config.model.tiling = "internvl"
  config.model.max_tiles = max_tiles
  return config


def _image(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


@pytest.fixture(scope="module")
def model():
  module = build.build_model(_tiled_config())
  return module, testing.random_params(module, seed=5)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  from mmjax.data import hf_tokenizer  # pylint: disable=g-import-not-at-top
  path = hf_tokenizers.qwen_dir(tmp_path_factory.mktemp("qwen"))
  return hf_tokenizer.HFTokenizer.load(path, "chatml")


def test_pipeline_lays_out_every_tile(model, tokenizer):
  module, _ = model
  cfg = module.cfg
  source = [{"id": f"r{i}", "image": _image(h, w, i), "conversations": [
      {"from": "human", "value": "<image>\nWhat is it?"},
      {"from": "gpt", "value": f"picture {i}."}]}
            for i, (h, w) in enumerate(SIZES)]
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
  images = tmp_path / "images"
  images.mkdir()
  records = []
  for i, (h, w) in enumerate(SIZES + [(48, 160)]):
    Image.fromarray(_image(h, w, i)).save(images / f"{i}.png")
    records.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nHow wide is it?"},
        {"from": "gpt", "value": f"{w} pixels."}]})
  (tmp_path / "data.json").write_text(json.dumps(records))
  tok = hf_tokenizers.qwen_dir(tmp_path / "qwen")
  from mmjax.data import hf_tokenizer  # pylint: disable=g-import-not-at-top
  # The LM's vocabulary is the tokenizer's: every id it samples decodes.
  vocab = hf_tokenizer.HFTokenizer.load(tok, "chatml").vocab_size
  workdir = tmp_path / "run"
  proc = helpers.run_cli(
      "mmjax.main", f"--config={SPEC},steps=2", f"--workdir={workdir}",
      f"--config.tokenizer={tok}", f"--config.model.lm.vocab_size={vocab}",
      "--config.chat_template=chatml",
      "--config.model.tiling=internvl", "--config.model.max_tiles=4",
      "--config.stage_order=('sft',)",
      f"--config.data.folder_json={tmp_path / 'data.json'}",
      f"--config.data.folder_images={images}",
      f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  run = inference.load(str(workdir))
  media = run.prepare_media(str(images / "0.png"))  # the 37x91 image
  assert isinstance(media, media_lib.TiledMedia) and media.counts[0] > 1
  Image.fromarray(_image(37, 91, 7)).save(tmp_path / "q.png")
  proc = helpers.run_cli("mmjax.generate", f"--workdir={workdir}",
                         f"--image={tmp_path / 'q.png'}",
                         "--prompt=How wide is it?", "--max_new_tokens=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip()
