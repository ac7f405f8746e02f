"""PaliGemma imported as a prefix-LM MLLM: logits against transformers in
training mode (token_type_ids mark the suffix: prefix bidirectional, suffix
causal) and in inference mode (the whole prompt is the prefix)."""
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf

_IMAGE_ID = 95
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, image_size=32, patch_size=8,
               vision_use_head=False)
_TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             head_dim=16, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def paligemma(tmp_path_factory):
  torch.manual_seed(0)  # the same model whichever tests ran before
  config = transformers.PaliGemmaConfig(
      vision_config=transformers.SiglipVisionConfig(**_VISION),
      text_config=transformers.GemmaConfig(**_TEXT),
      image_token_index=_IMAGE_ID, projection_dim=32, hidden_size=32)
  model = hf_testing.perturb(
      transformers.PaliGemmaForConditionalGeneration(config), seed=8)
  return model, hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("paligemma")))


def _inputs():
  rng = np.random.default_rng(0)
  prefix = [np.concatenate([np.full(16, _IMAGE_ID), rng.integers(3, 90, n)])
            for n in (4, 6)]
  suffix_len = 5
  tokens = np.stack([np.concatenate([p, rng.integers(3, 90, suffix_len)])[:24]
                     for p in prefix])
  prefix_len = np.array([len(p) for p in prefix], np.int32)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  return tokens, prefix_len, images


def _ours(conv, tokens, images, prefix_len):
  logits, _ = conv.module().apply(
      {"params": conv.params}, tokens, images=images[:, None],
      image_token_mask=tokens == _IMAGE_ID, prefix_len=prefix_len)
  return logits


def test_config(paligemma):
  _, conv = paligemma
  assert conv.family == "mllm" and conv.model["lm"]["prefix_lm"]
  assert (conv.model["projector"], conv.model["feature_layer"]) == (
      "linear", None)


def test_training_mode_logits(paligemma):
  model, conv = paligemma
  tokens, prefix_len, images = _inputs()
  types = (np.arange(tokens.shape[1])[None] >= prefix_len[:, None])
  labels = np.where(types, tokens, -100)
  ref = model(input_ids=torch.tensor(tokens),
              pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)),
              attention_mask=torch.ones(tokens.shape, dtype=torch.long),
              token_type_ids=torch.tensor(types.astype(np.int64)),
              labels=torch.tensor(labels)).logits.detach().numpy()
  ours = _ours(conv, tokens, images, prefix_len)
  hf_testing.assert_parity("paligemma prefix-LM logits", ours, ref)
  causal = _ours(conv, tokens, images, None)
  assert np.abs(np.asarray(causal) - ref).max() > 1e-3  # the mask matters


def test_inference_mode_logits(paligemma):
  model, conv = paligemma
  tokens, _, images = _inputs()
  ref = model(input_ids=torch.tensor(tokens),
              pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))
              ).logits.detach().numpy()
  full = np.full((2,), tokens.shape[1], np.int32)
  hf_testing.assert_parity("paligemma prompt logits",
                           _ours(conv, tokens, images, full), ref)


def test_greedy_generation_matches_hf_generate(paligemma):
  """mmjax's decode loop (prefill with prefix = prompt, then causal steps)
  gives HF `generate`'s greedy tokens."""
  from mmjax.decoding import decode  # pylint: disable=g-import-not-at-top
  from mmjax.models import layout  # pylint: disable=g-import-not-at-top
  model, conv = paligemma
  _, _, images = _inputs()
  text = [7, 21, 33, 48, 60]
  n_new = 8
  ref = model.generate(
      input_ids=torch.tensor([[_IMAGE_ID] * 16 + text]),
      pixel_values=torch.tensor(images[:1].transpose(0, 3, 1, 2)),
      max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
      eos_token_id=None, pad_token_id=0)[0, 16 + len(text):].tolist()
  out = decode.generate(conv.module(), conv.params,
                        [[layout.Media(32, 32), text]], [images[:1]],
                        image_token_id=_IMAGE_ID, max_new_tokens=n_new,
                        batch_size=1)
  assert out.tokens[0] == ref
  assert len(set(ref)) > 2  # not degenerate
