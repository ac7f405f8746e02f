"""SigLIP2 NaFlex vision tower: Siglip2VisionModel, or Siglip2Model's vision half.

Hugging Face names (V = `vision_model.`) -> mmjax `NaFlexVisionTower`; all
as SigLIP's (`hf.vision` module docstring) except:

  V.embeddings.patch_embedding   patch_embedding: a Linear [D, p*p*C] on the
                                 flattened (dy, dx, c) patch -> kernel
                                 [p*p*C, D] (SigLIP has a conv)
  V.embeddings.position_embedding  position_embedding [g*g, D], g =
                                 sqrt(num_patches) (a grid, resized per image)

Siglip2Model's text tower, logit_scale and logit_bias are skipped (noted).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from mmjax.hf import plan as P
from mmjax.hf import vision as hf_vision
from mmjax.hf.safetensors_io import Checkpoint, HFImportError
from mmjax.models.naflex import NaFlexConfig
from mmjax.models.vision import VisionConfig

# transformers 4.57.1 Siglip2VisionConfig defaults for keys a config may omit.
_DEFAULTS = dict(layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                 num_channels=3, patch_size=16, num_patches=256)
PREFIXES = ("vision_model.", "")


def naflex_config(vc: Mapping[str, Any]) -> NaFlexConfig:
  """NaFlexConfig of a Siglip2 `vision_config` dict."""
  get = lambda k: vc.get(k, _DEFAULTS.get(k))
  for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads"):
    if key not in vc:
      raise HFImportError(f"the siglip2 vision config lacks {key!r}.")
  n = int(get("num_patches"))
  g = math.isqrt(n)
  if g * g != n:
    raise HFImportError(f"siglip2 num_patches={n} is not a square; its "
                        f"position embedding must be a g x g grid.")
  return NaFlexConfig(
      patch_size=int(get("patch_size")), channels=int(get("num_channels")),
      width=int(vc["hidden_size"]), depth=int(vc["num_hidden_layers"]),
      mlp_dim=int(vc["intermediate_size"]),
      n_heads=int(vc["num_attention_heads"]), posemb_grid=g,
      max_num_patches=n, norm_eps=float(get("layer_norm_eps")),
      activation=hf_vision._act(get("hidden_act")),  # pylint: disable=protected-access
      pool="map" if vc.get("vision_use_head", True) else "none")


def naflex_plan(cfg: NaFlexConfig, prefix: str, path: str = "") -> P.Plan:
  """Plan for every parameter of a `NaFlexVisionTower`: SigLIP's ViT plan
  (same blocks, post-LN and head) with the Linear patch embedding."""
  like = VisionConfig(
      kind="siglip", image_size=cfg.posemb_grid * cfg.patch_size,
      patch_size=cfg.patch_size, channels=cfg.channels, width=cfg.width,
      depth=cfg.depth, mlp_dim=cfg.mlp_dim, n_heads=cfg.n_heads,
      norm_eps=cfg.norm_eps, activation=cfg.activation, pool=cfg.pool)
  plan = hf_vision.vision_plan(like, prefix, path)
  plan[f"{path}patch_embedding/kernel"] = P.dense(
      prefix + "embeddings.patch_embedding.weight", cfg.patch_dim, cfg.width)
  return plan


def siglip2_import(ckpt: Checkpoint, config: Mapping[str, Any],
                   notes: list[str]
                   ) -> tuple[dict[str, Any], P.Plan, list[str]]:
  """Siglip2VisionModel or Siglip2Model -> family 'naflex'."""
  vc = config.get("vision_config") or config
  cfg = naflex_config(vc)
  prefix = ckpt.resolve_prefix(PREFIXES, "embeddings.patch_embedding.weight",
                               "siglip2 vision tower")
  ignore = ["*position_ids"]
  if config["model_type"] == "siglip2":
    ignore += ["text_model.*", "logit_scale", "logit_bias"]
    notes.append("Siglip2Model: imported the vision tower only (its text "
                 "tower, logit_scale and logit_bias were skipped).")
  return dataclasses.asdict(cfg), naflex_plan(cfg, prefix, "vision/"), ignore
