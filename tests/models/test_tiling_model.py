"""The model side of tiling (models/tiling.py) on the tiny shapes model."""
import jax
import numpy as np
import pytest

from mmjax import testing
from mmjax.data import tiling as host_tiling
from mmjax.models import mllm as mllm_lib
from mmjax.models import tiling as tiling_lib
from mmjax.train import groups

_PINPOINTS = ((64, 128), (128, 64), (128, 128))


def _model(**kw):
  cfg = testing.tiny_mllm_config(**kw)
  model = mllm_lib.MLLM(cfg)
  return cfg, model, testing.random_params(model, seed=1, scale=2.0)


def _tiles(stacks):
  pixels = np.concatenate([t.pixels for t in stacks]).astype(np.float32)
  return pixels / 127.5 - 1.0


@pytest.fixture(scope="module")
def anyres():
  return _model(tiling="anyres", grid_pinpoints=_PINPOINTS)


@pytest.mark.slow
def test_anyres_token_counts_and_newline(anyres):
  cfg, model, params = anyres
  side, patch = cfg.vision.image_size, cfg.vision.patch_size
  rng = np.random.default_rng(0)
  stacks = [host_tiling.anyres_tiles(
      rng.integers(0, 256, size + (3,), np.uint8), cfg.grid_pinpoints, side)
            for size in ((37, 91), (120, 50))]
  layouts = [tiling_lib.Layout.of(s) for s in stacks]
  out = model.apply({"params": params}, _tiles(stacks), layouts,
                    method=tiling_lib.encode_tiled)
  for stack, tokens in zip(stacks, out):
    assert tokens.shape == (host_tiling.anyres_token_count(
        stack.image_size, cfg.grid_pinpoints, side, patch), cfg.lm.d_model)
  # The newline is a connector-group parameter and sits after every row.
  assert groups.matches("image_newline", "connector")
  g = side // patch
  top, bottom, left, right = host_tiling.anyres_unpadded(
      layouts[0].image_size, layouts[0].grid, g)
  width = right - left + 1
  rows = np.asarray(out[0][g * g:]).reshape(bottom - top, width, -1)
  np.testing.assert_array_equal(
      rows[:, -1], np.broadcast_to(params["image_newline"],
                                   rows[:, -1].shape))


@pytest.mark.slow
def test_internvl_tiles_are_encoded_in_order():
  cfg, model, params = _model(projector="pixel_shuffle", tiling="internvl",
                              max_tiles=4)
  side = cfg.vision.image_size
  rng = np.random.default_rng(1)
  stacks = [host_tiling.internvl_tiles(
      rng.integers(0, 256, size + (3,), np.uint8), side, cfg.min_tiles,
      cfg.max_tiles, cfg.thumbnail) for size in ((40, 130), (30, 30))]
  assert [s.pixels.shape[0] for s in stacks] == [3 + 1, 1]  # 1x3 + thumb
  tiles = _tiles(stacks)
  out = model.apply({"params": params}, tiles,
                    [tiling_lib.Layout.of(s) for s in stacks],
                    method=tiling_lib.encode_tiled)
  per_tile = model.apply({"params": params}, tiles[None],
                         method=mllm_lib.MLLM.encode_images)[0]
  tokens_per_tile = per_tile.shape[1]
  assert tokens_per_tile == (side // cfg.vision.patch_size) ** 2 // 4
  np.testing.assert_allclose(
      np.concatenate([np.asarray(o) for o in out]),
      np.asarray(per_tile).reshape(-1, per_tile.shape[-1]), atol=1e-5)
  assert out[0].shape[0] == host_tiling.internvl_token_count(
      (40, 130), side, tokens_per_tile, 1, 4)


@pytest.mark.parametrize("kw, match", [
    (dict(tiling="tiles"), "tiling='tiles' is not allowed"),
    (dict(tiling="anyres"), "needs grid_pinpoints"),
    (dict(tiling="internvl", min_tiles=3, max_tiles=2), "min_tiles"),
    (dict(fusion="resampler", tiling="internvl"), "fusion='projection'"),
])
def test_bad_tiling_config(kw, match):
  fusion = kw.pop("fusion", "projection")
  with pytest.raises(ValueError, match=match):
    testing.tiny_mllm_config(fusion, **kw)


def test_tiled_model_is_not_exported_as_llava():
  from mmjax.hf.export_llava import HFExportError, check_exportable
  cfg = testing.tiny_mllm_config(tiling="anyres", grid_pinpoints=_PINPOINTS)
  with pytest.raises(HFExportError, match="tiling='anyres'"):
    check_exportable(cfg)


@pytest.mark.slow
def test_internvl_tiles_train_with_a_fixed_max_tiles():
  """Two images of different tile counts padded to max_tiles (tiles as the
  media items, a valid mask): the padded example's logits equal the unpadded
  one's, and a few Adam steps lower the loss."""
  import optax
  cfg, model, params = _model(projector="pixel_shuffle", tiling="internvl",
                              max_tiles=3, lm=dict(n_layers=1),
                              vision=dict(depth=1))
  side, image_id = cfg.vision.image_size, testing.IMAGE_ID
  rng = np.random.default_rng(4)
  stacks = [host_tiling.internvl_tiles(
      rng.integers(0, 256, size + (3,), np.uint8), side, 1, 3)
            for size in ((40, 100), (30, 30))]  # 1x2 + thumbnail, 1
  per_tile = (side // cfg.vision.patch_size) ** 2 // 4
  padded = [host_tiling.pad_tiles(s, 3) for s in stacks]
  images = np.stack([p for p, _ in padded]).astype(np.float32) / 127.5 - 1
  image_mask = np.stack([m for _, m in padded])
  length = 3 * per_tile + 8
  tokens = rng.integers(testing.FIRST_TEXT_ID, cfg.lm.vocab_size,
                        (2, length)).astype(np.int32)
  for b, s in enumerate(stacks):
    tokens[b, 2:2 + per_tile * s.pixels.shape[0]] = image_id
  mask = tokens == image_id
  weights = (~mask[:, 1:]).astype(np.float32)

  def loss_fn(p, imgs, img_mask):
    logits, _ = model.apply({"params": p}, tokens, images=imgs,
                            image_mask=img_mask, image_token_mask=mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1], tokens[:, 1:])
    return (ce * weights).sum() / weights.sum()

  # Example 1 (one tile, two padding tiles) alone with its one tile.
  logits_b, _ = model.apply({"params": params}, tokens, images=images,
                            image_mask=image_mask, image_token_mask=mask)
  logits_1, _ = model.apply({"params": params}, tokens[1:],
                            images=images[1:, :1], image_token_mask=mask[1:])
  np.testing.assert_allclose(logits_b[1], logits_1[0], atol=1e-5)
  opt = optax.adam(3e-3)
  state = opt.init(params)
  step = jax.jit(lambda p, s: _adam_step(opt, loss_fn, p, s, images,
                                         image_mask))
  losses = []
  for _ in range(4):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < losses[0], losses


def _adam_step(opt, loss_fn, params, state, images, image_mask):
  import optax
  loss, grads = jax.value_and_grad(loss_fn)(params, images, image_mask)
  updates, state = opt.update(grads, state, params)
  return optax.apply_updates(params, updates), state, loss


def test_generation_from_image_files_tiles_internvl_and_refuses_anyres():
  from mmjax.inference import media
  from mmjax.inference.prompts import InputError
  image = np.zeros((37, 91, 3), np.uint8)
  cfg = testing.tiny_mllm_config(tiling="internvl")
  tiled = media.media_arrays(cfg, [image], None, "square", 4)
  assert isinstance(tiled, media.TiledMedia) and len(tiled) == 1
  assert len(tiled.tiles) == tiled.counts[0] > 1
  assert media.media_arrays(cfg, [], None, "square", 4) is None
  cfg = testing.tiny_mllm_config(tiling="anyres",
                                 grid_pinpoints=((64, 128), (128, 64)))
  with pytest.raises(InputError, match="tiling='anyres'"):
    media.media_arrays(cfg, [image], None, "square", 4)


def test_training_config_refuses_anyres_and_square_only_stages():
  from mmjax.config import ConfigError
  from mmjax.train import config_checks
  config = testing.tiny_recipe()
  config.model.tiling = "anyres"
  config.model.grid_pinpoints = ((64, 128), (128, 64))
  with pytest.raises(ConfigError, match="does not cut anyres tiles"):
    config_checks.validate_config(config)
  config.model.tiling = "internvl"  # the shapes recipe's siglip stage
  with pytest.raises(ConfigError, match="cuts each image into tiles"):
    config_checks.validate_config(config)
