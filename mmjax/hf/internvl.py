"""InternVL (`InternVLForConditionalGeneration`) -> `MLLM`, fusion
'projection', projector 'pixel_shuffle', tiling 'internvl'.

  model.vision_tower.embeddings.cls_token [1, 1, D]   vision/class_embedding
  ...embeddings.position_embeddings [1, N + 1, D]      vision/position_embedding
  ...embeddings.patch_embeddings.projection (Conv2d)   vision/patch_embedding
  ...encoder.layer.{i}.layernorm_before / _after       layers_i/layer_norm1 / 2
  ...encoder.layer.{i}.attention.{q,k,v}_proj,
     .projection_layer                                 layers_i/self_attn/q,k,v,o
  ...encoder.layer.{i}.mlp.fc1 / fc2                   layers_i/mlp/fc1 / fc2
  ...encoder.layer.{i}.lambda_1 / lambda_2             layers_i/lambda_1 / 2
  model.multi_modal_projector.{layer_norm,linear_1,linear_2}  connector/*
  model.language_model.*, lm_head                      llm/* (hf/llm.py)
  (4.x saves the legacy names: vision_tower.*, multi_modal_projector.*,
  language_model.model.*, language_model.lm_head; both are accepted.)

The tower is VisionConfig kind 'internvit'. Refused (a clear error): qk-norm
and RMSNorm blocks (InternViT-6B), q/k/v without biases, a downsample ratio
other than 0.5, more than one feature layer, select strategy 'full'.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mmjax.hf import families
from mmjax.hf import llm as llm_lib
from mmjax.hf import plan as P
from mmjax.hf.safetensors_io import Checkpoint, HFImportError
from mmjax.models.vision import VisionConfig

_ACTS = {"gelu": "gelu"}


def _size(v: Any) -> int:
  """InternVL writes image_size / patch_size as [h, w]; square only."""
  if isinstance(v, (list, tuple)):
    if len(set(v)) != 1:
      raise HFImportError(f"InternVL vision size {list(v)} is not square; "
                          f"mmjax's ViT takes square tiles.")
    v = v[0]
  return int(v)


def internvl_import(ckpt: Checkpoint, config: Mapping[str, Any],
                    notes: list[str]) -> Any:
  vc = config.get("vision_config") or {}
  bad = {k: vc.get(k, dflt) for k, ok, dflt in (
      ("use_qk_norm", False, False), ("norm_type", "layer_norm", "layer_norm"),
      ("attention_bias", True, False), ("use_mask_token", False, False),
      ("use_absolute_position_embeddings", True, True))
         if vc.get(k, dflt) != ok}
  if config.get("downsample_ratio", 0.5) != 0.5:
    bad["downsample_ratio"] = config.get("downsample_ratio")
  if config.get("vision_feature_select_strategy", "default") != "default":
    bad["vision_feature_select_strategy"] = config.get(
        "vision_feature_select_strategy")
  if config.get("projector_hidden_act", "gelu") != "gelu":
    bad["projector_hidden_act"] = config.get("projector_hidden_act")
  if vc.get("hidden_act", "gelu") not in _ACTS:
    bad["vision_config.hidden_act"] = vc.get("hidden_act")
  layer = config.get("vision_feature_layer", -1)
  if not isinstance(layer, int):
    bad["vision_feature_layer"] = layer
  if bad:
    raise HFImportError(
        f"InternVL with {bad} is not supported; mmjax imports InternViT with "
        f"layer_norm blocks, q/k/v biases, no qk-norm, absolute position "
        f"embeddings, downsample_ratio 0.5, one feature layer and the "
        f"'default' (CLS dropped) strategy.")
  if not vc.get("use_mean_pooling", True) and layer == -1:
    raise HFImportError("InternVL with use_mean_pooling=false reads a "
                        "post-layernormed last layer; not supported.")
  d = int(vc["hidden_size"])
  vcfg = VisionConfig(
      kind="internvit", image_size=_size(vc.get("image_size", 448)),
      patch_size=_size(vc.get("patch_size", 14)),
      channels=int(vc.get("num_channels", 3)), width=d,
      depth=int(vc["num_hidden_layers"]),
      mlp_dim=int(vc["intermediate_size"]),
      n_heads=int(vc["num_attention_heads"]),
      norm_eps=float(vc.get("layer_norm_eps", 1e-6)),
      activation=_ACTS[vc.get("hidden_act", "gelu")], pool="none")
  tc = config.get("text_config") or {}
  lm = llm_lib.decoder_config(tc, tc.get("model_type"), notes)
  vp = ckpt.resolve_prefix(("model.vision_tower.", "vision_tower."),
                           "embeddings.cls_token", "InternVL vision tower")
  lp = ckpt.resolve_prefix(("model.language_model.", "language_model.model."),
                           "embed_tokens.weight", "InternVL language model")
  pp = ckpt.resolve_prefix(("model.multi_modal_projector.",
                            "multi_modal_projector."), "linear_1.weight",
                           "InternVL projector")
  emb, p, c = vp + "embeddings.", vcfg.patch_size, vcfg.channels
  plan: P.Plan = {
      "vision/class_embedding": P.raw(emb + "cls_token", (1, 1, d), (d,)),
      "vision/position_embedding": P.raw(
          emb + "position_embeddings", (1, vcfg.num_patches + 1, d),
          (vcfg.num_patches + 1, d)),
      "vision/patch_embedding/kernel": P.conv_patch(
          emb + "patch_embeddings.projection.weight", d, c, p),
      "vision/patch_embedding/bias": P.raw(
          emb + "patch_embeddings.projection.bias", (d,)),
  }
  for i in range(vcfg.depth):
    hf, mj = f"{vp}encoder.layer.{i}.", f"vision/layers_{i}/"
    P.add_norm(plan, mj + "layer_norm1", hf + "layernorm_before", d)
    P.add_norm(plan, mj + "layer_norm2", hf + "layernorm_after", d)
    P.add_attention(
        plan, mj + "self_attn",
        {"q": hf + "attention.q_proj", "k": hf + "attention.k_proj",
         "v": hf + "attention.v_proj", "o": hf + "attention.projection_layer"},
        d_q=d, d_kv=d, heads=vcfg.n_heads, kv_heads=vcfg.n_heads,
        head_dim=d // vcfg.n_heads, d_out=d, qkv_bias=True, o_bias=True)
    P.add_dense(plan, mj + "mlp/fc1", hf + "mlp.fc1", d, vcfg.mlp_dim)
    P.add_dense(plan, mj + "mlp/fc2", hf + "mlp.fc2", vcfg.mlp_dim, d)
    for lam in ("lambda_1", "lambda_2"):
      plan[mj + lam] = P.raw(hf + lam, (d,))
  P.add_norm(plan, "connector/layer_norm", pp + "layer_norm", 4 * d)
  P.add_dense(plan, "connector/linear_1", pp + "linear_1", 4 * d, lm.d_model)
  P.add_dense(plan, "connector/linear_2", pp + "linear_2", lm.d_model,
              lm.d_model)
  heads = ("language_model.lm_head.weight", "lm_head.weight")
  plan.update(llm_lib.decoder_plan(
      lm, lp, next((h for h in heads if h in ckpt), heads[1]), "llm/"))
  ignore = list(llm_lib.DECODER_IGNORE) + ["*position_ids"]
  if lm.tie_embeddings:
    ignore += list(heads)
  notes.append("InternVL: tile images with mmjax.data.tiling.internvl_tiles "
               "and encode them with mmjax.models.tiling.encode_tiled.")
  cfg = families.mllm_model_dict(
      "projection", vcfg, lm, projector="pixel_shuffle", feature_layer=layer,
      tiling="internvl", vision=dataclasses.asdict(vcfg))
  return cfg, plan, ignore
