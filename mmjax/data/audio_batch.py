"""Audio clips in the grain pipeline: log-mel features per example, padded
clip arrays per batch.

  feats = clip_features(cfg, [clip], audio_frames=160)  # [(f32[T, 80], mask)]
  batch.update(collate_audio(rows, mine, audio_frames=160, n_mels=80))

Problems with a clip (no audio tower in the model, several clips, an empty
or non-finite clip, more frames than `audio_frames`) raise
`formats.BadExample('bad_audio')`: the pipeline counts them as
`skipped_bad_audio`, as it counts bad images.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from mmjax.data import audio as audio_lib
from mmjax.data.formats import BadExample
from mmjax.models.mllm import MLLMConfig

MAX_CLIPS = 1  # Clips per example a batch holds (audio_mask's A axis).
# Features kept per process (~10k clips of 1.6 s): epochs and stages
# revisit every clip, and featurising one costs about as much as a tiny
# model's training step spends on its row.
CACHE_BYTES = 512 << 20
_cache: dict[tuple[bytes, int], tuple[np.ndarray, np.ndarray]] = {}
_cached_bytes = [0]


def _log_mel(clip: np.ndarray, n_mels: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """`audio.log_mel(pad=False)` of a clip, cached by a hash of its samples
  (pipeline threads share the cache; dict operations hold the GIL)."""
  clip = np.ascontiguousarray(clip)
  key = (hashlib.blake2b(clip.tobytes(), digest_size=16).digest()
         + str(clip.dtype).encode(), n_mels)
  hit = _cache.get(key)
  if hit is not None:
    return hit
  value = audio_lib.log_mel(clip, n_mels=n_mels, pad=False, truncate=False)
  size = value[0].nbytes + value[1].nbytes
  if _cached_bytes[0] + size <= CACHE_BYTES:
    _cache[key] = value
    _cached_bytes[0] += size
  return value


def clip_features(cfg: MLLMConfig, clips: Sequence[np.ndarray],
                  audio_frames: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Whisper log-mel features of an example's clips (f32[L] at 16 kHz).

  Returns per clip (features f32[T, n_mels], frame mask bool[T]), T =
  ceil(L / 160): only the clip's frames (`audio.log_mel(pad=False)`).
  """
  if cfg.audio is None:
    raise BadExample("bad_audio", "the example holds audio but the model has "
                     "no audio tower (config.model.audio)")
  if len(clips) > MAX_CLIPS:
    raise BadExample("bad_audio", f"{len(clips)} audio clips > "
                     f"{MAX_CLIPS} per example")
  out = []
  for clip in clips:
    try:
      feats, mask = _log_mel(np.asarray(clip), cfg.audio.n_mels)
    except ValueError as e:  # empty, non-finite, over 30 s
      raise BadExample("bad_audio", str(e)) from e
    if audio_frames and len(feats) > audio_frames:
      raise BadExample("bad_audio", f"a clip of {len(feats)} frames > "
                       f"audio_frames={audio_frames} (config.data."
                       "audio_frames): cut it or raise the limit")
    out.append((feats, mask))
  return out


def collate_audio(rows: Sequence[dict[str, Any]],
                  mine: Sequence[dict[str, Any]], audio_frames: int,
                  n_mels: int) -> dict[str, np.ndarray]:
  """This process's clips as audio f32[b, MAX_CLIPS, T, n_mels] and
  audio_mask bool[b, MAX_CLIPS, T] (zero / False padded).

  T = audio_frames, or with 0 the longest clip of all global rows (every
  process agrees on it) rounded up to an even count (the encoder's stride
  2 conv).
  """
  frames = audio_frames
  if not frames:
    longest = max([len(f) for row in rows if row["valid"]
                   for f, _ in row.get("audio", [])], default=2)
    frames = longest + longest % 2
  feats = np.zeros((len(mine), MAX_CLIPS, frames, n_mels), np.float32)
  masks = np.zeros((len(mine), MAX_CLIPS, frames), bool)
  for i, row in enumerate(mine):
    if not row["valid"]:
      continue
    for j, (f, m) in enumerate(row.get("audio", [])):
      feats[i, j, :len(f)] = f
      masks[i, j, :len(m)] = m
  return {"audio": feats, "audio_mask": masks}
