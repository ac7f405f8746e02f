"""Qwen2-VL (`Qwen2VLForConditionalGeneration`) -> mmjax `MLLM`.

fusion 'projection', projector 'patch_merger', positions 'mrope', the vision
tower `models/qwen2vl_vision.Qwen2VLVisionTower`. Hugging Face names (V =
`model.visual.` as transformers 4.57.1 saves it, `visual.` on the hub;
the LM prefix P = `model.language_model.` or `model.`):

  V.patch_embed.proj.weight [D, C, T, p, p]   vision/patch_embed/kernel
                              [T*p*p*C, D] (`qwen2vl_vision.frame_patches`)
  V.blocks.{i}.norm{1,2}                      vision/layers_{i}/norm{1,2}
  V.blocks.{i}.attn.qkv [3D, D] (+ bias)      vision/layers_{i}/attn/{q,k,v}
                                              (rows [0:D], [D:2D], [2D:3D])
  V.blocks.{i}.attn.proj                      vision/layers_{i}/attn/o
  V.blocks.{i}.mlp.fc{1,2}                    vision/layers_{i}/mlp/fc{1,2}
  V.merger.ln_q                               connector/ln_q
  V.merger.mlp.{0,2}                          connector/mlp/fc{1,2}
  P.*, lm_head                                llm/* (hf/llm.py, M-RoPE)

Inputs: a still image f32[H, W, 3] with sides multiples of 28, normalised
with Qwen2-VL's (CLIP's) mean / std, gives (H/28)(W/28) tokens; the prompt
holds `<|vision_start|>`, that many `<|image_pad|>` ids, `<|vision_end|>`,
and M-RoPE positions from `models/position_ids.py` (`get_rope_index`).
Images of any size and videos go through `data/native_resolution.py`
(smart_resize, packing) and `MLLM.encode_native`.
"""

from __future__ import annotations

from typing import Any, Mapping

from mmjax.hf import families
from mmjax.hf import llm as llm_lib
from mmjax.hf import plan as P
from mmjax.hf.safetensors_io import Checkpoint, HFImportError
from mmjax.models.qwen2vl_vision import Qwen2VLVisionConfig

# transformers 4.57.1 Qwen2VLVisionConfig defaults (keys config.json may omit).
_VISION_DEFAULTS = dict(depth=32, embed_dim=1280, hidden_size=3584,
                        hidden_act="quick_gelu", mlp_ratio=4, num_heads=16,
                        in_channels=3, patch_size=14, spatial_merge_size=2,
                        temporal_patch_size=2)
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu",
                "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu"}
VISION_PREFIXES = ("model.visual.", "visual.")


def vision_config(vc: Mapping[str, Any]) -> Qwen2VLVisionConfig:
  """Qwen2VLVisionConfig of a Qwen2-VL `vision_config` dict."""
  get = lambda k: vc.get(k) if vc.get(k) is not None else _VISION_DEFAULTS[k]
  act = get("hidden_act")
  if act not in _ACTIVATIONS:
    raise HFImportError(f"Qwen2-VL vision hidden_act={act!r} is not "
                        f"supported; supported: {sorted(_ACTIVATIONS)}.")
  width = int(get("embed_dim"))
  patch, merge = int(get("patch_size")), int(get("spatial_merge_size"))
  return Qwen2VLVisionConfig(
      image_size=2 * patch * merge, patch_size=patch,
      temporal_patch_size=int(get("temporal_patch_size")),
      spatial_merge=merge, channels=int(vc.get("in_channels") or vc.get(
          "in_chans") or 3), width=width, depth=int(get("depth")),
      mlp_dim=int(width * float(get("mlp_ratio"))),
      n_heads=int(get("num_heads")), activation=_ACTIVATIONS[act])


def _fused(key: str, d: int, part: int, heads: int, weight: bool) -> P.Src:
  """q, k or v (part 0, 1, 2) of the fused qkv Linear [3D, D] / [3D]."""
  rows = slice(part * d, (part + 1) * d)
  if weight:
    return P.Src((key,), ((3 * d, d),),
                 lambda w: w[rows].T.reshape(d, heads, d // heads))
  return P.Src((key,), ((3 * d,),),
               lambda b: b[rows].reshape(heads, d // heads))


def vision_plan(cfg: Qwen2VLVisionConfig, prefix: str, path: str) -> P.Plan:
  """Plan for the tower (without the merger)."""
  d, c, p, t = (cfg.width, cfg.channels, cfg.patch_size,
                cfg.temporal_patch_size)
  plan: P.Plan = {f"{path}patch_embed/kernel": P.Src(
      (f"{prefix}patch_embed.proj.weight",), ((d, c, t, p, p),),
      lambda w: w.transpose(2, 3, 4, 1, 0).reshape(t * p * p * c, d))}
  for i in range(cfg.depth):
    hf, mj = f"{prefix}blocks.{i}.", f"{path}layers_{i}/"
    P.add_norm(plan, mj + "norm1", hf + "norm1", d)
    P.add_norm(plan, mj + "norm2", hf + "norm2", d)
    for j, name in enumerate("qkv"):
      plan[f"{mj}attn/{name}/kernel"] = _fused(hf + "attn.qkv.weight", d, j,
                                               cfg.n_heads, True)
      plan[f"{mj}attn/{name}/bias"] = _fused(hf + "attn.qkv.bias", d, j,
                                             cfg.n_heads, False)
    plan[f"{mj}attn/o/kernel"] = P.heads_out(hf + "attn.proj.weight",
                                             cfg.n_heads, cfg.head_dim, d)
    plan[f"{mj}attn/o/bias"] = P.raw(hf + "attn.proj.bias", (d,))
    P.add_dense(plan, mj + "mlp/fc1", hf + "mlp.fc1", d, cfg.mlp_dim)
    P.add_dense(plan, mj + "mlp/fc2", hf + "mlp.fc2", cfg.mlp_dim, d)
  return plan


def merger_plan(cfg: Qwen2VLVisionConfig, prefix: str, out_dim: int,
                path: str) -> P.Plan:
  """Plan for `connectors.PatchMerger` from `merger.*`."""
  wide = cfg.width * cfg.spatial_merge ** 2
  plan: P.Plan = {}
  P.add_norm(plan, path + "ln_q", prefix + "merger.ln_q", cfg.width)
  P.add_dense(plan, path + "mlp/fc1", prefix + "merger.mlp.0", wide, wide)
  P.add_dense(plan, path + "mlp/fc2", prefix + "merger.mlp.2", wide, out_dim)
  return plan


def qwen2vl_import(ckpt: Checkpoint, config: Mapping[str, Any],
                   notes: list[str]
                   ) -> tuple[dict[str, Any], P.Plan, list[str]]:
  """Qwen2VLForConditionalGeneration -> MLLM config dict, plan, ignores."""
  vc = config.get("vision_config") or {}
  vcfg = vision_config(vc)
  lm = llm_lib.decoder_config(llm_lib.text_config_of(config),
                              "qwen2_vl_text", notes)
  out_dim = int(vc.get("hidden_size") or lm.d_model)
  if out_dim != lm.d_model:
    raise HFImportError(f"Qwen2-VL merger width vision_config.hidden_size="
                        f"{out_dim} differs from the LM width {lm.d_model}.")
  if vcfg.spatial_merge != 2:
    raise HFImportError(f"Qwen2-VL spatial_merge_size={vcfg.spatial_merge}: "
                        f"mmjax's patch_merger connector merges 2x2 windows.")
  vp = ckpt.resolve_prefix(VISION_PREFIXES, "patch_embed.proj.weight",
                           "Qwen2-VL vision tower")
  lp = ckpt.resolve_prefix(["model.language_model.", "model."],
                           "embed_tokens.weight", "Qwen2-VL language model")
  plan = vision_plan(vcfg, vp, "vision/")
  plan.update(merger_plan(vcfg, vp, lm.d_model, "connector/"))
  plan.update(llm_lib.decoder_plan(lm, lp, "lm_head.weight", "llm/"))
  ignore = list(llm_lib.DECODER_IGNORE)
  if lm.tie_embeddings:
    ignore.append("lm_head.weight")
  notes.append("Qwen2-VL: images at native resolution (smart_resize to "
               f"multiples of {vcfg.unit} px) and videos as frame stacks "
               "generate and train through data/native_resolution.py.")
  cfg = families.mllm_model_dict("projection", vcfg, lm, positions="mrope",
                                projector="patch_merger")
  return cfg, plan, ignore
