"""Export a trained run or a conversion to a Hugging Face format.

  out, notes = export_model("runs/shapes", "exported/", to="llava")

`path` is a training workdir (its newest finished, readable stage
checkpoint, as `load_run` picks it) or a `python -m mmjax.convert` output.
Targets (`TARGETS`; `python -m mmjax.convert --mmjax_dir=PATH --to=...`):

  llava    a multimodal model -> `LlavaForConditionalGeneration`
           (`mmjax.hf.export_llava`; what exports: its module docstring).
  decoder  a decoder LM (a converted family 'lm' or a text LM run) ->
           LLaMA / Qwen2 / Gemma (`mmjax.hf.export_decoder`).
  auto     decoder for a decoder LM, llava for a multimodal model.

The tokenizer written with a LLaVA export is the run's: a Hugging Face
directory when its config sets `tokenizer` (its `<image>`, bos, eos and pad
ids as `HFTokenizer` gives them with the run's chat template), else its
mmjax `tokenizer.model` (looked up as `load_run` does); a conversion's is
the source directory's, when it still has tokenizer files. None found: the
model is exported without one (noted). This module lives in inference
because it reads runs; mmjax.hf only writes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

from mmjax import hf
from mmjax.data import builders, datasets
from mmjax.data.hf_tokenizer import HFTokenizer
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.hf import export as hf_export
from mmjax.hf.export_llava import EXPORTABLE, check_exportable
from mmjax.hf import export_tokenizer
from mmjax.inference import workdir as workdir_lib
from mmjax.models import build
from mmjax.models.decoder import DecoderConfig
from mmjax.models.mllm import MLLM, mllm_config_from_dict


@dataclasses.dataclass
class Source:
  """What is exported, its parameters read only once it is known to export.

  Attributes:
    path: the workdir or conversion.
    family: 'lm' (a decoder) or 'mllm'.
    cfg: DecoderConfig or MLLMConfig.
    read_params: () -> the parameter tree (DecoderLM's, or MLLM's).
    image_token_id: the `<image>` id (mllm).
    tokenizer: a tokenizer.model file or a Hugging Face directory, or None.
    token_ids: bos/eos/pad ids a conversion recorded.
    notes: printed by the CLI.
  """
  path: str
  family: str
  cfg: Any
  read_params: Callable[[], Any]
  image_token_id: int | None = None
  tokenizer: str | None = None
  token_ids: dict[str, Any] | None = None
  notes: list[str] = dataclasses.field(default_factory=list)


def _converted(path: str) -> Source:
  if not workdir_lib.is_converted(path):
    hf.load_converted(path)  # raises, saying what the directory is instead
  # config.json first: a refusal reads no parameters (orbax logs a lot).
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    conv = json.load(f)
  family, model = conv["family"], conv["model"]
  read = lambda: hf.load_converted(path).params
  if family == "lm":
    return Source(path, "lm", DecoderConfig.from_dict(model), read)
  if family != "mllm":
    raise hf.HFExportError(
        f"{path} holds a converted {family!r} model, which no format "
        f"takes alone; {EXPORTABLE}.")
  meta = conv["hf"]
  image_id = meta.get("image_token_index", meta.get("image_token_id"))
  source = meta.get("source")
  tokenizer = source if source and any(
      os.path.isfile(os.path.join(source, f))
      for f in export_tokenizer.HF_FILES[:2]) else None
  notes = [] if tokenizer else [
      f"no tokenizer files at the conversion's source {source}; exported "
      "without a tokenizer"]
  ids = {k: meta[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
         if meta.get(k) is not None}
  return Source(path, "mllm", mllm_config_from_dict(model), read, image_id,
                tokenizer, ids or None, notes)


def _hf_tokenizer(path: str, config) -> tuple[str | None, int,
                                              dict[str, Any], list[str]]:
  """(tokenizer dir, <image> id, token ids, notes) of `config.tokenizer`."""
  tok = HFTokenizer.load(path, chat_template=config.get("chat_template"))
  eos = list(dict.fromkeys([tok.end_of_turn_id, tok.eos_id]))
  ids = {"bos_token_id": tok.bos_id, "eos_token_id": eos,
         "pad_token_id": tok.pad_id}
  if os.path.isfile(path):
    return None, tok.image_id, ids, [
        f"config.tokenizer={path} is a bare .model file, not a tokenizer "
        "directory: exported without a tokenizer"]
  return path, tok.image_id, ids, []


def _run_tokenizer(path: str, config) -> tuple[str | None, int,
                                               dict[str, Any] | None,
                                               list[str]]:
  """(tokenizer, <image> id, token ids, notes) of a multimodal run."""
  if config.get("tokenizer"):
    return _hf_tokenizer(config.tokenizer, config)
  # An mmjax tokenizer.model, where `workdir.find_tokenizer` looks.
  files = [os.path.join(path, builders.TOKENIZER_FILE)]
  try:
    files.append(os.path.join(datasets.shapes_builder(config).data_dir,
                              builders.TOKENIZER_FILE))
  except Exception:  # pylint: disable=broad-except
    pass  # as find_tokenizer: an unusual data config has no dataset folder
  for file in files:
    if os.path.isfile(file):
      return file, IMAGE_ID, None, []  # its ids: export_tokenizer's
  return None, IMAGE_ID, None, [f"no tokenizer at {' or '.join(files)}; "
                                "exported without a tokenizer"]


def _workdir(path: str) -> Source:
  config = workdir_lib.read_config(path)

  def store():
    return workdir_lib.read_final_store(path, config)

  if config.family == "lm":
    cfg = build.decoder_config(config)

    def read_lm():
      step_dir, values = store()
      model, params = workdir_lib.text_lm_params(cfg, values, step_dir)
      return model.cfg.lm, params["llm"]
    return Source(path, "lm", cfg, read_lm)
  cfg = build.mllm_config(config)

  def read_mllm():
    step_dir, values = store()
    return workdir_lib.model_params(build.mllm_init(MLLM(cfg), IMAGE_ID),
                                    values, step_dir)
  tokenizer, image_id, ids, notes = _run_tokenizer(path, config)
  return Source(path, "mllm", cfg, read_mllm, image_id, tokenizer, ids,
                notes)


def read_source(path: str) -> Source:
  """A workdir or a conversion, ready to export."""
  path = os.path.abspath(path)
  try:
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError):
    config = None
  if (isinstance(config, dict) and "family" in config and
      not workdir_lib.is_converted(path)):
    return _workdir(path)  # a run's config.json
  return _converted(path)  # or its error saying what the directory is


def _to_decoder(src: Source, out: str) -> pathlib.Path:
  if src.family != "lm":
    raise hf.HFExportError(f"{src.path} holds a multimodal model; "
                           f"--to=decoder exports decoder LMs. "
                           f"{EXPORTABLE}.")
  hf_export.hf_config(src.cfg)  # refuse before reading parameters
  params = src.read_params()
  if isinstance(params, tuple):  # a text LM run: (unstacked cfg, params)
    cfg, params = params
  else:
    cfg = src.cfg
  return hf.export_decoder(params, cfg, out)


def _to_llava(src: Source, out: str) -> pathlib.Path:
  if src.family != "mllm":
    raise hf.HFExportError(f"{src.path} holds a decoder LM (family 'lm'), "
                           f"which has no vision tower for LLaVA. "
                           f"{EXPORTABLE}.")
  if src.image_token_id is None:
    raise hf.HFExportError(f"{src.path} records no image token id "
                           f"(image_token_index) to export with.")
  check_exportable(src.cfg, src.image_token_id)
  return hf.export_llava(src.cfg, src.read_params(), out,
                         image_token_id=src.image_token_id,
                         tokenizer=src.tokenizer, token_ids=src.token_ids)


_EXPORTERS: dict[str, Callable[[Source, str], pathlib.Path]] = {
    "decoder": _to_decoder, "llava": _to_llava}
_AUTO = {"lm": "decoder", "mllm": "llava"}
TARGETS = ("auto",) + tuple(_EXPORTERS)


def export_model(path: str, out: str, to: str = "auto"
                 ) -> tuple[pathlib.Path, list[str]]:
  """Exports the run or conversion at `path` into `out` (module docstring).

  Returns:
    (the output directory, notes for the user).

  Raises:
    HFExportError: the model has features the target cannot express (the
      message names them and the formats that exist), or `to` is unknown.
    WorkdirError / HFImportError: `path` is neither a run nor a conversion.
  """
  if to not in TARGETS:
    raise hf.HFExportError(f"--to={to!r} is not a format; allowed: "
                           f"{', '.join(TARGETS)}.")
  src = read_source(path)
  target = _AUTO[src.family] if to == "auto" else to
  return _EXPORTERS[target](src, out), src.notes
