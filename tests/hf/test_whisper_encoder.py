"""Whisper's encoder against transformers 4.57.1 (`WhisperModel.encoder`).

A tiny random Whisper (weights perturbed, hf_testing.perturb) saved as
WhisperForConditionalGeneration and as WhisperModel, imported through
`python -m mmjax.convert` and the library: the encoder's hidden states on
the log-mel of a non-trivial clip (mmjax's features) equal HF's. Variable
length: with a frame mask, padding frames (whatever they hold) do not
change the valid outputs, which equal the unpadded clip's.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf
from mmjax.data import audio
from mmjax.hf.safetensors_io import HFImportError
from mmjax.models import whisper

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MAX_POS = 1500  # HF insists on 3000 input frames


def _config(**kw):
  return transformers.WhisperConfig(
      vocab_size=100, num_mel_bins=80, d_model=32, encoder_layers=2,
      encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
      decoder_attention_heads=4, decoder_ffn_dim=64,
      max_source_positions=MAX_POS, max_target_positions=32, pad_token_id=1,
      bos_token_id=2, eos_token_id=2, decoder_start_token_id=3,
      suppress_tokens=None, begin_suppress_tokens=None, **kw)


def _restore_positions(model, encoder):
  """perturb scales every matrix, the position table too; a checkpoint's
  table is Whisper's sinusoids, so put them back (mmjax's own table: the
  float32 rounding of torch's differs by ~4e-5, measured separately)."""
  table = torch.from_numpy(whisper.sinusoids(MAX_POS, 32))
  encoder.embed_positions.weight.copy_(table)
  return model


@pytest.fixture(scope="module")
def whisper_dirs(tmp_path_factory):
  torch.manual_seed(0)
  gen = hf_testing.perturb(
      transformers.WhisperForConditionalGeneration(_config()), seed=5)
  _restore_positions(gen, gen.model.encoder)
  bare = hf_testing.perturb(transformers.WhisperModel(_config()), seed=6)
  _restore_positions(bare, bare.encoder)
  return (gen, hf_testing.save(gen, tmp_path_factory.mktemp("whisper_gen")),
          bare, hf_testing.save(bare, tmp_path_factory.mktemp("whisper")))


def _clip(seconds=7.3, seed=0):
  """Tones, a chirp and noise: a spectrum with structure."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * 16_000)) / 16_000
  x = (0.4 * np.sin(2 * np.pi * 440 * t) * (t < 2) +
       0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) +
       0.05 * rng.normal(size=t.shape))
  return x.astype(np.float32)


def _hf_hidden(encoder, feats):
  x = torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 2, 1)))
  return encoder(x).last_hidden_state.numpy()


def test_convert_cli_then_parity(whisper_dirs, tmp_path):
  gen, gen_dir, _, _ = whisper_dirs
  out = tmp_path / "mmjax"
  r = subprocess.run([sys.executable, "-m", "mmjax.convert",
                      f"--hf_dir={gen_dir}", f"--out={out}"], cwd=REPO,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"),
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr
  meta = json.loads((out / "config.json").read_text())
  assert meta["family"] == "audio"
  assert meta["model"]["width"] == 32 and meta["model"]["depth"] == 2
  assert any("encoder only" in n for n in meta["hf"]["notes"])
  conv = hf.load_converted(out)
  feats, _ = audio.log_mel(_clip())
  feats = feats[None]
  ours = conv.module().apply({"params": conv.module_params()},
                             jnp.asarray(feats))
  ref = _hf_hidden(gen.model.encoder, feats)
  hf_testing.assert_parity("whisper encoder (convert CLI)", ours, ref)


def test_whisper_model_parity_batch_of_two(whisper_dirs):
  _, _, bare, bare_dir = whisper_dirs
  conv = hf.import_checkpoint(bare_dir)
  assert conv.family == "audio" and set(conv.params) == {"audio"}
  feats, _ = audio.log_mel_batch([_clip(7.3, 0), _clip(29.0, 1)])
  ours = conv.module().apply({"params": conv.module_params()},
                             jnp.asarray(feats))
  ref = _hf_hidden(bare.encoder, feats)
  hf_testing.assert_parity("whisper encoder (WhisperModel, B=2)", ours, ref)


def test_torch_position_table_changes_little(whisper_dirs, tmp_path):
  """A checkpoint whose table is torch's own float32 sinusoids (as HF and
  OpenAI compute it) imports, and the hidden states stay close."""
  from transformers.models.whisper import modeling_whisper  # pylint: disable=g-import-not-at-top
  model = hf_testing.perturb(transformers.WhisperModel(_config()), seed=6)
  model.encoder.embed_positions.weight.copy_(
      modeling_whisper.sinusoids(MAX_POS, 32))
  conv = hf.import_checkpoint(hf_testing.save(model, tmp_path / "w"))
  assert any("sinusoids to" in n for n in conv.hf["notes"])
  feats, _ = audio.log_mel(_clip())
  ours = conv.module().apply({"params": conv.module_params()},
                             jnp.asarray(feats[None]))
  ref = _hf_hidden(model.encoder, feats[None])
  hf_testing.assert_parity("whisper encoder (torch's position table)", ours,
                           ref, tol=1e-3)


def test_learned_position_table_is_refused(tmp_path):
  model = hf_testing.perturb(transformers.WhisperModel(_config()), seed=7)
  with pytest.raises(HFImportError, match="not Whisper's sinusoidal table"):
    hf.import_checkpoint(hf_testing.save(model, tmp_path / "w"))


def test_mask_makes_padding_irrelevant(whisper_dirs):
  _, _, bare, bare_dir = whisper_dirs
  conv = hf.import_checkpoint(bare_dir)
  enc, params = conv.module(), {"params": conv.module_params()}
  short, _ = audio.log_mel(_clip(1.23), pad=False)  # 123 frames (odd)
  n = len(short)
  padded, mask = audio.log_mel_batch([_clip(1.23), _clip(2.0, 3)],
                                     pad=False)
  alone = enc.apply(params, jnp.asarray(short[None]))
  both = enc.apply(params, jnp.asarray(padded), jnp.asarray(mask))
  out_mask = np.asarray(whisper.output_mask(jnp.asarray(mask)))
  n_out = int(out_mask[0].sum())
  assert n_out == alone.shape[1] == (n + 1) // 2
  np.testing.assert_allclose(np.asarray(both[0, :n_out]), np.asarray(alone[0]),
                             atol=1e-5)
  # Garbage in the padding frames changes nothing valid.
  noisy = np.array(padded)
  noisy[0, n:] = np.random.default_rng(0).normal(size=noisy[0, n:].shape) * 9
  again = enc.apply(params, jnp.asarray(noisy), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(again[0, :n_out]),
                             np.asarray(both[0, :n_out]), atol=1e-6)
  # Without the mask the padding does leak into the valid outputs.
  leaky = enc.apply(params, jnp.asarray(noisy))
  assert np.abs(np.asarray(leaky[0, :n_out]) -
                np.asarray(both[0, :n_out])).max() > 1e-3
