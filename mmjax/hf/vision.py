"""SigLIP and CLIP towers: vision encoders, SigLIP's text tower, two towers.

Hugging Face names (V = vision prefix, `vision_model.` in 4.x checkpoints and
on the hub, empty for a bare tower saved by transformers 5.x) -> mmjax
`VisionEncoder`:

  V.embeddings.patch_embedding   patch_embedding (conv [D,C,p,p] ->
                                 kernel [p*p*C, D], see `vision.patchify`)
  V.embeddings.position_embedding  position_embedding [N(+1), D]
  V.embeddings.class_embedding   class_embedding (CLIP)
  V.pre_layrnorm                 pre_layernorm (CLIP)
  V.encoder.layers.{i}.*         layers_{i}: layer_norm1, self_attn/{q,k,v,o}
                                 (o = out_proj), layer_norm2, mlp/{fc1,fc2}
  V.post_layernorm               post_layernorm
  V.head.probe                   head/probe (SigLIP MAP head)
  V.head.attention.in_proj_*     head/attention/{q,k,v} (rows [0:D], [D:2D],
                                 [2D:3D] of the fused torch MHA projection)
  V.head.attention.out_proj      head/attention/o
  V.head.{layernorm,mlp}         head/{layernorm,mlp}

SigLIP text (`text_model.`) -> `TextTower`: embeddings.token_embedding ->
token_embedding, embeddings.position_embedding -> position_embedding,
encoder.layers -> layers_{i} (as above), final_layer_norm, head.
`SiglipModel` -> `TwoTower`: vision_model, text_model, logit_scale,
logit_bias (HF [1] -> scalar).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mmjax.hf import plan as P
from mmjax.hf.safetensors_io import Checkpoint, HFImportError
from mmjax.models.text_tower import TextTowerConfig
from mmjax.models.vision import VisionConfig

ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "gelu": "gelu", "quick_gelu": "quick_gelu", "relu": "relu"}
# transformers 4.57.1 class defaults for keys a config.json may omit.
_DEFAULTS = {
    "siglip": dict(layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                   num_channels=3, image_size=224, patch_size=16),
    "clip": dict(layer_norm_eps=1e-5, hidden_act="quick_gelu", num_channels=3,
                 image_size=224, patch_size=32),
}


def _act(name: str) -> str:
  if name not in ACTIVATIONS:
    raise HFImportError(f"hidden_act={name!r} is not supported; supported: "
                        f"{sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def vision_config(vc: Mapping[str, Any], kind: str) -> VisionConfig:
  """VisionConfig of a SigLIP or CLIP `vision_config` dict."""
  get = lambda k: vc.get(k, _DEFAULTS[kind].get(k))
  for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads"):
    if key not in vc:
      raise HFImportError(f"the {kind} vision config lacks {key!r}.")
  pool = "none"
  if kind == "siglip" and vc.get("vision_use_head", True):
    pool = "map"
  return VisionConfig(
      kind=kind, image_size=int(get("image_size")),
      patch_size=int(get("patch_size")), channels=int(get("num_channels")),
      width=int(vc["hidden_size"]), depth=int(vc["num_hidden_layers"]),
      mlp_dim=int(vc["intermediate_size"]),
      n_heads=int(vc["num_attention_heads"]),
      norm_eps=float(get("layer_norm_eps")), activation=_act(get("hidden_act")),
      pool=pool)


def _encoder_layer(plan: P.Plan, path: str, key: str, d: int, mlp: int,
                   heads: int) -> None:
  P.add_norm(plan, path + "layer_norm1", key + "layer_norm1", d)
  P.add_norm(plan, path + "layer_norm2", key + "layer_norm2", d)
  P.add_attention(
      plan, path + "self_attn",
      {"q": key + "self_attn.q_proj", "k": key + "self_attn.k_proj",
       "v": key + "self_attn.v_proj", "o": key + "self_attn.out_proj"},
      d_q=d, d_kv=d, heads=heads, kv_heads=heads, head_dim=d // heads,
      d_out=d, qkv_bias=True, o_bias=True)
  P.add_dense(plan, path + "mlp/fc1", key + "mlp.fc1", d, mlp)
  P.add_dense(plan, path + "mlp/fc2", key + "mlp.fc2", mlp, d)


def _fused_rows(key: str, d: int, part: int, heads: int, weight: bool
                ) -> P.Src:
  """One of q/k/v from torch MHA's fused in_proj ([3D, D] or [3D])."""
  sl = slice(part * d, (part + 1) * d)
  if weight:
    return P.Src((key,), ((3 * d, d),),
                 lambda w: w[sl].T.reshape(d, heads, d // heads))
  return P.Src((key,), ((3 * d,),), lambda b: b[sl].reshape(heads,
                                                             d // heads))


def vision_plan(cfg: VisionConfig, prefix: str, path: str = "") -> P.Plan:
  """Plan for every parameter a full `VisionEncoder` call creates."""
  d, c, p = cfg.width, cfg.channels, cfg.patch_size
  clip = cfg.kind == "clip"
  emb = prefix + "embeddings."
  plan: P.Plan = {
      f"{path}patch_embedding/kernel": P.conv_patch(
          emb + "patch_embedding.weight", d, c, p),
      f"{path}position_embedding": P.raw(
          emb + "position_embedding.weight", (cfg.num_patches + clip, d)),
  }
  if clip:
    plan[f"{path}class_embedding"] = P.raw(emb + "class_embedding", (d,))
    P.add_norm(plan, path + "pre_layernorm", prefix + "pre_layrnorm", d)
  else:
    plan[f"{path}patch_embedding/bias"] = P.raw(
        emb + "patch_embedding.bias", (d,))
  for i in range(cfg.depth):
    _encoder_layer(plan, f"{path}layers_{i}/",
                   f"{prefix}encoder.layers.{i}.", d, cfg.mlp_dim, cfg.n_heads)
  P.add_norm(plan, path + "post_layernorm", prefix + "post_layernorm", d)
  if cfg.pool == "map":
    head, hp = prefix + "head.", path + "head/"
    plan[hp + "probe"] = P.raw(head + "probe", (1, 1, d))
    for j, name in enumerate("qkv"):
      plan[f"{hp}attention/{name}/kernel"] = _fused_rows(
          head + "attention.in_proj_weight", d, j, cfg.n_heads, True)
      plan[f"{hp}attention/{name}/bias"] = _fused_rows(
          head + "attention.in_proj_bias", d, j, cfg.n_heads, False)
    plan[f"{hp}attention/o/kernel"] = P.heads_out(
        head + "attention.out_proj.weight", cfg.n_heads, d // cfg.n_heads, d)
    plan[f"{hp}attention/o/bias"] = P.raw(head + "attention.out_proj.bias",
                                          (d,))
    P.add_norm(plan, hp + "layernorm", head + "layernorm", d)
    P.add_dense(plan, hp + "mlp/fc1", head + "mlp.fc1", d, cfg.mlp_dim)
    P.add_dense(plan, hp + "mlp/fc2", head + "mlp.fc2", cfg.mlp_dim, d)
  return plan


def text_config(tc: Mapping[str, Any]) -> TextTowerConfig:
  """TextTowerConfig of a SigLIP `text_config` dict."""
  width = int(tc["hidden_size"])
  proj = int(tc.get("projection_size") or width)
  return TextTowerConfig(
      vocab_size=int(tc["vocab_size"]),
      max_len=int(tc.get("max_position_embeddings", 64)), width=width,
      depth=int(tc["num_hidden_layers"]), mlp_dim=int(tc["intermediate_size"]),
      n_heads=int(tc["num_attention_heads"]),
      embed_dim=None if proj == width else proj,
      norm_eps=float(tc.get("layer_norm_eps", 1e-6)),
      activation=_act(tc.get("hidden_act", "gelu_pytorch_tanh")))


def text_plan(cfg: TextTowerConfig, prefix: str, path: str = "") -> P.Plan:
  d = cfg.width
  plan: P.Plan = {
      f"{path}token_embedding/embedding": P.raw(
          prefix + "embeddings.token_embedding.weight", (cfg.vocab_size, d)),
      f"{path}position_embedding": P.raw(
          prefix + "embeddings.position_embedding.weight", (cfg.max_len, d)),
  }
  for i in range(cfg.depth):
    _encoder_layer(plan, f"{path}layers_{i}/",
                   f"{prefix}encoder.layers.{i}.", d, cfg.mlp_dim, cfg.n_heads)
  P.add_norm(plan, path + "final_layer_norm", prefix + "final_layer_norm", d)
  P.add_dense(plan, path + "head", prefix + "head", d, cfg.out_dim)
  return plan


VISION_PREFIXES = ("vision_model.", "")


def vision_tower_import(ckpt: Checkpoint, config: Mapping[str, Any],
                        notes: list[str]
                        ) -> tuple[dict[str, Any], P.Plan, list[str]]:
  """SiglipVisionModel, CLIPVisionModel, or the vision half of CLIPModel."""
  model_type = config["model_type"]
  kind = "clip" if model_type.startswith("clip") else "siglip"
  vc = config.get("vision_config") or config
  cfg = vision_config(vc, kind)
  prefix = ckpt.resolve_prefix(VISION_PREFIXES,
                               "embeddings.patch_embedding.weight",
                               f"{kind} vision tower")
  ignore = []
  if model_type == "clip":
    ignore = ["text_model.*", "text_projection.*", "visual_projection.*",
              "logit_scale", "*position_ids"]
    notes.append("CLIPModel: imported the vision tower only (its text tower "
                 "and projections were skipped).")
  return dataclasses.asdict(cfg), vision_plan(cfg, prefix, "vision/"), ignore


def two_tower_import(ckpt: Checkpoint, config: Mapping[str, Any],
                     notes: list[str]
                     ) -> tuple[dict[str, Any], P.Plan, list[str]]:
  """SiglipModel -> TwoTower; config {'vision', 'text', 'embed_dim'}."""
  del notes
  vcfg = vision_config(config.get("vision_config", {}), "siglip")
  tcfg = text_config(config.get("text_config", {}))
  if tcfg.out_dim != vcfg.width:
    raise HFImportError(f"SigLIP text projection_size={tcfg.out_dim} differs "
                        f"from the vision width {vcfg.width}.")
  if vcfg.pool != "map":
    raise HFImportError("SiglipModel without the vision MAP head "
                        "(vision_use_head=false) is not supported.")
  plan = vision_plan(vcfg, "vision_model.", "vision_model/")
  plan.update(text_plan(tcfg, "text_model.", "text_model/"))
  plan["logit_scale"] = P.raw("logit_scale", (1,), ())
  plan["logit_bias"] = P.raw("logit_bias", (1,), ())
  cfg = {"vision": dataclasses.asdict(vcfg), "text": dataclasses.asdict(tcfg),
         "embed_dim": vcfg.width}
  return cfg, plan, ["*position_ids"]


def skip_siglip_head(ckpt, prefix: str, ignore: list[str], notes: list[str],
                     model: str) -> None:
  """Ignores a SigLIP tower's MAP head (`prefix`head.*) when the checkpoint
  has one, with a note: a multimodal model reads the patch tokens, the
  pooled output never reaches its LM."""
  head = [k for k in ckpt.keys() if k.startswith(prefix + "head.")]
  if head:
    ignore.append(prefix + "head.*")
    notes.append(f"{model}: skipped the SigLIP MAP head ({len(head)} tensors "
                 f"under {prefix}head.*): it reads the patch tokens, never "
                 "the pooled output.")
