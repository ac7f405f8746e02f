"""Export an mmjax `DecoderLM` to a Hugging Face directory transformers loads.

The architecture follows from the config: LLaMA (`LlamaForCausalLM`) for a
plain decoder, Qwen2 (`Qwen2ForCausalLM`) when q/k/v have biases, Gemma
(`GemmaForCausalLM`) for Gemma's switches (sqrt(d) embedding scale,
(1 + w) RMSNorm, GELU-tanh, tied embeddings). M-RoPE, cross-attention blocks,
logit soft-capping, Gemma 2's and PaliGemma's switches or any other mix
raise `HFExportError`. The tensor names
are those of hf/llm.py, the layouts its inverse; every tensor is written as
float32, in shards of at most `max_shard_bytes` (with
`model.safetensors.index.json` when there is more than one; `write_weights`,
which the LLaVA export in export_llava.py shares).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable, Mapping

import flax.linen as nn
import numpy as np
from safetensors.numpy import save_file

from mmjax.models import remat as remat_lib
from mmjax.models.decoder import DecoderConfig


class HFExportError(ValueError):
  """An mmjax model that the Hugging Face formats cannot express."""


def _architecture(cfg: DecoderConfig) -> str:
  gemma = (cfg.embed_scale, cfg.norm_offset_one,
           cfg.mlp_activation == "gelu_tanh", cfg.tie_embeddings)
  unsupported = [name for name, bad in (
      ("mrope_sections", cfg.mrope_sections is not None),
      ("xattn_every", cfg.xattn_every > 0),
      ("logit_softcap", cfg.logit_softcap > 0),
      # Gemma 2 / PaliGemma switches (imported, not exported yet).
      ("attn_logit_softcap", cfg.attn_logit_softcap > 0),
      ("query_pre_attn_scalar", cfg.query_pre_attn_scalar is not None),
      ("post_norms", cfg.post_norms),
      ("sliding_window", cfg.sliding_window > 0),
      ("prefix_lm", cfg.prefix_lm)) if bad]
  if unsupported:
    raise HFExportError(f"cannot export a decoder with {unsupported}: "
                        f"LLaMA / Qwen2 / Gemma have no such feature.")
  if all(gemma) and not cfg.qkv_bias:
    return "gemma"
  if not any(gemma[:3]):
    return "qwen2" if cfg.qkv_bias else "llama"
  raise HFExportError(
      f"cannot export this mix: embed_scale={cfg.embed_scale}, norm_offset_one="
      f"{cfg.norm_offset_one}, mlp_activation={cfg.mlp_activation!r}, "
      f"tie_embeddings={cfg.tie_embeddings}, qkv_bias={cfg.qkv_bias}; Gemma "
      f"needs all of its four switches, LLaMA / Qwen2 none of the first three.")


def hf_config(cfg: DecoderConfig, max_position_embeddings: int = 4096
              ) -> dict[str, Any]:
  """config.json of the exported model."""
  arch = _architecture(cfg)
  out = {
      "architectures": [{"llama": "LlamaForCausalLM",
                         "qwen2": "Qwen2ForCausalLM",
                         "gemma": "GemmaForCausalLM"}[arch]],
      "model_type": arch, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.resolved_head_dim,
      "hidden_act": "gelu_pytorch_tanh" if arch == "gemma" else "silu",
      "max_position_embeddings": max_position_embeddings,
      "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
      "rope_scaling": None, "tie_word_embeddings": cfg.tie_embeddings,
      "torch_dtype": "float32",
  }
  if arch == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  if arch == "qwen2":
    out.update(use_sliding_window=False, sliding_window=None)
  return out


def decoder_tensors(params: Mapping[str, Any], cfg: DecoderConfig):
  """Yields (HF name, float32 numpy array), one tensor at a time."""
  params = nn.unbox(params)
  if cfg.scan_layers:
    params = remat_lib.unstack_layer_params(params)
  arr = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  d, hd = cfg.d_model, cfg.resolved_head_dim
  yield "model.embed_tokens.weight", arr(params["embed"]["embedding"])
  for i in range(cfg.n_layers):
    layer, hf = params[f"layers_{i}"], f"model.layers.{i}."
    yield hf + "input_layernorm.weight", arr(layer["attn_norm"]["scale"])
    yield hf + "post_attention_layernorm.weight", arr(
        layer["mlp_norm"]["scale"])
    attn = layer["attn"]
    for name in "qkv":
      kernel = np.asarray(attn[name]["kernel"])
      yield f"{hf}self_attn.{name}_proj.weight", arr(
          kernel.reshape(d, -1).T)
      if cfg.qkv_bias:
        yield f"{hf}self_attn.{name}_proj.bias", arr(
            np.asarray(attn[name]["bias"]).reshape(-1))
    yield f"{hf}self_attn.o_proj.weight", arr(
        np.asarray(attn["o"]["kernel"]).reshape(cfg.n_heads * hd, d).T)
    for name in ("gate", "up", "down"):
      yield f"{hf}mlp.{name}_proj.weight", arr(
          np.asarray(layer["mlp"][name]["kernel"]).T)
  yield "model.norm.weight", arr(params["final_norm"]["scale"])
  if not cfg.tie_embeddings:
    yield "lm_head.weight", arr(np.asarray(params["lm_head"]["kernel"]).T)


def write_weights(tensors: Iterable[tuple[str, np.ndarray]],
                  out: pathlib.Path, max_shard_bytes: int = 2 << 30) -> None:
  """Writes (name, array) pairs as *.safetensors in `out`.

  Shards hold at most `max_shard_bytes` (with `model.safetensors.index.json`
  when there is more than one); weight files already in `out` are replaced.
  """
  for old in list(out.glob("*.safetensors")) + list(
      out.glob("*.safetensors.index.json")):
    old.unlink()
  # Each shard is written as soon as it is full, so at most one shard is in
  # memory; files are renamed once the shard count is known.
  shard: dict[str, np.ndarray] = {}
  written: list[tuple[pathlib.Path, list[str]]] = []
  size = total = 0

  def flush():
    tmp = out / f"shard-{len(written):05d}.tmp"
    save_file(shard, str(tmp), metadata={"format": "pt"})
    written.append((tmp, list(shard)))

  for name, value in tensors:
    if shard and size + value.nbytes > max_shard_bytes:
      flush()
      shard, size = {}, 0
    shard[name] = value
    size += value.nbytes
    total += value.nbytes
  flush()
  n = len(written)
  weight_map = {}
  for i, (tmp, names) in enumerate(written):
    file = ("model.safetensors" if n == 1 else
            f"model-{i + 1:05d}-of-{n:05d}.safetensors")
    tmp.rename(out / file)
    weight_map.update({name: file for name in names})
  if n > 1:
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map},
        indent=2))


def export_decoder(params: Mapping[str, Any], cfg: DecoderConfig,
                   out_dir: str | pathlib.Path, *,
                   max_position_embeddings: int = 4096,
                   max_shard_bytes: int = 2 << 30) -> pathlib.Path:
  """Writes config.json and *.safetensors for `params` of `DecoderLM(cfg)`.

  Args:
    params: the DecoderLM param tree (jax or numpy arrays).
    cfg: its config.
    out_dir: created if needed; existing weight files are replaced.
    max_position_embeddings: recorded in config.json (RoPE has no table).
    max_shard_bytes: shard size limit.

  Returns:
    The output directory.
  """
  config = hf_config(cfg, max_position_embeddings)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_weights(decoder_tensors(params, cfg), out, max_shard_bytes)
  (out / "config.json").write_text(json.dumps(config, indent=2))
  return out
