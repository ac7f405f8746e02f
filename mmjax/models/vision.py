"""Vision towers: SigLIP and CLIP ViTs, patchify and position-embedding resize.

Module tree of `VisionEncoder` (the Hugging Face importer maps onto these):

  patch_embedding            Dense [p*p*C, D] on `patchify` vectors (+ bias
                             for SigLIP; CLIP has none); stem='patch'
  conv_stem                  stem='conv' instead: ConvStem
    conv_{i}, project        3x3 stride-2 convs, 1x1 conv to D
  position_embedding         param [N, D] (CLIP: [N + 1, D], row 0 = CLS)
  class_embedding            CLIP only: param [D]
  pre_layernorm              CLIP only (HF spells it `pre_layrnorm`)
  layers_{i}                 EncoderBlock
    layer_norm1, self_attn{q,k,v,o}, layer_norm2, mlp{fc1,fc2}
  post_layernorm
  head                       SigLIP with pool='map': MAPHead
    probe [1, 1, D], attention{q,k,v,o}, layernorm, mlp{fc1,fc2}

`hidden_states[k]` below follows Hugging Face: index 0 is the embedding output
(for CLIP after pre_layernorm), index i the output of block i.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import config_util
from mmjax.models import layers
from mmjax.models import linear
from mmjax.models import remat as remat_lib

_POOLS = ("none", "map")
# How pixels become tokens: 'patch' is ViT's one Dense per p x p patch (what
# every pretrained SigLIP / CLIP has); 'conv' is a stack of log2(p) 3x3
# stride-2 convolutions and a 1x1 projection (Xiao et al. 2021, "Early
# convolutions help transformers see better"): local shape features before
# the first attention, which a 64-px shapes image with 10-px objects needs.
STEMS = ("patch", "conv")
_KIND_DEFAULTS = {
    "siglip": {"norm_eps": 1e-6, "activation": "gelu_tanh", "pool": "map"},
    "clip": {"norm_eps": 1e-5, "activation": "quick_gelu", "pool": "none"},
    # InternVL's InternViT: CLS + biased patch embedding, no pre-layernorm,
    # layer scale (lambda_1, lambda_2) in every block.
    "internvit": {"norm_eps": 1e-6, "activation": "gelu", "pool": "none"},
}
_ACT = ("batch", "length", "embed")
_logical = layers._logical  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Sizes and family switches of a ViT vision tower.

  `norm_eps`, `activation` and `pool` left as None take the family default:
  SigLIP 1e-6 / 'gelu_tanh' / 'map', CLIP 1e-5 / 'quick_gelu' / 'none'.
  `image_size` need not be a multiple of `patch_size`: like the reference's
  valid stride-p conv, a native-size image's trailing `image_size % patch`
  pixels are ignored (So400m/14 at 384 sees 27 x 27 patches, 378 pixels).
  Defaults are the `tiny` variant.
  """
  kind: str = "siglip"
  image_size: int = 64
  patch_size: int = 8
  channels: int = 3
  width: int = 64
  depth: int = 2
  mlp_dim: int = 256
  n_heads: int = 2
  norm_eps: float | None = None
  activation: str | None = None
  pool: str | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"  # Per EncoderBlock: remat.REMAT_POLICIES.
  attention: str = "einsum"  # Blocks' self-attention: layers.ATTENTION_IMPLS.
  stem: str = "patch"  # One of STEMS.

  def __post_init__(self):
    remat_lib.check_remat(self.remat, "VisionConfig.remat")
    layers.check_attention(self.attention, "VisionConfig.attention")
    if self.kind not in _KIND_DEFAULTS:
      raise ValueError(f"VisionConfig.kind={self.kind!r}; allowed: "
                       f"{list(_KIND_DEFAULTS)}.")
    for name, value in _KIND_DEFAULTS[self.kind].items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, value)
    for name in ("image_size", "patch_size", "channels", "width", "depth",
                 "mlp_dim", "n_heads"):
      if getattr(self, name) <= 0:
        raise ValueError(f"VisionConfig.{name} must be positive, got "
                         f"{getattr(self, name)}.")
    if self.stem not in STEMS:
      raise ValueError(f"VisionConfig.stem={self.stem!r}; allowed: "
                       f"{list(STEMS)}.")
    if self.stem == "conv" and (self.patch_size & (self.patch_size - 1)
                                or self.patch_size < 2):
      raise ValueError(f"stem='conv' halves the image log2(patch_size) times;"
                       f" patch_size={self.patch_size} is not a power of 2 "
                       f">= 2: use 2, 4, 8, 16 or stem='patch'.")
    if self.stem == "conv" and self.kind == "clip":
      raise ValueError("stem='conv' is for SigLIP-kind towers trained from "
                       "scratch; CLIP's patch embedding has no bias and "
                       "pretrained weights only exist for stem='patch'.")
    if self.image_size < self.patch_size:
      raise ValueError(f"image_size={self.image_size} is smaller than "
                       f"patch_size={self.patch_size}; raise image_size.")
    if self.width % self.n_heads:
      raise ValueError(f"width={self.width} is not divisible by n_heads="
                       f"{self.n_heads}; change one so heads split the width.")
    layers.activation_fn(self.activation)  # ValueError listing the names.
    if self.pool not in _POOLS:
      raise ValueError(f"VisionConfig.pool={self.pool!r}; allowed: "
                       f"{list(_POOLS)}.")
    if self.kind == "clip" and self.pool != "none":
      raise ValueError("CLIP pools its CLS token and has no MAP head; set "
                       "pool='none' (or leave it unset) for kind='clip'.")
    config_util.check_dtypes(self)

  @property
  def grid(self) -> int:
    """Patches per side at the native resolution."""
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    """Patch tokens N at the native resolution (CLS not counted)."""
    return self.grid * self.grid

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> VisionConfig:
    """Builds a config from a mapping, rejecting keys it does not know."""
    return config_util.from_dict(cls, d)


_SIZE_FIELDS = ("width", "depth", "mlp_dim", "n_heads", "patch_size",
                "image_size")
_VARIANTS: dict[str, tuple[Any, ...]] = {  # Sizes in _SIZE_FIELDS order.
    "tiny": (64, 2, 256, 2, 8, 64),
    "small": (192, 4, 768, 3, 8, 64),
    "bench": (512, 6, 2048, 8, 16, 128),
    "B/16": (768, 12, 3072, 12, 16, 224),
    "So400m/14": (1152, 27, 4304, 16, 14, 384),
    "L/14-clip": (1024, 24, 4096, 16, 14, 336),  # LLaVA-1.5's CLIP tower.
}
VARIANT_NAMES = tuple(_VARIANTS)


def vision_variant(name: str, **overrides: Any) -> VisionConfig:
  """The named variant (see VARIANT_NAMES) with fields replaced by overrides."""
  if name not in _VARIANTS:
    raise ValueError(f"Unknown vision variant {name!r}; allowed: "
                     f"{list(VARIANT_NAMES)}.")
  fields = dict(zip(_SIZE_FIELDS, _VARIANTS[name]))
  if name.endswith("-clip"):
    fields["kind"] = "clip"
  return VisionConfig.from_dict({**fields, **overrides})


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """Cuts images into non-overlapping patches, flattened.

  Patches come row-major (patch (i, j) is token i * W/p + j) and each patch
  vector is ordered (ph, pw, C): element `(dy * p + dx) * C + c` is pixel
  (i*p + dy, j*p + dx) channel c. A Dense on these vectors equals a stride-p
  valid conv; a Hugging Face Conv2d weight [D, C, p, p] becomes the Dense
  kernel as `w.transpose(2, 3, 1, 0).reshape(p * p * C, D)`.

  Args:
    images: [B, H, W, C].
    patch: p; must divide H and W.

  Returns:
    [B, (H/p) * (W/p), p * p * C].
  """
  chex.assert_rank(images, 4)
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"Image size {h}x{w} (HxW) is not divisible by the patch "
                     f"size {patch}; resize or pad the image to a multiple of "
                     f"{patch}.")
  gh, gw = h // patch, w // patch
  x = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, patch * patch * c)


def _cubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of PyTorch bicubic resize (a=-0.75, no align_corners).

  Source coordinate `(o + 0.5) * in/out - 0.5`, four taps with indices
  clamped to the border, as `torch.nn.functional.interpolate(mode='bicubic')`.
  """
  a = -0.75

  def near(t):  # |t| <= 1
    return ((a + 2) * t - (a + 3)) * t * t + 1

  def far(t):  # 1 < |t| < 2
    return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

  m = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for o in range(out_size):
    src = (o + 0.5) * scale - 0.5
    i0 = math.floor(src)
    t = src - i0
    taps = (far(t + 1), near(t), near(1 - t), far(2 - t))
    for k, wgt in enumerate(taps):
      m[o, min(max(i0 - 1 + k, 0), in_size - 1)] += wgt
  return m.astype(np.float32)


def resize_posemb(posemb: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Bicubically resizes a square position-embedding grid.

  Same arithmetic as Hugging Face `interpolate_pos_encoding` (torch bicubic
  with a=-0.75, align_corners=False, target given as a size). This is not
  `jax.image.resize(..., 'bicubic')`, which uses a=-0.5 and antialiases when
  shrinking.

  Args:
    posemb: [g * g, D], row-major grid.
    grid: (gh, gw) target grid.

  Returns:
    [gh * gw, D], unchanged when (gh, gw) == (g, g).
  """
  n, d = posemb.shape
  g = math.isqrt(n)
  if g * g != n:
    raise ValueError(f"position embedding with {n} rows is not a square grid.")
  gh, gw = grid
  if (gh, gw) == (g, g):
    return posemb
  mh = jnp.asarray(_cubic_resize_matrix(g, gh))
  mw = jnp.asarray(_cubic_resize_matrix(g, gw))
  out = jnp.einsum("hi,wj,ijd->hwd", mh, mw,
                   posemb.reshape(g, g, d).astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(gh * gw, d).astype(posemb.dtype)


def layer_norm(eps: float, dtype: Any, param_dtype: Any,
               name: str) -> nn.LayerNorm:
  """nn.LayerNorm with ('embed',) logical names on scale and bias."""
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=_logical(nn.initializers.ones, ("embed",)),
      bias_init=_logical(nn.initializers.zeros, ("embed",)))


class _BlockSizes(nn.Module):
  """Fields shared by EncoderBlock and MAPHead.

  Attributes:
    n_heads: attention heads (head_dim = width // n_heads).
    mlp_dim: MLP hidden width.
    activation: MLP activation name (`layers.activation_fn`).
    norm_eps: LayerNorm epsilon.
  """
  n_heads: int
  mlp_dim: int
  activation: str = "gelu_tanh"
  norm_eps: float = 1e-6
  attention: str = "einsum"  # layers.ATTENTION_IMPLS
  layer_scale: bool = False  # EncoderBlock: InternViT's lambda_1, lambda_2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32


class EncoderBlock(_BlockSizes):
  """Pre-LN bidirectional block: `x + attn(LN1(x))`, then `x + mlp(LN2(x))`.

  Shared by the vision towers and the text tower.
  """

  @nn.compact
  def __call__(self, x: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """x: [B, L, D]; mask: bool broadcastable to [B, L, L] (True = attend)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layer_norm(self.norm_eps, name="layer_norm1", **kw)(x)
    h = layers.MultiHeadAttention(n_heads=self.n_heads, name="self_attn",
                                  attention=self.attention, **kw)(h, mask=mask)
    x = nn.with_logical_constraint(x + self._scale("lambda_1", h), _ACT)
    h = layer_norm(self.norm_eps, name="layer_norm2", **kw)(x)
    h = layers.MLP(hidden=self.mlp_dim, activation=self.activation,
                   name="mlp", **kw)(h)
    return nn.with_logical_constraint(x + self._scale("lambda_2", h), _ACT)

  def _scale(self, name: str, h: jax.Array) -> jax.Array:
    """Layer scale (InternViT): h * a learned per-channel vector (init 0.1,
    transformers' layer_scale_init_value); identity without it."""
    if not self.layer_scale:
      return h
    g = self.param(name, _logical(nn.initializers.constant(0.1), ("embed",)),
                   (h.shape[-1],), self.param_dtype)
    return h * g.astype(h.dtype)


class MAPHead(_BlockSizes):
  """Multihead attention pooling (SigLIP): a learned probe attends to tokens.

  `a = attention(probe, x)`, `h = a + mlp(layernorm(a))`, output `h[:, 0]`.
  The probe uses xavier_uniform as big_vision does; the attention kernels use
  `layers.MultiHeadAttention`'s lecun_normal.
  """

  @nn.compact
  def __call__(self, x: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """x: [B, N, D] -> [B, D]; mask: bool[B, N] (True = pool it) or None."""
    batch, _, d = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    probe = self.param(
        "probe", _logical(nn.initializers.xavier_uniform(),
                          (None, None, "embed")), (1, 1, d), self.param_dtype)
    q = jnp.broadcast_to(probe.astype(self.dtype), (batch, 1, d))
    a = layers.MultiHeadAttention(n_heads=self.n_heads, name="attention",
                                  attention=self.attention, **kw)(
                                      q, x, mask=None if mask is None
                                      else mask[:, None, :])
    h = layer_norm(self.norm_eps, name="layernorm", **kw)(a)
    h = a + layers.MLP(hidden=self.mlp_dim, activation=self.activation,
                       name="mlp", **kw)(h)
    return nn.with_logical_constraint(h[:, 0], ("batch", "embed"))


class ConvStem(nn.Module):
  """log2(p) 3x3 stride-2 convs (GELU), then a 1x1 conv to `width`.

  Channels double per conv up to `width` (p=8, width 64: 16, 32, 64), so
  the tokens see a (2p-1)-pixel receptive field of local edges and corners
  instead of one linear map of a patch. Output tokens are row-major like
  `patchify`'s: [B, H, W, C] -> [B, (H/p) * (W/p), width].
  """
  width: int
  patch_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    b, h, w, _ = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"Image size {h}x{w} (HxW) is not divisible by the "
                       f"patch size {p}; resize or pad the image to a "
                       f"multiple of {p}.")
    n_convs = p.bit_length() - 1
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=_logical(nn.initializers.lecun_normal(),
                                   (None, None, None, "embed")),
              bias_init=_logical(nn.initializers.zeros, ("embed",)))
    x = images
    for i in range(n_convs):
      channels = max(self.width >> (n_convs - 1 - i), 8)
      x = nn.gelu(nn.Conv(channels, (3, 3), strides=(2, 2), padding="SAME",
                          name=f"conv_{i}", **kw)(x))
    x = nn.Conv(self.width, (1, 1), name="project", **kw)(x)
    return x.reshape(b, (h // p) * (w // p), self.width)


@flax.struct.dataclass
class VisionOutput:
  """What a vision tower returns.

  Attributes:
    tokens: [B, N, D] patch tokens (CLIP's CLS removed), row-major grid.
    pooled: [B, D] (SigLIP MAP head, CLIP post_layernorm(CLS)) or None.
    grid: (gh, gw), the number of patch rows and patch columns.
  """
  tokens: jax.Array
  pooled: jax.Array | None
  grid: tuple[int, int] = flax.struct.field(pytree_node=False)


class VisionEncoder(nn.Module):
  """SigLIP or CLIP ViT (see the module docstring for the parameter tree).

  Initialise with `feature_layer=None`: a call that stops early creates (and
  needs) only the blocks it runs.
  """
  cfg: VisionConfig

  @nn.compact
  def __call__(self, images: jax.Array, *,
               feature_layer: int | None = None) -> VisionOutput:
    """Encodes images of any size divisible by the patch.

    Args:
      images: [B, H, W, C]; other sizes than cfg.image_size must be
        multiples of the patch and get a bicubically resized
        position-embedding grid (non-square allowed).
      feature_layer: None for the final output; a Python int k (static under
        jit) for HF `hidden_states[k]` (0 = embeddings, i = block i, negative
        from the end: -2 is LLaVA's second-to-last layer). Later blocks are
        not run, no post-LN is applied and `pooled` is None.

    Returns:
      VisionOutput. With feature_layer=None, tokens are SigLIP
      post_layernorm(final) and CLIP's final block output (both HF
      `last_hidden_state`, minus CLIP's CLS).
    """
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    chex.assert_rank(images, 4)
    if images.shape[-1] != cfg.channels:
      raise ValueError(f"images have {images.shape[-1]} channels, the tower "
                       f"expects {cfg.channels} (images are [B, H, W, C]).")
    n_run = cfg.depth
    if feature_layer is not None:
      n_run = feature_layer + (cfg.depth + 1 if feature_layer < 0 else 0)
      if not 0 <= n_run <= cfg.depth:
        raise ValueError(
            f"feature_layer={feature_layer} is out of range for depth "
            f"{cfg.depth}: use 0..{cfg.depth} or -{cfg.depth + 1}..-1.")
    p = cfg.patch_size
    if images.shape[1:3] == (cfg.image_size, cfg.image_size):
      # Native size: drop the remainder a valid stride-p conv ignores.
      images = images[:, :cfg.grid * p, :cfg.grid * p]
    grid = (images.shape[1] // p, images.shape[2] // p)

    is_clip = cfg.kind == "clip"
    has_cls = cfg.kind in ("clip", "internvit")  # a CLS token first
    if cfg.stem == "conv":
      x = ConvStem(cfg.width, p, name="conv_stem", **kw)(images.astype(dtype))
    else:
      patches = patchify(images, p)  # Other sizes must be divisible by p.
      x = linear.Dense(
          cfg.width, use_bias=not is_clip, name="patch_embedding",
          kernel_init=_logical(nn.initializers.lecun_normal(),
                               (None, "embed")),
          bias_init=_logical(nn.initializers.zeros, ("embed",)),
          **kw)(patches.astype(dtype))
    n_pos = cfg.num_patches + (1 if has_cls else 0)
    pos_std = 0.02 if is_clip else 1.0 / math.sqrt(cfg.width)
    pos = self.param(
        "position_embedding", _logical(nn.initializers.normal(pos_std),
                                       (None, "embed")),
        (n_pos, cfg.width), param_dtype).astype(dtype)
    if has_cls:
      cls = self.param(
          "class_embedding", _logical(nn.initializers.normal(
              cfg.width ** -0.5), ("embed",)),
          (cfg.width,), param_dtype).astype(dtype)
      cls = jnp.broadcast_to(cls + pos[0], (x.shape[0], 1, cfg.width))
      x = jnp.concatenate([cls, x + resize_posemb(pos[1:], grid)], axis=1)
      if is_clip:
        x = layer_norm(cfg.norm_eps, name="pre_layernorm", **kw)(x)
    else:
      x = x + resize_posemb(pos, grid)
    x = nn.with_logical_constraint(x, _ACT)

    block_kw = dict(n_heads=cfg.n_heads, mlp_dim=cfg.mlp_dim,
                    activation=cfg.activation, norm_eps=cfg.norm_eps,
                    attention=cfg.attention, **kw)
    block_kw_enc = dict(block_kw, layer_scale=cfg.kind == "internvit")
    block = remat_lib.remat_block(EncoderBlock, cfg.remat)
    for i in range(n_run):
      x = block(name=f"layers_{i}", **block_kw_enc)(x)

    if feature_layer is not None:
      return VisionOutput(tokens=x[:, int(has_cls):], pooled=None, grid=grid)
    post_ln = layer_norm(cfg.norm_eps, name="post_layernorm", **kw)
    if is_clip:
      return VisionOutput(tokens=x[:, 1:], pooled=post_ln(x[:, 0]), grid=grid)
    x = nn.with_logical_constraint(post_ln(x)[:, int(has_cls):], _ACT)
    pooled = MAPHead(name="head", **block_kw)(x) if cfg.pool == "map" else None
    return VisionOutput(tokens=x, pooled=pooled, grid=grid)
