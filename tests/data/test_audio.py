"""Audio files, resampling and log-mel edge cases (no transformers).

The features' parity with transformers' WhisperFeatureExtractor is in
tests/hf/test_whisper_features.py.
"""
import numpy as np
import pytest

from mmjax.data import audio


def _sine(freq, seconds, rate, amp=0.5):
  t = np.arange(int(round(seconds * rate))) / rate
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("rate", [22_050, 8_000, 16_000, 48_000])
def test_wav_resampled_to_16k_keeps_the_tone(tmp_path, rate):
  path = tmp_path / f"tone_{rate}.wav"
  audio.write_wav(path, _sine(440.0, 0.5, rate), rate)
  x = audio.load_audio(path)
  assert x.dtype == np.float32
  assert abs(len(x) - 8000) <= 1  # 0.5 s at 16 kHz
  ref = _sine(440.0, len(x) / 16_000, 16_000)[:len(x)]
  inner = slice(400, len(x) - 400)  # the FIR's edges aside
  err = np.abs(x[inner] - ref[inner]).max()
  assert err < 2e-3, err


def test_stereo_is_averaged_and_24_bit_read(tmp_path):
  import wave  # pylint: disable=g-import-not-at-top
  left, right = _sine(300.0, 0.1, 16_000), _sine(300.0, 0.1, 16_000, 0.25)
  pcm = np.round(np.stack([left, right], 1) * (1 << 23)).astype(np.int32)
  raw = pcm.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
  path = tmp_path / "stereo24.wav"
  with wave.open(str(path), "wb") as f:
    f.setnchannels(2)
    f.setsampwidth(3)
    f.setframerate(16_000)
    f.writeframes(raw)
  x, rate = audio.read_audio(path)
  assert rate == 16_000
  np.testing.assert_allclose(x, (left + right) / 2, atol=1e-6)


def test_resample_ratio():
  assert audio.resample_ratio(22_050) == (320, 441)
  assert audio.resample_ratio(8_000) == (2, 1)
  assert audio.resample_ratio(16_000) == (1, 1)


@pytest.mark.parametrize("rate,match", [
    (16_001, "ratio 16000/16001"), (500, "from 1000 to 384000"),
    (22_050.5, "integer")])
def test_unsupported_rate_is_one_line(rate, match):
  with pytest.raises(ValueError, match=match) as e:
    audio.resample(np.zeros(100, np.float32), rate)
  assert "\n" not in str(e.value)


def test_unsupported_rate_file_names_the_file(tmp_path):
  path = tmp_path / "odd.wav"
  audio.write_wav(path, _sine(440.0, 0.1, 16_001), 16_001)
  with pytest.raises(ValueError, match="odd.wav: sample rate 16001"):
    audio.load_audio(path)


def test_bad_files_are_one_line(tmp_path):
  missing = tmp_path / "nope.wav"
  garbage = tmp_path / "garbage.wav"
  garbage.write_bytes(b"this is not a RIFF file at all")
  empty = tmp_path / "empty.wav"
  audio.write_wav(empty, np.zeros(0, np.float32), 16_000)
  zero_bytes = tmp_path / "zero.wav"
  zero_bytes.write_bytes(b"")
  for path, match in ((missing, "does not exist"),
                      (garbage, "cannot read audio file"),
                      (empty, "zero length"),
                      (zero_bytes, "cannot read audio file")):
    with pytest.raises(ValueError, match=match) as e:
      audio.load_audio(path)
    assert "\n" not in str(e.value), str(e.value)
    assert str(path) in str(e.value)


def test_log_mel_shapes_and_mask():
  x = _sine(440.0, 1.234, 16_000)
  feats, mask = audio.log_mel(x)
  assert feats.shape == (3000, 80) and feats.dtype == np.float32
  assert mask.sum() == audio.valid_frames(len(x)) == 124
  short, smask = audio.log_mel(x, pad=False, n_mels=128)
  assert short.shape == (124, 128) and smask.all()
  # The padded version's valid frames are the short version's.
  full128, _ = audio.log_mel(x, n_mels=128)
  np.testing.assert_allclose(short, full128[:124], atol=1e-6)
  # Clamp: nothing below max - 8 (in (x + 4) / 4 units: 2).
  assert feats.max() - feats.min() <= 2.0 + 1e-6


def test_log_mel_batch_pads_to_a_multiple():
  clips = [_sine(440.0, 0.1, 16_000), _sine(880.0, 0.405, 16_000)]
  feats, mask = audio.log_mel_batch(clips, pad=False)
  assert feats.shape == (2, 42, 80)  # 41 frames rounded up to 2
  assert mask.sum(1).tolist() == [10, 41]
  one, _ = audio.log_mel(clips[0], pad=False)
  np.testing.assert_array_equal(feats[0, :10], one)


def test_log_mel_bad_input():
  with pytest.raises(ValueError, match="empty clip"):
    audio.log_mel(np.zeros(0, np.float32))
  with pytest.raises(ValueError, match="mono"):
    audio.log_mel(np.zeros((2, 100), np.float32))
  with pytest.raises(ValueError, match="longer than the encoder's 30 s"):
    audio.log_mel(np.zeros(480_001, np.float32), truncate=False)
  with pytest.raises(ValueError, match="n_mels"):
    audio.log_mel(np.zeros(100, np.float32), n_mels=64)


def test_flac_without_soundfile_says_what_to_install(tmp_path, monkeypatch):
  from mmjax.data.audio import reading  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(reading, "_soundfile", lambda: None)
  path = tmp_path / "clip.flac"
  path.write_bytes(b"fLaC\x00\x00\x00\x22")
  with pytest.raises(ValueError, match="needs the soundfile package") as e:
    audio.load_audio(path)
  assert "\n" not in str(e.value)
