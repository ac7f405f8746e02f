"""Parity of imported SigLIP (two towers) and CLIP / SigLIP vision towers.

Images are 48x64 (non-square, not the towers' 32x32 native size), so both
the height/width order and the bicubic position-embedding resize are
exercised (HF `interpolate_pos_encoding=True`).
"""
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import hf_testing
from mmjax import hf

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, image_size=32, patch_size=8)
_TEXT = dict(vocab_size=50, hidden_size=32, intermediate_size=48,
             num_hidden_layers=2, num_attention_heads=2,
             max_position_embeddings=12)


def _images(n=2, h=48, w=64, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, h, w, 3))
  return x.astype(np.float32)


def _nchw(images):
  return torch.tensor(images.transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
  model = hf_testing.perturb(transformers.SiglipModel(
      transformers.SiglipConfig(vision_config=_VISION, text_config=_TEXT)))
  with torch.no_grad():
    model.logit_scale.fill_(2.0)
    model.logit_bias.fill_(-3.0)
  path = hf_testing.save(model, tmp_path_factory.mktemp("siglip"))
  return model, hf.import_checkpoint(path)


def test_siglip_two_tower(siglip):
  model, conv = siglip
  assert conv.family == "two_tower"
  images = _images()
  tokens = np.random.default_rng(1).integers(0, 50, (2, 12))
  ref = model(input_ids=torch.tensor(tokens), pixel_values=_nchw(images),
              interpolate_pos_encoding=True)
  module, params = conv.module(), conv.module_params()
  out = module.apply({"params": params}, images, tokens)
  hf_testing.assert_parity("siglip image embeds", out["zimg"],
                           ref.image_embeds.numpy())
  hf_testing.assert_parity("siglip text embeds", out["ztxt"],
                           ref.text_embeds.numpy())
  logits = (np.asarray(out["zimg"]) @ np.asarray(out["ztxt"]).T *
            np.exp(out["logit_scale"]) + out["logit_bias"])
  hf_testing.assert_parity("siglip logits", logits,
                           ref.logits_per_image.numpy())
  vision = model.vision_model(pixel_values=_nchw(images),
                              interpolate_pos_encoding=True)
  tokens_out = module.apply({"params": params}, images,
                            method=lambda m, x: m.vision_model(x).tokens)
  hf_testing.assert_parity("siglip vision tokens", tokens_out,
                           vision.last_hidden_state.numpy())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
  model = hf_testing.perturb(transformers.CLIPVisionModel(
      transformers.CLIPVisionConfig(**_VISION)))
  path = hf_testing.save(model, tmp_path_factory.mktemp("clip"))
  return model, hf.import_checkpoint(path)


def test_clip_vision_tower(clip):
  model, conv = clip
  assert conv.family == "vision" and conv.model["kind"] == "clip"
  images = _images(seed=2)
  ref = model(pixel_values=_nchw(images), output_hidden_states=True,
              interpolate_pos_encoding=True)
  module, params = conv.module(), conv.module_params()
  out = module.apply({"params": params}, images)
  hf_testing.assert_parity("clip tokens", out.tokens,
                           ref.last_hidden_state[:, 1:].numpy())
  hf_testing.assert_parity("clip pooled", out.pooled,
                           ref.pooler_output.numpy())
  second = module.apply({"params": params}, images, feature_layer=-2)
  hf_testing.assert_parity("clip hidden_states[-2]", second.tokens,
                           ref.hidden_states[-2][:, 1:].numpy())


def test_siglip_vision_tower_without_prefix(tmp_path):
  """transformers 5.x saves a bare tower without `vision_model.`."""
  model = hf_testing.perturb(transformers.SiglipVisionModel(
      transformers.SiglipVisionConfig(**_VISION)), seed=3)
  path = hf_testing.save(model, tmp_path / "prefixed")
  tensors = load_file(f"{path}/model.safetensors")
  bare = tmp_path / "bare"
  bare.mkdir()
  save_file({k.removeprefix("vision_model."): v for k, v in tensors.items()},
            str(bare / "model.safetensors"))
  (bare / "config.json").write_text((tmp_path / "prefixed" /
                                     "config.json").read_text())
  images = _images(1, seed=4)
  ref = model(pixel_values=_nchw(images), interpolate_pos_encoding=True)
  for source in (path, bare):
    conv = hf.import_checkpoint(source)
    out = conv.module().apply({"params": conv.module_params()}, images)
    hf_testing.assert_parity("siglip vision pooled", out.pooled,
                             ref.pooler_output.numpy())
