"""An MLLM with a NaFlex tower and a projection connector, mixed aspect ratios."""
import dataclasses

import jax
import numpy as np
import pytest

from mmjax import testing
from mmjax.data import naflex as naflex_data
from mmjax.models import flops
from mmjax.models import mllm
from mmjax.models import naflex

_TOWER = naflex.NaFlexConfig(patch_size=4, width=32, depth=1, mlp_dim=64,
                             n_heads=2, posemb_grid=4, max_num_patches=12)
_SHAPES = ((12, 40), (40, 16))  # HxW: wide and tall, <= 12 patches each


def _cfg(**kw):
  return dataclasses.replace(testing.tiny_mllm_config(), vision=_TOWER,
                             feature_layer=None, **kw)


def _inputs(pad_value=0.0):
  rng = np.random.default_rng(0)
  raw = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in _SHAPES]
  nb = naflex_data.batch(raw, patch=4, max_num_patches=12)
  patches = np.where(nb["mask"][..., None] > 0, nb["patches"], pad_value)
  counts = nb["mask"].sum(1)
  length = int(counts.max()) + 6
  tokens = np.full((2, length), testing.FIRST_TEXT_ID, np.int32)
  placeholder = np.zeros((2, length), bool)
  for b, n in enumerate(counts):
    placeholder[b, 2:2 + n] = True
  tokens[placeholder] = testing.IMAGE_ID
  return (patches[:, None].astype(np.float32), nb["mask"][:, None],
          nb["spatial_shapes"][:, None], tokens, placeholder, counts)


def _forward(model, params, patches, mask, shapes, tokens, placeholder):
  visual = model.apply(params, patches, mask, shapes,
                       method=mllm.MLLM.encode_naflex)
  logits, _ = model.apply(params, tokens, visual=visual,
                          image_token_mask=placeholder)
  return logits


@pytest.fixture(scope="module")
def setup():
  model = mllm.MLLM(_cfg())
  patches, mask, shapes, tokens, placeholder, counts = _inputs()

  def init(module, patches, mask, shapes, tokens, placeholder):
    return module(tokens, visual=module.encode_naflex(patches, mask, shapes),
                  image_token_mask=placeholder)

  params = model.init(jax.random.PRNGKey(0), patches, mask, shapes, tokens,
                      placeholder, method=init)
  fwd = jax.jit(lambda *a: _forward(model, params, *a))
  return fwd, counts


def test_forward_on_mixed_aspect_batch(setup):
  fwd, counts = setup
  assert counts[0] != counts[1], counts  # different valid patch counts
  patches, mask, shapes, tokens, placeholder, _ = _inputs()
  logits = np.asarray(fwd(patches, mask, shapes, tokens, placeholder))
  assert logits.shape[:2] == tokens.shape
  assert np.isfinite(logits).all()
  # Padded patches never reach the LM: other padding, same logits.
  noisy = _inputs(pad_value=5.0)
  np.testing.assert_allclose(fwd(*noisy[:5]), logits, atol=1e-5)
  # ...but the image does (the check above can fail).
  other = patches.copy()
  other[0] = -other[0]
  assert np.abs(np.asarray(fwd(other, mask, shapes, tokens, placeholder))[0]
                - logits[0]).max() > 1e-4


def test_flops_count_padded_rows():
  small, big = (flops.train_flops(dataclasses.replace(
      _cfg(), vision=dataclasses.replace(_TOWER, max_num_patches=n)),
      2, 32)["vit"] for n in (12, 24))
  assert big == 2 * small > 0


def test_valid_first_keeps_order():
  x = np.arange(6, dtype=np.float32).reshape(1, 6, 1)
  m = np.array([[False, True, False, True, True, False]])
  np.testing.assert_array_equal(
      np.asarray(naflex.valid_first(x, m))[0, :, 0], [1, 3, 4, 0, 2, 5])


def test_refusals():
  with pytest.raises(ValueError, match="NaFlex vision tower needs"):
    _cfg(projector="pixel_shuffle")
  model = mllm.MLLM(_cfg())
  with pytest.raises(ValueError, match="encode_naflex"):
    model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32),
               images=np.zeros((1, 1, 16, 16, 3), np.float32),
               image_token_mask=np.zeros((1, 4), bool))


def test_config_dict_round_trip():
  cfg = mllm.mllm_config_from_dict(dataclasses.asdict(_cfg()))
  assert cfg.vision == _TOWER and cfg.side == 16
