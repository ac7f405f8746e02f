"""Qwen2-VL imported as an mmjax MLLM (its ViT with 2-D RoPE and Conv3d
patches, the PatchMerger, the M-RoPE LM) against transformers: the vision
output of `model.visual` and the logits for one image + text."""
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf
from mmjax.models import position_ids as pid

IMAGE, VIDEO, START, END = 150, 151, 152, 153
PATCH = 14
H, W = 56, 84  # 4 x 6 patches -> 2 x 3 merged tokens; not square on purpose


@pytest.fixture(scope="module")
def qwen2vl(tmp_path_factory):
  torch.manual_seed(0)  # the same model whichever tests ran before
  config = transformers.Qwen2VLConfig(
      vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2,
                         mlp_ratio=2, patch_size=PATCH, spatial_merge_size=2,
                         temporal_patch_size=2),
      text_config=dict(vocab_size=160, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, rope_theta=50.0,
                       rope_scaling={"type": "mrope",
                                     "mrope_section": [2, 3, 3]}),
      image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
      vision_end_token_id=END)
  model = hf_testing.perturb(
      transformers.Qwen2VLForConditionalGeneration(config), seed=7)
  return model, hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("qwen2vl_full")))


def _hf_pixels(image):
  """Qwen2-VL's own processor, resize/rescale/normalise off: patch order."""
  proc = transformers.Qwen2VLImageProcessor(
      do_resize=False, do_rescale=False, do_normalize=False,
      patch_size=PATCH, temporal_patch_size=2, merge_size=2)
  out = proc(images=[image], return_tensors="pt", data_format="channels_first",
             input_data_format="channels_last")
  return out["pixel_values"], out["image_grid_thw"]


def _image(seed):
  return np.random.default_rng(seed).normal(size=(H, W, 3)).astype(np.float32)


def test_config(qwen2vl):
  _, conv = qwen2vl
  assert conv.family == "mllm"
  m = conv.model
  assert (m["fusion"], m["projector"], m["positions"]) == (
      "projection", "patch_merger", "mrope")
  assert m["vision"]["kind"] == "qwen2vl" and m["feature_layer"] is None


def test_vision_tower_and_merger_match_visual(qwen2vl):
  model, conv = qwen2vl
  image = _image(0)
  pixels, thw = _hf_pixels(image)
  assert thw.tolist() == [[1, H // PATCH, W // PATCH]]
  ref = model.model.visual(pixels, grid_thw=thw).numpy()
  ours = conv.module().apply({"params": conv.params}, image[None, None],
                             method="encode_images")
  assert ours.shape == (1, 1, 6, 32)
  hf_testing.assert_parity("qwen2-vl visual", ours[0, 0], ref)


def test_logits_one_image_and_text(qwen2vl):
  model, conv = qwen2vl
  image = _image(1)
  pixels, thw = _hf_pixels(image)
  rng = np.random.default_rng(2)
  n_visual = (H // 28) * (W // 28)
  tokens = np.concatenate([rng.integers(0, 140, 3), [START],
                           np.full(n_visual, IMAGE), [END],
                           rng.integers(0, 140, 5)])
  ref = model(input_ids=torch.tensor(tokens[None]), pixel_values=pixels,
              image_grid_thw=thw).logits.numpy()
  segments = pid.segments_from_tokens(tokens, IMAGE,
                                      [(1, H // 28, W // 28)])
  positions, _ = pid.mrope_positions(segments)
  ours, _ = conv.module().apply(
      {"params": conv.params}, tokens[None], positions[:, None],
      images=image[None, None], image_token_mask=tokens[None] == IMAGE)
  hf_testing.assert_parity("qwen2-vl mllm logits", ours, ref)


def test_greedy_generation_matches_hf_generate(qwen2vl):
  """mmjax's decode loop (M-RoPE prefill, rope-delta decode) on the imported
  model gives HF `generate`'s greedy tokens for one image + text."""
  from mmjax.decoding import decode  # pylint: disable=g-import-not-at-top
  from mmjax.models import layout  # pylint: disable=g-import-not-at-top
  model, conv = qwen2vl
  image = _image(3)
  pixels, thw = _hf_pixels(image)
  before, after = [5, 17, START], [END, 33, 48, 61]
  n_visual = (H // 28) * (W // 28)
  prompt = before + [IMAGE] * n_visual + after
  n_new = 8
  ref = model.generate(
      input_ids=torch.tensor([prompt]), pixel_values=pixels,
      image_grid_thw=thw, max_new_tokens=n_new, min_new_tokens=n_new,
      do_sample=False, eos_token_id=None,
      pad_token_id=0)[0, len(prompt):].tolist()
  out = decode.generate(conv.module(), conv.params,
                        [[before, layout.Media(H, W), after]],
                        [image[None]], image_token_id=IMAGE,
                        max_new_tokens=n_new, batch_size=1)
  assert out.tokens[0] == ref
  assert len(set(ref)) > 2  # not degenerate
