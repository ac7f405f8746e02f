"""A decoder LM that writes images as VQ codes after a caption (Chameleon,
Emu3): the model of the `t2i` stage and of image generation.

  model = TextToImageLM(lm=DecoderConfig(...vocab_size=vocab.size...),
                        vq=VQConfig(...), vocab=vocab, prompt_len=32, side=64)
  inputs, targets = model.sequences(captions, codes)
  logits, _ = model.apply(v, inputs)                   # f32[b, P + 1 + N, V]

A sequence is the caption (P ids, padding kept), <boi>, then the image's
N = (side / f)^2 codes in row-major order (f: the tokenizer's downsampling);
<eoi> follows the last code. With `code_positions='sincos2d'` every slot from
<boi> on also carries the row and column of the code it predicts (a fixed
2-D sine-cosine table, `visual_positions.sincos_2d`, scaled by 1/sqrt(D)):
1-D RoPE alone leaves the LM to learn that the code above lies `grid` slots
back. The tokenizer is not a parameter of this
module: its encoder params and codebook are passed in (`encode_codes`),
frozen (train/stages/t2i.py keeps them in the stage's loss state).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import visual_positions
from mmjax.models import vq as vq_lib
from mmjax.models import vq_codebook
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.models.image_vocab import ImageVocab


CODE_POSITIONS = ("none", "sincos2d")


class TextToImageLM(nn.Module):
  """The LM (`llm`, vocabulary `vocab.size`) and the facts of its sequences.

  Attributes:
    lm: the decoder's config; lm.vocab_size must equal vocab.size.
    vq: the image tokenizer's config (codes per side = vq.grid(side)).
    vocab: text ids, <boi>, <eoi>, then the K codes.
    prompt_len: P, caption ids before <boi>.
    side: the image side in pixels.
    code_positions: 'none' or 'sincos2d' (module docstring; no parameters).
  """
  lm: DecoderConfig
  vq: vq_lib.VQConfig
  vocab: ImageVocab
  prompt_len: int
  side: int
  code_positions: str = "none"

  def setup(self):
    if self.lm.vocab_size != self.vocab.size:
      raise ValueError(f"lm.vocab_size={self.lm.vocab_size} != the text + "
                       f"image vocabulary's {self.vocab.size}")
    if self.code_positions not in CODE_POSITIONS:
      raise ValueError(f"code_positions={self.code_positions!r}; choose one "
                       f"of {', '.join(CODE_POSITIONS)}")
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
    """DecoderLM over int32[B, L] ids (kwargs: cache, cache_index, ...);
    the ids sit at slots cache_index (0 without a cache) onwards."""
    if self.code_positions == "none":
      return self.llm(tokens, **kwargs)
    first = kwargs.get("cache_index")
    slots = (0 if first is None else first) + jnp.arange(tokens.shape[1])
    return self.llm(embeddings=self.llm.embed_tokens(tokens)
                    + self.code_grid(slots), **kwargs)

  def code_grid(self, slots: jax.Array) -> jax.Array:
    """f32[L, D]: slot P + j (j < N) gets code j's row and column, the
    rest 0 (the caption, and the last code, which predicts <eoi>)."""
    d = self.lm.d_model
    table = visual_positions.sincos_2d((self.grid, self.grid), d) / d ** 0.5
    j = slots - self.prompt_len
    inside = (j >= 0) & (j < self.n_codes)
    rows = table[jnp.clip(j, 0, self.n_codes - 1)]
    return jnp.where(inside[:, None], rows, 0.0).astype(jnp.dtype(self.lm.dtype))

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
