"""Host tiling (mmjax/data/tiling.py) against transformers' slow processors."""
import numpy as np
import pytest
import transformers
from transformers.models.got_ocr2 import image_processing_got_ocr2 as got

from mmjax.data import tiling

_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
# Non-square sizes: wide, tall, an odd leftover, one needing a 3-tile grid.
_SIZES = [(20, 45), (50, 23), (37, 91), (70, 41), (13, 97)]


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


@pytest.mark.parametrize("size", _SIZES)
def test_anyres_matches_llava_next_processor(size):
  proc = transformers.LlavaNextImageProcessor(
      size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
      image_grid_pinpoints=_PINPOINTS, do_rescale=False, do_normalize=False,
      do_pad=False)
  image = _image(*size)
  ref = proc(images=[image], return_tensors="np")
  ours = tiling.anyres_tiles(image, _PINPOINTS, 32)
  assert tuple(ref["image_sizes"][0]) == ours.image_size == size
  np.testing.assert_array_equal(
      ours.pixels, np.asarray(ref["pixel_values"][0]).transpose(0, 2, 3, 1))
  rows, cols = ours.grid
  assert ours.pixels.shape[0] == 1 + rows * cols
  hf_grid = transformers.models.llava_next.modeling_llava_next \
      .get_anyres_image_grid_shape(list(size), _PINPOINTS, 32)
  assert tuple(hf_grid) == (rows, cols)


def test_select_best_resolution_matches_transformers():
  from transformers.image_processing_utils import select_best_resolution
  rng = np.random.default_rng(1)
  for _ in range(200):
    size = tuple(int(v) for v in rng.integers(1, 1200, 2))
    assert tiling.select_best_resolution(
        size, tiling.LLAVA_NEXT_PINPOINTS) == tuple(select_best_resolution(
            size, [list(p) for p in tiling.LLAVA_NEXT_PINPOINTS]))


def test_internvl_grid_matches_got_ocr2():
  rng = np.random.default_rng(2)
  sizes = [tuple(int(v) for v in rng.integers(1, 2000, 2))
           for _ in range(300)] + [(448, 448), (448, 896), (224, 224),
                                   (896, 448), (100, 1300)]
  for lo, hi in ((1, 12), (1, 6), (2, 4)):
    for h, w in sizes:
      cols, rows = got.get_optimal_tiled_canvas((h, w), (448, 448), lo, hi)
      assert tiling.internvl_grid((h, w), 448, lo, hi) == (rows, cols)


@pytest.mark.parametrize("size", [(20, 45), (50, 23), (16, 16)])
def test_internvl_tiles_match_got_ocr2_processor(size):
  proc = transformers.GotOcr2ImageProcessor(
      size={"height": 16, "width": 16}, crop_to_patches=True, min_patches=1,
      max_patches=6, do_rescale=False, do_normalize=False)
  image = _image(*size, seed=3)
  ref = proc(images=[image], return_tensors="np")
  ours = tiling.internvl_tiles(image, 16, 1, 6)
  np.testing.assert_array_equal(
      ours.pixels, np.asarray(ref["pixel_values"]).transpose(0, 2, 3, 1))
  assert int(ref["num_patches"][0]) == ours.pixels.shape[0]
  assert tiling.internvl_token_count(size, 16, 4, 1, 6) == 4 * len(
      ours.pixels)


def test_hand_computed_cases():
  # 800x600 (h x w) LLaVA-NeXT: 672x336 keeps 448*336... vs 672x672 all.
  assert tiling.anyres_grid((800, 600), tiling.LLAVA_NEXT_PINPOINTS,
                            336) == (2, 2)
  # InternVL, 448 tiles: a 2:1 wide image is 1 row x 2 cols; a tiny square
  # stays one tile (area below half of 2x2's); squares grow with area:
  # 800^2 > 0.5 * 4 * 448^2 but < 0.5 * 9 * 448^2; 1000^2 > the latter.
  assert tiling.internvl_grid((448, 896), 448, 1, 12) == (1, 2)
  assert tiling.internvl_grid((100, 100), 448, 1, 12) == (1, 1)
  assert tiling.internvl_grid((800, 800), 448, 1, 12) == (2, 2)
  assert tiling.internvl_grid((1000, 1000), 448, 1, 12) == (3, 3)
  # A 37x91 image, 32 tiles of 8x8 patches (side 4): grid 1x3 -> feature
  # canvas 4x12, narrower aspect than 91/37 is not: 91 * 4/37 = 9.8 -> 9
  # columns, pad (12 - 9) // 2 = 1 each side, so 10 columns are kept.
  grid = tiling.anyres_grid((37, 91), _PINPOINTS, 32)
  assert grid == (1, 3)
  assert tiling.anyres_unpadded((37, 91), grid, 4) == (0, 4, 1, 11)
  assert tiling.anyres_token_count((37, 91), _PINPOINTS, 32, 8) == 16 + 4 * 11


def test_bad_input():
  with pytest.raises(ValueError, match="uint8"):
    tiling.anyres_tiles(np.zeros((4, 4, 3), np.float32), _PINPOINTS, 32)
  with pytest.raises(ValueError, match="multiple of the tile side"):
    tiling.anyres_grid((10, 10), [[30, 64]], 32)
  with pytest.raises(ValueError, match="min_tiles"):
    tiling.internvl_grid((10, 10), 16, 3, 2)
  tiles = tiling.internvl_tiles(_image(16, 32), 16, 1, 6)  # 1x2 + thumbnail
  with pytest.raises(ValueError, match="more than max_tiles=2"):
    tiling.pad_tiles(tiles, 2)
  pixels, valid = tiling.pad_tiles(tiles, 5)
  assert pixels.shape == (5, 16, 16, 3) and valid.tolist() == [1, 1, 1, 0, 0]
