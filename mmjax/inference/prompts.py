"""Prompts for generation: chat turns -> token ids split at `<image>` and
`<audio>` markers.

  turns = [{"role": "user", "content": user_turn("what colour?", n_media=1)}]
  pieces = prompt_pieces(cfg, tokenizer, turns)  # [ids, Media, ids]
  pieces = prompt_pieces(cfg, tokenizer, turns, clips=[(feats, mask)])
                                                 # [ids, Audio, ids]
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mmjax.models import layout
from mmjax.models.mllm import MLLMConfig

Piece = Sequence[int] | layout.Media | layout.Audio


class InputError(ValueError):
  """Bad prompt or media input; the message says what to do."""


def prompt_pieces(cfg: MLLMConfig, tokenizer: Any,
                  turns: Sequence[Mapping[str, str]],
                  clips: Sequence[tuple[np.ndarray, np.ndarray]] = ()
                  ) -> list[Piece]:
  """`tokenizer.prompt_ids(turns)` split at `<image>` markers into pieces,
  one `layout.Media` at the model's image side per marker, and at
  `<audio>` markers (the tokenizer's `audio_id`), one `layout.Audio` per
  clip of `clips` ((features, frame mask) pairs, `data.audio.log_mel`)."""
  return split_at_images(cfg, tokenizer.prompt_ids(turns), tokenizer.image_id,
                         audio_id=getattr(tokenizer, "audio_id", None),
                         clip_frames=[int(np.sum(m)) for _, m in clips])


def split_at_images(cfg: MLLMConfig, ids: Sequence[int], image_id: int, *,
                    audio_id: int | None = None,
                    clip_frames: Sequence[int] = ()) -> list[Piece]:
  """Token ids split at each `image_id` into [ids, Media, ids, ...]; each
  Media at the model's image side. With `audio_id`, each of its markers
  becomes `layout.Audio(clip_frames[k])` for the k-th one.

  Raises:
    InputError: the `<audio>` markers are not one per clip.
  """
  ids, pieces, start = [int(t) for t in ids], [], 0
  heard = [i for i, t in enumerate(ids) if audio_id is not None
           and t == audio_id]
  if len(heard) != len(clip_frames):
    raise InputError(f"the prompt has {len(heard)} <audio> marker(s) for "
                     f"{len(clip_frames)} audio clip(s); use one per clip")
  frames = iter(clip_frames)
  for i, t in enumerate(ids):
    if t == image_id:
      pieces += [ids[start:i], layout.Media(cfg.side, cfg.side, cfg.frames)]
      start = i + 1
    elif i in heard:
      pieces += [ids[start:i], layout.Audio(next(frames))]
      start = i + 1
  return pieces + [ids[start:]]


def user_turn(prompt: str, n_media: int, image_text: str = "<image>",
              separator: str = "\n") -> str:
  """The prompt with one `<image>` marker per media item (each followed by
  `separator` when the prompt has none and they go first)."""
  markers = prompt.count(image_text)
  if markers == 0:
    return (image_text + separator) * n_media + prompt
  if markers != n_media:
    what = "audio clip(s)" if image_text == "<audio>" else "image(s)/frame(s)"
    raise InputError(f"the prompt has {markers} {image_text} marker(s) for "
                     f"{n_media} {what}; use one per item, or none to put "
                     "them all first")
  return prompt
