"""Region-level supervision of a vision tower: classify each object from the
patch tokens under its box.

  model = RegionClassifier(vision_cfg, classes=(("shape", 6), ("colour", 6)),
                           feature_layer=-1)
  logits = model.apply(v, images, region_weights)  # {"shape": [B, K, 6], ...}
  pooled, tokens = model.apply(v, images, region_weights, both=True)

Module tree: `vision` (the tower, named as in the MLLM so the recipe hands it
over), `region_head` {layernorm, <attribute>: Dense}. The head is linear on
box-averaged tokens on purpose: what it can read, a language model attending
to those tokens can read too.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.vision import VisionConfig, VisionEncoder


class RegionHead(nn.Module):
  """LayerNorm, then one linear classifier per attribute."""
  classes: tuple[tuple[str, int], ...]

  @nn.compact
  def __call__(self, pooled: jax.Array) -> dict[str, jax.Array]:
    """pooled: [B, K, D] -> {attribute: [B, K, n_classes]}."""
    h = nn.LayerNorm(name="layernorm")(pooled)
    return {name: nn.Dense(n, name=name)(h) for name, n in self.classes}


class RegionClassifier(nn.Module):
  """A ViT tower + RegionHead on each box's token average.

  Attributes:
    vision: the tower's config (the MLLM's `cfg.vision`).
    classes: (attribute, number of classes) pairs.
    feature_layer: the tower layer the MLLM reads (`MLLMConfig.feature_layer`),
      so the supervised tokens are the ones the connector sees.
  """
  vision: VisionConfig
  classes: tuple[tuple[str, int], ...]
  feature_layer: int | None = -1

  @nn.compact
  def __call__(self, images: jax.Array, region_weights: jax.Array,
               per_token: bool = False, both: bool = False):
    """images: [B, H, W, C]; region_weights: [B, K, N] (rows sum to 1 over
    the N patch tokens) -> {attribute: logits [B, K, n_classes]} of each
    box's token average, or with `per_token` the logits of every token
    {attribute: [B, N, n_classes]} (the same head; the weights unused), or
    with `both` the two (pooled, per token) from one pass of the tower."""
    tokens = VisionEncoder(self.vision, name="vision")(
        images, feature_layer=self.feature_layer).tokens  # [B, N, D]
    head = RegionHead(self.classes, name="region_head")
    if per_token and not both:
      return head(tokens)
    pooled = head(jnp.einsum("bkn,bnd->bkd",
                             region_weights.astype(tokens.dtype), tokens))
    return (pooled, head(tokens)) if both else pooled
