"""Parity of imported LLaMA, Qwen2 and Gemma decoders with transformers."""
import numpy as np
import pytest
import transformers

import hf_testing
from mmjax import hf

_SIZES = dict(vocab_size=96, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=4)
_MODELS = {
    # GQA 4 -> 2, untied head.
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_key_value_heads=2, rope_theta=500.0, rms_norm_eps=1e-5,
        **_SIZES)),
    # q/k/v biases, GQA 4 -> 1, tied embeddings.
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        num_key_value_heads=1, tie_word_embeddings=True, **_SIZES)),
    # head_dim 24 != 32 / 2, (1 + w) norms, sqrt(d) scale, GELU-tanh, tied.
    "gemma": lambda: transformers.GemmaForCausalLM(transformers.GemmaConfig(
        **{**_SIZES, "num_attention_heads": 2}, num_key_value_heads=1,
        head_dim=24)),
}


@pytest.fixture(scope="module", params=sorted(_MODELS))
def imported(request, tmp_path_factory):
  model = hf_testing.perturb(_MODELS[request.param](), seed=1)
  path = hf_testing.save(model, tmp_path_factory.mktemp(request.param))
  return request.param, model, hf.import_checkpoint(path)


def test_logits_match(imported):
  import torch  # pylint: disable=g-import-not-at-top
  name, model, conv = imported
  assert conv.family == "lm"
  tokens = np.random.default_rng(0).integers(0, 96, (2, 13))
  ref = model(torch.tensor(tokens)).logits.numpy()
  ours, _ = conv.module().apply({"params": conv.module_params()}, tokens)
  hf_testing.assert_parity(f"{name} logits", ours, ref)


def test_config_translation(imported):
  name, _, conv = imported
  lm = conv.model
  assert lm["tie_embeddings"] == (name != "llama")
  assert lm["qkv_bias"] == (name == "qwen2")
  assert (lm["embed_scale"], lm["norm_offset_one"]) == ((name == "gemma",) * 2)
  assert lm["mlp_activation"] == ("gelu_tanh" if name == "gemma" else "silu")
  if name == "gemma":
    assert lm["head_dim"] == 24
  if name == "llama":
    assert (lm["rope_theta"], lm["norm_eps"], lm["n_kv_heads"]) == (500.0,
                                                                     1e-5, 2)
