"""Hugging Face interop: import safetensors checkpoints; export decoder LMs
and LLaVA-style MLLMs.

  from mmjax import hf
  conv = hf.import_checkpoint(hf_dir, mesh=None)
  logits, _ = conv.module().apply({"params": conv.module_params()}, tokens)
  hf.save_converted(conv, out_dir)          # OUT/config.json + OUT/params
  hf.export_decoder(params, decoder_cfg, hf_out_dir)
  hf.export_llava(mllm_cfg, params, hf_out_dir, image_token_id=4,
                  tokenizer="tokenizer.model")   # LlavaForConditionalGeneration

CLI: `python -m mmjax.convert --hf_dir=DIR --out=DIR`, and back with
`--mmjax_dir=DIR --to=llava|decoder` (see mmjax/convert.py).
"""

from mmjax.hf.families import FAMILIES, build_module
from mmjax.hf.importer import (Converted, SUPPORTED_MODEL_TYPES,
                               converted_meta, import_checkpoint,
                               load_converted, save_converted)
from mmjax.hf.safetensors_io import Checkpoint, HFImportError
from mmjax.hf.export import HFExportError, export_decoder
from mmjax.hf.export_llava import export_llava

__all__ = ["Checkpoint", "Converted", "FAMILIES", "HFExportError",
           "HFImportError", "SUPPORTED_MODEL_TYPES", "build_module",
           "converted_meta",
           "export_decoder", "export_llava", "import_checkpoint",
           "load_converted", "save_converted"]
