"""Parity of SigLIP2 NaFlex: preprocessing, position resize, imported tower.

One padded batch holds images of aspect ratios 3:1, 1:2 and 5:4 (different
valid patch counts, position grids both shrunk and enlarged), preprocessed
by `mmjax.data.naflex` and compared with transformers' Siglip2ImageProcessor
(slow path) and Siglip2VisionModel.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import hf_testing
from mmjax import hf
from mmjax.data import naflex as naflex_data
from mmjax.hf import siglip2
from mmjax.models import naflex

# num_patches 16: a 4 x 4 learned position grid; patch 4 keeps patches short.
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_patches=16, patch_size=4)
_TEXT = dict(vocab_size=50, hidden_size=32, intermediate_size=48,
             num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=8)
_MAX = 24  # padded patches per image
_SHAPES = ((30, 90), (80, 40), (50, 40))  # HxW: 3:1, 1:2, 5:4


def _raw_images(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
          for h, w in _SHAPES]


@pytest.fixture(scope="module")
def batch():
  return naflex_data.batch(_raw_images(), patch=4, max_num_patches=_MAX)


@pytest.mark.parametrize("shape", [(30, 90), (80, 40), (50, 40), (7, 300),
                                   (300, 300)])
def test_preprocess_matches_processor(shape):
  image = np.random.default_rng(1).integers(0, 256, shape + (3,), np.uint8)
  proc = transformers.Siglip2ImageProcessor(patch_size=16,
                                            max_num_patches=64)
  ref = proc(images=[image], return_tensors="np")
  ours = naflex_data.batch([image], patch=16, max_num_patches=64)
  np.testing.assert_array_equal(ours["spatial_shapes"], ref["spatial_shapes"])
  np.testing.assert_array_equal(ours["mask"], ref["pixel_attention_mask"])
  np.testing.assert_allclose(ours["patches"], ref["pixel_values"], atol=1e-6)


def test_posemb_resize_matches_torch():
  grid = np.random.default_rng(2).normal(size=(5, 5, 3)).astype(np.float32)
  torch_grid = torch.tensor(grid).permute(2, 0, 1)[None]
  # Not w=1: torch 2.x CPU antialias then returns a wrong column (see
  # docs/models.md, NaFlex).
  shapes = [(1, 9), (2, 3), (5, 5), (8, 2), (12, 7), (3, 2)]
  n = max(h * w for h, w in shapes)
  ours = np.asarray(naflex.resize_posemb_naflex(
      grid.reshape(25, 3), np.asarray(shapes, np.int32), n))
  for b, (h, w) in enumerate(shapes):
    ref = F.interpolate(torch_grid, size=(h, w), mode="bilinear",
                        align_corners=False, antialias=True)
    ref = ref[0].reshape(3, h * w).T.numpy()
    np.testing.assert_allclose(ours[b, :h * w], ref, atol=1e-6)
    np.testing.assert_allclose(ours[b, h * w:],
                               np.broadcast_to(ref[0], (n - h * w, 3)),
                               atol=1e-6)


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
  model = hf_testing.perturb(transformers.Siglip2VisionModel(
      transformers.Siglip2VisionConfig(**_VISION)))
  path = hf_testing.save(model, tmp_path_factory.mktemp("siglip2v"))
  return model, hf.import_checkpoint(path)


def test_vision_tower_parity(tower, batch):
  model, conv = tower
  assert conv.family == "naflex"
  assert conv.model["posemb_grid"] == 4
  counts = batch["mask"].sum(1)
  assert len(set(counts.tolist())) == 3, counts  # three valid lengths
  ref = model(pixel_values=torch.tensor(batch["patches"]),
              pixel_attention_mask=torch.tensor(batch["mask"]),
              spatial_shapes=torch.tensor(batch["spatial_shapes"]))
  out = conv.module().apply({"params": conv.module_params()},
                            batch["patches"], batch["mask"],
                            batch["spatial_shapes"])
  hf_testing.assert_parity("siglip2 last_hidden_state", out.tokens,
                           ref.last_hidden_state.numpy())
  hf_testing.assert_parity("siglip2 pooler_output", out.pooled,
                           ref.pooler_output.numpy())


def test_two_tower_checkpoint_imports_vision(tmp_path, batch):
  model = hf_testing.perturb(transformers.Siglip2Model(
      transformers.Siglip2Config(vision_config=_VISION, text_config=_TEXT)))
  conv = hf.import_checkpoint(hf_testing.save(model, tmp_path))
  assert conv.family == "naflex"
  assert any("text tower" in n for n in conv.hf["notes"])
  ref = model.vision_model(
      pixel_values=torch.tensor(batch["patches"]),
      attention_mask=torch.tensor(batch["mask"]),
      spatial_shapes=torch.tensor(batch["spatial_shapes"]))
  out = conv.module().apply({"params": conv.module_params()},
                            batch["patches"], batch["mask"],
                            batch["spatial_shapes"])
  hf_testing.assert_parity("siglip2 (two-tower ckpt) pooled", out.pooled,
                           ref.pooler_output.numpy())


@pytest.mark.slow  # orbax save + restore, ~15 s under load
def test_save_load_roundtrip(tower, batch, tmp_path):
  _, conv = tower
  loaded = hf.load_converted(hf.save_converted(conv, tmp_path / "out"))
  assert loaded.family == "naflex" and loaded.model == conv.model
  args = (batch["patches"], batch["mask"], batch["spatial_shapes"])
  ours = conv.module().apply({"params": conv.module_params()}, *args)
  back = loaded.module().apply({"params": loaded.module_params()}, *args)
  np.testing.assert_array_equal(back.pooled, ours.pooled)


def test_non_square_position_table_is_refused():
  with pytest.raises(hf.HFImportError, match="num_patches=12 is not a square"):
    siglip2.naflex_config({**_VISION, "num_patches": 12})
