"""A VQ-VAE image tokenizer: conv encoder -> codebook -> conv decoder.

  cfg = VQConfig(codebook_size=256, code_dim=32, channels=(32, 64))
  model = VQVAE(cfg)
  z_e = model.apply(v, images, method=VQVAE.encode)    # f32[b, h, w, D]
  q = vq_codebook.quantize(z_e, codebook)               # codes int32[b, h, w]
  recon = model.apply(v, q.z_st, method=VQVAE.decode)  # f32[b, S, S, 3]

Images are in the pipeline's units (SigLIP normalisation: [-1, 1]). Each
entry of `channels` is one stride-2 level, so the downsampling factor is
2 ** len(channels) (64 px, two levels -> 16 x 16 codes). The codebook is
not a parameter of this module: its EMA statistics change outside the
optimizer (`vq_codebook.ema_update`), so the stage keeps it in the train
state's loss state (train/stages/vq.py); DESIGN.md section 5.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class VQConfig:
  """Sizes of the tokenizer.

  Attributes:
    codebook_size: K, the number of codes.
    code_dim: D, the width of a code.
    channels: conv width per downsampling level (encoder order); the
      decoder mirrors it.
    res_blocks: residual blocks at the code resolution, in each of the
      encoder and the decoder.
    image_channels: 3 (RGB).
  """
  codebook_size: int = 256
  code_dim: int = 32
  channels: tuple[int, ...] = (32, 64)
  res_blocks: int = 2
  image_channels: int = 3

  @property
  def downsample(self) -> int:
    return 2 ** len(self.channels)

  def grid(self, side: int) -> int:
    """Codes per image side for a side-pixel image."""
    return side // self.downsample


def _conv_kw() -> dict[str, Any]:
  # Convolutions shard their output channels like every other 'embed' axis.
  return dict(kernel_init=nn.with_logical_partitioning(
      nn.initializers.lecun_normal(), (None, None, None, "embed")),
              bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                     ("embed",)))


class ResBlock(nn.Module):
  """x + conv3x3(relu(conv3x3(relu(x)))): f32[b, h, w, C] -> same."""
  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Conv(self.width, (3, 3), padding="SAME", name="conv_0",
                **_conv_kw())(nn.relu(x))
    h = nn.Conv(self.width, (3, 3), padding="SAME", name="conv_1",
                **_conv_kw())(nn.relu(h))
    return x + h


class Encoder(nn.Module):
  """f32[b, S, S, 3] -> z_e f32[b, S/f, S/f, D], f = 2 ** len(channels)."""
  cfg: VQConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images
    for i, width in enumerate(self.cfg.channels):
      # 4x4 stride-2 kernels see every input pixel once per output pixel
      # pair (no checkerboard gaps in coverage).
      x = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                  name=f"down_{i}", **_conv_kw())(x)
      if i + 1 < len(self.cfg.channels):
        x = nn.relu(x)
    for i in range(self.cfg.res_blocks):
      x = ResBlock(self.cfg.channels[-1], name=f"res_{i}")(x)
    return nn.Conv(self.cfg.code_dim, (1, 1), name="to_code",
                   **_conv_kw())(nn.relu(x))


# _PARITY_TAPS[p, a, t] = 1: in `Upsample`, output parity p reads window
# offset a (of 3) through kernel tap t (of 4).
_PARITY_TAPS = np.zeros((2, 3, 4), np.float32)
_PARITY_TAPS[0, 0, 0] = _PARITY_TAPS[0, 1, 2] = 1.0
_PARITY_TAPS[1, 1, 1] = _PARITY_TAPS[1, 2, 3] = 1.0


class Upsample(nn.Module):
  """nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME") with
  its parameters (kernel f32[4, 4, C, width], bias f32[width]):
  f32[b, h, w, C] -> f32[b, 2h, 2w, width].

  Output pixel (2i + py, 2j + px) sums input pixels i - 1 + py .. i + py
  (and j's likewise) through kernel taps py, py + 2 (px, px + 2). So one
  stride-1 3 x 3 convolution of the input padded by 1, whose 4 * width
  outputs are the four parities (taps outside a parity's two are zero),
  then depth-to-space. The same sums as the transposed convolution, but
  XLA:CPU lowers the transposed convolution's kernel gradient to a slow
  base-dilated convolution (half of a vq train step at 64 px), this one's
  to the fast kernels (docs/image-generation.md, "Speed").
  """
  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kw = _conv_kw()
    kernel = self.param("kernel", kw["kernel_init"], (4, 4, c, self.width),
                        jnp.float32)
    bias = self.param("bias", kw["bias_init"], (self.width,), jnp.float32)
    # [a(y), b(x), C, py, px, width]
    folded = jnp.einsum("pat,qbu,tucw->abcpqw", _PARITY_TAPS, _PARITY_TAPS,
                        kernel)
    folded = folded.reshape(3, 3, c, 4 * self.width)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(
        padded, folded.astype(x.dtype), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(b, h, w, 2, 2, self.width).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, self.width) + bias.astype(y.dtype)


class Decoder(nn.Module):
  """z_q f32[b, h, w, D] -> f32[b, h*f, w*f, 3]."""
  cfg: VQConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    widths = self.cfg.channels[::-1]
    x = nn.Conv(widths[0], (3, 3), padding="SAME", name="from_code",
                **_conv_kw())(z)
    for i in range(self.cfg.res_blocks):
      x = ResBlock(widths[0], name=f"res_{i}")(x)
    outs = widths[1:] + (self.cfg.image_channels,)
    for i, width in enumerate(outs):
      x = Upsample(width, name=f"up_{i}")(nn.relu(x))
    return x


class VQVAE(nn.Module):
  """Encoder and decoder of the tokenizer (the codebook lives outside)."""
  cfg: VQConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.decoder = Decoder(self.cfg)

  def encode(self, images: jax.Array) -> jax.Array:
    """f32[b, S, S, 3] -> z_e f32[b, S/f, S/f, D]."""
    return self.encoder(images)

  def decode(self, z: jax.Array) -> jax.Array:
    """f32[b, h, w, D] -> f32[b, h*f, w*f, 3]."""
    return self.decoder(z)

  def __call__(self, images: jax.Array) -> jax.Array:
    """Encoder then decoder without quantisation (what init traces)."""
    return self.decode(self.encode(images))
