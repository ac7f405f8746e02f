"""Gemma 2 (soft-capping, four norms per layer, alternating sliding-window /
global layers, query_pre_attn_scalar) and Gemma-1 with exact GELU: logits
and greedy generation against transformers."""
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf
from mmjax.decoding import decode
from mmjax.models.text_lm import TextLM, TextLMConfig

_SIZES = dict(vocab_size=96, hidden_size=32, intermediate_size=64,
              num_attention_heads=2, num_key_value_heads=1, head_dim=24)
_WINDOW = 5


def _gemma2():
  config = transformers.Gemma2Config(
      num_hidden_layers=3, sliding_window=_WINDOW, query_pre_attn_scalar=20,
      attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
      attn_implementation="eager", **_SIZES)
  return transformers.Gemma2ForCausalLM(config)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
  torch.manual_seed(0)  # the same model whichever tests ran before
  model = hf_testing.perturb(_gemma2(), seed=4)
  return model, hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("gemma2")))


def test_gemma2_config(gemma2):
  _, conv = gemma2
  lm = conv.model
  assert (lm["attn_logit_softcap"], lm["logit_softcap"]) == (2.0, 3.0)
  assert lm["query_pre_attn_scalar"] == 20.0 and lm["post_norms"]
  assert lm["sliding_window"] == _WINDOW and lm["sliding_layers"] == (0, 2)
  assert lm["embed_scale"] and lm["norm_offset_one"] and lm["tie_embeddings"]


def test_gemma2_logits_longer_than_window(gemma2):
  model, conv = gemma2
  tokens = np.random.default_rng(0).integers(0, 96, (2, 4 * _WINDOW))
  ref = model(torch.tensor(tokens)).logits.numpy()
  ours, _ = conv.module().apply({"params": conv.module_params()}, tokens)
  hf_testing.assert_parity("gemma2 logits", ours, ref)


def test_gemma2_greedy_generation_matches_hf_generate(gemma2):
  """Prefill + KV-cache decode past the window equals HF `generate`."""
  model, conv = gemma2
  prompt = [2, 17, 33, 5]
  n_new = 3 * _WINDOW
  ref = model.generate(torch.tensor([prompt]), max_new_tokens=n_new,
                       min_new_tokens=n_new, do_sample=False,
                       eos_token_id=None, pad_token_id=0)[0, len(prompt):]
  from mmjax.models.decoder import DecoderConfig  # pylint: disable=g-import-not-at-top
  lm = TextLM(TextLMConfig(DecoderConfig.from_dict(conv.model)))
  out = decode.generate(lm, {"llm": conv.module_params()}, [[prompt]],
                        image_token_id=95, max_new_tokens=n_new,
                        batch_size=1)
  assert out.tokens[0] == ref.tolist()
  assert len(set(out.tokens[0])) > 2  # not degenerate


def test_gemma1_exact_gelu(tmp_path):
  """hidden_act='gelu' (original Gemma configs): transformers 4.57.1 computes
  the exact erf GELU and ignores hidden_activation."""
  torch.manual_seed(0)  # the same weights whichever tests ran before
  model = hf_testing.perturb(transformers.GemmaForCausalLM(
      transformers.GemmaConfig(num_hidden_layers=2, hidden_act="gelu",
                               hidden_activation="gelu_pytorch_tanh",
                               **_SIZES)), seed=5, scale=16.0)
  assert isinstance(model.model.layers[0].mlp.act_fn,
                    transformers.activations.GELUActivation)
  conv = hf.import_checkpoint(hf_testing.save(model, tmp_path))
  assert conv.model["mlp_activation"] == "gelu"
  assert any("hidden_activation" in n for n in conv.hf["notes"])
  tokens = np.random.default_rng(1).integers(0, 96, (2, 11))
  ref = model(torch.tensor(tokens)).logits.numpy()
  ours, _ = conv.module().apply({"params": conv.module_params()}, tokens)
  hf_testing.assert_parity("gemma gelu logits", ours, ref)
  # The tanh approximation would not pass: the test can tell them apart.
  import dataclasses  # pylint: disable=g-import-not-at-top
  tanh = dataclasses.replace(conv.module().cfg, mlp_activation="gelu_tanh")
  from mmjax.models.decoder import DecoderLM  # pylint: disable=g-import-not-at-top
  wrong, _ = DecoderLM(tanh).apply({"params": conv.module_params()}, tokens)
  with pytest.raises(AssertionError):
    hf_testing.assert_parity("gemma gelu_tanh logits", wrong, ref)


def test_gemma2_class_defaults_fill_a_sparse_config_json():
  """A config.json that leaves Gemma 2 keys to Gemma2Config's defaults
  (save_pretrained itself drops tie_word_embeddings=True) imports with them:
  heads 8 / KV 4, caps 50 / 30, window 4096, query_pre_attn_scalar 256,
  even layers sliding."""
  from mmjax.hf import llm  # pylint: disable=g-import-not-at-top
  sparse = dict(model_type="gemma2", hidden_size=32, intermediate_size=64,
                num_hidden_layers=3, vocab_size=96, head_dim=16)
  cfg = llm.decoder_config(sparse)
  assert (cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim) == (8, 4, 16)
  assert (cfg.attn_logit_softcap, cfg.logit_softcap) == (50.0, 30.0)
  assert (cfg.sliding_window, cfg.local_layers) == (4096, (0, 2))
  assert cfg.query_pre_attn_scalar == 256.0
  assert cfg.mlp_activation == "gelu_tanh" and cfg.tie_embeddings
