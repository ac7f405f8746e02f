"""Whisper's encoder: WhisperModel or WhisperForConditionalGeneration; and
Qwen2-Audio's audio tower (`Qwen2AudioEncoder`, model_type
'qwen2_audio_encoder', tensors unprefixed): the same encoder with an average
pool over pairs of outputs before its final LayerNorm (`pool=2`).

Hugging Face names (E = `model.encoder.` in WhisperForConditionalGeneration,
`encoder.` in WhisperModel) -> mmjax `WhisperEncoder` (family 'audio',
group `audio`):

  E.conv1 / E.conv2           conv1 / conv2: Conv1d [D, C, 3] -> kernel
                              [3, C, D]; bias as is
  E.embed_positions.weight    not a parameter: mmjax computes Whisper's
                              sinusoids; the importer checks the table is
                              them (max abs diff <= 1e-3, noted) and refuses
                              a checkpoint whose table is something else
  E.layers.{i}.self_attn_layer_norm  layers_{i}/norm1
  E.layers.{i}.self_attn.{q,k,v}_proj  layers_{i}/attn/{q,k,v} (k: no bias)
  E.layers.{i}.self_attn.out_proj      layers_{i}/attn/o
  E.layers.{i}.final_layer_norm        layers_{i}/norm2
  E.layers.{i}.fc1 / fc2               layers_{i}/mlp/fc1, fc2
  E.layer_norm                         norm

The decoder (and WhisperForConditionalGeneration's proj_out) is skipped and
noted: mmjax uses the encoder as an audio tower.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from mmjax.hf import plan as P
from mmjax.hf import vision as hf_vision
from mmjax.hf.safetensors_io import Checkpoint, HFImportError
from mmjax.models.whisper import WhisperEncoderConfig, sinusoids

# transformers 4.57.1 defaults for keys a config.json may omit:
# WhisperConfig, Qwen2AudioEncoderConfig (Whisper-large-v3's encoder).
_DEFAULTS = {
    "whisper": dict(num_mel_bins=80, d_model=384, encoder_layers=4,
                    encoder_attention_heads=6, encoder_ffn_dim=1536,
                    max_source_positions=1500, activation_function="gelu"),
    "qwen2_audio_encoder": dict(
        num_mel_bins=128, d_model=1280, encoder_layers=32,
        encoder_attention_heads=20, encoder_ffn_dim=5120,
        max_source_positions=1500, activation_function="gelu"),
}
PREFIXES = {"whisper": ("model.encoder.", "encoder."),
            "qwen2_audio_encoder": ("audio_tower.", "")}
POSITIONS_TOL = 1e-3


def encoder_config(config: Mapping[str, Any],
                   model_type: str = "whisper") -> WhisperEncoderConfig:
  """WhisperEncoderConfig of a Whisper (or Qwen2-Audio encoder) config."""
  get = lambda k: config.get(k, _DEFAULTS[model_type][k])
  return WhisperEncoderConfig(
      n_mels=int(get("num_mel_bins")), width=int(get("d_model")),
      depth=int(get("encoder_layers")),
      n_heads=int(get("encoder_attention_heads")),
      mlp_dim=int(get("encoder_ffn_dim")),
      max_positions=int(get("max_source_positions")),
      activation=hf_vision._act(get("activation_function")),  # pylint: disable=protected-access
      norm_eps=1e-5, pool=2 if model_type == "qwen2_audio_encoder" else 1)


def _conv(key: str, d_out: int, d_in: int) -> P.Src:
  """Conv1d weight [out, in, 3] -> Flax Conv kernel [3, in, out]."""
  return P.Src((key,), ((d_out, d_in, 3),), lambda w: w.transpose(2, 1, 0))


def encoder_plan(cfg: WhisperEncoderConfig, prefix: str,
                 path: str = "") -> P.Plan:
  """Plan for every parameter of a `WhisperEncoder`."""
  d, h, dh = cfg.width, cfg.n_heads, cfg.head_dim
  plan: P.Plan = {}
  plan[f"{path}conv1/kernel"] = _conv(prefix + "conv1.weight", d, cfg.n_mels)
  plan[f"{path}conv1/bias"] = P.raw(prefix + "conv1.bias", (d,))
  plan[f"{path}conv2/kernel"] = _conv(prefix + "conv2.weight", d, d)
  plan[f"{path}conv2/bias"] = P.raw(prefix + "conv2.bias", (d,))
  for i in range(cfg.depth):
    hf, ours = f"{prefix}layers.{i}.", f"{path}layers_{i}/"
    P.add_norm(plan, ours + "norm1", hf + "self_attn_layer_norm", d)
    for name in ("q", "k", "v"):
      plan[f"{ours}attn/{name}/kernel"] = P.heads_in(
          f"{hf}self_attn.{name}_proj.weight", d, h, dh)
    for name in ("q", "v"):
      plan[f"{ours}attn/{name}/bias"] = P.raw(
          f"{hf}self_attn.{name}_proj.bias", (d,), (h, dh))
    plan[f"{ours}attn/o/kernel"] = P.heads_out(
        f"{hf}self_attn.out_proj.weight", h, dh, d)
    plan[f"{ours}attn/o/bias"] = P.raw(f"{hf}self_attn.out_proj.bias", (d,))
    P.add_norm(plan, ours + "norm2", hf + "final_layer_norm", d)
    P.add_dense(plan, ours + "mlp/fc1", hf + "fc1", d, cfg.mlp_dim)
    P.add_dense(plan, ours + "mlp/fc2", hf + "fc2", cfg.mlp_dim, d)
  P.add_norm(plan, f"{path}norm", prefix + "layer_norm", d)
  return plan


def check_positions(ckpt: Checkpoint, cfg: WhisperEncoderConfig,
                    prefix: str, notes: list[str]) -> None:
  """The checkpoint's position table must be Whisper's sinusoids."""
  key = prefix + "embed_positions.weight"
  if key not in ckpt:
    notes.append(f"{key} absent; using Whisper's sinusoids.")
    return
  want = (cfg.max_positions, cfg.width)
  if ckpt.shape(key) != want:
    raise HFImportError(f"{ckpt.path}: {key} has shape "
                        f"{list(ckpt.shape(key))}, expected {list(want)}.")
  diff = float(np.abs(ckpt.get(key).astype(np.float64) -
                      sinusoids(*want)).max())
  if diff > POSITIONS_TOL:
    raise HFImportError(
        f"{ckpt.path}: {key} is not Whisper's sinusoidal table (max abs "
        f"diff {diff:.3g} > {POSITIONS_TOL}); mmjax computes the positions "
        f"and cannot import trained ones.")
  notes.append(f"encoder positions: the checkpoint's table equals Whisper's "
               f"sinusoids to {diff:.1e} (max abs diff); mmjax computes it.")


def whisper_import(ckpt: Checkpoint, config: Mapping[str, Any],
                   notes: list[str]
                   ) -> tuple[dict[str, Any], P.Plan, list[str]]:
  """WhisperModel / WhisperForConditionalGeneration / Qwen2AudioEncoder ->
  family 'audio'."""
  model_type = config["model_type"]
  cfg = encoder_config(config, model_type)
  prefix = ckpt.resolve_prefix(PREFIXES[model_type], "conv1.weight",
                               f"{model_type} encoder")
  check_positions(ckpt, cfg, prefix, notes)
  ignore = [prefix + "embed_positions.weight"]
  if model_type == "whisper":
    ignore += ["model.decoder.*", "decoder.*", "proj_out.*"]
    notes.append("Whisper: imported the encoder only (the decoder was "
                 "skipped).")
  return dataclasses.asdict(cfg), encoder_plan(cfg, prefix, "audio/"), ignore
