"""Import a local Hugging Face checkpoint directory; save and load the result.

  conv = import_checkpoint("/path/to/hf_dir", mesh=mesh)   # Converted
  save_converted(conv, "/path/to/out")   # out/config.json + out/params
  conv = load_converted("/path/to/out")

Saved layout: `OUT/config.json` = {"family", "model", "hf"} where "model" is
the mmjax model config (for 'mllm' the `config.model` block of
configs/shapes.py, for 'lm' that of configs/lm.py) and "hf" records the
source (model_type, architectures, special token ids, notes on what was
skipped); `OUT/params` is an orbax `StandardCheckpointer` checkpoint of the
unboxed param tree (see families.py for its top level).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from mmjax import parallel
from mmjax.hf import families
from mmjax.hf import internvl as internvl_lib
from mmjax.hf import llava_next as llava_next_lib
from mmjax.hf import llm as llm_lib
from mmjax.hf import mllm as mllm_lib
from mmjax.hf import paligemma as paligemma_lib
from mmjax.hf import plan as P
from mmjax.hf import qwen2_audio as qwen2_audio_lib
from mmjax.hf import qwen2vl as qwen2vl_lib
from mmjax.hf import siglip2 as siglip2_lib
from mmjax.hf import vision as vision_lib
from mmjax.hf import whisper as whisper_lib
from mmjax.hf.safetensors_io import Checkpoint, HFImportError, short_list

_IMPORTERS: dict[str, tuple[str, Callable[..., Any]]] = {
    "llama": ("lm", llm_lib.lm_import),
    "mistral": ("lm", llm_lib.lm_import),
    "qwen2": ("lm", llm_lib.lm_import),
    "gemma": ("lm", llm_lib.lm_import),
    "gemma2": ("lm", llm_lib.lm_import),
    "qwen2_vl": ("mllm", qwen2vl_lib.qwen2vl_import),
    "siglip": ("two_tower", vision_lib.two_tower_import),
    "siglip_vision_model": ("vision", vision_lib.vision_tower_import),
    "clip_vision_model": ("vision", vision_lib.vision_tower_import),
    "clip": ("vision", vision_lib.vision_tower_import),
    "siglip2_vision_model": ("naflex", siglip2_lib.siglip2_import),
    "siglip2": ("naflex", siglip2_lib.siglip2_import),
    "llava": ("mllm", mllm_lib.llava_import),
    "llava_next": ("mllm", llava_next_lib.llava_next_import),
    "internvl": ("mllm", internvl_lib.internvl_import),
    "paligemma": ("mllm", paligemma_lib.paligemma_import),
    "idefics2": ("mllm", mllm_lib.idefics2_import),
    "blip-2": ("connector", mllm_lib.blip2_import),
    "fuyu": ("connector", mllm_lib.fuyu_import),
    "idefics": ("lm", mllm_lib.idefics_import),
    "whisper": ("audio", whisper_lib.whisper_import),
    "qwen2_audio_encoder": ("audio", whisper_lib.whisper_import),
    "qwen2_audio": ("mllm", qwen2_audio_lib.qwen2_audio_import),
}
SUPPORTED_MODEL_TYPES = tuple(_IMPORTERS)
_TOKEN_KEYS = ("image_token_index", "image_token_id", "video_token_id",
               "audio_token_index",
               "vision_start_token_id", "vision_end_token_id", "bos_token_id",
               "eos_token_id", "pad_token_id")


@dataclasses.dataclass
class Converted:
  """An imported model.

  Attributes:
    family: one of `families.FAMILIES`.
    model: the mmjax model config as plain dicts (JSON-able).
    params: the unboxed param tree (jax arrays).
    hf: facts about the source: model_type, architectures, token ids, notes.
  """
  family: str
  model: dict[str, Any]
  params: Any
  hf: dict[str, Any]

  def module(self):
    """The flax module that `params` belong to (see families.py)."""
    return families.build_module(self.family, self.model)

  def module_params(self) -> Any:
    """`params` as the module expects them (group wrapper removed)."""
    group = families.GROUP.get(self.family)
    return self.params[group] if group else self.params


def import_checkpoint(hf_dir: str | pathlib.Path, *, mesh: Mesh | None = None,
                      rules: Any = None,
                      newline_token_id: int | None = None,
                      allow_nonfinite: bool = False) -> Converted:
  """Imports a Hugging Face model directory into mmjax (float32 params).

  Args:
    hf_dir: directory with config.json and *.safetensors (sharded or not).
    mesh: place every parameter with its logical sharding on this mesh
      (tensor by tensor; no host holds more than one tensor at a time).
    rules: logical axis rules (default `mmjax.parallel.DEFAULT_RULES`).
    newline_token_id: Fuyu's '|NEWLINE|' id when tokenizer.json is absent.
    allow_nonfinite: import tensors holding NaN or inf as they are (noted in
      `hf['notes']`) instead of refusing them.

  Returns:
    Converted.

  Raises:
    HFImportError: unsupported architecture, a feature mmjax cannot express,
      missing or mis-shaped tensors, a tensor holding NaN or inf, a
      truncated weights file, or a pickle-only directory.
  """
  ckpt = Checkpoint(hf_dir, allow_nonfinite=allow_nonfinite)
  config = ckpt.config
  model_type = config.get("model_type")
  if model_type not in _IMPORTERS:
    raise HFImportError(
        f"{hf_dir}: architecture {config.get('architectures')} (model_type "
        f"{model_type!r}) is not supported; supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}.")
  family, importer = _IMPORTERS[model_type]
  notes: list[str] = []
  kwargs = {"newline_id": newline_token_id} if model_type == "fuyu" else {}
  try:
    model, plan, ignore, *extra = importer(ckpt, config, notes, **kwargs)
    extra = extra[0] if extra else {}
    module = families.build_module(family, model)
  except (TypeError, ValueError, KeyError) as e:
    if isinstance(e, HFImportError):
      raise
    raise HFImportError(f"{hf_dir}: config.json ({model_type}) does not "
                        f"describe a model mmjax can build: {e}") from None
  args, kwargs = families.dummy_inputs(family, model,
                                      extra.get("media_width"))
  abstract = P.abstract_params(module, *args, **kwargs)
  group = families.GROUP.get(family)
  if group:
    abstract = {group: abstract}
  if family == "mllm":  # drop sources of blocks a feature_layer never runs
    abstract_paths = set(P.leaf_paths(abstract))
    for path in [p for p in plan if p not in abstract_paths]:
      ignore.extend(plan.pop(path).keys)
  params = P.materialize(ckpt, plan, abstract, ignore=ignore, mesh=mesh,
                         rules=rules)
  if ckpt.nonfinite:
    notes.append(f"{len(ckpt.nonfinite)} tensor(s) hold NaN or inf values, "
                 f"imported as they are (allow_nonfinite): "
                 f"{short_list(ckpt.nonfinite)}")
  hf = {"model_type": model_type,
        "architectures": config.get("architectures"),
        "source": str(pathlib.Path(hf_dir).resolve()), "notes": notes,
        **extra}
  hf.update({k: config[k] for k in _TOKEN_KEYS if config.get(k) is not None})
  return Converted(family, model, params, hf)


def save_converted(conv: Converted, out_dir: str | pathlib.Path,
                   overwrite: bool = False) -> pathlib.Path:
  """Writes OUT/config.json and the orbax checkpoint OUT/params."""
  out = pathlib.Path(out_dir).resolve()
  target = out / "params"
  if target.exists() and not overwrite:
    raise HFImportError(f"{target} already exists; pick another --out or "
                        f"pass --overwrite.")
  out.mkdir(parents=True, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(target, conv.params, force=overwrite)
  ckptr.wait_until_finished()
  if jax.process_index() == 0:
    (out / "config.json").write_text(json.dumps(
        {"family": conv.family, "model": conv.model, "hf": conv.hf},
        indent=2))
  return out


def converted_meta(out: str | pathlib.Path) -> dict[str, Any]:
  """OUT/config.json ({"family", "model", "hf"}) of a `save_converted`
  directory, without reading its parameters; HFImportError saying what the
  directory is instead."""
  out = pathlib.Path(out).resolve()
  try:
    meta = json.loads((out / "config.json").read_text())
  except (OSError, ValueError):
    meta = None
  if (isinstance(meta, dict) and {"family", "model", "hf"} <= set(meta) and
      (out / "params").is_dir()):
    return meta
  looks_hf = (isinstance(meta, dict) and "model_type" in meta) or any(
      out.glob("*.safetensors"))
  hint = ("it looks like a Hugging Face model directory: to import one use "
          "--hf_dir (mmjax.hf.import_checkpoint)" if looks_hf else
          "give the --out of an import (python -m mmjax.convert --hf_dir=...)")
  raise HFImportError(
      f"{out} is not an mmjax.convert output (no config.json with a "
      f"'family', 'model' and 'hf', and params/ beside it); {hint}.")


def load_converted(out_dir: str | pathlib.Path, target: Any = None
                   ) -> Converted:
  """Reads what `save_converted` wrote.

  Args:
    out_dir: the directory.
    target: optional abstract tree (ShapeDtypeStructs with shardings) to
      restore into; default: every array on the first local device, whatever
      mesh it was saved from.
  """
  out = pathlib.Path(out_dir).resolve()
  meta = converted_meta(out)
  if target is None:
    params = parallel.restore_on_one_device(str(out / "params"))
  else:
    params = ocp.StandardCheckpointer().restore(out / "params", target)
  return Converted(meta["family"], meta["model"], params, meta["hf"])
