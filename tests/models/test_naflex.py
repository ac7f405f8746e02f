"""NaFlex tower masking: padding never reaches the valid outputs."""
import jax
import numpy as np
import pytest

from mmjax.models import naflex

_CFG = naflex.NaFlexConfig(patch_size=2, width=32, depth=2, mlp_dim=64,
                           n_heads=4, posemb_grid=4, max_num_patches=12)
_SHAPES = np.asarray([[3, 4], [2, 3], [5, 1]], np.int32)  # 12, 6, 5 valid


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  patches = rng.normal(size=(3, n, _CFG.patch_dim)).astype(np.float32)
  mask = np.arange(n)[None] < _SHAPES.prod(1)[:, None]
  return np.where(mask[..., None], patches, 0.0).astype(np.float32), mask


@pytest.fixture(scope="module")
def apply():
  module = naflex.NaFlexVisionTower(_CFG)
  patches, mask = _batch(12)
  params = module.init(jax.random.PRNGKey(0), patches, mask, _SHAPES)
  return jax.jit(lambda p, m: module.apply(params, p, m, _SHAPES))


def test_padding_content_and_length_do_not_change_valid_outputs(apply):
  patches, mask = _batch(12)
  base = apply(patches, mask)
  noisy = np.where(mask[..., None], patches, 7.0).astype(np.float32)
  longer = np.pad(patches, ((0, 0), (0, 8), (0, 0)))  # 8 more padded
  longer_mask = np.pad(mask, ((0, 0), (0, 8)))  # rows per image
  outs = (apply(noisy, mask), apply(longer, longer_mask))
  for out in outs:
    np.testing.assert_allclose(out.pooled, base.pooled, atol=1e-5)
    for b, n in enumerate(_SHAPES.prod(1)):
      np.testing.assert_allclose(out.tokens[b, :n], base.tokens[b, :n],
                                 atol=1e-5)
  # The padding is really read when unmasked (the check above can fail).
  unmasked = apply(noisy, np.ones_like(mask))
  assert np.abs(unmasked.pooled[1] - base.pooled[1]).max() > 1e-3


def test_images_are_independent(apply):
  patches, mask = _batch(12)
  base = apply(patches, mask)
  other = patches.copy()
  other[0] = np.where(mask[0, :, None], -patches[0], 0.0)
  out = apply(other, mask)
  np.testing.assert_allclose(out.pooled[1:], base.pooled[1:], atol=1e-5)
  assert np.abs(out.pooled[0] - base.pooled[0]).max() > 1e-3


def test_position_resize_identity_and_padding():
  pos = np.random.default_rng(3).normal(size=(16, 5)).astype(np.float32)
  out = np.asarray(naflex.resize_posemb_naflex(
      pos, np.asarray([[4, 4], [1, 2]], np.int32), 18))
  np.testing.assert_allclose(out[0, :16], pos, atol=1e-6)
  np.testing.assert_allclose(out[0, 16:], pos[[0, 0]], atol=1e-6)
  assert np.isfinite(out).all()


def test_bad_config_and_input():
  with pytest.raises(ValueError, match="not divisible by n_heads"):
    naflex.NaFlexConfig(width=30, n_heads=4)
  with pytest.raises(ValueError, match="pool"):
    naflex.NaFlexConfig(pool="cls")
  module = naflex.NaFlexVisionTower(_CFG)
  with pytest.raises(ValueError, match="p\\*p\\*C"):
    module.init(jax.random.PRNGKey(0), np.zeros((1, 4, 5), np.float32),
                np.ones((1, 4), bool), np.ones((1, 2), np.int32))
