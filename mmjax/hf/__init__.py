"""Hugging Face interop: import safetensors checkpoints, export decoder LMs.

  from mmjax import hf
  conv = hf.import_checkpoint(hf_dir, mesh=None)
  logits, _ = conv.module().apply({"params": conv.module_params()}, tokens)
  hf.save_converted(conv, out_dir)          # OUT/config.json + OUT/params
  hf.export_decoder(params, decoder_cfg, hf_out_dir)

CLI: `python -m mmjax.convert --hf_dir=DIR --out=DIR` (see mmjax/convert.py).
"""

from mmjax.hf.families import FAMILIES, build_module
from mmjax.hf.importer import (Converted, SUPPORTED_MODEL_TYPES,
                               import_checkpoint, load_converted,
                               save_converted)
from mmjax.hf.safetensors_io import Checkpoint, HFImportError
from mmjax.hf.export import HFExportError, export_decoder

__all__ = ["Checkpoint", "Converted", "FAMILIES", "HFExportError",
           "HFImportError", "SUPPORTED_MODEL_TYPES", "build_module",
           "export_decoder", "import_checkpoint", "load_converted",
           "save_converted"]
