"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`) -> `MLLM`, fusion
'projection', tiling 'anyres'.

Everything LLaVA has maps as in hf/mllm.py's `llava_import` (CLIP / SigLIP
tower, mlp2x_gelu projector, decoder); in addition:
  image_newline / model.image_newline     image_newline [D] (top level)
  image_grid_pinpoints                    grid_pinpoints ((h, w), ...)
The tile side is the tower's image_size. Images go through
`data.tiling.anyres_tiles` on the host and `models.tiling.encode_tiled`.
"""
from __future__ import annotations

from typing import Any, Mapping

from mmjax.hf import mllm as mllm_lib
from mmjax.hf import plan as P
from mmjax.hf.safetensors_io import Checkpoint, HFImportError

# transformers' LlavaNextConfig default (336 tiles).
_DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336],
                      [336, 1008]]


def llava_next_import(ckpt: Checkpoint, config: Mapping[str, Any],
                      notes: list[str]) -> mllm_lib.Result:
  cfg, plan, ignore = mllm_lib.llava_import(ckpt, config, notes)
  tile = cfg["vision"]["image_size"]
  pinpoints = config.get("image_grid_pinpoints") or _DEFAULT_PINPOINTS
  bad = [p for p in pinpoints if len(p) != 2 or p[0] % tile or p[1] % tile]
  if bad:
    raise HFImportError(f"LLaVA-NeXT image_grid_pinpoints {bad} are not "
                        f"(height, width) multiples of the tower's "
                        f"image_size {tile}.")
  d = cfg["lm"]["d_model"]
  key = ckpt.resolve_prefix(("model.", ""), "image_newline",
                            "LLaVA-NeXT image_newline") + "image_newline"
  plan["image_newline"] = P.raw(key, (d,))
  cfg.update(tiling="anyres",
             grid_pinpoints=[[int(h), int(w)] for h, w in pinpoints])
  notes.append("LLaVA-NeXT: tile images with mmjax.data.tiling.anyres_tiles "
               "and encode them with mmjax.models.tiling.encode_tiled.")
  return cfg, plan, ignore
