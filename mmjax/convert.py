"""Convert Hugging Face checkpoints to mmjax, and mmjax decoder LMs back.

Import (no network; a local directory with config.json + *.safetensors):
  python -m mmjax.convert --hf_dir=DIR --out=OUT [--mesh=fsdp:4,tensor:2]
writes OUT/config.json ({"family", "model", "hf"}) and OUT/params (orbax).

Export (-> a transformers-loadable directory):
  python -m mmjax.convert --mmjax_dir=PATH --out=HF_DIR [--to=auto]
PATH is a converted directory or a training workdir; --to=llava writes a
multimodal model as LlavaForConditionalGeneration (with its tokenizer and
image processor), --to=decoder a decoder LM as LLaMA / Qwen2 / Gemma, and
auto (the default) picks by what PATH holds (mmjax/inference/export.py).

Errors (missing flags, unsupported architecture, missing or mis-shaped
tensors, a truncated *.safetensors file, tensors holding NaN or inf unless
--allow_nonfinite, pickle-only checkpoints, a Hugging Face directory given
as --mmjax_dir) print one line on stderr and exit with status 2. So does a
model the export format cannot express (the line names what and the
formats that exist). The library calls are `mmjax.hf.import_checkpoint` /
`save_converted`, and `mmjax.inference.export.export_model` (which calls
`mmjax.hf.export_llava` / `export_decoder`).
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from mmjax import config as config_lib

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory "
                              "(config.json + *.safetensors) to import.")
_MMJAX_DIR = flags.DEFINE_string("mmjax_dir", None, "What to export: a "
                                 "directory written by an import, or a "
                                 "training workdir.")
_TO = flags.DEFINE_string("to", "auto", "Export format: llava (a multimodal "
                          "model -> LlavaForConditionalGeneration), decoder "
                          "(a decoder LM -> LLaMA / Qwen2 / Gemma), or auto "
                          "(by what --mmjax_dir holds).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_MESH = flags.DEFINE_string("mesh", "", "Place parameters on a device mesh "
                            "while importing, e.g. 'fsdp:4,tensor:2' (axes "
                            "data, fsdp, tensor; -1 = the rest). Empty: "
                            "default device.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace OUT/params.")
_NEWLINE = flags.DEFINE_integer("fuyu_newline_id", None, "Fuyu's '|NEWLINE|' "
                                "token id when tokenizer.json is absent.")
_ALLOW_NONFINITE = flags.DEFINE_bool(
    "allow_nonfinite", False, "Import tensors holding NaN or inf as they are "
    "(refused by default: they make a damaged checkpoint).")


def _mesh(spec: str):
  from mmjax import parallel  # pylint: disable=g-import-not-at-top
  sizes = config_lib.parse_mesh_spec(spec, allow_rest=True)
  sizes.setdefault("data", -1 if -1 not in sizes.values() else 1)
  return parallel.make_mesh(sizes)


def run(argv) -> str:
  """Does the work; returns the output directory."""
  del argv
  # Imported here so that --help and flag errors need no jax.
  from mmjax import hf  # pylint: disable=g-import-not-at-top
  from mmjax.inference import export  # pylint: disable=g-import-not-at-top
  if not _OUT.value or bool(_HF_DIR.value) == bool(_MMJAX_DIR.value):
    raise ValueError("pass --out and exactly one of --hf_dir (import) or "
                     "--mmjax_dir (export).")
  if _HF_DIR.value and _TO.value not in ("", "auto"):
    raise ValueError(f"--to={_TO.value} chooses an export format: pass it "
                     "with --mmjax_dir, not --hf_dir.")
  if _MMJAX_DIR.value:
    out, notes = export.export_model(_MMJAX_DIR.value, _OUT.value,
                                     _TO.value or "auto")
    for note in notes:
      print(f"note: {note}")
    return str(out)
  mesh = _mesh(_MESH.value) if _MESH.value else None
  conv = hf.import_checkpoint(_HF_DIR.value, mesh=mesh,
                              newline_token_id=_NEWLINE.value,
                              allow_nonfinite=_ALLOW_NONFINITE.value)
  out = hf.save_converted(conv, _OUT.value, overwrite=_OVERWRITE.value)
  for note in conv.hf["notes"]:
    print(f"note: {note}")
  return str(out)


def main(argv):
  if len(argv) > 1:
    config_lib.fail(f"unexpected arguments {list(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    # tfds and orbax log every dataset and file read at INFO: a refusal
    # must stay one line on stderr.
    logging.set_verbosity(logging.WARNING)
  try:
    out = run(argv)
  except (ValueError, OSError) as e:  # HFImportError / HFExportError too
    config_lib.fail(f"{type(e).__name__}: {e}")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.absl_flags_parser)
