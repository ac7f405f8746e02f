"""The VQ tokenizer of Janus / LlamaGen (the taming-transformers VQGAN block
layout), for importing `JanusVQVAE` weights: transformers 4.57.1
models/janus/modeling_janus.py.

  cfg = JanusVQConfig(base_channels=32, channel_multiplier=(1, 2), ...)
  model = JanusVQ(cfg)
  z = model.apply(v, images, method=JanusVQ.encode)       # f32[b, h, w, E]
  codes = vq_codebook.nearest(z, codebook)                # int32[b, h, w]
  images = model.apply(v, codebook, codes, method=JanusVQ.decode)

Blocks (NHWC here, NCHW there; parameter names follow the reference's):
  ResnetBlock  GroupNorm(32, eps 1e-6) -> swish -> conv3x3 -> GroupNorm ->
               swish -> conv3x3, + x (1x1 `nin_shortcut` when widths differ)
  AttnBlock    GroupNorm -> 1x1 q, k, v -> softmax(q k^T / sqrt(C)) v ->
               1x1 proj_out, + x (one head over the h*w positions)
  downsample   pad 1 at the bottom and right, conv3x3 stride 2 (no padding)
  upsample     nearest x2, conv3x3
Encoder: conv_in, per level `num_res_blocks` ResnetBlocks (AttnBlocks after
each at the last level), a downsample between levels, mid (res, attn, res),
GroupNorm, swish, conv_out to latent_channels; then quant_conv (1x1) to
embed_dim. Decoder mirrors it with num_res_blocks + 1 blocks per level after
post_quant_conv (1x1). Janus's decode L2-normalises the codebook entries
(`get_codebook_entry`); encoding compares with the raw entries. That
asymmetry is the reference's and is kept. The codebook is an argument, as in
models/vq.py: it is data the stage updates, not a parameter.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import vq_codebook


@dataclasses.dataclass(frozen=True)
class JanusVQConfig:
  """JanusVQVAEConfig's architecture keys (same names)."""
  embed_dim: int = 8
  num_embeddings: int = 16384
  latent_channels: int = 256
  in_channels: int = 3
  out_channels: int = 3
  base_channels: int = 128
  channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.channel_multiplier) - 1)


def _norm(name: str) -> nn.GroupNorm:
  # Two-pass variance: the reference's, and exact for large activations.
  return nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False,
                      name=name)


def _conv(width: int, k: int, name: str, stride: int = 1,
          padding="SAME") -> nn.Conv:
  return nn.Conv(width, (k, k), strides=(stride, stride), padding=padding,
                 name=name)


class ResnetBlock(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _conv(self.width, 3, "conv1")(nn.swish(_norm("norm1")(x)))
    h = _conv(self.width, 3, "conv2")(nn.swish(_norm("norm2")(h)))
    if x.shape[-1] != self.width:
      x = _conv(self.width, 1, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hh, ww, c = x.shape
    h = _norm("norm")(x)
    q, k, v = (_conv(c, 1, n)(h).reshape(b, hh * ww, c)
               for n in ("q", "k", "v"))
    w = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) * c ** -0.5, -1)
    out = jnp.einsum("bqk,bkc->bqc", w, v).reshape(b, hh, ww, c)
    return x + _conv(c, 1, "proj_out")(out)


class MidBlock(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ResnetBlock(self.width, name="block_1")(x)
    x = AttnBlock(name="attn_1")(x)
    return ResnetBlock(self.width, name="block_2")(x)


class Encoder(nn.Module):
  """f32[b, S, S, 3] -> f32[b, S/f, S/f, latent_channels]."""
  cfg: JanusVQConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    levels = len(cfg.channel_multiplier)
    x = _conv(cfg.base_channels, 3, "conv_in")(x)
    for i, mult in enumerate(cfg.channel_multiplier):
      width = cfg.base_channels * mult
      for j in range(cfg.num_res_blocks):
        x = ResnetBlock(width, name=f"down_{i}_block_{j}")(x)
        if i == levels - 1:
          x = AttnBlock(name=f"down_{i}_attn_{j}")(x)
      if i != levels - 1:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        x = _conv(width, 3, f"down_{i}_downsample", stride=2,
                  padding="VALID")(x)
    x = MidBlock(x.shape[-1], name="mid")(x)
    x = nn.swish(_norm("norm_out")(x))
    return _conv(cfg.latent_channels, 3, "conv_out")(x)


class Decoder(nn.Module):
  """f32[b, h, w, latent_channels] -> f32[b, h*f, w*f, 3]."""
  cfg: JanusVQConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    levels = len(cfg.channel_multiplier)
    x = _conv(cfg.base_channels * cfg.channel_multiplier[-1], 3,
              "conv_in")(x)
    x = MidBlock(x.shape[-1], name="mid")(x)
    # up_{i} counts from the coarsest level, as the reference's list does.
    for i, level in enumerate(reversed(range(levels))):
      width = cfg.base_channels * cfg.channel_multiplier[level]
      for j in range(cfg.num_res_blocks + 1):
        x = ResnetBlock(width, name=f"up_{i}_block_{j}")(x)
        if level == levels - 1:
          x = AttnBlock(name=f"up_{i}_attn_{j}")(x)
      if level != 0:
        x = jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)  # nearest x2
        x = _conv(width, 3, f"up_{i}_upsample")(x)
    x = nn.swish(_norm("norm_out")(x))
    return _conv(cfg.out_channels, 3, "conv_out")(x)


class JanusVQ(nn.Module):
  """Encoder + quant_conv, post_quant_conv + decoder of `JanusVQVAE`."""
  cfg: JanusVQConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.quant_conv = _conv(self.cfg.embed_dim, 1, "quant_conv")
    self.post_quant_conv = _conv(self.cfg.latent_channels, 1,
                                 "post_quant_conv")
    self.decoder = Decoder(self.cfg)

  def encode(self, images: jax.Array) -> jax.Array:
    """f32[b, S, S, 3] -> z_e f32[b, S/f, S/f, embed_dim]."""
    return self.quant_conv(self.encoder(images))

  def decode(self, codebook: jax.Array, codes: jax.Array) -> jax.Array:
    """codebook f32[K, E], codes int32[b, h, w] -> f32[b, h*f, w*f, 3]."""
    z = codebook[codes]
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, images: jax.Array, codebook: jax.Array) -> jax.Array:
    """Reconstruction: encode, nearest codes, decode (`JanusVQVAE.forward`)."""
    codes = vq_codebook.nearest(self.encode(images), codebook)
    return self.decode(codebook, codes)
