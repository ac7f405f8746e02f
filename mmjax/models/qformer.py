"""BLIP-2 Q-Former: learned queries that read frozen vision features.

A BERT (post-LN) encoder over the joint sequence [queries; text]. Every layer
self-attends over the joint sequence under a mode-dependent mask; layers with
`i % cross_attention_freq == 0` also let the *query* positions cross-attend to
the vision features; query and text positions have separate FFNs.

Module tree and Hugging Face names (`Blip2QFormerModel` = `qformer.*`;
`query_tokens` and the text embeddings sit beside it in HF; torch Linear
[out, in] is transposed into our [in, ...] kernels, q/k/v reshaped to
[in, H, Dh] and o to [H, Dh, out]):

  query_tokens [1, Q, W]                    query_tokens
  word_embeddings/embedding [V, W]          embeddings.word_embeddings
  position_embeddings/embedding [Lmax, W]   embeddings.position_embeddings
  layernorm                                 qformer.layernorm (on [queries;
                                            text], as HF and LAVIS)
  layer_{i}/attention/attention/{q,k,v}     E.attention.attention.{query,
                                            key,value}
  layer_{i}/attention/attention/o           E.attention.output.dense
  layer_{i}/attention/LayerNorm             E.attention.output.LayerNorm
  layer_{i}/crossattention/...              E.crossattention.* (same layout as
                                            attention; k/v read vision_width)
  layer_{i}/intermediate_query              E.intermediate_query.dense
  layer_{i}/output_query/{dense,LayerNorm}  E.output_query.{dense,LayerNorm}
  layer_{i}/intermediate, output/...        E.intermediate / E.output (text
                                            FFN; present iff vocab_size > 0)

  (E = qformer.encoder.layer.{i}; LayerNorm weight -> scale.)

The text path (word/position embeddings, text FFNs) exists only when
`vocab_size > 0`. Stage-1 heads live in `QFormerPretrainHeads`; the linear to
the LM width (HF `language_projection`) belongs to the assembled model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import config_util
from mmjax.models import layers

_logical = layers._logical  # pylint: disable=protected-access

MODES = ("query", "itc", "itm", "itg")


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
  """Q-Former sizes; defaults are test-tiny (BLIP-2: W 768, depth 12, 12 heads,
  mlp 3072, vision_width 1408, vocab 30523, max_text_len 512)."""
  n_queries: int = 32
  width: int = 64
  depth: int = 2
  n_heads: int = 4
  mlp_dim: int = 128
  cross_attention_freq: int = 2
  vision_width: int = 48
  vocab_size: int = 0  # 0 = no text path (stage 2 only needs the queries).
  max_text_len: int = 32
  norm_eps: float = 1e-12
  activation: str = "gelu"
  proj_dim: int = 256  # ITC embedding width (HF image_text_hidden_size).
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    for name in ("n_queries", "width", "depth", "n_heads", "mlp_dim",
                 "cross_attention_freq", "vision_width", "max_text_len",
                 "proj_dim"):
      if getattr(self, name) < 1:
        raise ValueError(f"QFormerConfig.{name} must be >= 1, got "
                         f"{getattr(self, name)}.")
    if self.vocab_size < 0:
      raise ValueError(f"vocab_size must be >= 0 (0 = no text path), got "
                       f"{self.vocab_size}.")
    if self.width % self.n_heads:
      raise ValueError(f"width={self.width} is not divisible by n_heads="
                       f"{self.n_heads}.")
    layers.activation_fn(self.activation)  # Raises on an unknown name.
    config_util.check_dtypes(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> QFormerConfig:
    """Builds a config from a mapping, rejecting keys it does not know."""
    return config_util.from_dict(cls, d)


def qformer_attention_mask(n_query: int, text_len: int, mode: str,
                           text_pad_mask: jax.Array | None = None
                           ) -> jax.Array:
  """Self-attention mask over the joint sequence [queries; text].

  Args:
    n_query: Q query positions (first).
    text_len: Lt text positions (after the queries).
    mode: 'query' (queries only, text_len must be 0), 'itc' (uni-modal:
      queries see queries, text sees text), 'itm' (bidirectional: all see
      all), 'itg' (queries see queries; text sees every query and text j <= i).
    text_pad_mask: bool[B, Lt], True = a real token (HF attention_mask
      convention); False keys are masked in every mode. None = no padding.

  Returns:
    bool[B, Q+Lt, Q+Lt] (B = 1 without text_pad_mask), True = may attend.
  """
  if mode not in MODES:
    raise ValueError(f"unknown Q-Former mode {mode!r}; allowed: "
                     f"{', '.join(MODES)}.")
  if mode == "query" and text_len:
    raise ValueError("mode 'query' runs the queries alone; got text_len="
                     f"{text_len}. Use 'itc', 'itm' or 'itg' with text.")
  s = n_query + text_len
  idx = jnp.arange(s)
  is_query = idx < n_query
  q_row, q_col = is_query[:, None], is_query[None, :]
  if mode in ("query", "itm"):
    mask = jnp.ones((s, s), bool)
  elif mode == "itc":
    mask = q_row == q_col
  else:  # itg
    mask = q_col | (~q_row & (idx[:, None] >= idx[None, :]))
  if text_pad_mask is None:
    return mask[None]
  chex.assert_shape(text_pad_mask, (None, text_len))
  keep = jnp.concatenate(
      [jnp.ones((text_pad_mask.shape[0], n_query), bool),
       text_pad_mask.astype(bool)], axis=1)
  return mask[None] & keep[:, None, :]


def _layer_norm(cfg: QFormerConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype), name=name,
      scale_init=_logical(nn.initializers.ones, ("embed",)),
      bias_init=_logical(nn.initializers.zeros, ("embed",)))


def _dense(cfg: QFormerConfig, features: int, names: tuple[Any, Any],
           name: str) -> nn.Dense:
  return nn.Dense(
      features, dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype), name=name,
      kernel_init=_logical(nn.initializers.lecun_normal(), names),
      bias_init=_logical(nn.initializers.zeros, (names[1],)))


class _AttentionBlock(nn.Module):
  """BERT attention + add & post-LN (HF `Blip2QFormerAttention`)."""
  cfg: QFormerConfig

  @nn.compact
  def __call__(self, x: jax.Array, kv: jax.Array | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    """x: [B, L, W], kv: [B, S, Dkv] or None -> LN(x + attn(x, kv))."""
    cfg = self.cfg
    h = layers.MultiHeadAttention(
        n_heads=cfg.n_heads, use_bias=True, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), name="attention")(
            x, kv, mask=mask)
    return _layer_norm(cfg, "LayerNorm")(x + h)


class _DenseAddNorm(nn.Module):
  """`LN(residual + dense(h))` (HF `Blip2QFormerOutput`)."""
  cfg: QFormerConfig

  @nn.compact
  def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = _dense(cfg, cfg.width, ("mlp", "embed"), "dense")(h)
    return _layer_norm(cfg, "LayerNorm")(residual + h)


class QFormerLayer(nn.Module):
  """One Q-Former layer; cross-attends iff index % cross_attention_freq == 0."""
  cfg: QFormerConfig
  index: int

  def _ffn(self, x: jax.Array, suffix: str) -> jax.Array:
    cfg = self.cfg
    h = _dense(cfg, cfg.mlp_dim, ("embed", "mlp"), "intermediate" + suffix)(x)
    h = layers.activation_fn(cfg.activation)(h)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return _DenseAddNorm(cfg, name="output" + suffix)(h, x)

  @nn.compact
  def __call__(self, x: jax.Array, vision: jax.Array | None, *,
               mask: jax.Array, n_query: int,
               vision_mask: jax.Array | None) -> jax.Array:
    """x: [B, Q+Lt, W]; vision: [B, N, Dv]; mask: bool[B, Q+Lt, Q+Lt]."""
    h = _AttentionBlock(self.cfg, name="attention")(x, mask=mask)
    parts = []
    if n_query:
      q = h[:, :n_query]
      if self.index % self.cfg.cross_attention_freq == 0:
        q = _AttentionBlock(self.cfg, name="crossattention")(
            q, vision, mask=vision_mask)
      parts.append(self._ffn(q, "_query"))
    if h.shape[1] > n_query:
      parts.append(self._ffn(h[:, n_query:], ""))
    out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class QFormer(nn.Module):
  """BLIP-2 Q-Former (query path, plus the stage-1 text path).

  `init` creates every parameter whatever inputs it is given (missing vision
  or text are replaced by dummies during init only), so a model initialised
  for one mode can be applied in any other.
  """
  cfg: QFormerConfig

  @nn.compact
  def __call__(self, vision: jax.Array | None,
               text_tokens: jax.Array | None = None, *, mode: str = "query",
               text_pad_mask: jax.Array | None = None,
               vision_mask: jax.Array | None = None
               ) -> dict[str, jax.Array | None]:
    """Runs the Q-Former.

    Args:
      vision: f32[B, N, vision_width] frozen ViT features, or None (only in
        'itc' mode: the text-only side of ITC).
      text_tokens: int[B, Lt] (Lt <= max_text_len) or None.
      mode: 'query' (queries only; stage 2 and the ITC image side), 'itc',
        'itm' or 'itg'; see `qformer_attention_mask`.
      text_pad_mask: bool[B, Lt], True = real token; None = no padding.
      vision_mask: bool[B, N], True = real vision token; None = all real.

    Returns:
      {'query': f32[B, Q, W] or None (no vision), 'text': f32[B, Lt, W] or
       None (no text)}.
    """
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if mode not in MODES:
      raise ValueError(f"unknown Q-Former mode {mode!r}; allowed: "
                       f"{', '.join(MODES)}.")
    if text_tokens is not None and not cfg.vocab_size:
      raise ValueError("text_tokens given but QFormerConfig.vocab_size=0 (no "
                       "text path); set vocab_size to use ITC/ITM/ITG.")
    if mode == "query" and (vision is None or text_tokens is not None):
      raise ValueError("mode 'query' needs vision and no text_tokens.")
    if mode in ("itm", "itg") and (vision is None or text_tokens is None):
      raise ValueError(f"mode {mode!r} needs both vision and text_tokens.")
    if vision is None and text_tokens is None:
      raise ValueError("mode 'itc' needs vision, text_tokens or both.")
    has_vision, has_text = vision is not None, text_tokens is not None
    if self.is_initializing():
      # Build every branch once so later calls in any mode find their params.
      batch = (vision if has_vision else text_tokens).shape[0]
      if not has_vision:
        vision = jnp.zeros((batch, 1, cfg.vision_width), dtype)
      if not has_text and cfg.vocab_size:
        text_tokens = jnp.zeros((batch, 1), jnp.int32)

    pieces = []
    n_query = 0
    if vision is not None:
      chex.assert_rank(vision, 3)
      chex.assert_axis_dimension(vision, 2, cfg.vision_width)
      query_tokens = self.param(
          "query_tokens",
          _logical(nn.initializers.normal(0.02), (None, None, "embed")),
          (1, cfg.n_queries, cfg.width), param_dtype)
      n_query = cfg.n_queries
      pieces.append(jnp.broadcast_to(query_tokens.astype(dtype),
                                     (vision.shape[0], n_query, cfg.width)))
    text_len = 0
    if text_tokens is not None:
      chex.assert_rank(text_tokens, 2)
      text_len = text_tokens.shape[1]
      if text_len > cfg.max_text_len:
        raise ValueError(f"text length {text_len} exceeds max_text_len="
                         f"{cfg.max_text_len}.")
      embed = lambda n, names, name: nn.Embed(
          n, cfg.width, dtype=dtype, param_dtype=param_dtype, name=name,
          embedding_init=_logical(nn.initializers.normal(0.02), names))
      words = embed(cfg.vocab_size, ("vocab", "embed"), "word_embeddings")(
          text_tokens)
      pos = embed(cfg.max_text_len, (None, "embed"), "position_embeddings")(
          jnp.arange(text_len))
      pieces.append(words + pos[None])
    x = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)
    x = _layer_norm(cfg, "layernorm")(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    # During init the inputs may include dummies; any mask builds the params.
    mask = qformer_attention_mask(
        n_query, text_len, "itm" if self.is_initializing() else mode,
        text_pad_mask if has_text else None)
    xmask = None if vision_mask is None else vision_mask[:, None, :]
    for i in range(cfg.depth):
      x = QFormerLayer(cfg, i, name=f"layer_{i}")(
          x, vision, mask=mask, n_query=n_query, vision_mask=xmask)
    return {"query": x[:, :n_query] if has_vision else None,
            "text": x[:, n_query:] if has_text else None}


class QFormerConnector(nn.Module):
  """BLIP-2 stage-2 connector: Q-Former queries, then Linear(W, out_dim).

  Submodules `qformer` (QFormer) and `language_projection` (HF
  `Blip2Model.language_projection`, with bias).
  """
  cfg: QFormerConfig
  out_dim: int

  @nn.compact
  def __call__(self, vision: jax.Array,
               vision_mask: jax.Array | None = None) -> jax.Array:
    """vision: f32[B, N, vision_width], vision_mask: bool[B, N] or None ->
    f32[B, n_queries, out_dim]."""
    query = QFormer(self.cfg, name="qformer")(
        vision, mode="query", vision_mask=vision_mask)["query"]
    out = _dense(self.cfg, self.out_dim, ("embed", "mlp"),
                 "language_projection")(query)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class QFormerPretrainHeads(nn.Module):
  """Stage-1 BLIP-2 heads (a separate module: stage 2 never needs them).

  Parameters (HF `Blip2ForImageTextRetrieval` / LAVIS names):
    vision_projection Linear(W, proj_dim)  HF vision_projection (LAVIS
                                           vision_proj)
    text_projection Linear(W, proj_dim)    HF text_projection (LAVIS text_proj)
    itm_head Linear(W, 2)                  itm_head
    temp scalar, init 0.07                 LAVIS temp (ITC temperature)
    lm_transform, lm_transform_norm,       LAVIS cls.predictions.transform
    lm_decoder (iff vocab_size > 0)        .dense / .LayerNorm, .decoder (+bias)
                                           (untied from word_embeddings here).
  """
  cfg: QFormerConfig

  def setup(self):
    cfg = self.cfg
    self.vision_projection = _dense(cfg, cfg.proj_dim, ("embed", None),
                                    "vision_projection")
    self.text_projection = _dense(cfg, cfg.proj_dim, ("embed", None),
                                  "text_projection")
    self.itm_head = _dense(cfg, 2, ("embed", None), "itm_head")
    self.temp = self.param("temp", _logical(nn.initializers.constant(0.07),
                                            ()), (), jnp.float32)
    if cfg.vocab_size:
      self.lm_transform = _dense(cfg, cfg.width, ("embed", "mlp"),
                                 "lm_transform")
      self.lm_transform_norm = _layer_norm(cfg, "lm_transform_norm")
      self.lm_decoder = _dense(cfg, cfg.vocab_size, ("embed", "vocab"),
                               "lm_decoder")

  def itc_features(self, query: jax.Array, text: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    """query: [B, Q, W] ('query'/'itc' pass), text: [B, Lt, W] ('itc' pass).

    Returns L2-normalised (image_feats [B, Q, P], text_feat [B, P]); the text
    feature is the first ([CLS]) position.
    """
    normalize = lambda v: v * jax.lax.rsqrt(
        jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-24))
    return (normalize(self.vision_projection(query)),
            normalize(self.text_projection(text[:, 0])))

  def itm_logits(self, query: jax.Array) -> jax.Array:
    """query: [B, Q, W] from the 'itm' pass -> [B, 2] (mean over queries)."""
    return jnp.mean(self.itm_head(query), axis=1)

  def lm_logits(self, text: jax.Array) -> jax.Array:
    """text: [B, Lt, W] from the 'itg' pass -> [B, Lt, vocab_size]."""
    h = layers.activation_fn(self.cfg.activation)(self.lm_transform(text))
    return self.lm_decoder(self.lm_transform_norm(h))

  def __call__(self, query: jax.Array, text: jax.Array | None = None
               ) -> dict[str, jax.Array]:
    """All heads at once (used by `init`); keys that need text are omitted
    without it."""
    out = {"itm_logits": self.itm_logits(query), "temp": self.temp}
    if text is not None:
      out["image_feats"], out["text_feat"] = self.itc_features(query, text)
      if self.cfg.vocab_size:
        out["lm_logits"] = self.lm_logits(text)
    return out
