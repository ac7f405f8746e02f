"""InternVL's per-tile connector (pixel shuffle + projector) vs transformers.

mmjax cannot import InternVL's InternViT tower (docs/weights.md says why);
the connector that InternVL tiling uses per tile is checked here alone.
"""
import numpy as np
import torch
import transformers

import hf_testing
from mmjax.models import connectors


def test_pixel_shuffle_projector_matches_internvl():
  config = transformers.InternVLConfig(
      vision_config=dict(hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         image_size=64, patch_size=8),
      text_config=dict(model_type="qwen2", hidden_size=24,
                       intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1,
                       vocab_size=64))
  proj = hf_testing.perturb(
      transformers.models.internvl.modeling_internvl
      .InternVLMultiModalProjector(config), seed=9)
  feats = np.random.default_rng(0).normal(size=(2, 64, 16)).astype(
      np.float32)  # two tiles, 8 x 8 patch grid, row-major
  shuffled = transformers.InternVLModel.pixel_shuffle(
      None, torch.tensor(feats).reshape(2, 8, 8, 16), scale_factor=0.5)
  ref = proj(shuffled.reshape(2, -1, 64)).numpy()
  t = {k: v.numpy() for k, v in proj.state_dict().items()}
  params = {
      "layer_norm": {"scale": t["layer_norm.weight"],
                     "bias": t["layer_norm.bias"]},
      "linear_1": {"kernel": t["linear_1.weight"].T,
                   "bias": t["linear_1.bias"]},
      "linear_2": {"kernel": t["linear_2.weight"].T,
                   "bias": t["linear_2.bias"]}}
  ours = connectors.PixelShuffleProjector(24).apply(
      {"params": params}, feats, (8, 8))
  hf_testing.assert_parity("internvl pixel shuffle + projector", ours, ref)
