"""mmjax's log-mel equals transformers' WhisperFeatureExtractor (4.57.1).

Random noise and sine clips from 30 samples to 31 s, 80 and 128 mel bins,
padded to 3000 frames (HF's default) and unpadded (the first frames of
HF's output); the frame mask equals HF's attention_mask.
"""
import numpy as np
import pytest
import transformers

from mmjax.data import audio

LENGTHS = [30, 1_600, 16_000 * 3 + 37, 480_000, 16_000 * 31 + 5]


def _clip(kind, length, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(length) / 16_000
  if kind == "noise":
    return (0.3 * rng.normal(size=length)).astype(np.float32)
  return (0.6 * np.sin(2 * np.pi * 440 * t) +
          0.2 * np.sin(2 * np.pi * 3_100 * t)).astype(np.float32)


@pytest.fixture(scope="module", params=[80, 128])
def extractor(request):
  return request.param, transformers.WhisperFeatureExtractor(
      feature_size=request.param)


@pytest.mark.parametrize("kind", ["noise", "sine"])
@pytest.mark.parametrize("length", LENGTHS)
def test_log_mel_matches_hf(extractor, kind, length):
  n_mels, fe = extractor
  x = _clip(kind, length)
  ref = fe(x, sampling_rate=16_000, return_tensors="np",
           return_attention_mask=True)
  ref_feats = ref["input_features"][0].T  # HF: [n_mels, 3000]
  ours, mask = audio.log_mel(x, n_mels=n_mels)
  diff = np.abs(ours - ref_feats).max()
  print(f"[parity] log-mel {kind} L={length} mels={n_mels}: {diff:.2e}")
  assert diff <= 1e-4
  np.testing.assert_array_equal(mask, ref["attention_mask"][0].astype(bool))
  short, _ = audio.log_mel(x, n_mels=n_mels, pad=False)
  assert len(short) == mask.sum()
  assert np.abs(short - ref_feats[:len(short)]).max() <= 1e-4


def test_filter_bank_matches_hf(extractor):
  n_mels, fe = extractor
  np.testing.assert_allclose(audio.mel_filters(n_mels), fe.mel_filters,
                             atol=1e-9)
