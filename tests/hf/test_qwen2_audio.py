"""Whole-model Qwen2-Audio against transformers 4.57.1.

A tiny random `Qwen2AudioForConditionalGeneration` (weights perturbed, the
tower's position table put back to Whisper's sinusoids, as the encoder
tests do), converted with `python -m mmjax.convert`, gives HF's logits for
one prompt holding two clips of different lengths, and HF `generate`'s
greedy tokens through mmjax's compiled KV-cache decode loop (one batch of
two left-padded prompts with one clip each, and the two-clip prompt).

Masking: HF's Qwen2-Audio hides padded frames only as attention keys; its
convs read them. The import sets `mask_convs=False` to do the same, and the
clips are padded to 3000 frames as HF's processor pads them
(`log_mel(pad=True)`: log-mel of the zero-padded waveform), so mmjax
computes exactly what HF computes. `test_masked_convs_differ` measures how
far mmjax's padding-blind encoder (`mask_convs=True`) moves the logits.
"""
import dataclasses
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf
from mmjax.data import audio as audio_lib
from mmjax.decoding import decode
from mmjax.models import layout
from mmjax.models import mllm as mllm_lib
from mmjax.models import whisper

AUDIO = 150
SECONDS = (1.37, 0.83)  # 137 and 83 frames: 34 and 21 audio tokens


@pytest.fixture(scope="module")
def qwen2_audio(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.Qwen2AudioConfig(
      audio_config=dict(num_mel_bins=80, d_model=32, encoder_layers=2,
                        encoder_attention_heads=4, encoder_ffn_dim=64),
      text_config=dict(model_type="qwen2", vocab_size=160, hidden_size=48,
                       intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2,
                       rope_theta=50.0),
      audio_token_index=AUDIO)
  model = hf_testing.perturb(
      transformers.Qwen2AudioForConditionalGeneration(config), seed=5,
      scale=5.0)  # at 3 the tiny LM repeats one token: weak greedy check
  model.audio_tower.embed_positions.weight.copy_(
      torch.from_numpy(whisper.sinusoids(1500, 32)))
  tmp = tmp_path_factory.mktemp("qwen2_audio")
  src, out = hf_testing.save(model, tmp / "hf"), tmp / "mmjax"
  r = subprocess.run([sys.executable, "-m", "mmjax.convert",
                      f"--hf_dir={src}", f"--out={out}"],
                     capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  conv = hf.load_converted(out)
  assert conv.family == "mllm" and conv.hf["audio_token_index"] == AUDIO
  return model, conv, conv.module()


def _clip(seconds, seed):
  """A chirp + noise clip f32[L] at 16 kHz."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(16_000 * seconds)) / 16_000
  return (0.4 * np.sin(2 * np.pi * (200 + 300 * seed) * (1 + t) * t) +
          0.05 * rng.normal(size=t.shape)).astype(np.float32)


def _features(seconds_list, seed=0):
  """(features [3000, 80], mask [3000]) per clip, padded as HF pads."""
  return [audio_lib.log_mel(_clip(s, seed + i)) for i, s in
          enumerate(seconds_list)]


def _prompt(cfg, clips, seed):
  """Text, then per clip its placeholders and text; and layout pieces."""
  rng = np.random.default_rng(seed)
  head = [int(t) for t in rng.integers(0, 140, 3)]
  tokens, pieces = list(head), [head]
  for _, mask in clips:
    n = layout.audio_tokens(cfg, int(mask.sum()))
    text = [int(t) for t in rng.integers(0, 140, 2)]
    tokens += [AUDIO] * n + text
    pieces += [layout.Audio(int(mask.sum())), text]
  return np.asarray(tokens), pieces


def _hf_inputs(clips):
  """input_features [N, 80, 3000], feature_attention_mask [N, 3000]."""
  return dict(
      input_features=torch.from_numpy(np.stack([f.T for f, _ in clips])),
      feature_attention_mask=torch.from_numpy(
          np.stack([m for _, m in clips]).astype(np.int64)))


def _logits(module, params, tokens, pieces, clips):
  seq = layout.assemble(module.cfg, pieces, 0, audio_token_id=AUDIO)
  np.testing.assert_array_equal(seq["tokens"], tokens)
  np.testing.assert_array_equal(seq["audio_token_mask"], tokens == AUDIO)
  np.testing.assert_array_equal(seq["positions"], np.arange(len(tokens)))
  feats = jnp.asarray(np.stack([f for f, _ in clips])[None])
  masks = jnp.asarray(np.stack([m for _, m in clips])[None])
  logits, _ = module.apply({"params": params}, jnp.asarray(tokens[None]),
                           jnp.asarray(seq["positions"][None]), audio=feats,
                           audio_mask=masks,
                           audio_token_mask=jnp.asarray(
                               seq["audio_token_mask"][None]))
  return np.asarray(logits)


def test_config_and_placeholders(qwen2_audio):
  _, conv, module = qwen2_audio
  cfg = module.cfg
  assert cfg.vision is None and cfg.audio.pool == 2
  assert not cfg.audio.mask_convs
  assert sorted(conv.params) == ["audio", "audio_connector", "llm"]
  # HF's _get_feat_extract_output_lengths: (L - 1) // 2 + 1, then
  # (n - 2) // 2 + 1.
  for frames in (3, 4, 83, 137, 3000):
    n = (frames - 1) // 2 + 1
    assert layout.audio_tokens(cfg, frames) == (n - 2) // 2 + 1
  with pytest.raises(ValueError, match="no audio token"):
    layout.audio_tokens(cfg, 2)
  with pytest.raises(ValueError, match="30 s window"):
    layout.audio_tokens(cfg, 3001)


def test_logits_two_clips(qwen2_audio):
  model, conv, module = qwen2_audio
  clips = _features(SECONDS, seed=1)
  tokens, pieces = _prompt(module.cfg, clips, seed=2)
  assert (tokens == AUDIO).sum() == 34 + 21
  ref = model(input_ids=torch.tensor(tokens[None]),
              attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
              **_hf_inputs(clips)).logits.numpy()
  ours = _logits(module, conv.params, tokens, pieces, clips)
  hf_testing.assert_parity("qwen2-audio logits, 2 clips", ours, ref)


def test_masked_convs_differ(qwen2_audio):
  """mmjax's padding-blind encoder (padded frames zeroed before the convs)
  is not what Qwen2-Audio computes: the logits move (reported)."""
  model, conv, module = qwen2_audio
  clips = _features(SECONDS, seed=1)
  tokens, pieces = _prompt(module.cfg, clips, seed=2)
  blind = mllm_lib.MLLM(dataclasses.replace(
      module.cfg, audio=dataclasses.replace(module.cfg.audio,
                                            mask_convs=True)))
  ref = _logits(module, conv.params, tokens, pieces, clips)
  ours = _logits(blind, conv.params, tokens, pieces, clips)
  diff = float(np.abs(ours - ref).max())
  print(f"[parity] qwen2-audio logits, mask_convs=True vs HF's masking: "
        f"max abs diff {diff:.2e}")
  assert diff > 1e-4


def test_greedy_generation(qwen2_audio):
  """A batch of two left-padded prompts with a clip each (different
  lengths), then the two-clip prompt: HF generate's greedy tokens."""
  model, conv, module = qwen2_audio
  clips = _features(SECONDS, seed=3)
  n_new = 8
  prompts = [_prompt(module.cfg, [c], seed=10 + i)
             for i, c in enumerate(clips)]
  prompts.append(_prompt(module.cfg, clips, seed=12))
  per_prompt = [[clips[0]], [clips[1]], clips]
  refs = []
  for (tokens, _), cl in zip(prompts, per_prompt):
    refs.append(model.generate(
        input_ids=torch.tensor(tokens[None]),
        attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
        **_hf_inputs(cl), max_new_tokens=n_new, min_new_tokens=n_new,
        do_sample=False, eos_token_id=None,
        pad_token_id=0)[0, len(tokens):].tolist())
  out = decode.generate(module, conv.params, [p for _, p in prompts],
                        audio=per_prompt, audio_token_id=AUDIO,
                        image_token_id=0, max_new_tokens=n_new,
                        batch_size=2)
  assert out.tokens == refs
  print("[greedy]", refs)
  # Not degenerate: each row changes token, and the rows differ.
  assert all(len(set(r)) > 1 for r in refs) and len(set(map(tuple, refs))) > 1


def test_clip_count_mismatch_is_refused(qwen2_audio):
  _, conv, module = qwen2_audio
  clips = _features(SECONDS[:1])
  _, pieces = _prompt(module.cfg, clips, seed=4)
  with pytest.raises(ValueError, match="1 Audio item"):
    decode.prepare_batch(module.cfg, [pieces], None, [0], image_token_id=0,
                         audio=[[]], audio_token_id=AUDIO)
  wrong = [(clips[0][0], clips[0][1].copy())]
  wrong[0][1][0] = False
  with pytest.raises(ValueError, match="valid frames"):
    decode.prepare_batch(module.cfg, [pieces], None, [0], image_token_id=0,
                         audio=[wrong], audio_token_id=AUDIO)
  del conv


def test_saved_config_reads_back(qwen2_audio, tmp_path):
  _, conv, _ = qwen2_audio
  cfg = mllm_lib.mllm_config_from_dict(json.loads(json.dumps(conv.model)))
  assert cfg.audio.mask_convs is False and cfg.audio_projector == "qwen2_audio"
