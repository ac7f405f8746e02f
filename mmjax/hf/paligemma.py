"""PaliGemma (`PaliGemmaForConditionalGeneration`) -> mmjax `MLLM`.

fusion 'projection', projector 'linear', a SigLIP tower read at its final
(post-layernorm) output (feature_layer None), a Gemma or Gemma 2 decoder with
`prefix_lm=True`: image + prompt attend bidirectionally, the answer causally
(pass `prefix_len`; training derives it from the loss mask, generation uses
the prompt length). Hugging Face names (4.57.1 spelling first, hub second):

  model.vision_tower.vision_model.* | vision_tower.vision_model.*
                                    vision/* (hf/vision.py; the MAP head, if
                                    present, is skipped)
  model.multi_modal_projector.linear | multi_modal_projector.linear
                                    connector/linear
  model.language_model.* | language_model.model.*, lm_head
                                    llm/* (hf/llm.py)

transformers divides the image features by sqrt(d) and the Gemma model then
multiplies every input embedding by sqrt(d); mmjax scales only the text
embeddings, so the projector output enters the LM as is (the same numbers).
transformers numbers positions from 1; RoPE sees only differences, so
mmjax's 0-based positions give the same logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mmjax.hf import families
from mmjax.hf import llm as llm_lib
from mmjax.hf import plan as P
from mmjax.hf import vision as vision_lib
from mmjax.hf.safetensors_io import Checkpoint, HFImportError

_TEXT_TYPES = ("gemma", "gemma2")


def paligemma_import(ckpt: Checkpoint, config: Mapping[str, Any],
                     notes: list[str]
                     ) -> tuple[dict[str, Any], P.Plan, list[str]]:
  vc = config.get("vision_config") or {}
  tc = dict(config.get("text_config") or {})
  text_type = tc.get("model_type", "gemma")
  if text_type not in _TEXT_TYPES:
    raise HFImportError(f"PaliGemma text model {text_type!r} is not "
                        f"supported; supported: {list(_TEXT_TYPES)}.")
  vcfg = dataclasses.replace(vision_lib.vision_config(vc, "siglip"),
                             pool="none")
  lm = dataclasses.replace(llm_lib.decoder_config(tc, text_type, notes),
                           prefix_lm=True)
  proj = int(vc.get("projection_dim") or config.get("projection_dim") or
             lm.d_model)
  if proj != lm.d_model:
    raise HFImportError(f"PaliGemma projection_dim={proj} differs from the "
                        f"LM width {lm.d_model}.")
  vp = ckpt.resolve_prefix(
      ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
      "embeddings.patch_embedding.weight", "PaliGemma vision tower")
  pp = ckpt.resolve_prefix(("model.multi_modal_projector.",
                            "multi_modal_projector."), "linear.weight",
                           "PaliGemma projector")
  lp = ckpt.resolve_prefix(("model.language_model.", "language_model.model."),
                           "embed_tokens.weight", "PaliGemma language model")
  plan = vision_lib.vision_plan(vcfg, vp, "vision/")
  P.add_dense(plan, "connector/linear", pp + "linear", vcfg.width, lm.d_model)
  plan.update(llm_lib.decoder_plan(
      lm, lp, "lm_head.weight" if "lm_head.weight" in ckpt else
      "language_model.lm_head.weight", "llm/"))
  ignore = list(llm_lib.DECODER_IGNORE) + ["*position_ids"]
  if lm.tie_embeddings:
    ignore += ["lm_head.weight", "language_model.lm_head.weight"]
  vision_lib.skip_siglip_head(ckpt, vp, ignore, notes, "PaliGemma")
  cfg = families.mllm_model_dict("projection", vcfg, lm, projector="linear")
  return cfg, plan, ignore
