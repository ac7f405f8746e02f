"""Qwen2-VL: M-RoPE position ids and the imported decoder, vs transformers.

Ids are compared exactly with `Qwen2VLModel.get_rope_index` (4.57.1
semantics, see DESIGN.md section 5) for image + text, several images, video +
text and a left-padded batch. Logits compare the whole HF model (its own ViT
features scattered into the stream) with the imported mmjax decoder.
"""
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf
from mmjax.models import mllm as mllm_lib
from mmjax.models import position_ids as pid
from mmjax.models.decoder import DecoderConfig, DecoderLM

IMAGE, VIDEO, START = 150, 151, 152
_IDS = np.random.default_rng(0)


@pytest.fixture(scope="module")
def qwen2vl(tmp_path_factory):
  config = transformers.Qwen2VLConfig(
      vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2,
                         mlp_ratio=2, patch_size=4, spatial_merge_size=2,
                         temporal_patch_size=2),
      text_config=dict(vocab_size=160, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, rope_theta=50.0,
                       rope_scaling={"type": "mrope",
                                     "mrope_section": [2, 3, 3]}),
      image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START)
  model = hf_testing.perturb(
      transformers.Qwen2VLForConditionalGeneration(config), seed=6)
  return model, hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("qwen2vl")))


def _text(n):
  return list(_IDS.integers(0, 140, n))


def _sequence(blocks):
  """blocks: text lengths (int) and (token id, (t, h, w) patch grid)."""
  tokens, grids = [], []
  for block in blocks:
    if isinstance(block, int):
      tokens += _text(block)
    else:
      token, (t, h, w) = block
      tokens += [START] + [token] * (t * h * w // 4)
      grids.append((token, (t, h, w)))
  return np.asarray(tokens), grids


def _hf_ids(model, tokens, grids, mask=None):
  image = [g for tok, g in grids if tok == IMAGE] or None
  video = [g for tok, g in grids if tok == VIDEO] or None
  ids, deltas = model.model.get_rope_index(
      torch.tensor(tokens), None if image is None else torch.tensor(image),
      None if video is None else torch.tensor(video),
      None if mask is None else torch.tensor(mask))
  return ids.numpy(), deltas.numpy()[:, 0]


def _segments(tokens, grids):
  merged = [pid.VisionSegment.from_patch_grid(*g) for _, g in grids]
  return pid.segments_from_tokens(tokens, [IMAGE, VIDEO], merged)


@pytest.mark.parametrize("layout", [
    [3, (IMAGE, (1, 4, 6)), 4],                        # image + text
    [2, (IMAGE, (1, 4, 6)), 3, (IMAGE, (1, 6, 4)), 2],  # several images
    [3, (VIDEO, (3, 4, 4)), 5],                        # video + text
], ids=["image_text", "multi_image", "video_text"])
def test_rope_index_matches(qwen2vl, layout):
  model, _ = qwen2vl
  tokens, grids = _sequence(layout)
  ref, ref_delta = _hf_ids(model, tokens[None], grids)
  ours, delta = pid.mrope_positions(_segments(tokens, grids))
  np.testing.assert_array_equal(ours, ref[:, 0])
  assert delta == ref_delta[0]


def test_rope_index_padded_batch(qwen2vl):
  model, _ = qwen2vl
  rows = [_sequence([2, (IMAGE, (1, 4, 4)), 3]),
          _sequence([1, (VIDEO, (2, 4, 6)), 6])]
  length = max(len(t) for t, _ in rows)
  tokens = np.zeros((2, length), np.int64)
  mask = np.zeros((2, length), np.int64)
  for b, (t, _) in enumerate(rows):  # left padding, as HF generate pads
    tokens[b, length - len(t):] = t
    mask[b, length - len(t):] = 1
  ref, ref_delta = _hf_ids(model, tokens, rows[0][1] + rows[1][1], mask)
  ours, delta = pid.mrope_positions_batch(
      [_segments(t, g) for t, g in rows], mask)
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_array_equal(delta, ref_delta)


def test_decoder_logits_with_images(qwen2vl):
  model, conv = qwen2vl
  assert conv.family == "mllm"  # the full model; here its decoder alone
  assert tuple(conv.model["lm"]["mrope_sections"]) == (2, 3, 3)
  tokens, grids = _sequence([2, (IMAGE, (1, 4, 6)), 3, (IMAGE, (1, 6, 4)), 2])
  thw = torch.tensor([g for _, g in grids])
  pixels = torch.tensor(np.random.default_rng(1).normal(
      size=(int(thw.prod(-1).sum()), 3 * 2 * 4 * 4)).astype(np.float32))
  ref = model(input_ids=torch.tensor(tokens[None]), pixel_values=pixels,
              image_grid_thw=thw).logits.numpy()
  visual = model.model.visual(pixels, grid_thw=thw).numpy()
  positions, _ = pid.mrope_positions(_segments(tokens, grids))
  module = DecoderLM(DecoderConfig.from_dict(conv.model["lm"]))
  params = conv.params["llm"]
  embedded = module.apply({"params": params}, tokens[None],
                          method=lambda m, t: m.embed_tokens(t))
  embedded = mllm_lib.scatter_visual(embedded, visual[None],
                                     tokens[None] == IMAGE)
  ours, _ = module.apply({"params": params}, embeddings=embedded,
                         positions=positions[:, None])
  hf_testing.assert_parity("qwen2-vl logits", ours, ref)
  # The same decoder with 1-D positions must differ: M-RoPE matters here.
  flat, _ = module.apply({"params": params}, embeddings=embedded)
  assert np.abs(np.asarray(flat) - ref).max() > 1e-3
