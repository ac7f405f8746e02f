"""A plain decoder LM dressed as a text-only multimodal model, for generation.

  model = TextLM(TextLMConfig(decoder_cfg))
  out = decode.generate(model, {"llm": decoder_params}, [[2, 5, 6]],
                        image_token_id=4, max_new_tokens=8)

The decode loop (`mmjax.decoding.decode`) and `layout.assemble` read an
MLLM's config (`lm`, `positions`, `fusion`) and call the model with the
MLLM's keyword arguments. TextLM offers exactly that surface around a
`DecoderLM` named `llm`, so a decoder's parameters `p` are `{"llm": p}`:
the same tree as the `llm` group of the global parameter store, and no
second decode loop. Media arguments must be absent (or, for the masks the
loop always passes, all False): a TextLM has no vision tower.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.decoder import DecoderConfig, DecoderLM, KVCache

# `fusion` of a TextLM: no media enters the token stream.
TEXT_ONLY = "none"


@dataclasses.dataclass(frozen=True)
class TextLMConfig:
  """What layout and decoding read from a model config, for a plain LM.

  Attributes:
    lm: the decoder. With `lm.mrope_sections` set (Qwen2-VL's LM) positions
      are M-RoPE ids [3, B, L], which for text are three equal copies.
  """
  lm: DecoderConfig

  @property
  def fusion(self) -> str:
    return TEXT_ONLY

  @property
  def positions(self) -> str:
    return "mrope" if self.lm.mrope_sections is not None else "rope"


class TextLM(nn.Module):
  """DecoderLM under the name `llm`, called the way the decode loop calls an
  MLLM."""
  cfg: TextLMConfig

  def setup(self):
    self.llm = DecoderLM(self.cfg.lm)

  def __call__(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      *,
      images: jax.Array | None = None,
      image_mask: jax.Array | None = None,
      image_token_mask: jax.Array | None = None,
      media_locations: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      attention_mask: jax.Array | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | int | None = None,
      visual: jax.Array | None = None,
      media_times: jax.Array | None = None,
      logits: bool = True,
  ) -> tuple[jax.Array, KVCache | None]:
    """Logits f32[B, L, V] (and the updated cache), as `MLLM.__call__`.

    tokens: int32[B, L]; positions: [B, L] (or [3, B, L] with M-RoPE).
    image_mask / image_token_mask / media_locations are accepted because the
    decode loop passes them for every model; with no image in the batch they
    are None or all False, so they are ignored here.
    """
    del image_mask, image_token_mask, media_locations, media_times
    if images is not None or visual is not None:
      raise ValueError("a text-only LM (TextLM) takes no images; generate "
                       "with text prompts only")
    return self.llm(tokens, positions, segment_ids=segment_ids,
                    attention_mask=attention_mask, cache=cache,
                    cache_index=cache_index, logits=logits)

  def head(self, x: jax.Array) -> jax.Array:
    """Final-normed hidden [B, L, D] -> logits f32[B, L, V]."""
    return self.llm.head(x)


def text_lm_init(model: TextLM, seq_len: int = 8
                 ) -> Callable[[jax.Array], Any]:
  """rng -> the TextLM's boxed params ({"llm": decoder params}).

  Cross-attention blocks of a decoder with `xattn_every > 0` are not
  created: text-only calls never run them.
  """
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return lambda rng: model.init(rng, tokens)["params"]
