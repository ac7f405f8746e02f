"""Validation of a training config, run before anything compiles.

`validate_config` raises `ConfigError` naming the key, the value and what is
allowed; main.py turns that into one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import ml_collections

from mmjax import config as C
from mmjax import parallel
from mmjax.models import build
from mmjax.models.decoder import DecoderConfig
from mmjax.train import groups, optim, stages

DTYPES = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("default", "high", "highest")


def _model_checks(config):
  def model_keys(c):
    try:
      DecoderConfig.from_dict(c.model.to_dict())
    except (TypeError, ValueError) as e:
      raise C.ConfigError(f"config.model: {e}") from None

  heads = lambda c: c.model.n_heads
  return [
      C.check_choice("family", build.FAMILIES),
      *[C.check_int(f"model.{k}", 1) for k in (
          "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
          "mlp_dim")],
      C.check_number("model.rope_theta", 1.0),
      C.check_number("model.norm_eps", 0.0, 1.0),
      C.check_number("model.logit_softcap", 0.0),
      C.check_choice("model.mlp_activation", ("silu", "gelu_tanh")),
      C.check_choice("model.dtype", DTYPES),
      C.check_choice("model.param_dtype", DTYPES),
      C.check_that(
          lambda c: heads(c) % c.model.n_kv_heads == 0,
          lambda c: f"config.model.n_heads={heads(c)} must be a multiple of "
          f"config.model.n_kv_heads={c.model.n_kv_heads} (grouped-query "
          "attention shares each KV head among n_heads/n_kv_heads heads)"),
      C.check_that(
          lambda c: c.model.get("head_dim") or c.model.d_model % heads(c) == 0,
          lambda c: f"config.model.d_model={c.model.d_model} is not divisible"
          f" by config.model.n_heads={heads(c)}; set config.model.head_dim"),
      model_keys,  # last: unknown keys and anything DecoderConfig rejects
  ]


def _data_checks(config):
  return [
      C.check_choice("data.source", ("text_corpus",)),
      C.check_int("data.seq_len", 2),
      C.check_int("data.num_sentences", 20),
      C.check_number("data.eval_fraction", 0.001, 0.5),
      C.check_int("tokenizer.vocab_size", 64),
      C.check_that(
          lambda c: c.tokenizer.vocab_size <= c.model.vocab_size,
          lambda c: f"config.tokenizer.vocab_size={c.tokenizer.vocab_size} "
          f"exceeds config.model.vocab_size={c.model.vocab_size}; the model "
          "needs an embedding row for every piece"),
      C.check_int("batch_size", 1),
  ]


def _mllm_data_checks(config):
  """What only the multimodal recipe's data needs."""
  del config
  return [C.check_int("data.max_len", 8), C.check_int("data.num_train", 1),
          C.check_int("data.text_seq_len", 2),
          C.check_int("data.num_workers", 0),
          C.check_int("batch_size", 1)]


def _optimizer_checks(config):
  checks = []
  for name in C.stage_names(config):
    p = f"stages.{name}"
    stage = config.stages[name]
    if "lora" in stage:
      checks.append(C.check_int(f"{p}.lora.rank", 0))
    checks.append(C.check_that(
        lambda c, s=stage: "lora" not in s.get("trainable", ()) or (
            "lora" in s and s.lora.rank > 0),
        lambda c, p=p: f"config.{p}.trainable names 'lora' but "
        f"config.{p}.lora.rank is 0: set a rank (e.g. 8) or train 'llm'"))
    checks += [
        C.check_choice(f"{p}.optimizer.name", optim.OPTIMIZERS),
        C.check_number(f"{p}.optimizer.lr", 0.0),
        C.check_number(f"{p}.optimizer.grad_clip", 0.0),
        C.check_choice(f"{p}.schedule.name", optim.SCHEDULES),
        C.check_int(f"{p}.schedule.warmup_steps", 0),
    ]
    for group, factor in dict(config.stages[name].optimizer.get(
        "lr_mult", None) or {}).items():
      checks.append(C.check_that(
          lambda c, g=group, f=factor: g in groups.GROUPS and isinstance(
              f, (int, float)) and f >= 0,
          lambda c, p=p, g=group, f=factor: f"config.{p}.optimizer.lr_mult."
          f"{g}={f!r}: keys must be parameter groups "
          f"({', '.join(groups.GROUPS)}) and factors numbers >= 0"))
    if config.stages[name].optimizer.name == "adamw":
      checks += [C.check_number(f"{p}.optimizer.b1", 0.0, 0.999999),
                 C.check_number(f"{p}.optimizer.b2", 0.0, 0.999999),
                 C.check_number(f"{p}.optimizer.weight_decay", 0.0)]
  return checks


def _check_mesh_rules(config):
  """config.mesh.rules: {logical axis: None | mesh axis | (mesh axes)}."""
  rules = config.mesh.get("rules", None)
  for name, target in dict(rules or {}).items():
    axes = tuple(target) if isinstance(target, (list, tuple)) else (target,)
    if target is not None and (len(set(axes)) != len(axes) or
                               not all(a in parallel.MESH_AXES for a in axes)):
      raise C.ConfigError(
          f"config.mesh.rules.{name}={target!r}: map a logical axis to None "
          f"(replicated), a mesh axis or a tuple of distinct mesh axes, from "
          f"{', '.join(parallel.MESH_AXES)}")


def _run_checks(config):
  mesh_axes = [C.check_that(
      lambda c, a=a: isinstance(c.mesh[a], int) and (c.mesh[a] == -1 or
                                                     c.mesh[a] >= 1),
      lambda c, a=a: f"config.mesh.{a}={c.mesh[a]!r} must be a positive "
      "integer or -1 (the remaining devices)") for a in ("data", "fsdp",
                                                           "tensor")]
  return [
      C.check_int("log_every", 1),
      C.check_int("eval_every", 0),
      C.check_int("eval_batches", 1),
      C.check_int("checkpoint.every", 1),
      C.check_int("checkpoint.keep", 1),
      C.check_choice("matmul_precision", MATMUL_PRECISIONS),
      *mesh_axes,
      _check_mesh_rules,
  ]


def validate_model(config: ml_collections.ConfigDict) -> None:
  """Checks config.model for its family; ConfigError naming what is wrong."""
  if config.get("family") == "mllm":
    try:
      build.mllm_config(config)
    except (TypeError, ValueError) as e:
      raise C.ConfigError(f"config.model: {e}") from None
    return
  C.validate(config, _model_checks(config))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError at the first bad or inconsistent value."""
  validate_model(config)
  data = (_mllm_data_checks(config) if config.get("family") == "mllm"
          else _data_checks(config))
  C.validate(config, data + stages.stage_checks(config) +
             _optimizer_checks(config) + _run_checks(config))
