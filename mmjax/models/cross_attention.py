"""Flamingo-style tanh-gated cross-attention from text to media.

Inserted before chosen decoder layers (`DecoderConfig.xattn_every`). The block
follows Hugging Face Idefics (v1, Flamingo-style) so its weights can be
imported:

  x = x + tanh(alpha_cross_attn) * cross_attn(input_layernorm(x), media)
  x = x + tanh(alpha_dense) * mlp(post_attention_layernorm(x))

Both gates start at 0.0, so an untrained block is the identity and the model
equals the plain LM exactly.

Media masking (Flamingo): `text_time[b, l]` counts the media that appeared at
or before token l (cumsum of media locations); media item m (1-based) is
visible to the token when text_time == m ('last': only the most recent image)
or text_time >= m ('all': every preceding image). Tokens before any image get
zero cross-attention output.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers

XATTN_MEDIA = ("last", "all")


def text_time(media_locations: jax.Array) -> jax.Array:
  """bool[B, L] (True where a media item appears) -> int32[B, L] counts."""
  return jnp.cumsum(media_locations.astype(jnp.int32), axis=-1)


def media_mask(times: jax.Array, num_media: int, tokens_per_media: int,
               mode: str, media_valid: jax.Array | None = None) -> jax.Array:
  """Which media tokens each text token may attend to.

  Args:
    times: int32[B, L] from `text_time`.
    num_media: M media items per example.
    tokens_per_media: Tm latents per item.
    mode: 'last' (most recent item only) or 'all' (every preceding item).
    media_valid: bool[B, M] (False = padding item), or None.

  Returns:
    bool[B, L, M * Tm].
  """
  if mode not in XATTN_MEDIA:
    raise ValueError(f"xattn media mode {mode!r}; allowed: {XATTN_MEDIA}")
  media_time = jnp.arange(1, num_media + 1, dtype=jnp.int32)  # [M]
  t = times[..., None]  # [B, L, 1]
  allowed = (t == media_time) if mode == "last" else (t >= media_time)
  if media_valid is not None:
    allowed = allowed & media_valid[:, None, :]
  return jnp.repeat(allowed, tokens_per_media, axis=-1)


MediaKV = tuple[jax.Array, jax.Array]


class MediaAttention(nn.Module):
  """Bias-free cross-attention from text to media whose projected keys and
  values can be reused: the parameters (q, k, v [D, H, Dh], o [H, Dh, D])
  are those of `layers.MultiHeadAttention(use_bias=False)`."""
  n_heads: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, media: jax.Array, *, mask: jax.Array,
               media_kv: MediaKV | None = None) -> tuple[jax.Array, MediaKV]:
    """x: [B, L, D], media: [B, S, Dm], mask: bool[B, L, S] -> [B, L, D]."""
    head_dim = x.shape[-1] // self.n_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def heads_in(name, heads_name):
      return layers.HeadsIn(self.n_heads, head_dim, False, heads_name,
                            name=name, **kw)
    q = heads_in("q", "heads")(x)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    if media_kv is None:
      media = media.astype(self.dtype)
      media_kv = tuple(nn.with_logical_constraint(
          heads_in(name, "kv_heads")(media),
          ("batch", "length", "kv_heads", "head_dim")) for name in "kv")
    out = layers.dot_product_attention(q, *media_kv, mask, dtype=self.dtype)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads",
                                           "head_dim"))
    out = layers.HeadsOut(x.shape[-1], False, name="o", **kw)(out)
    return nn.with_logical_constraint(out, ("batch", "length", "embed")), (
        media_kv)


class GatedCrossAttention(nn.Module):
  """One gated cross-attention + gated MLP block (Idefics1 layout).

  Attributes:
    n_heads: attention heads (head_dim = D / n_heads).
    mlp_dim: hidden width of the gated (SwiGLU) MLP.
    norm_eps: RMSNorm epsilon.
  """
  n_heads: int
  mlp_dim: int
  norm_eps: float = 1e-6
  mlp_activation: str = "silu"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, media: jax.Array, mask: jax.Array,
               media_kv: MediaKV | None = None
               ) -> tuple[jax.Array, MediaKV]:
    """Gated update of the text stream.

    Args:
      x: [B, L, D] text hidden states.
      media: [B, S, Dm] media tokens (S = M * Tm, flattened).
      mask: bool[B, L, S] from `media_mask`.
      media_kv: the (keys, values) this block returned for the same media
        (decoding: projected once at prefill); None projects `media`.

    Returns:
      ([B, L, D], (keys, values) each [B, S, H, Dh]).
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    gate_init = nn.with_logical_partitioning(nn.initializers.zeros, ())
    alpha_attn = self.param("alpha_cross_attn", gate_init, (),
                            self.param_dtype)
    alpha_dense = self.param("alpha_dense", gate_init, (), self.param_dtype)
    h = layers.RMSNorm(eps=self.norm_eps, name="input_layernorm", **kw)(x)
    h, media_kv = MediaAttention(self.n_heads, name="cross_attn", **kw)(
        h, media, mask=mask, media_kv=media_kv)
    # A token that sees no media gets no update (not an average of nothing).
    h = h * jnp.any(mask, axis=-1, keepdims=True).astype(h.dtype)
    x = x + jnp.tanh(alpha_attn).astype(h.dtype) * h
    h = layers.RMSNorm(eps=self.norm_eps, name="post_attention_layernorm",
                       **kw)(x)
    h = layers.GatedMLP(self.mlp_dim, activation=self.mlp_activation,
                        name="mlp", **kw)(h)
    x = x + jnp.tanh(alpha_dense).astype(h.dtype) * h
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), media_kv
