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

from mmjax.models import attention_core
from mmjax.models import linear as linear_lib
from mmjax.models import positions as positions_lib

Dtype = Any

# A finite -inf for masked scores (a fully masked row averages the values).
_MASK_VALUE = attention_core.MASK_VALUE
# `attention` of DecoderConfig / VisionConfig: 'einsum' is mmjax's own (the
# one the parity tests pin), 'xla' and 'cudnn' are jax.nn.dot_product_attention
# with that implementation ('cudnn': fused flash attention on NVIDIA GPUs,
# bfloat16/float16 only).
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


def check_attention(impl: str, where: str) -> None:
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"{where}={impl!r}; allowed: {list(ATTENTION_IMPLS)}.")

_ACTIVATIONS = {
    "silu": nn.silu,
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": nn.relu,
}


def activation_fn(name: str):
  """The activation called `name`; ValueError listing the allowed names."""
  if name not in _ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; allowed: "
                     f"{', '.join(sorted(_ACTIVATIONS))}")
  return _ACTIVATIONS[name]

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
    act = activation_fn(self.activation)
    d_model = x.shape[-1]

    def dense(features, names, name):
      return linear_lib.Dense(features, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype,
                              kernel_init=_logical(_default_kernel_init,
                                                   names),
                              name=name)

    gate = dense(self.mlp_dim, ("embed", "mlp"), "gate")(x)
    up = dense(self.mlp_dim, ("embed", "mlp"), "up")(x)
    h = act(gate) * up
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
    """x [..., D] -> [..., H, Dh]."""
    init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    kernel = self.param(
        "kernel", _logical(init, ("embed", self.heads_name, "head_dim")),
        (x.shape[-1], self.n_heads, self.head_dim), self.param_dtype)
    # [D, H, Dh] -> [D, H * Dh] is free (row-major); linear's backward
    # suits XLA:CPU (models/linear.py).
    y = linear_lib.linear(x.astype(self.dtype), kernel.astype(
        self.dtype).reshape(kernel.shape[0], -1))
    y = y.reshape(*x.shape[:-1], self.n_heads, self.head_dim)
    if self.use_bias:
      bias = self.param(
          "bias", _logical(nn.initializers.zeros,
                           (self.heads_name, "head_dim")),
          (self.n_heads, self.head_dim), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class HeadsOut(nn.Module):
  """[B, L, H, Dh] -> [B, L, D] with a 3-D kernel [H, Dh, D]."""
  features: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    kernel = self.param(
        "kernel", _logical(init, ("heads", "head_dim", "embed")),
        (x.shape[-2], x.shape[-1], self.features), self.param_dtype)
    y = linear_lib.linear(
        x.astype(self.dtype).reshape(*x.shape[:-2], -1),
        kernel.astype(self.dtype).reshape(-1, self.features))
    if self.use_bias:
      bias = self.param("bias", _logical(nn.initializers.zeros, ("embed",)),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None, *, dtype: Dtype = None,
                          scale: float | None = None,
                          impl: str = "einsum",
                          kv_heads_major: bool = False,
                          softcap: float = 0.0,
                          causal_chunks: int = 0) -> jax.Array:
  """Softmax attention with grouped KV heads; scores in float32.

  Args:
    q: [B, L, H, Dh] queries.
    k: [B, S, Kh, Dh] keys; Kh divides H (query head h reads KV head
      h // (H // Kh), Hugging Face `repeat_kv` order).
    v: [B, S, Kh, Dv] values.
    mask: bool broadcastable to [B, L, S] (True = attend), or None.
    dtype: dtype of the probabilities and output (default q.dtype).
    scale: score scale (default 1/sqrt(Dh)).
    impl: one of ATTENTION_IMPLS.
    kv_heads_major: k and v are [B, Kh, S, D] instead (the KV cache's
      layout).
    softcap: > 0 caps the scaled scores as `softcap * tanh(s / softcap)`
      before masking (Gemma 2); 'einsum' only.
    causal_chunks: > 1 promises a causal mask (no query sees a later key):
      the 'einsum' kernel without a cache then scores each of that many
      query chunks against the keys up to its end only
      (`attention_core.attend`); ignored elsewhere.

  Returns:
    [B, L, H, Dv]. A row with every key masked averages all values (finite).
  """
  batch, length, n_heads, head_dim = q.shape
  kv_spec = "bksd" if kv_heads_major else "bskd"
  kv_len, n_kv = k.shape[kv_spec.index("s")], k.shape[kv_spec.index("k")]
  dtype = dtype or q.dtype
  if impl != "einsum":
    if softcap > 0:
      raise ValueError(f"attention logit soft-capping needs attention="
                       f"'einsum', got {impl!r}.")
    if kv_heads_major:
      k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)
    check_attention(impl, "attention")
    if impl == "cudnn" and jax.default_backend() != "gpu":
      raise ValueError(f"attention='cudnn' needs an NVIDIA GPU; this process "
                       f"runs on {jax.default_backend()}: use 'einsum' or "
                       "'xla'.")
    if mask is not None:  # jax.nn takes [B, H or 1, L, S]
      mask = jnp.broadcast_to(mask, (batch, length, kv_len))[:, None]
    return fused_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                           mask, scale=scale,
                           implementation=None if impl == "xla" else impl,
                           pad_even=impl == "cudnn").astype(dtype)
  group = n_heads // n_kv
  # Split query heads into (kv head, group) so no KV copy is materialised.
  q = q.reshape(batch, length, n_kv, group, head_dim)
  if not kv_heads_major and softcap <= 0:
    # Training and prefill: the same values with a backward pass laid out
    # for XLA:CPU (models/attention_core.py).
    if mask is not None:
      mask = jnp.broadcast_to(mask, (batch, length, kv_len))
    out = attention_core.attend(
        q.astype(dtype), k.astype(dtype), v.astype(dtype), mask,
        jnp.float32(scale if scale is not None else 1.0 /
                    math.sqrt(head_dim)), causal_chunks)
    return out.reshape(batch, length, n_heads, v.shape[-1])
  scores = jnp.einsum(f"blkgd,{kv_spec}->bkgls", q, k,
                      preferred_element_type=jnp.float32)
  scores = scores * (scale if scale is not None else 1.0 / math.sqrt(head_dim))
  if softcap > 0:
    scores = softcap * jnp.tanh(scores / softcap)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (batch, length, kv_len))
    scores = jnp.where(mask[:, None, None], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  if kv_heads_major:  # [B, Kh, G, L, Dv] keeps XLA:CPU off a transposed V
    out = jnp.einsum("bkgls,bksd->bkgld", probs, v.astype(dtype))
    out = out.transpose(0, 3, 1, 2, 4)
  else:
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v.astype(dtype))
  return out.reshape(batch, length, n_heads, v.shape[-1])


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    mask: jax.Array | None, *, scale: float | None,
                    implementation: str | None,
                    pad_even: bool = False) -> jax.Array:
  """jax.nn.dot_product_attention, q [B, L, H, Dh], mask bool[B, 1, L, S].

  pad_even: with a mask, pad L and S to even lengths (padded keys masked,
  padded queries dropped): cuDNN's kernels with a mask (a bias) refuse odd
  lengths when training, e.g. 65 = one media token + 64 text tokens.
  """
  length, kv_len = q.shape[1], k.shape[1]
  pad_l, pad_s = ((length % 2, kv_len % 2) if pad_even and mask is not None
                  else (0, 0))
  if pad_l or pad_s:
    q = jnp.pad(q, ((0, 0), (0, pad_l), (0, 0), (0, 0)))
    k, v = (jnp.pad(t, ((0, 0), (0, pad_s), (0, 0), (0, 0))) for t in (k, v))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_l), (0, pad_s)))
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                     implementation=implementation)
  return out[:, :length]


class MultiHeadAttention(nn.Module):
  """Biased multi-head attention without RoPE (ViT, text tower, connectors).

  Self-attention when `kv` is None, cross-attention otherwise. Submodules
  `q`, `k`, `v` ([D, H, Dh] kernels) and `o` ([H, Dh, D_out]), like the
  `{q,k,v,out}_proj` of Hugging Face SigLIP/CLIP/BERT.

  Attributes:
    n_heads: heads H.
    head_dim: Dh (default: query width // H).
    n_kv_heads: KV heads (default H).
    out_features: output width (default: query width).
    use_bias: biases on all four projections.
  """
  n_heads: int
  head_dim: int | None = None
  n_kv_heads: int | None = None
  out_features: int | None = None
  use_bias: bool = True
  attention: str = "einsum"  # ATTENTION_IMPLS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, kv: jax.Array | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    """x: [B, L, D], kv: [B, S, Dkv] or None, mask: bool[B, L, S] -> [B, L, D']."""
    kv = x if kv is None else kv
    head_dim = self.head_dim or x.shape[-1] // self.n_heads
    n_kv = self.n_kv_heads or self.n_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = HeadsIn(self.n_heads, head_dim, self.use_bias, "heads", name="q",
                **kw)(x)
    k = HeadsIn(n_kv, head_dim, self.use_bias, "kv_heads", name="k", **kw)(kv)
    v = HeadsIn(n_kv, head_dim, self.use_bias, "kv_heads", name="v", **kw)(kv)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads",
                                       "head_dim"))
    v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads",
                                       "head_dim"))
    out = dot_product_attention(q, k, v, mask, dtype=self.dtype,
                                impl=self.attention)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads",
                                           "head_dim"))
    out = HeadsOut(self.out_features or x.shape[-1], self.use_bias, name="o",
                   **kw)(out)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class MLP(nn.Module):
  """`fc2(act(fc1(x)))` with biases (ViT / CLIP / BERT / projector MLPs).

  Attributes:
    hidden: width of fc1.
    out_features: width of fc2 (default: input width).
    activation: 'gelu_tanh' (SigLIP), 'gelu' (exact erf, BERT/LLaVA),
      'quick_gelu' (CLIP), 'relu', 'silu'.
    use_bias: biases on fc1 and fc2.
  """
  hidden: int
  out_features: int | None = None
  activation: str = "gelu_tanh"
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> [..., out_features]."""
    act = activation_fn(self.activation)
    kw = dict(use_bias=self.use_bias, dtype=self.dtype,
              param_dtype=self.param_dtype,
              bias_init=_logical(nn.initializers.zeros, ("mlp",)))
    h = linear_lib.Dense(self.hidden, name="fc1",
                         kernel_init=_logical(_default_kernel_init,
                                              ("embed", "mlp")), **kw)(x)
    h = act(h)
    if h.ndim == 3:
      h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    kw["bias_init"] = _logical(nn.initializers.zeros, ("embed",))
    return linear_lib.Dense(self.out_features or x.shape[-1], name="fc2",
                            kernel_init=_logical(_default_kernel_init,
                                                 ("mlp", "embed")), **kw)(h)


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
    mrope_sections: M-RoPE sections (Qwen2-VL) or None for 1-D RoPE.
    softcap: attention logit soft-capping (Gemma 2); 0 = off.
    scale: score scale; None = 1/sqrt(head_dim) (Gemma 2 uses
      query_pre_attn_scalar**-0.5).
    causal_chunks: > 1 when every mask this layer gets is causal: queries in
      that many chunks, each scored against the keys up to its end
      (`dot_product_attention`); 0 = one square of scores.
    dtype: compute dtype (scores and softmax are always float32).
    param_dtype: parameter dtype.
  """
  n_heads: int
  n_kv_heads: int
  head_dim: int
  rope_theta: float = 10_000.0
  qkv_bias: bool = False
  mrope_sections: tuple[int, ...] | None = None
  softcap: float = 0.0
  scale: float | None = None
  causal_chunks: int = 0
  attention: str = "einsum"  # ATTENTION_IMPLS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _proj(self, n_heads: int, heads_name: str, name: str) -> nn.Module:
    return HeadsIn(n_heads, self.head_dim, self.qkv_bias, heads_name,
                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      positions: jax.Array | None,
      *,
      mask: jax.Array | None,
      cache: dict[str, jax.Array] | None = None,
      cache_index: jax.Array | int | None = None,
      rotary: tuple[jax.Array, jax.Array] | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Self-attention over x, or over the KV cache once x's keys are written.

    Args:
      x: [B, L, D].
      positions: [B, L] int or float (1-D RoPE, V2PE), or [3, B, L] (M-RoPE
        with `mrope_sections`), fed to the rotary embedding of q and k; None
        when `rotary` is given.
      mask: bool[B, L, S] (True = attend), S = L without cache and S_max with
        one; None = attend everywhere (only allowed without cache).
      cache: {'k': [B, Kh, S_max, Dh], 'v': [B, Kh, S_max, Dh]} or None.
      cache_index: int32 scalar, slot of x's first token in the cache.
      rotary: (cos, sin) f32[B, L, Dh] from `positions.rotary_tables`, which
        a decoder computes once for all its layers; None computes them here
        from `positions`.

    Returns:
      (out [B, L, D], updated cache or None).
    """
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of "
                       f"n_kv_heads={self.n_kv_heads}.")
    chex.assert_rank(x, 3)
    batch, length, d_model = x.shape
    if rotary is None:
      chex.assert_shape(positions, (3, batch, length) if self.mrope_sections
                        else (batch, length))
      rotary = positions_lib.rotary_tables(positions, self.head_dim,
                                           self.rope_theta,
                                           self.mrope_sections)
    chex.assert_shape(rotary, (batch, length, self.head_dim))

    q = self._proj(self.n_heads, "heads", "q")(x)
    k = self._proj(self.n_kv_heads, "kv_heads", "k")(x)
    v = self._proj(self.n_kv_heads, "kv_heads", "v")(x)
    q = positions_lib.apply_rotary(q, *rotary)
    k = positions_lib.apply_rotary(k, *rotary)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads",
                                       "head_dim"))
    v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads",
                                       "head_dim"))
    if cache is None:
      # The rotated q [B, L, H, Dh] and k [B, L, Kh, Dh], for a loss on where
      # this layer looks (train/box_attention_loss.py); a no-op unless the
      # apply makes 'intermediates' mutable.
      self.sow("intermediates", "query_keys", (q, k))

    new_cache = None
    if cache is not None:
      if cache_index is None or mask is None:
        raise ValueError("Attention with a cache needs cache_index and a mask "
                         "over the cache slots (unwritten slots hold zeros).")
      chex.assert_shape([cache["k"], cache["v"]],
                        (batch, self.n_kv_heads, None, self.head_dim))
      start = (0, 0, jnp.asarray(cache_index, jnp.int32), 0)
      new_cache = {
          name: jax.lax.dynamic_update_slice(
              cache[name], new.swapaxes(1, 2).astype(cache[name].dtype), start)
          for name, new in (("k", k), ("v", v))}
      k, v = new_cache["k"], new_cache["v"]
      k = k.astype(self.dtype)
      v = v.astype(self.dtype)

    out = dot_product_attention(q, k, v, mask, dtype=self.dtype,
                                impl=self.attention, scale=self.scale,
                                kv_heads_major=cache is not None,
                                softcap=self.softcap,
                                causal_chunks=self.causal_chunks)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads",
                                           "head_dim"))

    out = HeadsOut(d_model, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="o")(out)
    out = nn.with_logical_constraint(out, ("batch", "length", "embed"))
    return out, new_cache
