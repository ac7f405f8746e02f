"""SigLIP text tower and the two-tower model for contrastive pretraining.

Module tree of `TextTower` (Hugging Face `SiglipTextTransformer` names):

  token_embedding            nn.Embed, embedding [V, D]
  position_embedding         param [max_len, D]
  layers_{i}                 vision.EncoderBlock (bidirectional)
  final_layer_norm
  head                       Dense [D, embed_dim] on the pooled token

Pooling takes the LAST position, as SigLIP does (it was trained on text padded
to a fixed length with no attention mask). The data pipeline must therefore
pad every sequence the SigLIP way: to the same fixed length (max_len, 64 for
the released models), padding on the right. The same text padded to another
length is pooled from another position and gives another embedding.

`TwoTower` holds `vision_model` (vision.VisionEncoder), `text_model`
(TextTower), `img_head` (only when the vision width differs from embed_dim),
and the scalars `logit_scale` (t') and `logit_bias` (b).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import config_util
from mmjax.models import layers
from mmjax.models import vision

_logical = layers._logical  # pylint: disable=protected-access
_ACT = ("batch", "length", "embed")


@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
  """Sizes of a SigLIP text tower. Defaults are the `tiny` variant.

  `embed_dim` is the output projection width (None = width).
  """
  vocab_size: int = 512
  max_len: int = 64
  width: int = 64
  depth: int = 2
  mlp_dim: int = 256
  n_heads: int = 2
  embed_dim: int | None = None
  norm_eps: float = 1e-6
  activation: str = "gelu_tanh"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "max_len", "width", "depth", "mlp_dim",
                 "n_heads"):
      if getattr(self, name) <= 0:
        raise ValueError(f"TextTowerConfig.{name} must be positive, got "
                         f"{getattr(self, name)}.")
    if self.embed_dim is not None and self.embed_dim <= 0:
      raise ValueError(f"embed_dim must be positive or None (= width), got "
                       f"{self.embed_dim}.")
    if self.width % self.n_heads:
      raise ValueError(f"width={self.width} is not divisible by n_heads="
                       f"{self.n_heads}; change one so heads split the width.")
    layers.activation_fn(self.activation)  # ValueError listing the names.
    config_util.check_dtypes(self)

  @property
  def out_dim(self) -> int:
    """Width of the pooled output (embed_dim, or width when None)."""
    return self.width if self.embed_dim is None else self.embed_dim

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> TextTowerConfig:
    """Builds a config from a mapping, rejecting keys it does not know."""
    return config_util.from_dict(cls, d)


_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=64, depth=2, mlp_dim=256, n_heads=2),
    "small": dict(width=192, depth=4, mlp_dim=768, n_heads=3),
    # SigLIP B/16 text tower (32k sentencepiece vocabulary, 64 tokens).
    "B": dict(width=768, depth=12, mlp_dim=3072, n_heads=12, vocab_size=32000),
}
VARIANT_NAMES = tuple(_VARIANTS)


def text_variant(name: str, **overrides: Any) -> TextTowerConfig:
  """The named variant (see VARIANT_NAMES) with fields replaced by overrides."""
  if name not in _VARIANTS:
    raise ValueError(f"Unknown text tower variant {name!r}; allowed: "
                     f"{list(VARIANT_NAMES)}.")
  return TextTowerConfig.from_dict({**_VARIANTS[name], **overrides})


class TextTower(nn.Module):
  """SigLIP text transformer: bidirectional encoder, last-token pooling."""
  cfg: TextTowerConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, *,
               pad_mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids.

    Args:
      tokens: int32[B, L], L <= max_len, padded to a fixed length (see the
        module docstring).
      pad_mask: optional bool[B, L], True on real tokens; padding is then
        hidden from every query as a key. SigLIP itself trains without one.

    Returns:
      (tokens [B, L, D] after final_layer_norm, pooled [B, embed_dim] =
      head(tokens[:, -1])).
    """
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    chex.assert_rank(tokens, 2)
    batch, length = tokens.shape
    if length > cfg.max_len:
      raise ValueError(f"Text of {length} tokens is longer than the tower's "
                       f"max_len={cfg.max_len}; truncate it or raise max_len.")
    mask = None
    if pad_mask is not None:
      chex.assert_shape(pad_mask, (batch, length))
      mask = pad_mask.astype(bool)[:, None, :]

    std = 1.0 / math.sqrt(cfg.width)
    x = nn.Embed(cfg.vocab_size, cfg.width, name="token_embedding",
                 embedding_init=_logical(nn.initializers.normal(std),
                                         ("vocab", "embed")), **kw)(tokens)
    pos = self.param("position_embedding",
                     _logical(nn.initializers.normal(std), (None, "embed")),
                     (cfg.max_len, cfg.width), param_dtype)
    x = nn.with_logical_constraint(x + pos[:length].astype(dtype), _ACT)
    for i in range(cfg.depth):
      x = vision.EncoderBlock(n_heads=cfg.n_heads, mlp_dim=cfg.mlp_dim,
                              activation=cfg.activation, norm_eps=cfg.norm_eps,
                              name=f"layers_{i}", **kw)(x, mask)
    x = vision.layer_norm(cfg.norm_eps, name="final_layer_norm", **kw)(x)
    x = nn.with_logical_constraint(x, _ACT)
    pooled = nn.Dense(cfg.out_dim, name="head",
                      kernel_init=_logical(nn.initializers.lecun_normal(),
                                           ("embed", None)),
                      bias_init=_logical(nn.initializers.zeros, (None,)),
                      **kw)(x[:, -1])
    return x, pooled


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / ||x|| over the last axis, in float32 (eps guards a zero vector)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


class TwoTower(nn.Module):
  """Image and text towers with a shared embedding space (SigLIP / CLIP).

  Image embedding: the vision tower's pooled output (MAP head, CLIP's CLS;
  mean of tokens when pool='none'), through `img_head` when the vision width
  differs from embed_dim. Text embedding: the text tower's pooled output,
  whose head already maps to embed_dim.

  `logit_scale` (t') starts at log(10) and `logit_bias` (b) at -10, as in the
  SigLIP paper; Hugging Face's random init uses 0 and 0 instead.

  Attributes:
    vision: the image tower.
    text: the text tower; its embed_dim must be None or equal embed_dim.
    embed_dim: E, the width of the shared space.
  """
  vision: vision.VisionConfig
  text: TextTowerConfig
  embed_dim: int

  def setup(self):
    text = self.text
    if text.embed_dim is None:
      text = dataclasses.replace(text, embed_dim=self.embed_dim)
    elif text.embed_dim != self.embed_dim:
      raise ValueError(f"text.embed_dim={text.embed_dim} differs from "
                       f"TwoTower.embed_dim={self.embed_dim}; set them equal "
                       f"or leave text.embed_dim=None.")
    self.vision_model = vision.VisionEncoder(self.vision)
    self.text_model = TextTower(text)
    if self.vision.width != self.embed_dim:
      self.img_head = nn.Dense(
          self.embed_dim, dtype=jnp.dtype(self.vision.dtype),
          param_dtype=jnp.dtype(self.vision.param_dtype),
          kernel_init=_logical(nn.initializers.lecun_normal(),
                               ("embed", None)),
          bias_init=_logical(nn.initializers.zeros, (None,)))
    self.logit_scale = self.param(
        "logit_scale", _logical(nn.initializers.constant(math.log(10.0)), ()),
        (), jnp.float32)
    self.logit_bias = self.param(
        "logit_bias", _logical(nn.initializers.constant(-10.0), ()), (),
        jnp.float32)

  def encode_image(self, images: jax.Array) -> jax.Array:
    """images: [B, H, W, C] -> zimg f32[B, E], unit L2 norm."""
    out = self.vision_model(images)
    z = out.tokens.mean(axis=1) if out.pooled is None else out.pooled
    if self.vision.width != self.embed_dim:
      z = self.img_head(z)
    return l2_normalize(z)

  def encode_text(self, tokens: jax.Array,
                  pad_mask: jax.Array | None = None) -> jax.Array:
    """tokens: int32[B, L] -> ztxt f32[B, E], unit L2 norm."""
    _, pooled = self.text_model(tokens, pad_mask=pad_mask)
    return l2_normalize(pooled)

  def __call__(self, images: jax.Array, tokens: jax.Array,
               pad_mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """Returns {'zimg' [B, E], 'ztxt' [B, E], 'logit_scale' t', 'logit_bias'}.

    `logit_scale` is the raw t': the loss multiplies by exp(t').
    """
    return {"zimg": self.encode_image(images),
            "ztxt": self.encode_text(tokens, pad_mask),
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias}
