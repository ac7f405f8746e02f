"""Whisper's log-mel front end in numpy (HF `WhisperFeatureExtractor`).

  features, mask = log_mel(audio)                  # f32[3000, 80], bool[3000]
  features, mask = log_mel(audio, pad=False)       # f32[ceil(L / 160), 80]
  features, mask = log_mel_batch(clips, pad=False) # f32[B, T, 80], bool[B, T]

audio: f32[L] mono at 16 kHz (`reading.load_audio` reads and resamples a
file). The recipe (DESIGN.md section 5): a 400-sample (25 ms) periodic Hann
window every 160 samples (10 ms), centred frames (the clip reflected at both
ends by 200 samples, as `torch.stft(center=True)`), power spectrum |X|^2 of
the 201 bins, 80 (large-v3: 128) Slaney-scale mel filters with Slaney area
normalisation over 0-8 kHz, log10(max(mel, 1e-10)), clamped at (max - 8),
then (x + 4) / 4.

Layout: frames first, `[T, n_mels]` (mmjax's tokens-first convention); HF
returns the transpose `[n_mels, T]`.

Lengths: `pad=True` (HF's default) zero-pads or cuts every clip to 30 s =
480,000 samples = 3000 frames; the mask marks the ceil(L / 160) frames that
cover the clip (HF's `return_attention_mask`). `pad=False` returns just those
frames; they equal the first frames of the padded version (the clamp's max
is taken over the same frames HF sees), so an encoder that masks padding
gives the same result either way. A clip over 30 s is cut (HF's truncation)
unless `truncate=False`, which raises ValueError instead.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480,000
N_FRAMES = N_SAMPLES // HOP  # 3000
MEL_BINS = (80, 128)  # Whisper up to large-v2; large-v3 (and Qwen2-Audio)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
  """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), log above."""
  hz = np.asarray(hz, np.float64)
  mel = 3.0 * hz / 200.0
  log_region = hz >= 1000.0
  mel = np.where(log_region,
                 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0)
                 * (27.0 / np.log(6.4)), mel)
  return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
  mel = np.asarray(mel, np.float64)
  hz = 200.0 * mel / 3.0
  return np.where(mel >= 15.0,
                  1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), hz)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Slaney mel filter bank f64[n_fft // 2 + 1, n_mels] over 0 - sr/2 Hz.

  Triangles between n_mels + 2 points equally spaced in mels, each scaled
  by 2 / (its width in Hz) (Slaney's equal-area normalisation).
  """
  n_bins = n_fft // 2 + 1
  fft_hz = np.linspace(0, sample_rate // 2, n_bins)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2),
                                 n_mels + 2))
  widths = np.diff(edges)  # [n_mels + 1]
  slopes = edges[None, :] - fft_hz[:, None]  # [bins, n_mels + 2]
  down = -slopes[:, :-2] / widths[:-1]
  up = slopes[:, 2:] / widths[1:]
  tri = np.maximum(0.0, np.minimum(down, up))
  return tri * (2.0 / (edges[2:] - edges[:-2]))[None, :]


_BLOCK_FRAMES = 256  # STFT frames per block in `_power_mel`.


@functools.lru_cache(maxsize=2)
def _hann(n: int) -> np.ndarray:
  """Periodic Hann window (torch.hann_window's default)."""
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _power_mel(buffer: np.ndarray, n_mels: int) -> np.ndarray:
  """Centred STFT power -> mel, f64[len(buffer) // HOP, n_mels].

  The last centred frame is dropped, as HF does (3000 frames for 30 s).
  """
  half = N_FFT // 2
  x = np.pad(buffer, (half, half), mode="reflect")
  n_frames = len(buffer) // HOP  # 1 + len // HOP centred frames, minus one
  frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
  frames = frames[:n_frames]
  window, filters = _hann(N_FFT), mel_filters(n_mels)
  out = np.empty((n_frames, n_mels))
  # A block of frames at a time: its buffers stay in cache. The whole 30 s
  # spectrum at once (9.6 MB, fresh pages every call) took 3x as long.
  for start in range(0, n_frames, _BLOCK_FRAMES):
    spec = np.fft.rfft(frames[start:start + _BLOCK_FRAMES] * window, axis=-1)
    np.matmul(spec.real ** 2 + spec.imag ** 2, filters,  # power [F, 201]
              out=out[start:start + _BLOCK_FRAMES])
  return out


def _check_audio(audio: np.ndarray) -> np.ndarray:
  audio = np.asarray(audio)
  if audio.ndim != 1:
    raise ValueError(f"log_mel takes mono audio f32[L]; got shape "
                     f"{audio.shape} (average the channels first).")
  if audio.size == 0:
    raise ValueError("log_mel got an empty clip (zero samples).")
  if not np.all(np.isfinite(audio)):
    raise ValueError("log_mel got a clip holding NaN or inf samples.")
  return audio.astype(np.float64)


def valid_frames(num_samples: int, max_frames: int = N_FRAMES) -> int:
  """Frames covering a clip of `num_samples`: min(ceil(L / HOP), max)."""
  return min(-(-num_samples // HOP), max_frames)


def log_mel(audio: np.ndarray, *, n_mels: int = 80, pad: bool = True,
            truncate: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Whisper log-mel features of one clip.

  Args:
    audio: f32[L] mono samples at 16 kHz (roughly in [-1, 1]).
    n_mels: 80, or 128 for Whisper large-v3 / Qwen2-Audio.
    pad: True: always 3000 frames (30 s, HF's default); False: only the
      ceil(L / 160) frames that cover the clip.
    truncate: cut a clip over 30 s (HF's default); False: ValueError.

  Returns:
    (features f32[T, n_mels], mask bool[T]); mask[t] = frame t covers the
    clip (all True when pad=False).

  Raises:
    ValueError: not 1-D, empty, non-finite, or over 30 s with truncate=False.
  """
  if n_mels not in MEL_BINS:
    raise ValueError(f"n_mels={n_mels}; Whisper uses one of {MEL_BINS}.")
  audio = _check_audio(audio)
  if len(audio) > N_SAMPLES:
    if not truncate:
      raise ValueError(
          f"clip of {len(audio) / SAMPLE_RATE:.2f} s is longer than the "
          f"encoder's {CHUNK_SECONDS} s window; cut it (truncate=True) or "
          f"split it into windows.")
    audio = audio[:N_SAMPLES]
  n_valid = valid_frames(len(audio))
  # HF zero-pads to 480,000 samples before its centred STFT. A shorter
  # buffer with N_FFT samples of zeros past the last valid frame gives the
  # same valid frames (and the same max: frames further on are silence).
  size = N_SAMPLES if pad else min(n_valid * HOP + N_FFT, N_SAMPLES)
  buffer = np.zeros(size, np.float64)
  buffer[:len(audio)] = audio
  mel = _power_mel(buffer, n_mels)
  log_spec = np.log10(np.maximum(mel, 1e-10))
  log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
  log_spec = ((log_spec + 4.0) / 4.0).astype(np.float32)
  if not pad:
    log_spec = log_spec[:n_valid]
  return log_spec, np.arange(len(log_spec)) < n_valid


def log_mel_batch(clips: Sequence[np.ndarray], *, n_mels: int = 80,
                  pad: bool = True, truncate: bool = True,
                  multiple: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Log-mel of several clips, stacked.

  Args:
    clips: mono f32[L_i] clips at 16 kHz.
    n_mels, pad, truncate: as `log_mel`.
    multiple: with pad=False, the batch's frame count is the longest clip's
      rounded up to this (2: every encoder output frame sees two input
      frames).

  Returns:
    (features f32[B, T, n_mels], mask bool[B, T]); frames past a clip hold
    its lowest value (the clamp floor, as HF's silence padding mostly does).
  """
  if not clips:
    raise ValueError("log_mel_batch got no clips.")
  outs = [log_mel(c, n_mels=n_mels, pad=pad, truncate=truncate)
          for c in clips]
  t = max(len(f) for f, _ in outs)
  if not pad:
    t = min(math.ceil(t / multiple) * multiple, N_FRAMES)
  feats = np.stack([np.pad(f, ((0, t - len(f)), (0, 0)),
                           constant_values=f.min()) for f, _ in outs])
  mask = np.stack([np.pad(m, (0, t - len(m))) for _, m in outs])
  return feats, mask
