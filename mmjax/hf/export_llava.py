"""Export an mmjax MLLM to transformers' `LlavaForConditionalGeneration`.

  hf.export_llava(mllm_cfg, params, "exported/", image_token_id=4,
                  tokenizer="data/shapes/tokenizer.model")

What LLaVA can express, and so what exports (`check_exportable` names every
other feature in one HFExportError):

  fusion 'projection', positions 'rope', image_attention 'causal', frames 1;
  a CLIP or SigLIP tower (any feature_layer: an int, or None = the final
  output); projector 'mlp' (LLaVA's mlp2x_gelu) or 'linear' (exported as
  projector_hidden_act='linear' with an identity linear_2); a LLaMA /
  Mistral / Qwen2 decoder (exported as llama or qwen2), or Gemma, whose
  LLaVA scales the image features by sqrt(d) as it scales embeddings, so
  linear_2 is exported divided by sqrt(d).

Tensor names are those of the import (hf/mllm.py `llava_import`, i.e.
hf/vision.py `vision_plan`, hf/llm.py `decoder_plan`), in the hub spelling
(`vision_tower.vision_model.*`, `multi_modal_projector.*`,
`language_model.model.*`, `language_model.lm_head.weight`); each layout is
the inverse of that plan's (`invert`). The vision tower is written with the
blocks mmjax runs (`num_hidden_layers` = the blocks up to feature_layer,
read at `vision_feature_layer` -1; a SigLIP one at -2 behind a pass-through
block, see `_tower`), which is the same computation; its post_layernorm,
which an mmjax tower that stops early never creates and LLaVA then never
reads, is written as the identity, and SigLIP's MAP head is left out
(`vision_use_head: false`).

Besides config.json and the weights: `preprocessor_config.json` (CLIP- or
SigLIPImageProcessor stretching to the tower's square at bicubic and
normalising with mmjax's mean / std, as `mmjax.data.images.preprocess` with
resize='square'), `processor_config.json` (LlavaProcessor),
`generation_config.json` (when token ids are known) and the tokenizer files
(hf/export_tokenizer.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import numpy as np

from mmjax.data import images as images_lib
from mmjax.hf import export as export_lib
from mmjax.hf import export_tokenizer
from mmjax.hf import llm as llm_lib
from mmjax.hf import plan as P
from mmjax.hf import vision as vision_lib
from mmjax.hf.export import HFExportError
from mmjax.models import remat as remat_lib
from mmjax.models.mllm import MLLMConfig, mllm_config_from_dict
from mmjax.models.vision import VisionConfig

_VISION_PREFIX = "vision_tower.vision_model."
_PROJECTOR_PREFIX = "multi_modal_projector."
_LM_PREFIX = "language_model.model."
_LM_HEAD = "language_model.lm_head.weight"
# mmjax activation -> HF name: the inverse of the import's table, the first
# HF spelling of each winning (gelu_tanh -> gelu_pytorch_tanh).
_HF_ACT = {mj: name for name, mj in
           reversed(list(vision_lib.ACTIVATIONS.items()))}
_PROJECTOR_ACT = {"mlp": "gelu", "linear": "linear"}
_MODEL_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
# LLaVA's feature select strategy that keeps exactly mmjax's tokens: every
# patch token, CLIP's CLS dropped.
_STRATEGY = {"clip": "default", "siglip": "full"}
_PROCESSORS = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}
_PIL_BICUBIC = 3
EXPORTABLE = (
    "--to=llava exports fusion 'projection' with rope positions, causal "
    "image attention, one frame, a CLIP/SigLIP tower, projector 'mlp' or "
    "'linear' and a LLaMA/Mistral/Qwen2/Gemma LM; "
    "--to=decoder exports a decoder LM (a converted family 'lm' or a text "
    "LM run)")


def check_exportable(cfg: MLLMConfig, image_token_id: int | None = None
                     ) -> None:
  """HFExportError naming everything in `cfg` LLaVA cannot express."""
  problems = []
  for name, value, ok in (("fusion", cfg.fusion, "projection"),
                           ("positions", cfg.positions, "rope"),
                           ("image_attention", cfg.image_attention,
                            "causal")):
    if value != ok:
      problems.append(f"{name}={value!r}")
  if cfg.fusion == "projection" and cfg.projector not in _PROJECTOR_ACT:
    problems.append(f"projector={cfg.projector!r}")
  if cfg.frames != 1:
    problems.append(f"frames={cfg.frames} (video)")
  if cfg.tiling != "none":  # LLaVA has no tiles (nor image_newline)
    problems.append(f"tiling={cfg.tiling!r}")
  if cfg.visual_positions != "none":  # nor positions after the projector
    problems.append(f"visual_positions={cfg.visual_positions!r}")
  if cfg.vision is None:
    problems.append("no vision tower")
  elif getattr(cfg.vision, "kind", None) not in _MODEL_TYPES:
    problems.append(f"vision tower kind={cfg.vision.kind!r}")
  if not problems:
    try:
      export_lib.hf_config(cfg.lm)
    except HFExportError as e:
      problems.append(f"LM: {e}")
  if image_token_id is not None and not 0 <= image_token_id < (
      cfg.lm.vocab_size):
    problems.append(f"image token id {image_token_id} outside the "
                    f"vocabulary [0, {cfg.lm.vocab_size})")
  if problems:
    raise HFExportError(f"cannot export to LLaVA: {'; '.join(problems)}. "
                        f"{EXPORTABLE}.")


def _as_config(cfg: MLLMConfig | Mapping[str, Any]) -> MLLMConfig:
  return cfg if isinstance(cfg, MLLMConfig) else mllm_config_from_dict(
      dict(cfg))


def _blocks_run(cfg: MLLMConfig) -> int:
  """ViT blocks up to the feature layer (HF hidden_states index)."""
  k, depth = cfg.feature_layer, cfg.vision.depth
  return k + depth + 1 if k < 0 else k


def _tower(cfg: MLLMConfig) -> tuple[VisionConfig, int, bool]:
  """(the tower as exported, vision_feature_layer, pass-through block?).

  The exported tower has the blocks mmjax runs. transformers 4.57.1 replaces
  a SigLIP tower's last `hidden_states` entry by its post-layernormed output
  (CLIP keeps the raw one), so a SigLIP feature_layer=k is exported with one
  pass-through block (zero output projections) after block k, read at -2.
  """
  v = dataclasses.replace(cfg.vision, pool="none")
  if cfg.feature_layer is None:  # SigLIP post-LN output / CLIP last block
    return v, -1, False
  n = _blocks_run(cfg)
  if v.kind == "siglip":
    return dataclasses.replace(v, depth=n + 1), -2, True
  return dataclasses.replace(v, depth=n), -1, False


def _vision_config(cfg: MLLMConfig) -> dict[str, Any]:
  v = _tower(cfg)[0]
  out = {"model_type": _MODEL_TYPES[v.kind], "hidden_size": v.width,
         "intermediate_size": v.mlp_dim, "num_hidden_layers": v.depth,
         "num_attention_heads": v.n_heads, "image_size": v.image_size,
         "patch_size": v.patch_size, "num_channels": v.channels,
         "layer_norm_eps": v.norm_eps, "hidden_act": _HF_ACT[v.activation]}
  if v.kind == "siglip":
    out["vision_use_head"] = False
  return out


def llava_config(cfg: MLLMConfig, image_token_id: int, *,
                 max_position_embeddings: int = 4096,
                 token_ids: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
  """config.json of the exported `LlavaForConditionalGeneration`."""
  text = export_lib.hf_config(cfg.lm, max_position_embeddings)
  text.pop("torch_dtype")
  text.update({k: v for k, v in (token_ids or {}).items() if v is not None})
  return {
      "architectures": ["LlavaForConditionalGeneration"],
      "model_type": "llava", "image_token_index": int(image_token_id),
      "image_seq_length": cfg.vision.num_patches,
      "projector_hidden_act": _PROJECTOR_ACT[cfg.projector],
      "multimodal_projector_bias": True,
      "vision_feature_layer": _tower(cfg)[1],
      "vision_feature_select_strategy": _STRATEGY[cfg.vision.kind],
      "tie_word_embeddings": cfg.lm.tie_embeddings,
      "text_config": text, "vision_config": _vision_config(cfg),
      "torch_dtype": "float32"}


def _plan(cfg: MLLMConfig) -> P.Plan:
  """The import's plan for this model (the inverse of what is written)."""
  v, d = _tower(cfg)[0], cfg.lm.d_model
  plan = vision_lib.vision_plan(v, _VISION_PREFIX, "vision/")
  if cfg.projector == "mlp":
    P.add_dense(plan, "connector/linear_1", _PROJECTOR_PREFIX + "linear_1",
                v.width, d)
    P.add_dense(plan, "connector/linear_2", _PROJECTOR_PREFIX + "linear_2",
                d, d)
  else:  # 'linear' is LLaVA's linear_1; linear_2 is added as the identity.
    P.add_dense(plan, "connector/linear", _PROJECTOR_PREFIX + "linear_1",
                v.width, d)
  lm = dataclasses.replace(cfg.lm, scan_layers=False)
  plan.update(llm_lib.decoder_plan(lm, _LM_PREFIX, _LM_HEAD, "llm/"))
  return plan


def invert(src: P.Src, value: np.ndarray) -> np.ndarray:
  """The Hugging Face tensor that `src.fn` maps to `value`.

  Works for any `fn` that only rearranges elements (transposes, reshapes):
  it is applied to the element indices, and the result says where each
  source element went.

  Raises:
    HFExportError: `fn` is not a rearrangement of one tensor.
  """
  if len(src.keys) != 1:
    raise HFExportError(f"internal mapping error: {src.keys} has several "
                        f"sources; export inverts one-tensor mappings.")
  shape = tuple(src.shapes[0])
  n = math.prod(shape)
  where = np.asarray(src.fn(np.arange(n, dtype=np.int64).reshape(shape)))
  flat = where.reshape(-1)
  # Each source element exactly once (O(n), a 7B model's embedding too).
  if (where.shape != value.shape or not np.issubdtype(flat.dtype,
                                                      np.integer) or
      flat.min(initial=0) < 0 or
      not (np.bincount(flat, minlength=n) == 1).all()):
    raise HFExportError(f"internal mapping error: {src.keys[0]} is not a "
                        f"rearrangement of {list(value.shape)} elements.")
  out = np.empty(n, np.float32)
  out[flat] = np.asarray(value, np.float32).reshape(-1)
  return out.reshape(shape)


def _fillers(cfg: MLLMConfig) -> dict[str, Callable[..., np.ndarray]]:
  """Parameters LLaVA has and mmjax's params lack -> their constant init."""
  v, _, passthrough = _tower(cfg)
  # A tower that stops at feature_layer never creates post_layernorm; LLaVA
  # has one but never reads it.
  fill = {"vision/post_layernorm/scale": np.ones,
          "vision/post_layernorm/bias": np.zeros}
  if passthrough:  # zero attention and MLP outputs: x passes unchanged
    for path in vision_lib.vision_plan(v, "", "vision/"):
      if path.startswith(f"vision/layers_{v.depth - 1}/"):
        fill[path] = np.ones if path.endswith("/scale") else np.zeros
  return fill


def llava_tensors(cfg: MLLMConfig, params: Mapping[str, Any]
                  ) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, float32 array), one tensor at a time."""
  params = dict(nn.unbox(params))
  if cfg.lm.scan_layers:
    params["llm"] = remat_lib.unstack_layer_params(params["llm"])
  # A MAP head (pool='map') pools for contrastive training; LLaVA reads
  # patch features only.
  flat = {k: v for k, v in P.leaf_paths(params).items()
          if not k.startswith("vision/head/")}
  plan, fillers = _plan(cfg), _fillers(cfg)
  extra = sorted(set(flat) - set(plan))
  absent = sorted(set(plan) - set(flat) - set(fillers))
  if extra or absent:
    raise HFExportError(
        f"the parameters do not belong to this config: missing "
        f"{absent[:4]}, unexpected {extra[:4]}; pass the params of "
        f"MLLM(cfg).")
  d = cfg.lm.d_model
  # Gemma's LLaVA multiplies the image features by sqrt(d) with the token
  # embeddings; mmjax scales only the text, so linear_2 is divided by it.
  scale = np.float32(1.0 / math.sqrt(d) if cfg.lm.embed_scale else 1.0)
  for path, src in plan.items():
    if path not in flat:
      yield src.keys[0], fillers[path](src.shapes[0], np.float32)
      continue
    value = np.asarray(flat[path], np.float32)
    if path.startswith("connector/linear_2/"):
      value = value * scale
    yield src.keys[0], np.ascontiguousarray(invert(src, value))
  if cfg.projector == "linear":
    yield _PROJECTOR_PREFIX + "linear_2.weight", np.eye(
        d, dtype=np.float32) * scale
    yield _PROJECTOR_PREFIX + "linear_2.bias", np.zeros(d, np.float32)


def preprocessor_config(cfg: MLLMConfig) -> dict[str, Any]:
  """The image processor that reproduces `images.preprocess` (square)."""
  kind, side = cfg.vision.kind, cfg.vision.image_size
  mean, std = images_lib.NORMALIZATION[kind]
  out = {"image_processor_type": _PROCESSORS[kind],
         "processor_class": "LlavaProcessor", "do_convert_rgb": True,
         "do_resize": True, "size": {"height": side, "width": side},
         "resample": _PIL_BICUBIC, "do_rescale": True,
         "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": list(mean), "image_std": list(std)}
  if kind == "clip":
    out.update(do_center_crop=False, crop_size={"height": side,
                                                "width": side})
  return out


def processor_config(cfg: MLLMConfig) -> dict[str, Any]:
  """LlavaProcessor: `<image>` -> one image token per patch."""
  return {"processor_class": "LlavaProcessor", "image_token": "<image>",
          "patch_size": cfg.vision.patch_size,
          "vision_feature_select_strategy": _STRATEGY[cfg.vision.kind],
          # LlavaProcessor counts CLIP's CLS, then drops it for 'default'.
          "num_additional_image_tokens": int(cfg.vision.kind == "clip")}


def export_llava(cfg: MLLMConfig | Mapping[str, Any], params: Any,
                 out_dir: str | pathlib.Path, *, image_token_id: int,
                 tokenizer: str | pathlib.Path | None = None,
                 token_ids: Mapping[str, Any] | None = None,
                 max_position_embeddings: int = 4096,
                 max_shard_bytes: int = 2 << 30) -> pathlib.Path:
  """Writes a `LlavaForConditionalGeneration` directory transformers loads.

  Args:
    cfg: the MLLMConfig (or its dict, as config.json's `model`).
    params: `MLLM(cfg)`'s parameter tree (vision, connector, llm).
    out_dir: created if needed; existing weight files are replaced.
    image_token_id: the `<image>` id (config `image_token_index`).
    tokenizer: an mmjax sentencepiece `tokenizer.model`, or a Hugging Face
      tokenizer directory, to write beside the model (export_tokenizer.py);
      None: no tokenizer files.
    token_ids: bos_token_id / eos_token_id (an int or a list) /
      pad_token_id, for text_config and generation_config.json; by default
      those of an mmjax tokenizer (eos: `<|end|>` and `</s>`), else none.
    max_position_embeddings: recorded in text_config (RoPE has no table).
    max_shard_bytes: shard size limit.

  Returns:
    The output directory.

  Raises:
    HFExportError: `cfg` has a feature LLaVA cannot express (the message
      names each), or params that do not fit it.
  """
  cfg = _as_config(cfg)
  check_exportable(cfg, image_token_id)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  if tokenizer is not None:
    ids = export_tokenizer.write_tokenizer(tokenizer, out, image_token_id)
    token_ids = ids if token_ids is None else token_ids
  config = llava_config(cfg, image_token_id,
                        max_position_embeddings=max_position_embeddings,
                        token_ids=token_ids)
  export_lib.write_weights(llava_tensors(cfg, params), out, max_shard_bytes)
  files = {"config.json": config,
           "preprocessor_config.json": preprocessor_config(cfg),
           "processor_config.json": processor_config(cfg)}
  if token_ids:
    files["generation_config.json"] = {
        **{k: v for k, v in token_ids.items() if v is not None},
        "_from_model_config": False}
  for name, content in files.items():
    (out / name).write_text(json.dumps(content, indent=2))
  return out
