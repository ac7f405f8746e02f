"""Decoder-only language model: LLaMA, Qwen2 and Gemma style.

Module tree (the Hugging Face importer maps onto these names):

  embed                      nn.Embed, embedding [V, D]
  layers_{i}                 DecoderBlock
    attn_norm, attn{q,k,v,o}, mlp_norm, mlp{gate,up,down}
    post_attn_norm, post_mlp_norm   only with post_norms (Gemma 2)
  final_norm
  lm_head                    kernel [D, V]; absent with tie_embeddings
  xattn_{i}                  GatedCrossAttention before layers_{i}
                             (only with xattn_every > 0)

With scan_layers=True the blocks become one scanned `layers` entry whose leaves
carry a leading [n_layers] axis (logical name 'layers');
`remat.stack_layer_params` / `remat.unstack_layer_params` convert between the
two trees. The remat policy (config.remat) never changes the tree.

KV cache: a list with one {'k', 'v'} dict per layer, each [B, Kh, S_max, Dh]
(heads-major, Hugging Face's layout: a decode step reads it without
transposing it; with [B, S_max, Kh, Dh] XLA:CPU's decode attention was 5x
slower). Layers with cross-attention add the projected media keys/values
'media_k', 'media_v' [B, M * Tm, H, Dh] once a call with media has filled
them.
Prefill writes slots 0..P-1 with `cache_index=0`; each later call writes its
tokens at `cache_index` and attends over every slot up to its own.
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
from mmjax.models import cross_attention
from mmjax.models import layers
from mmjax.models import linear
from mmjax.models import masks
from mmjax.models import positions as positions_lib
from mmjax.models import remat as remat_lib

KVCache = list[dict[str, jax.Array]]

MLP_ACTIVATIONS = ("silu", "gelu_tanh", "gelu")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Sizes and family switches of a decoder LM.

  Defaults are a tiny LLaMA-style model for tests.
  """
  vocab_size: int = 512
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int | None = None  # None -> d_model // n_heads.
  mlp_dim: int = 256
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2.
  tie_embeddings: bool = False  # Gemma.
  embed_scale: bool = False  # Gemma: embeddings * sqrt(d_model).
  norm_offset_one: bool = False  # Gemma RMSNorm: x * (1 + scale).
  # 'silu', 'gelu_tanh' (Gemma) or 'gelu' (exact erf GELU: Gemma-1 configs
  # with hidden_act='gelu', which transformers 4.57.1 computes exactly).
  mlp_activation: str = "silu"
  logit_softcap: float = 0.0  # 0 = off; else cap * tanh(logits / cap).
  # Gemma 2 switches; the defaults leave every other model unchanged.
  # Attention scores capped as cap * tanh(s / cap) (0 = off).
  attn_logit_softcap: float = 0.0
  # Scores scaled by query_pre_attn_scalar**-0.5 instead of head_dim**-0.5.
  query_pre_attn_scalar: float | None = None
  # RMSNorms on the attention and MLP outputs before each residual add
  # (post_attn_norm, post_mlp_norm).
  post_norms: bool = False
  # Local attention: a query sees the `sliding_window` most recent slots
  # (itself included) in the layers `sliding_layers` (None = every layer);
  # 0 = off.
  sliding_window: int = 0
  sliding_layers: tuple[int, ...] | None = None
  # Prefix-LM (PaliGemma): with `prefix_len` given to the call, tokens before
  # it attend bidirectionally, the rest causally.
  prefix_lm: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  # M-RoPE (Qwen2-VL): rotary frequencies per (t, h, w) section, summing to
  # head_dim // 2; positions then come as [3, B, L]. None = 1-D RoPE.
  mrope_sections: tuple[int, ...] | None = None
  # Flamingo gated cross-attention before layers i with (i + 1) % n == 0
  # (OpenFlamingo's cross_attn_every_n_layers); 0 = none.
  xattn_every: int = 0
  xattn_media: str = "last"  # 'last' (most recent image) or 'all'.
  # Activation checkpointing per block: remat.REMAT_POLICIES.
  remat: str = "none"
  # Self-attention kernel: layers.ATTENTION_IMPLS ('cudnn' on NVIDIA GPUs).
  attention: str = "einsum"
  # > 1: calls without a KV cache ('einsum' kernel) score the queries in
  # this many chunks, each against the keys up to its own end: the same
  # attention, (n + 1) / (2 n) of the score and softmax work (the mask is
  # causal). Ignored with prefix_lm; bidirectional image blocks (block_ids)
  # refuse it. 0 = the full square.
  causal_chunks: int = 0
  # Run the blocks under nn.scan (one compiled block; stacked param tree,
  # see the module docstring). Full-sequence calls only: no KV cache.
  scan_layers: bool = False

  def __post_init__(self):
    remat_lib.check_remat(self.remat, "DecoderConfig.remat")
    layers.check_attention(self.attention, "DecoderConfig.attention")
    if (isinstance(self.causal_chunks, bool) or
        not isinstance(self.causal_chunks, int) or self.causal_chunks < 0):
      raise ValueError(f"causal_chunks must be an int >= 0 (0 = off), got "
                       f"{self.causal_chunks!r}.")
    if self.scan_layers and self.xattn_every:
      raise ValueError("scan_layers=True needs identical blocks; it cannot "
                       "interleave cross-attention (set xattn_every=0 or "
                       "scan_layers=False).")
    if self.sliding_layers is not None:
      object.__setattr__(self, "sliding_layers",
                         tuple(int(i) for i in self.sliding_layers))
      bad = [i for i in self.sliding_layers if not 0 <= i < self.n_layers]
      if bad:
        raise ValueError(f"sliding_layers {bad} out of range for n_layers="
                         f"{self.n_layers}.")
    if self.sliding_window < 0:
      raise ValueError(f"sliding_window must be >= 0 (0 = off), got "
                       f"{self.sliding_window}.")
    if self.scan_layers and self.local_layers not in (
        (), tuple(range(self.n_layers))):
      raise ValueError("scan_layers=True needs identical blocks; it cannot "
                       "mix sliding-window and global layers (set "
                       "scan_layers=False).")
    if self.attn_logit_softcap < 0:
      raise ValueError(f"attn_logit_softcap must be >= 0 (0 = off), got "
                       f"{self.attn_logit_softcap}.")
    if self.attn_logit_softcap > 0 and self.attention != "einsum":
      raise ValueError(f"attn_logit_softcap needs attention='einsum', got "
                       f"{self.attention!r}.")
    if self.query_pre_attn_scalar is not None and not (
        self.query_pre_attn_scalar > 0):
      raise ValueError(f"query_pre_attn_scalar must be > 0 or None, got "
                       f"{self.query_pre_attn_scalar}.")
    if self.mrope_sections is not None:
      object.__setattr__(self, "mrope_sections",
                         tuple(int(s) for s in self.mrope_sections))
      if sum(self.mrope_sections) != self.resolved_head_dim // 2:
        raise ValueError(
            f"mrope_sections={self.mrope_sections} must sum to head_dim // 2 "
            f"= {self.resolved_head_dim // 2}")
    if self.xattn_every < 0 or self.xattn_every > self.n_layers:
      raise ValueError(f"xattn_every={self.xattn_every} must lie in [0, "
                       f"n_layers={self.n_layers}]")
    if self.xattn_media not in ("last", "all"):
      raise ValueError(f"xattn_media={self.xattn_media!r}; allowed: "
                       "'last', 'all'")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of "
                       f"n_kv_heads={self.n_kv_heads}.")
    if self.head_dim is None and self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by n_heads="
                       f"{self.n_heads}; set head_dim explicitly.")
    if self.resolved_head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got "
                       f"{self.resolved_head_dim}.")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(f"mlp_activation={self.mlp_activation!r}; allowed: "
                       f"{list(MLP_ACTIVATIONS)}.")
    if self.logit_softcap < 0:
      raise ValueError(f"logit_softcap must be >= 0 (0 = off), got "
                       f"{self.logit_softcap}.")
    config_util.check_dtypes(self)

  @property
  def xattn_layers(self) -> tuple[int, ...]:
    """Indices of the layers preceded by a gated cross-attention block."""
    n = self.xattn_every
    return tuple(i for i in range(self.n_layers) if n and (i + 1) % n == 0)

  @property
  def local_layers(self) -> tuple[int, ...]:
    """Indices of the sliding-window (local attention) layers."""
    if not self.sliding_window:
      return ()
    if self.sliding_layers is None:
      return tuple(range(self.n_layers))
    return tuple(sorted(set(self.sliding_layers)))

  @property
  def attn_scale(self) -> float | None:
    """Attention score scale; None = 1/sqrt(head_dim)."""
    if self.query_pre_attn_scalar is None:
      return None
    return float(self.query_pre_attn_scalar) ** -0.5

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim if self.head_dim is not None else (
        self.d_model // self.n_heads)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> DecoderConfig:
    """Builds a config from a mapping, rejecting keys it does not know."""
    return config_util.from_dict(cls, d)


def init_kv_cache(cfg: DecoderConfig,
                  batch: int,
                  max_len: int,
                  dtype: Any = None) -> KVCache:
  """Zero KV cache: one {'k', 'v'} dict per layer, each [B, Kh, max_len, Dh].

  dtype defaults to cfg.dtype.
  """
  dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
  shape = (batch, cfg.n_kv_heads, max_len, cfg.resolved_head_dim)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
          for _ in range(cfg.n_layers)]


class DecoderBlock(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)).

  With cfg.post_norms (Gemma 2) each sublayer's output is normed again
  before the residual add: x + norm(attn(norm(x))).
  """
  cfg: DecoderConfig

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      rotary: tuple[jax.Array, jax.Array],
      mask: jax.Array,
      cache: dict[str, jax.Array] | None = None,
      cache_index: jax.Array | int | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """x: [B, L, D]; rotary: (cos, sin) f32[B, L, Dh]
    (`positions.rotary_tables`); mask: bool[B, L, S].

    Returns (x, new cache or None): also the (carry, output) of a scan step.
    """
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

    def norm(name):
      return layers.RMSNorm(eps=cfg.norm_eps, offset_one=cfg.norm_offset_one,
                            dtype=dtype, param_dtype=param_dtype, name=name)

    h, new_cache = layers.Attention(
        n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
        head_dim=cfg.resolved_head_dim, rope_theta=cfg.rope_theta,
        qkv_bias=cfg.qkv_bias, mrope_sections=cfg.mrope_sections,
        softcap=cfg.attn_logit_softcap, scale=cfg.attn_scale,
        # A prefix attends bidirectionally: no causal shortcut.
        causal_chunks=0 if cfg.prefix_lm else cfg.causal_chunks,
        attention=cfg.attention, dtype=dtype, param_dtype=param_dtype,
        name="attn")(norm("attn_norm")(x), None, mask=mask, cache=cache,
                     cache_index=cache_index, rotary=rotary)
    if cfg.post_norms:
      h = norm("post_attn_norm")(h)
    x = nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
    h = layers.GatedMLP(mlp_dim=cfg.mlp_dim, activation=cfg.mlp_activation,
                        dtype=dtype, param_dtype=param_dtype,
                        name="mlp")(norm("mlp_norm")(x))
    if cfg.post_norms:
      h = norm("post_mlp_norm")(h)
    x = nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
    return x, new_cache


class DecoderLM(nn.Module):
  """Decoder-only LM: float32 logits and, with a cache, the updated cache."""
  cfg: DecoderConfig

  def setup(self):
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.embed = nn.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.d_model, dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "normal",
                                             out_axis=0),
            ("vocab", "embed")))
    block = remat_lib.remat_block(DecoderBlock, cfg.remat,
                                  prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(cfg)
    else:
      # A list attribute in setup names its entries layers_0, layers_1, ...
      self.layers = [block(cfg) for _ in range(cfg.n_layers)]
    # A dict attribute names its entries xattn_<key>: xattn_3 sits before
    # layers_3.
    self.xattn = {str(i): cross_attention.GatedCrossAttention(
        n_heads=cfg.n_heads, mlp_dim=cfg.mlp_dim, norm_eps=cfg.norm_eps,
        mlp_activation=cfg.mlp_activation, dtype=dtype,
        param_dtype=param_dtype) for i in cfg.xattn_layers}
    self.final_norm = layers.RMSNorm(eps=cfg.norm_eps,
                                     offset_one=cfg.norm_offset_one,
                                     dtype=dtype, param_dtype=param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = linear.Dense(
          cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.lecun_normal(), ("embed", "vocab")))

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    """tokens: int32[B, L] -> [B, L, D], scaled by sqrt(D) when configured."""
    x = self.embed(tokens)
    if self.cfg.embed_scale:
      # Cast the factor first, as Gemma does, so bf16 rounding matches.
      x = x * jnp.asarray(math.sqrt(self.cfg.d_model), x.dtype)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def __call__(
      self,
      tokens: jax.Array | None = None,
      positions: jax.Array | None = None,
      *,
      embeddings: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      attention_mask: jax.Array | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | int | None = None,
      media: jax.Array | None = None,
      media_times: jax.Array | None = None,
      media_valid: jax.Array | None = None,
      block_ids: jax.Array | None = None,
      prefix_len: jax.Array | None = None,
      layer_range: tuple[int, int] | None = None,
      logits: bool = True,
  ) -> tuple[jax.Array, KVCache | None]:
    """Runs the LM over a token or embedding sequence.

    Args:
      tokens: int32[B, L]; exclusive with `embeddings`.
      positions: [B, L] int or float RoPE positions, or [3, B, L] with
        M-RoPE. Default: arange(L) (+ cache_index with a cache; three equal
        copies with M-RoPE); with segment_ids, restart at each segment.
      embeddings: [B, L, D] already-embedded inputs (e.g. `embed_tokens` output
        with image features scattered in); not scaled again.
      segment_ids: int32[B, L] packing ids (0 = padding); training only.
      attention_mask: bool[B, L, S] extra mask ANDed with the causal one; S = L,
        or S_max with a cache (e.g. to hide left padding).
      cache: `init_kv_cache` output or the cache a previous call returned.
      cache_index: int32 scalar, cache slot of the first input token.
      media: [B, M, Tm, Dm] media tokens for the gated cross-attention blocks
        (config.xattn_every > 0); None skips the blocks (text-only input).
      media_times: int32[B, L], media items seen at or before each token
        (`cross_attention.text_time` of the media locations); with a cache,
        the counts of the new tokens.
      media_valid: bool[B, M], False for padding media items.
      block_ids: int32[B, L]; tokens sharing a non-zero id see each other
        in both directions (image blocks, prefix-LM style); 0 = causal only.
      prefix_len: int32[B] (config.prefix_lm only): slots < prefix_len[b]
        attend to each other bidirectionally (PaliGemma's image + prompt);
        later tokens stay causal. With a cache, slots are cache slots; None
        = causal.
      layer_range: (a, b) runs only blocks a..b-1 (token pruning between
        layers, `mmjax.decoding.fastv`); with a > 0 `embeddings` are the hidden
        states entering block a, `cache` has b - a entries, and with
        b < n_layers the output is the hidden state [B, L, D], not logits.
        None = (0, n_layers).
      logits: False returns the final-normed hidden state [B, L, D] instead
        of logits; `head` maps it to logits (e.g. a few positions at a time,
        `losses.chunked_lm_loss`).

    Returns:
      (logits f32[B, L, V], new cache or None). With a cache, layers with
      cross-attention also keep the media keys/values ('media_k',
      'media_v'), which later calls reuse instead of projecting `media`.
    """
    cfg = self.cfg
    first, last = layer_range or (0, cfg.n_layers)
    if not 0 <= first < last <= cfg.n_layers:
      raise ValueError(f"layer_range={layer_range} must satisfy 0 <= a < b <= "
                       f"n_layers={cfg.n_layers}.")
    # Validate everything before any computation.
    if (tokens is None) == (embeddings is None):
      raise ValueError("Pass exactly one of tokens= and embeddings=.")
    if cache is not None:
      if len(cache) != last - first:
        raise ValueError(f"cache has {len(cache)} layers, the call runs "
                         f"{last - first}.")
      if cache_index is None:
        raise ValueError("A cache needs cache_index (slot of the first token).")
      if segment_ids is not None:
        raise ValueError("segment_ids (packing) is for training; with a cache "
                         "pass attention_mask over the cache slots instead.")
      if cfg.scan_layers:
        raise ValueError("scan_layers=True has no KV cache; decode with a "
                         "scan_layers=False model and "
                         "remat.unstack_layer_params(params).")

    if embeddings is None:
      chex.assert_rank(tokens, 2)
      x = self.embed_tokens(tokens)
    else:
      chex.assert_rank(embeddings, 3)
      chex.assert_axis_dimension(embeddings, 2, cfg.d_model)
      x = nn.with_logical_constraint(embeddings.astype(jnp.dtype(cfg.dtype)),
                                     ("batch", "length", "embed"))
    batch, length = x.shape[:2]

    if cache is not None:
      cache_index = jnp.asarray(cache_index, jnp.int32)
      offset = cache_index
      kv_len = cache[0]["k"].shape[2]
    else:
      offset = 0
      kv_len = length

    if positions is None:
      if segment_ids is not None:
        positions = masks.segment_positions(segment_ids)
      else:
        positions = jnp.broadcast_to(
            offset + jnp.arange(length, dtype=jnp.int32), (batch, length))
      if cfg.mrope_sections:
        positions = jnp.broadcast_to(positions, (3, batch, length))
    chex.assert_shape(positions, (3, batch, length) if cfg.mrope_sections
                      else (batch, length))
    # Once for every layer, q and k, forward and backward.
    rotary = positions_lib.rotary_tables(
        positions, cfg.resolved_head_dim, cfg.rope_theta, cfg.mrope_sections)
    if media is not None:
      if not cfg.xattn_layers:
        raise ValueError("media= given but the config has no cross-attention "
                         "layers (xattn_every=0).")
      if media_times is None:
        raise ValueError("media= needs media_times (text_time of the media "
                         "locations).")
      chex.assert_rank(media, 4)
      n_media, per_media = media.shape[1], media.shape[2]
      xmask = cross_attention.media_mask(media_times, n_media, per_media,
                                         cfg.xattn_media, media_valid)
      media_flat = nn.with_logical_constraint(
          media.reshape(batch, n_media * per_media, media.shape[-1]),
          ("batch", "length", "embed"))

    mask = masks.causal_mask(length, kv_len, offset)[None]
    if prefix_len is not None:
      if not cfg.prefix_lm:
        raise ValueError("prefix_len= given but the config has prefix_lm="
                         "False; set DecoderConfig.prefix_lm=True.")
      chex.assert_shape(prefix_len, (batch,))
      mask = mask | masks.prefix_mask(prefix_len, length, kv_len, offset)
    if block_ids is not None:
      if cfg.causal_chunks > 1:
        raise ValueError(f"block_ids make image blocks attend bidirectionally"
                         f"; causal_chunks={cfg.causal_chunks} assumes a "
                         "causal mask: set causal_chunks=0.")
      chex.assert_shape(block_ids, (batch, length))
      kv_blocks = block_ids if cache is None else jax.lax.dynamic_update_slice(
          jnp.zeros((batch, kv_len), block_ids.dtype), block_ids, (0, offset))
      same = block_ids[:, :, None] == kv_blocks[:, None, :]
      mask = mask | (same & (block_ids[:, :, None] > 0))
    if segment_ids is not None:
      chex.assert_shape(segment_ids, (batch, length))
      mask = mask & masks.segment_mask(segment_ids, segment_ids)
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)
    mask = jnp.broadcast_to(mask, (batch, length, kv_len))
    local = cfg.local_layers
    if local:
      local_mask = mask & masks.sliding_window_mask(
          length, kv_len, cfg.sliding_window, offset)[None]
      if cfg.scan_layers:  # every layer is local (checked by the config)
        mask = local_mask

    new_cache = [] if cache is not None else None
    if cfg.scan_layers:
      if layer_range is not None:
        raise ValueError("layer_range needs scan_layers=False.")
      x, _ = self.layers(x, rotary, mask)
    else:
      for i in range(first, last):
        old = None if cache is None else cache[i - first]
        media_kv = None
        if media is not None and str(i) in self.xattn:
          media_kv = (old["media_k"], old["media_v"]) if (
              old is not None and "media_k" in old) else None
          x, media_kv = self.xattn[str(i)](x, media_flat, xmask, media_kv)
        x, layer_cache = self.layers[i](
            x, rotary, local_mask if i in local else mask,
            None if old is None else
            {"k": old["k"], "v": old["v"]}, cache_index)
        if new_cache is not None:
          if media_kv is not None:
            layer_cache = dict(layer_cache, media_k=media_kv[0],
                               media_v=media_kv[1])
          new_cache.append(layer_cache)
    if last < cfg.n_layers:
      return x, new_cache

    x = self.final_norm(x)
    return (self.head(x) if logits else x), new_cache

  def head(self, x: jax.Array) -> jax.Array:
    """Final-normed hidden states [B, L, D] -> logits f32[B, L, V]."""
    cfg = self.cfg
    if cfg.tie_embeddings:
      out = self.embed.attend(x)
    else:
      out = self.lm_head(x)
    out = out.astype(jnp.float32)
    if cfg.logit_softcap > 0:
      out = cfg.logit_softcap * jnp.tanh(out / cfg.logit_softcap)
    return nn.with_logical_constraint(out, ("batch", "length", "vocab"))

  @staticmethod
  def init_cache(cfg: DecoderConfig,
                 batch: int,
                 max_len: int,
                 dtype: Any = None) -> KVCache:
    """Same as `init_kv_cache`."""
    return init_kv_cache(cfg, batch, max_len, dtype)


def param_count(params: Any) -> int:
  """Number of scalars in a (possibly boxed) parameter tree."""
  return sum(int(x.size) for x in jax.tree.leaves(nn.unbox(params)))
