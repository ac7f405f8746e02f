"""InternVL (InternViT tower, pixel shuffle, dynamic tiles) vs transformers."""
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf
from mmjax.data import tiling as host_tiling
from mmjax.hf.safetensors_io import HFImportError
from mmjax.models import tiling as tiling_lib

_IMAGE_ID = 95
_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, image_size=32, patch_size=8,
               attention_bias=True)
_TEXT = dict(model_type="qwen2", vocab_size=96, hidden_size=32,
             intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
  config = transformers.InternVLConfig(
      vision_config=_VISION, text_config=_TEXT, image_token_id=_IMAGE_ID)
  model = hf_testing.perturb(
      transformers.InternVLForConditionalGeneration(config), seed=11)
  for layer in model.model.vision_tower.encoder.layer:  # vectors: jittered
    layer.lambda_1.mul_(8.0)  # from 0.1: scale them to matter
    layer.lambda_2.mul_(8.0)
  return model, hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("internvl")))


def test_internvl_logits_with_tiles(internvl):
  model, conv = internvl
  assert conv.model["vision"]["kind"] == "internvit"
  assert conv.model["tiling"] == "internvl"
  rng = np.random.default_rng(12)
  image = rng.integers(0, 256, (30, 64, 3), np.uint8)  # wide: 1x2 + thumb
  tiles = host_tiling.internvl_tiles(image, 32, 1, 4)
  assert tiles.grid == (1, 2) and tiles.pixels.shape[0] == 3
  pixels = tiles.pixels.astype(np.float32) / 127.5 - 1.0
  k = host_tiling.internvl_token_count((30, 64), 32, 4, 1, 4)
  ids = np.concatenate([rng.integers(1, 90, 4), np.full(k, _IMAGE_ID),
                        rng.integers(1, 90, 5)])
  ref = model(input_ids=torch.tensor(ids[None]),
              pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))).logits
  module, variables = conv.module(), {"params": conv.params}
  per_image = module.apply(variables, pixels,
                           [tiling_lib.Layout.of(tiles)],
                           method=tiling_lib.encode_tiled)
  logits, _ = module.apply(variables, ids[None],
                           visual=tiling_lib.visual_rows([per_image]),
                           image_token_mask=ids[None] == _IMAGE_ID)
  hf_testing.assert_parity("internvl logits (2 tiles + thumbnail)", logits,
                           ref.numpy())


def test_internvl_refuses_qk_norm(tmp_path):
  config = transformers.InternVLConfig(
      vision_config={**_VISION, "use_qk_norm": True}, text_config=_TEXT,
      image_token_id=_IMAGE_ID)
  model = transformers.InternVLForConditionalGeneration(config)
  with pytest.raises(HFImportError, match="use_qk_norm"):
    hf.import_checkpoint(hf_testing.save(model, tmp_path))
