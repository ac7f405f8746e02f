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
back. With `layout_objects` M > 0 the LM first writes the scene's
layout (models/scene_layout.py: six tokens per object, then <eol>, L =
6 M + 1 slots) between the caption and <boi>, and every code slot also
carries its cell's share of the layout (`cells`, module `scene_layout`):

  caption (P) | layout (L) | <boi> | code_1 ... code_N

The tokenizer is not a parameter of this
module: its encoder params and codebook are passed in (`encode_codes`),
frozen (train/stages/t2i.py keeps them in the stage's loss state).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import scene_layout
from mmjax.models import visual_positions
from mmjax.models import vq as vq_lib
from mmjax.models import vq_codebook
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.models.image_vocab import ImageVocab


CODE_POSITIONS = ("none", "sincos2d")


class TextToImageLM(nn.Module):
  """The LM (`llm`, vocabulary `vocab.size`) and the facts of its sequences.

  Attributes:
    lm: the decoder's config; lm.vocab_size must equal `total_vocab`.
    vq: the image tokenizer's config (codes per side = vq.grid(side)).
    vocab: text ids, <boi>, <eoi>, then the K codes.
    prompt_len: P, caption ids before <boi> (or before the layout).
    side: the image side in pixels.
    code_positions: 'none' or 'sincos2d' (module docstring; no parameters).
    layout_objects: M, objects a layout holds; 0 = no layout.
    layout_colours, layout_shapes: C colours and S shapes a layout names.
    layout_bins: B, location bins per side.
    cell_edges: each code cell also learns where its object's box edges
      cut it (scene_layout.cells(edges=True)), through a deeper MLP.
  """
  lm: DecoderConfig
  vq: vq_lib.VQConfig
  vocab: ImageVocab
  prompt_len: int
  side: int
  code_positions: str = "none"
  layout_objects: int = 0
  layout_colours: int = 1
  layout_shapes: int = 1
  layout_bins: int = 64
  cell_edges: bool = False

  def setup(self):
    if self.lm.vocab_size != self.total_vocab:
      raise ValueError(f"lm.vocab_size={self.lm.vocab_size} != the text + "
                       f"image (+ layout) vocabulary's {self.total_vocab}")
    if self.code_positions not in CODE_POSITIONS:
      raise ValueError(f"code_positions={self.code_positions!r}; choose one "
                       f"of {', '.join(CODE_POSITIONS)}")
    self.llm = DecoderLM(self.lm)
    if self.layout_objects:
      self.scene_layout = LayoutCells(self.layout_colours, self.layout_shapes,
                                      self.lm.d_model,
                                      jnp.dtype(self.lm.dtype),
                                      hidden_layers=2 if self.cell_edges
                                      else 1)

  @property
  def layout_vocab(self) -> scene_layout.LayoutVocab | None:
    """The layout's ids (after the image vocabulary), None without one."""
    if not self.layout_objects:
      return None
    return scene_layout.LayoutVocab(self.vocab.size, self.layout_colours,
                                    self.layout_shapes, self.layout_bins,
                                    self.layout_objects)

  @property
  def layout_len(self) -> int:
    """L, layout slots between the caption and <boi> (0 without)."""
    return self.layout_vocab.length if self.layout_objects else 0

  @property
  def total_vocab(self) -> int:
    """The LM's vocab_size: text, <boi>, <eoi>, codes (, layout ids)."""
    extra = self.layout_vocab.size if self.layout_objects else 0
    return self.vocab.size + extra

  @property
  def boi_slot(self) -> int:
    """The slot of <boi>: P + L."""
    return self.prompt_len + self.layout_len

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
    """P + L + 1 + N: caption, layout, <boi>, codes (what training and
    generation run)."""
    return self.boi_slot + 1 + self.n_codes

  def __call__(self, tokens: jax.Array,
               cells: tuple[jax.Array, jax.Array] | None = None,
               **kwargs) -> tuple[jax.Array, Any]:
    """DecoderLM over int32[B, T] ids (kwargs: cache, cache_index, ...);
    the ids sit at slots cache_index (0 without a cache) onwards.

    cells: with a layout, (labels int32[B, N, 2], features f32[B, N, F]) of
    `scene_layout.cells` for the whole image (None: no object anywhere,
    the unconditional model's view)."""
    if self.code_positions == "none" and not self.layout_objects:
      return self.llm(tokens, **kwargs)
    first = kwargs.get("cache_index")
    slots = (0 if first is None else first) + jnp.arange(tokens.shape[1])
    x = self.llm.embed_tokens(tokens)
    if self.code_positions != "none":
      x = x + self.code_grid(slots)
    if self.layout_objects:
      if cells is None:
        b = tokens.shape[0]
        cells = (jnp.zeros((b, self.n_codes, 2), jnp.int32),
                 jnp.zeros((b, self.n_codes,
                            scene_layout.cell_features(self.cell_edges))))
      x = x + self._code_slots(slots, self.scene_layout(*cells))
    return self.llm(embeddings=x, **kwargs)

  def head(self, hidden: jax.Array) -> jax.Array:
    """Final-normed hidden states f32[B, T, D] (a call with logits=False)
    -> logits f32[B, T, V]."""
    return self.llm.head(hidden)

  def _code_slots(self, slots: jax.Array, per_code: jax.Array) -> jax.Array:
    """[..., L, D] of per_code [..., N, D]: slot P + L + j (j < N, the slot
    that predicts code j) gets row j, the other slots 0."""
    j = slots - self.boi_slot
    inside = (j >= 0) & (j < self.n_codes)
    rows = jnp.take(per_code, jnp.clip(j, 0, self.n_codes - 1), axis=-2)
    return jnp.where(inside[:, None], rows, 0.0).astype(rows.dtype)

  def code_grid(self, slots: jax.Array) -> jax.Array:
    """f32[L, D]: slot P + L + j (j < N) gets code j's row and column, the
    rest 0 (the caption, the layout, and the last code, which predicts
    <eoi>)."""
    d = self.lm.d_model
    table = visual_positions.sincos_2d((self.grid, self.grid), d) / d ** 0.5
    return self._code_slots(slots, table).astype(jnp.dtype(self.lm.dtype))

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

  def sequences(self, prompts: jax.Array, codes: jax.Array,
                layout: jax.Array | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """(inputs int32[b, P + L + 1 + N], targets int32[b, N + 1]) of
    captions int32[b, P], codes int32[b, N] and (with a layout) layout
    tokens int32[b, L]: the targets of the positions from <boi> on (the
    codes, then <eoi>); the layout's own targets are its tokens, predicted
    from slots P - 1 .. P + L - 2."""
    b = prompts.shape[0]
    ids = self.vocab.code_ids(codes)
    plan = [] if layout is None else [layout.astype(jnp.int32)]
    if (layout is None) != (not self.layout_objects):
      raise ValueError(f"layout_objects={self.layout_objects}: give layout "
                       "tokens exactly when the model has a layout")
    inputs = jnp.concatenate(
        [prompts.astype(jnp.int32), *plan,
         jnp.full((b, 1), self.vocab.boi_id, jnp.int32), ids], axis=1)
    targets = jnp.concatenate(
        [ids, jnp.full((b, 1), self.vocab.eoi_id, jnp.int32)], axis=1)
    return inputs, targets


class LayoutCells(nn.Module):
  """Each code cell's share of the layout as an embedding added to its
  slot: an MLP over the cell's object (a table over 1 + C colours and one
  over 1 + S shapes, 0: no object) and its place inside the object's box
  (scene_layout.cells).
  An MLP, not a sum of the two: what a cell shows is a joint function of
  the object's class and the place (a star's point, a square's edge), which
  a sum would leave to the LM's few layers."""
  colours: int
  shapes: int
  width: int
  dtype: Any = jnp.float32
  hidden_layers: int = 1

  @nn.compact
  def __call__(self, labels: jax.Array, features: jax.Array) -> jax.Array:
    """labels int32[B, N, 2] (colour, shape), features f32[B, N, F] ->
    [B, N, D]."""
    init = nn.initializers.normal(0.02)
    colour = nn.Embed(1 + self.colours, self.width, name="colour",
                      embedding_init=init)(labels[..., 0])
    shape = nn.Embed(1 + self.shapes, self.width, name="shape",
                     embedding_init=init)(labels[..., 1])
    x = jnp.concatenate([colour.astype(self.dtype), shape.astype(self.dtype),
                         features.astype(self.dtype)], -1)
    for k in range(self.hidden_layers):  # the first keeps its old name
      x = nn.gelu(nn.Dense(2 * self.width, name="hidden" if k == 0 else
                           f"hidden_{k}", dtype=self.dtype)(x))
    return nn.Dense(self.width, name="out", dtype=self.dtype)(x)
