"""NaFlex preprocessing: sizes, padding, refusals (parity with transformers'
processor is in tests/hf/test_import_siglip2.py)."""
import numpy as np
import pytest

from mmjax.data import naflex
from mmjax.models.layout import ImageSizeError


@pytest.mark.parametrize("hw", [(30, 90), (80, 40), (50, 40), (3, 500),
                                (1000, 1000), (8, 8)])
def test_size_fits_budget_and_keeps_aspect(hw):
  th, tw = naflex.naflex_size(*hw, patch=16, max_patches=64)
  assert th % 16 == 0 and tw % 16 == 0 and th >= 16 and tw >= 16
  assert (th // 16) * (tw // 16) <= 64
  # Each side is rounded up to whole patches, at most one patch off.
  scale = th / hw[0]
  assert abs(tw - hw[1] * scale) <= 16 or min(th, tw) == 16


def test_padding_and_mask():
  image = np.full((40, 20, 3), 255, np.uint8)
  out = naflex.preprocess(image, patch=4, max_num_patches=40)
  h, w = out.spatial_shape
  assert h * w <= 40 and h > w
  assert out.mask.sum() == h * w and out.mask[:h * w].all()
  np.testing.assert_array_equal(out.patches[h * w:], 0.0)
  np.testing.assert_allclose(out.patches[:h * w], 1.0)  # white -> (1-.5)/.5


def test_refusals():
  with pytest.raises(ImageSizeError):
    naflex.preprocess(np.zeros((0, 5, 3), np.uint8))
  with pytest.raises(ValueError, match="max_num_patches"):
    naflex.naflex_size(10, 10, 16, 0)
