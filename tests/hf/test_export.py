"""Export of mmjax decoder LMs to Hugging Face directories, and round trips."""
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import hf_testing
from mmjax import hf
from mmjax.models.decoder import DecoderConfig, DecoderLM

_SIZES = dict(vocab_size=80, hidden_size=32, intermediate_size=48,
              num_hidden_layers=2, num_attention_heads=4)
_MODELS = {
    "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        num_key_value_heads=2, **_SIZES)),
    "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
        num_key_value_heads=1, tie_word_embeddings=True, **_SIZES)),
    "gemma": (transformers.GemmaForCausalLM, transformers.GemmaConfig(
        num_key_value_heads=1, head_dim=16, **_SIZES)),
}


def _tensors(path):
  out = {}
  for file in sorted(path.glob("*.safetensors")):
    out.update(load_file(str(file)))
  return out


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_round_trip_identical_tensors(name, tmp_path):
  cls, config = _MODELS[name]
  model = hf_testing.perturb(cls(config), seed=7)
  # Small shards: the import reads model.safetensors.index.json.
  model.save_pretrained(str(tmp_path / "hf"), safe_serialization=True,
                        max_shard_size="20KB")
  assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
  conv = hf.import_checkpoint(tmp_path / "hf")
  out = hf.export_decoder(conv.params, DecoderConfig.from_dict(conv.model),
                          tmp_path / "back", max_shard_bytes=30_000)
  original, exported = _tensors(tmp_path / "hf"), _tensors(out)
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out))
  tokens = torch.tensor(np.random.default_rng(0).integers(0, 80, (2, 9)))
  np.testing.assert_array_equal(reloaded(tokens).logits.numpy(),
                                model(tokens).logits.numpy())


def test_export_of_mmjax_initialised_model(tmp_path):
  cfg = DecoderConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                      n_kv_heads=2, mlp_dim=64, rope_theta=1000.0,
                      norm_eps=1e-5)
  tokens = np.random.default_rng(1).integers(0, 64, (2, 10))
  params = DecoderLM(cfg).init(jax.random.key(0), tokens)["params"]
  params = jax.tree.map(lambda x: x * 2.0, params)  # sharper attention
  ours, _ = DecoderLM(cfg).apply({"params": params}, tokens)
  out = hf.export_decoder(params, cfg, tmp_path / "llama")
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
  assert type(model).__name__ == "LlamaForCausalLM"
  hf_testing.assert_parity("exported llama logits", ours,
                           model(torch.tensor(tokens)).logits.numpy())


@pytest.mark.parametrize("change,match", [
    (dict(mrope_sections=(2, 3, 3)), "mrope_sections"),
    (dict(logit_softcap=30.0), "logit_softcap"),
    (dict(embed_scale=True), "cannot export this mix"),
])
def test_export_rejects_what_hf_cannot_express(change, match, tmp_path):
  cfg = DecoderConfig(vocab_size=64, d_model=32, n_heads=2, n_kv_heads=1,
                      **change)
  with pytest.raises(hf.HFExportError, match=match):
    hf.export_decoder({}, cfg, tmp_path)
