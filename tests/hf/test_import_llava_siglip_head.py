"""LLaVA whose SigLIP tower keeps its MAP head (vision_use_head=True): the
head tensors are skipped (and noted); logits match transformers."""
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, image_size=32, patch_size=8,
               vision_use_head=True)
_TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
_IMAGE_ID = 95


@pytest.mark.parametrize("layer", [-1, -2])
def test_llava_siglip_with_head_logits(tmp_path, layer):
  # -1: transformers 4.57.1 hands LLaVA the post-layernorm output there.
  config = transformers.LlavaConfig(
      vision_config=transformers.SiglipVisionConfig(**_VISION),
      text_config=transformers.LlamaConfig(**_TEXT),
      image_token_index=_IMAGE_ID, vision_feature_layer=layer,
      vision_feature_select_strategy="full")
  model = hf_testing.perturb(
      transformers.LlavaForConditionalGeneration(config), seed=3)
  head = [k for k in model.state_dict() if ".head." in k]
  assert len(head) == 11  # probe, fused in_proj x2, out_proj x2, LN x2, MLP x4
  conv = hf.import_checkpoint(hf_testing.save(model, tmp_path))
  assert conv.model["vision"]["pool"] == "none"
  assert "head" not in conv.params["vision"]
  assert conv.model["feature_layer"] == (None if layer == -1 else -2)
  assert any("11 tensors" in n and "head" in n for n in conv.hf["notes"])

  rng = np.random.default_rng(0)
  tokens = np.stack([
      np.concatenate([rng.integers(1, 90, 3), np.full(16, _IMAGE_ID),
                      rng.integers(1, 90, 5)]) for _ in range(2)])
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  ref = model(input_ids=torch.tensor(tokens),
              pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits
  ours, _ = conv.module().apply(
      {"params": conv.params}, tokens, images=images[:, None],
      image_token_mask=tokens == _IMAGE_ID)
  hf_testing.assert_parity("llava+siglip(head) logits", ours, ref.numpy())
