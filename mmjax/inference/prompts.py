"""Prompts for generation: chat turns -> token ids split at `<image>` markers.

  turns = [{"role": "user", "content": user_turn("what colour?", n_media=1)}]
  pieces = prompt_pieces(cfg, tokenizer, turns)  # [ids, Media, ids]
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from mmjax.models import layout
from mmjax.models.mllm import MLLMConfig

Piece = Sequence[int] | layout.Media


class InputError(ValueError):
  """Bad prompt or media input; the message says what to do."""


def prompt_pieces(cfg: MLLMConfig, tokenizer: Any,
                  turns: Sequence[Mapping[str, str]]) -> list[Piece]:
  """`tokenizer.prompt_ids(turns)` split at `<image>` markers into pieces,
  one `layout.Media` at the model's image side per marker."""
  return split_at_images(cfg, tokenizer.prompt_ids(turns), tokenizer.image_id)


def split_at_images(cfg: MLLMConfig, ids: Sequence[int], image_id: int
                    ) -> list[Piece]:
  """Token ids split at each `image_id` into [ids, Media, ids, ...]; each
  Media at the model's image side."""
  ids, pieces, start = [int(t) for t in ids], [], 0
  for i, t in enumerate(ids):
    if t == image_id:
      pieces += [ids[start:i], layout.Media(cfg.side, cfg.side, cfg.frames)]
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
    raise InputError(f"the prompt has {markers} {image_text} marker(s) for "
                     f"{n_media} image(s)/frame(s); use one per image, or "
                     "none to put them all first")
  return prompt
