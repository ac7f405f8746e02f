"""Visual contrastive decoding (VCD, Leng et al. 2024): answers that lean on
the image, not on what the question's words usually go with.

Every prompt runs twice in one batch: with its images and with the images
drowned in Gaussian noise (the forward diffusion step
x' = keep * x + sqrt(1 - keep^2) * eps, eps ~ N(0, 1) in the model's pixel
units). At each step the next token is chosen from

    (1 + alpha) * logits(image) - alpha * logits(noised image)

among the tokens the plain model finds plausible: log p(token | image) >=
log(beta) + max log p (VCD's adaptive plausibility constraint, so the
contrast never promotes a token the model rules out). Both rows then take
that token, so the two caches stay on one answer.

Why: a model trained without some colour x shape pairs learns from its
training text that "the yellow object" is never a circle; the noised image
keeps that text prior and loses the picture, so subtracting it moves the
answer toward what the image shows (docs/evaluation.md, "Contrastive
decoding").

  from mmjax.decoding.contrastive import Contrast
  out = decode.generate(..., contrast=Contrast(alpha=1.0))
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Contrast:
  """Visual contrastive decoding's settings.

  Attributes:
    alpha: weight of the contrast (> 0; VCD's default 1).
    beta: plausibility cut in (0, 1]: tokens below beta times the most
      likely token's probability (under the plain model) are never chosen.
    keep: how much of the image survives the noise, in [0, 1): sqrt of the
      diffusion schedule's alpha-bar (0 = pure noise).
    seed: seed of the noise.
  """
  alpha: float = 1.0
  beta: float = 0.1
  keep: float = 0.3
  seed: int = 0

  def __post_init__(self):
    if not self.alpha > 0:
      raise ValueError(f"contrast alpha={self.alpha} must be > 0 (the "
                       "weight of the contrast; leave contrast off for none)")
    if not 0 < self.beta <= 1:
      raise ValueError(f"contrast beta={self.beta} must lie in (0, 1] (the "
                       "plausibility cut; VCD uses 0.1)")
    if not 0 <= self.keep < 1:
      raise ValueError(f"contrast keep={self.keep} must lie in [0, 1) (the "
                       "share of the image left under the noise)")


def noised(images: Sequence[np.ndarray], keep: float, seed: int,
           ids: Sequence[int]) -> list[np.ndarray]:
  """The distorted copies: keep * x + sqrt(1 - keep^2) * N(0, 1) per item.

  images: per prompt an array f32[M, H, W, C] (or a list of items of any
  size); ids: each prompt's index in the whole prompt list. The noise of
  prompt i depends only on (seed, i), so results do not depend on the
  batching.
  """
  scale = math.sqrt(1.0 - keep * keep)

  def one(x, rng):
    x = np.asarray(x, np.float32)
    return (keep * x + scale * rng.standard_normal(x.shape)).astype(np.float32)

  out = []
  for i, media in zip(ids, images):
    rng = np.random.default_rng([seed, int(i)])
    if isinstance(media, np.ndarray):
      out.append(one(media, rng))
    else:  # items of any size (native resolution): one array each
      out.append([one(item, rng) for item in media])
  return out


def combine(logits: jax.Array, alpha: float, beta: float) -> jax.Array:
  """Contrasted logits f32[B, V] from f32[2B, V] = (with images; noised).

  Tokens outside the plausible set get -inf, so greedy and sampled choices
  both stay inside it.
  """
  half = logits.shape[0] // 2
  plain = logits[:half].astype(jnp.float32)
  blind = logits[half:].astype(jnp.float32)
  log_p = jax.nn.log_softmax(plain, axis=-1)
  plausible = log_p >= math.log(beta) + jnp.max(log_p, axis=-1, keepdims=True)
  return jnp.where(plausible, (1 + alpha) * plain - alpha * blind, -jnp.inf)
