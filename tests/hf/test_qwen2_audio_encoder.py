"""Qwen2-Audio's audio tower and projector against transformers 4.57.1.

A tiny random `Qwen2AudioEncoder` (weights perturbed, the position table
kept Whisper's sinusoids) imports as family 'audio' with `pool=2`; its
hidden states (pool before the final LayerNorm) equal HF's, and mmjax's
`AudioProjector(stride=1)` equals `Qwen2AudioMultiModalProjector` on them.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from transformers.models.qwen2_audio import modeling_qwen2_audio as hf_qa

import hf_testing
from mmjax import hf
from mmjax.data import audio
from mmjax.models import whisper
from mmjax.models.audio_projector import AudioProjector


def test_qwen2_audio_encoder_and_projector_parity(tmp_path):
  torch.manual_seed(0)
  acfg = transformers.Qwen2AudioEncoderConfig(
      num_mel_bins=128, d_model=32, encoder_layers=2,
      encoder_attention_heads=4, encoder_ffn_dim=64)
  enc = hf_testing.perturb(hf_qa.Qwen2AudioEncoder(acfg), seed=3)
  enc.embed_positions.weight.copy_(
      torch.from_numpy(whisper.sinusoids(1500, 32)))
  conv = hf.import_checkpoint(hf_testing.save(enc, tmp_path / "enc"))
  assert conv.family == "audio" and conv.model["pool"] == 2
  rng = np.random.default_rng(0)
  t = np.arange(16_000 * 4) / 16_000
  clip = (0.5 * np.sin(2 * np.pi * 300 * (1 + t) * t) +
          0.05 * rng.normal(size=t.shape)).astype(np.float32)
  feats, _ = audio.log_mel(clip, n_mels=128)
  ours = conv.module().apply({"params": conv.module_params()},
                             jnp.asarray(feats[None]))
  ref = enc(torch.from_numpy(np.ascontiguousarray(feats.T[None])))
  ref = ref.last_hidden_state
  assert ours.shape == (1, 750, 32)
  hf_testing.assert_parity("qwen2-audio encoder (pool 2)", ours,
                           ref.numpy())

  full = transformers.Qwen2AudioConfig(
      audio_config=acfg.to_dict(),
      text_config=dict(hidden_size=48, vocab_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=64))
  hf_proj = hf_testing.perturb(hf_qa.Qwen2AudioMultiModalProjector(full),
                               seed=4)
  params = {"linear": {
      "kernel": jnp.asarray(hf_proj.linear.weight.numpy().T),
      "bias": jnp.asarray(hf_proj.linear.bias.numpy())}}
  proj = AudioProjector(out_dim=48, stride=1)
  expected = nn.unbox(proj.init(jax.random.key(0),
                                ours)["params"])
  assert jax_shapes(expected) == jax_shapes(params)
  tokens, _ = proj.apply({"params": params}, ours)
  hf_testing.assert_parity("qwen2-audio projector", tokens,
                           hf_proj(ref).numpy())


def jax_shapes(tree):
  return {k: {n: tuple(v.shape) for n, v in d.items()}
          for k, d in tree.items()}
