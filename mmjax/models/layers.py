"""Transformer building blocks with logical axis names.

Every parameter is created through `nn.with_logical_partitioning` and every
large activation goes through `nn.with_logical_constraint`, so the sharding rule
table in one place decides how everything is laid out (DESIGN.md section 6).

Parameter logical names: 'vocab', 'embed', 'heads', 'kv_heads', 'head_dim',
'mlp'. Activation names add 'batch' and 'length'.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import positions as positions_lib

Dtype = Any

# Finite stand-in for -inf: a fully masked row then softmaxes to a uniform
# distribution instead of NaN (0/0).
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)

_ACTIVATIONS = {
    "silu": nn.silu,
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
}

_default_kernel_init = nn.initializers.lecun_normal()


def _logical(init, names: tuple[str, ...]):
  return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
  """Root-mean-square norm: `x / rms(x) * scale` (or `* (1 + scale)`).

  Attributes:
    eps: added to the mean square.
    offset_one: Gemma style; the stored scale starts at 0 and 1 is added.
    dtype: output dtype (the arithmetic is always float32).
    param_dtype: dtype of `scale`.
  """
  eps: float = 1e-6
  offset_one: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> [..., D] in self.dtype."""
    init = nn.initializers.zeros if self.offset_one else nn.initializers.ones
    scale = self.param("scale", _logical(init, ("embed",)), (x.shape[-1],),
                       self.param_dtype)
    xf = x.astype(jnp.float32)
    mean_sq = jnp.mean(xf * xf, axis=-1, keepdims=True)
    xf = xf * jax.lax.rsqrt(mean_sq + self.eps)
    scale = scale.astype(jnp.float32)
    if self.offset_one:
      scale = 1.0 + scale
    return (xf * scale).astype(self.dtype)


class GatedMLP(nn.Module):
  """Gated MLP: `down(act(gate(x)) * up(x))` (SwiGLU with 'silu').

  Attributes:
    mlp_dim: hidden width.
    activation: 'silu' (LLaMA, Qwen2) or 'gelu_tanh' (Gemma).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  mlp_dim: int
  activation: str = "silu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D]."""
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"Unknown activation {self.activation!r}; allowed: "
                       f"{sorted(_ACTIVATIONS)}.")
    d_model = x.shape[-1]

    def dense(features, names, name):
      return nn.Dense(features, use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype,
                      kernel_init=_logical(_default_kernel_init, names),
                      name=name)

    gate = dense(self.mlp_dim, ("embed", "mlp"), "gate")(x)
    up = dense(self.mlp_dim, ("embed", "mlp"), "up")(x)
    h = _ACTIVATIONS[self.activation](gate) * up
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return dense(d_model, ("mlp", "embed"), "down")(h)


class HeadsIn(nn.Module):
  """x [B, L, D] -> [B, L, H, Dh] with a kernel kept 3-D ([D, H, Dh]).

  Unlike nn.DenseGeneral (which initialises a flat 2-D kernel and reshapes),
  the kernel is created in its final shape, so its three logical names apply
  to the array as stored.
  """
  n_heads: int
  head_dim: int
  use_bias: bool
  heads_name: str = "heads"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    kernel = self.param(
        "kernel", _logical(init, ("embed", self.heads_name, "head_dim")),
        (x.shape[-1], self.n_heads, self.head_dim), self.param_dtype)
    y = jnp.einsum("bld,dhk->blhk", x.astype(self.dtype),
                   kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param(
          "bias", _logical(nn.initializers.zeros,
                           (self.heads_name, "head_dim")),
          (self.n_heads, self.head_dim), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class HeadsOut(nn.Module):
  """[B, L, H, Dh] -> [B, L, D] with a 3-D kernel [H, Dh, D], no bias."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    kernel = self.param(
        "kernel", _logical(init, ("heads", "head_dim", "embed")),
        (x.shape[-2], x.shape[-1], self.features), self.param_dtype)
    return jnp.einsum("blhk,hkd->bld", x.astype(self.dtype),
                      kernel.astype(self.dtype))


class Attention(nn.Module):
  """Multi-head attention with grouped KV heads (GQA), RoPE and a KV cache.

  Query head h reads KV head h // (n_heads // n_kv_heads), the same grouping as
  Hugging Face `repeat_kv`.

  Attributes:
    n_heads: query heads H.
    n_kv_heads: key/value heads Kh; must divide H.
    head_dim: Dh.
    rope_theta: RoPE base.
    qkv_bias: biases on q/k/v (Qwen2).
    dtype: compute dtype (scores and softmax are always float32).
    param_dtype: parameter dtype.
  """
  n_heads: int
  n_kv_heads: int
  head_dim: int
  rope_theta: float = 10_000.0
  qkv_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _proj(self, n_heads: int, heads_name: str, name: str) -> nn.Module:
    return HeadsIn(n_heads, self.head_dim, self.qkv_bias, heads_name,
                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      positions: jax.Array,
      *,
      mask: jax.Array | None,
      cache: dict[str, jax.Array] | None = None,
      cache_index: jax.Array | int | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Self-attention over x, or over the KV cache once x's keys are written.

    Args:
      x: [B, L, D].
      positions: [B, L] int or float, fed to RoPE for queries and keys.
      mask: bool[B, L, S] (True = attend), S = L without cache and S_max with
        one; None = attend everywhere (only allowed without cache).
      cache: {'k': [B, S_max, Kh, Dh], 'v': [B, S_max, Kh, Dh]} or None.
      cache_index: int32 scalar, slot of x's first token in the cache.

    Returns:
      (out [B, L, D], updated cache or None).
    """
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of "
                       f"n_kv_heads={self.n_kv_heads}.")
    chex.assert_rank(x, 3)
    batch, length, d_model = x.shape
    chex.assert_shape(positions, (batch, length))
    group = self.n_heads // self.n_kv_heads

    q = self._proj(self.n_heads, "heads", "q")(x)
    k = self._proj(self.n_kv_heads, "kv_heads", "k")(x)
    v = self._proj(self.n_kv_heads, "kv_heads", "v")(x)
    q = positions_lib.apply_rope(q, positions, self.rope_theta)
    k = positions_lib.apply_rope(k, positions, self.rope_theta)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads",
                                       "head_dim"))
    v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads",
                                       "head_dim"))

    new_cache = None
    if cache is not None:
      if cache_index is None or mask is None:
        raise ValueError("Attention with a cache needs cache_index and a mask "
                         "over the cache slots (unwritten slots hold zeros).")
      chex.assert_shape([cache["k"], cache["v"]],
                        (batch, None, self.n_kv_heads, self.head_dim))
      start = (0, jnp.asarray(cache_index, jnp.int32), 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                       start)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                       start)
      new_cache = {"k": k, "v": v}
      k = k.astype(self.dtype)
      v = v.astype(self.dtype)

    kv_len = k.shape[1]
    # Split query heads into (kv head, group) so no KV copy is materialised.
    q = q.reshape(batch, length, self.n_kv_heads, group, self.head_dim)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k,
                        preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(self.head_dim))
    if mask is not None:
      mask = jnp.broadcast_to(mask, (batch, length, kv_len))
      scores = jnp.where(mask[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v)
    out = out.reshape(batch, length, self.n_heads, self.head_dim)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads",
                                           "head_dim"))

    out = HeadsOut(d_model, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="o")(out)
    out = nn.with_logical_constraint(out, ("batch", "length", "embed"))
    return out, new_cache
