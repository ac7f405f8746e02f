"""A decoder LM that writes images as VQ codes after a caption (Chameleon,
Emu3): the model of the `t2i` stage and of image generation.

  model = TextToImageLM(lm=DecoderConfig(...vocab_size=vocab.size...),
                        vq=VQConfig(...), vocab=vocab, prompt_len=32, side=64)
  inputs, targets = model.sequences(captions, codes)
  logits, _ = model.apply(v, inputs)                   # f32[b, P + 1 + N, V]

A sequence is the caption (P ids, padding kept), <boi>, then the image's
N = (side / f)^2 codes in row-major order (f: the tokenizer's downsampling);
<eoi> follows the last code. The tokenizer is not a parameter of this
module: its encoder params and codebook are passed in (`encode_codes`),
frozen (train/stages/t2i.py keeps them in the stage's loss state).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import vq as vq_lib
from mmjax.models import vq_codebook
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.models.image_vocab import ImageVocab


class TextToImageLM(nn.Module):
  """The LM (`llm`, vocabulary `vocab.size`) and the facts of its sequences.

  Attributes:
    lm: the decoder's config; lm.vocab_size must equal vocab.size.
    vq: the image tokenizer's config (codes per side = vq.grid(side)).
    vocab: text ids, <boi>, <eoi>, then the K codes.
    prompt_len: P, caption ids before <boi>.
    side: the image side in pixels.
  """
  lm: DecoderConfig
  vq: vq_lib.VQConfig
  vocab: ImageVocab
  prompt_len: int
  side: int

  def setup(self):
    if self.lm.vocab_size != self.vocab.size:
      raise ValueError(f"lm.vocab_size={self.lm.vocab_size} != the text + "
                       f"image vocabulary's {self.vocab.size}")
    self.llm = DecoderLM(self.lm)

  @property
  def grid(self) -> int:
    """Codes per image side."""
    return self.vq.grid(self.side)

  @property
  def n_codes(self) -> int:
    """N, codes per image."""
    return self.grid ** 2

  @property
  def seq_len(self) -> int:
    """P + 1 + N: caption, <boi>, codes (what training and generation run)."""
    return self.prompt_len + 1 + self.n_codes

  def __call__(self, tokens: jax.Array, **kwargs) -> tuple[jax.Array, Any]:
    """DecoderLM over int32[B, L] ids (kwargs: cache, cache_index, ...)."""
    return self.llm(tokens, **kwargs)

  def encode_codes(self, tokenizer: dict[str, Any], images: jax.Array
                   ) -> jax.Array:
    """f32[b, S, S, 3] in [-1, 1] -> codes int32[b, N], row-major.

    tokenizer: {'params': the VQVAE's, 'codebook': f32[K, D]}."""
    z = vq_lib.VQVAE(self.vq, parent=None).apply({"params": tokenizer["params"]}, images,
                                    method=vq_lib.VQVAE.encode)
    codes = vq_codebook.nearest(z, tokenizer["codebook"])
    return codes.reshape(codes.shape[0], -1)

  def decode_codes(self, tokenizer: dict[str, Any], codes: jax.Array
                   ) -> jax.Array:
    """codes int32[b, N] -> images f32[b, S, S, 3] in about [-1, 1]."""
    grid = codes.reshape(codes.shape[0], self.grid, self.grid)
    return vq_lib.VQVAE(self.vq, parent=None).apply(
        {"params": tokenizer["params"]}, tokenizer["codebook"][grid],
        method=vq_lib.VQVAE.decode)

  def sequences(self, prompts: jax.Array, codes: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """(inputs int32[b, P + 1 + N], targets int32[b, N + 1]) of captions
    int32[b, P] and codes int32[b, N]: the targets of the positions from
    <boi> on (the codes, then <eoi>)."""
    b = prompts.shape[0]
    ids = self.vocab.code_ids(codes)
    inputs = jnp.concatenate(
        [prompts.astype(jnp.int32),
         jnp.full((b, 1), self.vocab.boi_id, jnp.int32), ids], axis=1)
    targets = jnp.concatenate(
        [ids, jnp.full((b, 1), self.vocab.eoi_id, jnp.int32)], axis=1)
    return inputs, targets
