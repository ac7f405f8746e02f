"""Janus's VQ image tokenizer (`JanusVQVAE`, transformers 4.57.1) ->
mmjax `JanusVQ` parameters and codebook (models/vq_janus.py).

  cfg = janus_vq_config(hf_config.vq_config.to_dict())
  params, codebook = janus_vq_params(state_dict, cfg)

Hugging Face names (P = '' for a bare JanusVQVAE, 'model.vqmodel.' inside
JanusForConditionalGeneration) -> mmjax paths:

  P{encoder,decoder}.{conv_in,conv_out,norm_out}      same names
  P{encoder,decoder}.mid.{block_1,attn_1,block_2}.*   mid/...
  Pencoder.down.{i}.block.{j} / .attn.{j}             encoder/down_{i}_block_{j} / _attn_{j}
  Pencoder.down.{i}.downsample.conv                   encoder/down_{i}_downsample
  Pdecoder.up.{i}.block.{j} / .attn.{j}               decoder/up_{i}_block_{j} / _attn_{j}
  Pdecoder.up.{i}.upsample.conv                       decoder/up_{i}_upsample
  P{quant_conv,post_quant_conv}                       same names
  Pquantize.embedding.weight                          the codebook f32[K, E]
Conv2d weights [O, I, kh, kw] become kernels [kh, kw, I, O]; GroupNorm
weights become `scale`.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from mmjax.models.vq_janus import JanusVQConfig

PREFIXES = ("model.vqmodel.", "vqmodel.", "")
CODEBOOK = "quantize.embedding.weight"
_BLOCKS = re.compile(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.")
_RESAMPLE = re.compile(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv\.")


class JanusVQImportError(ValueError):
  """The tensors or config are not those of a JanusVQVAE."""


def janus_vq_config(d: Mapping[str, Any]) -> JanusVQConfig:
  """JanusVQVAEConfig.to_dict() -> JanusVQConfig (its architecture keys)."""
  fields = {f: d[f] for f in ("embed_dim", "num_embeddings",
                              "latent_channels", "in_channels",
                              "out_channels", "base_channels",
                              "num_res_blocks") if f in d}
  if "channel_multiplier" in d:
    fields["channel_multiplier"] = tuple(d["channel_multiplier"])
  if d.get("double_latent"):
    raise JanusVQImportError("double_latent=True (a Gaussian latent) has no "
                             "VQ codebook path in mmjax's JanusVQ")
  return JanusVQConfig(**fields)


def _path(name: str) -> str:
  """A Hugging Face tensor name (prefix stripped) -> an mmjax param path."""
  name = _BLOCKS.sub(lambda m: f"{m[1]}_{m[2]}_{m[3]}_{m[4]}/", name)
  name = _RESAMPLE.sub(lambda m: f"{m[1]}_{m[2]}_{m[3]}/", name)
  return name.replace(".", "/")


def janus_vq_params(state: Mapping[str, Any], cfg: JanusVQConfig
                    ) -> tuple[dict[str, Any], np.ndarray]:
  """(nested params of JanusVQ, codebook f32[K, E]) from a state dict of
  numpy-convertible tensors."""
  prefix = next((p for p in PREFIXES if p + CODEBOOK in state), None)
  if prefix is None:
    raise JanusVQImportError(f"no {CODEBOOK!r} tensor (with prefix "
                             f"{' or '.join(map(repr, PREFIXES[:2]))} or "
                             "none): not a JanusVQVAE checkpoint")
  params: dict[str, Any] = {}
  for name, value in state.items():
    if not name.startswith(prefix) or name == prefix + CODEBOOK:
      continue
    value = np.asarray(value, np.float32)
    path = _path(name[len(prefix):])
    module, _, kind = path.rpartition("/")
    if kind == "weight":
      kind, value = (("kernel", value.transpose(2, 3, 1, 0))
                     if value.ndim == 4 else ("scale", value))
    node = params
    for part in module.split("/"):
      node = node.setdefault(part, {})
    node[kind] = value
  codebook = np.asarray(state[prefix + CODEBOOK], np.float32)
  if codebook.shape != (cfg.num_embeddings, cfg.embed_dim):
    raise JanusVQImportError(
        f"codebook shape {codebook.shape} != (num_embeddings, embed_dim) = "
        f"({cfg.num_embeddings}, {cfg.embed_dim}) of the config")
  return params, codebook
