"""Reading audio files and resampling them to Whisper's 16 kHz.

  audio = load_audio("clip.wav")          # f32[L] mono at 16 kHz
  audio = resample(x, 22_050)             # f32[L * 16000 / 22050]

Reading: through `soundfile` (WAV, FLAC, OGG, ...) when it is installed
(`pip install soundfile`, the `audio` extra of setup.py); otherwise WAV only,
with the standard library's `wave` module (integer PCM, 8 / 16 / 24 / 32
bit). Channels are averaged to mono.

Resampling: polyphase (`scipy.signal.resample_poly`: upsample by `up`,
FIR low-pass with a Kaiser window (beta 5), downsample by `down`, where
up / down = 16000 / rate in lowest terms). Rates from 1 kHz to 384 kHz
whose ratio has terms of at most 1000 are accepted (8000, 11025, 22050,
32000, 44100, 48000, 96000, ... Hz); others raise ValueError.

Bad input (a missing, unreadable or zero-length file, an unsupported rate)
raises ValueError with one line saying what and which file.
"""

from __future__ import annotations

import math
import pathlib
import wave

import numpy as np

from mmjax.data.audio.log_mel import SAMPLE_RATE

MIN_RATE, MAX_RATE = 1_000, 384_000
MAX_RATIO_TERM = 1000


def _soundfile():
  try:
    import soundfile  # pylint: disable=g-import-not-at-top
  except (ImportError, OSError):  # OSError: libsndfile missing
    return None
  return soundfile


def resample_ratio(rate: int) -> tuple[int, int]:
  """(up, down) with up / down = 16000 / rate in lowest terms; ValueError
  for a rate the resampler does not handle."""
  if (not isinstance(rate, (int, np.integer)) or
      not MIN_RATE <= rate <= MAX_RATE):
    raise ValueError(f"sample rate {rate!r} Hz is not supported: need an "
                     f"integer from {MIN_RATE} to {MAX_RATE} Hz.")
  g = math.gcd(SAMPLE_RATE, int(rate))
  up, down = SAMPLE_RATE // g, int(rate) // g
  if max(up, down) > MAX_RATIO_TERM:
    raise ValueError(
        f"sample rate {rate} Hz is not supported: resampling to 16 kHz needs "
        f"the ratio {up}/{down}, whose terms exceed {MAX_RATIO_TERM} (use a "
        f"common rate such as 8000, 22050, 44100 or 48000 Hz).")
  return up, down


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
  """audio f32[L] at `rate` Hz -> f32[round(L * 16000 / rate)] at 16 kHz
  (polyphase; see the module docstring). A 16 kHz clip is returned as is."""
  up, down = resample_ratio(rate)
  audio = np.asarray(audio, np.float32)
  if up == down:
    return audio
  # Imported here: scipy.signal (and the scipy.stats it loads) costs ~0.7 s
  # at the start of every command, which only resampling needs.
  from scipy import signal  # pylint: disable=g-import-not-at-top
  return signal.resample_poly(audio, up, down).astype(np.float32)


def _read_wave(path: pathlib.Path) -> tuple[np.ndarray, int]:
  """Integer PCM WAV -> (f32[L, C] in [-1, 1], rate) with the stdlib."""
  with wave.open(str(path), "rb") as f:
    rate, width, chans = f.getframerate(), f.getsampwidth(), f.getnchannels()
    raw = f.readframes(f.getnframes())
  if width == 1:  # unsigned 8 bit
    x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
  elif width == 3:  # little-endian 24 bit: widen to int32
    b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
    x = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) |
         (b[:, 2].astype(np.int8).astype(np.int32) << 16))
    x = x.astype(np.float32) / float(1 << 23)
  elif width in (2, 4):
    dt = np.int16 if width == 2 else np.int32
    x = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(
        np.iinfo(dt).max + 1)
  else:
    raise ValueError(f"{width * 8}-bit samples")
  return x.reshape(-1, chans), rate


def read_audio(path: str | pathlib.Path) -> tuple[np.ndarray, int]:
  """(f32[L] mono samples, sample rate) of a file, not resampled.

  Raises:
    ValueError: missing, unreadable or empty file (one line).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"audio file {path} does not exist.")
  sf = _soundfile()
  try:
    if sf is not None:
      x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    elif path.suffix.lower() not in (".wav", ".wave"):
      raise ValueError(f"reading {path.suffix or 'this'} files needs the "
                       f"soundfile package (pip install soundfile); without "
                       f"it only WAV is read")
    else:
      x, rate = _read_wave(path)
  except Exception as e:  # pylint: disable=broad-except
    # soundfile, wave and numpy raise many kinds; report one line.
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"cannot read audio file {path}: {msg}.") from None
  if x.size == 0:
    raise ValueError(f"audio file {path} holds no samples (zero length).")
  return np.asarray(x, np.float32).mean(axis=1), int(rate)


def load_audio(path: str | pathlib.Path) -> np.ndarray:
  """A file as f32[L] mono at 16 kHz (read, averaged, resampled).

  Raises:
    ValueError: bad file (see `read_audio`) or unsupported sample rate.
  """
  audio, rate = read_audio(path)
  try:
    return resample(audio, rate)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def write_wav(path: str | pathlib.Path, audio: np.ndarray, rate: int) -> None:
  """Writes mono f32 samples in [-1, 1] as a 16-bit PCM WAV (stdlib)."""
  pcm = np.clip(np.round(np.asarray(audio) * 32767.0), -32768, 32767)
  with wave.open(str(path), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(int(rate))
    f.writeframes(pcm.astype("<i2").tobytes())
