"""Visual positions (models/visual_positions.py): each visual token carries
its (row, column) after the projector."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
import importlib

from mmjax.hf.export import HFExportError
from mmjax.models import mllm as mllm_lib
from mmjax.models import visual_positions as vp

# mmjax.hf re-exports the function under the module's name.
export_llava = importlib.import_module("mmjax.hf.export_llava")


def test_sincos_2d_encodes_row_then_column():
  table = np.asarray(vp.sincos_2d((3, 5), 16))  # [15, 16]
  assert table.shape == (15, 16)
  grid = table.reshape(3, 5, 16)
  # First half: the row alone (equal along a row, different across rows).
  np.testing.assert_array_equal(grid[:, :1, :8].repeat(5, 1), grid[..., :8])
  assert np.abs(grid[0, 0, :8] - grid[1, 0, :8]).max() > 0.1
  # Second half: the column alone.
  np.testing.assert_array_equal(grid[:1, :, 8:].repeat(3, 0), grid[..., 8:])
  np.testing.assert_allclose(grid[2, 3, 8:], vp.sincos_1d(jnp.array([3]), 8)[0],
                             rtol=1e-6)
  # sin^2 + cos^2 = 1 per frequency.
  np.testing.assert_allclose(grid[..., 8:12] ** 2 + grid[..., 12:] ** 2, 1.0,
                             rtol=1e-5)


def test_encode_images_adds_the_table_to_the_projector_output():
  cfg = testing.tiny_mllm_config(visual_positions="sincos2d")
  plain = mllm_lib.MLLM(testing.tiny_mllm_config())
  model = mllm_lib.MLLM(cfg)
  params = testing.random_params(model, seed=0)
  images = jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (2, 1, cfg.side, cfg.side, 3)), jnp.float32)
  with_pos = model.apply({"params": params}, images,
                         method=mllm_lib.MLLM.encode_images)
  without = plain.apply({"params": params}, images,
                        method=mllm_lib.MLLM.encode_images)
  g = cfg.side // cfg.patch
  np.testing.assert_allclose(
      with_pos - without,
      np.broadcast_to(vp.sincos_2d((g, g), cfg.lm.d_model), with_pos.shape),
      atol=1e-5)


@pytest.mark.parametrize("overrides", [
    dict(visual_positions="sincos3d"),
    dict(visual_positions="sincos2d", projector="pixel_shuffle"),
    dict(visual_positions="sincos2d", fusion="resampler"),
])
def test_bad_combinations_are_refused(overrides):
  fusion = overrides.pop("fusion", "projection")
  with pytest.raises(ValueError, match="visual_positions"):
    testing.tiny_mllm_config(fusion, **overrides)


def test_llava_export_refuses_visual_positions():
  cfg = testing.tiny_mllm_config(visual_positions="sincos2d")
  with pytest.raises(HFExportError,
                     match="visual_positions='sincos2d'"):
    export_llava.check_exportable(cfg)
