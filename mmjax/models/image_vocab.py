"""One vocabulary for text and image codes (Chameleon / Emu3 style).

The LM's vocabulary is the text tokenizer's V ids, then two markers, then
the K codes of a VQ image tokenizer (models/vq.py):

  ids 0 .. V-1        text (the tokenizer's own ids)
  V                   <boi>  begin of image
  V + 1               <eoi>  end of image
  V + 2 .. V + 1 + K  image code 0 .. K-1

  vocab = ImageVocab(text_size=512, codes=1024)
  vocab.size                      # 1538: the LM's vocab_size
  vocab.code_ids(codes)           # int32[...] codes -> LM ids
  vocab.codes_of(ids)             # LM ids -> codes (ids must be code ids)

An image is written as <boi>, its h x w codes in row-major order, <eoi>.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ImageVocab:
  """The id layout of a text + image-code vocabulary.

  Attributes:
    text_size: V, the text tokenizer's vocabulary size.
    codes: K, the VQ codebook size.
  """
  text_size: int
  codes: int

  def __post_init__(self):
    if self.text_size < 1 or self.codes < 2:
      raise ValueError(f"ImageVocab(text_size={self.text_size}, codes="
                       f"{self.codes}): need text_size >= 1 and codes >= 2")

  @property
  def boi_id(self) -> int:
    return self.text_size

  @property
  def eoi_id(self) -> int:
    return self.text_size + 1

  @property
  def first_code_id(self) -> int:
    return self.text_size + 2

  @property
  def size(self) -> int:
    """The LM's vocab_size: text, the two markers and the codes."""
    return self.text_size + 2 + self.codes

  def code_ids(self, codes):
    """Image codes int[...] in [0, K) -> their LM ids (same shape)."""
    return jnp.asarray(codes, jnp.int32) + self.first_code_id

  def codes_of(self, ids):
    """LM ids of image codes -> codes in [0, K) (same shape)."""
    return jnp.asarray(ids, jnp.int32) - self.first_code_id
