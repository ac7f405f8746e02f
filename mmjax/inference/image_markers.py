"""How a prompt writes its images, by the model family's HF model_type.

  marker = image_markers.for_config(run.config)   # qwen2_vl -> QWEN2_VL
  turns = [{"role": "user", "content": marker.user_turn("what?", 1)}]
  ids = marker.prompt_ids(tokenizer, turns)       # ints
  pieces = prompts.split_at_images(cfg, ids, marker.image_id(tokenizer))

mmjax's recipes (and LLaVA) write one `<image>` per image, each followed by
a newline when the images go before the text. Qwen2-VL's processor writes
`<|vision_start|><|image_pad|><|vision_end|>` per image with nothing after
it (its chat template renders an image content item so); generation then
expands the `<|image_pad|>` piece to the image's merged-grid tokens, as
Qwen2VLProcessor does.

The user turn always holds `<image>` (the one image text chat templates let
through; any other special token in content is refused as a fake marker);
`prompt_ids` replaces each `<image>` id with the family's ids. Special
tokens split text before it is tokenised, so this equals tokenising the
family's marker text in place.

One entry per family here; a model_type not listed writes `<image>`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from mmjax.data.tokenizer import IMAGE_ID, IMAGE_TOKEN
from mmjax.inference import prompts


@dataclasses.dataclass(frozen=True)
class ImageMarker:
  """One image as tokens of a prompt.

  Attributes:
    token: the token that stands for the image's tokens (generation
      expands it); `<image>` means the tokenizer's `image_id`.
    before, after: tokens around it.
    separator: text after each image when the images go before the text.
  """
  token: str = IMAGE_TOKEN
  before: tuple[str, ...] = ()
  after: tuple[str, ...] = ()
  separator: str = "\n"

  def user_turn(self, prompt: str, n_media: int) -> str:
    """The prompt with one `<image>` per media item (`prompts.user_turn`:
    `<image>` in the prompt places them, none puts them first)."""
    return prompts.user_turn(prompt, n_media, separator=self.separator)

  def image_id(self, tokenizer: Any) -> int:
    """The id of `token` in `tokenizer`."""
    if self.token == IMAGE_TOKEN:  # a text LM's tokenizer may have none
      return getattr(tokenizer, "image_id", IMAGE_ID)
    return self._id(tokenizer, self.token)

  def prompt_ids(self, tokenizer: Any, turns: Sequence[Mapping[str, str]]
                 ) -> list[int]:
    """`tokenizer.prompt_ids(turns)` with each `<image>` id written as
    before + token + after."""
    ids = [int(t) for t in tokenizer.prompt_ids(turns)]
    image = ([self._id(tokenizer, t) for t in self.before] +
             [self.image_id(tokenizer)] +
             [self._id(tokenizer, t) for t in self.after])
    out, placeholder = [], DEFAULT.image_id(tokenizer)  # the turn's <image>
    for t in ids:
      out += image if t == placeholder else [t]
    return out

  @staticmethod
  def _id(tokenizer: Any, text: str) -> int:
    token_id = tokenizer.token_id(text)
    if token_id is None:
      raise prompts.InputError(
          f"the tokenizer has no {text!r} token, which this model's prompts "
          "write images with: pass the model's own Hugging Face tokenizer "
          "directory as --tokenizer")
    return token_id


DEFAULT = ImageMarker()
QWEN2_VL = ImageMarker("<|image_pad|>", before=("<|vision_start|>",),
                       after=("<|vision_end|>",), separator="")

# HF model_type (a conversion's config.hf.model_type) -> its marker.
BY_MODEL_TYPE = {"qwen2_vl": QWEN2_VL}


def for_config(config: Any) -> ImageMarker:
  """The marker of a run's config: a conversion's by its HF model_type,
  anything else (mmjax recipes) `DEFAULT`."""
  hf = config.get("hf")
  model_type = hf.get("model_type") if hf is not None else None
  return BY_MODEL_TYPE.get(model_type, DEFAULT)
