"""Builds the `Task` (model + loss + data) a stage trains.

The loop in trainer.py is the same for every stage; what differs is here,
chosen by `config.family` and the stage's `loss`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from mmjax import parallel
from mmjax.config import ConfigError, stage_batch_size
from mmjax.data import text_pipeline
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.models.mllm import MLLM, mllm_config_from_dict
from mmjax.train import groups, lora
from mmjax.train import losses
from mmjax.train.trainer import Task

FAMILIES = ("lm", "mllm")
LOSSES = ("lm",)


# The LM family's parameters are the recipe's `llm` group.
LM_TO_GLOBAL = groups.prefix_mapper({"*": "llm"})


def build_model(config: ml_collections.ConfigDict):
  """The model the config describes: DecoderLM ('lm') or MLLM ('mllm')."""
  if config.family == "lm":
    return DecoderLM(DecoderConfig.from_dict(config.model.to_dict()))
  if config.family == "mllm":
    return MLLM(mllm_config_from_dict(config.model.to_dict()))
  raise ConfigError(f"config.family={config.family!r}; allowed values: "
                    f"{', '.join(map(repr, FAMILIES))}")


def model_initializer(config: ml_collections.ConfigDict,
                      stage_name: str | None = None):
  """(model, rng -> boxed params) of a stage, without data (shape checks)."""
  if config.family == "mllm":
    from mmjax.train import mllm_tasks  # pylint: disable=g-import-not-at-top
    model, init, to_global = mllm_tasks.stage_model(config, stage_name)
  else:
    model, to_global = build_model(config), LM_TO_GLOBAL
    seq_len = config.data.seq_len

    def init(rng):
      tokens = jax.numpy.zeros((1, seq_len), jax.numpy.int32)
      return model.init(rng, tokens)["params"]
  if stage_name is not None:  # with the stage's LoRA factors, if any
    init = lora.wrap_init(init, to_global, config.stages[stage_name])
  return model, init


@dataclasses.dataclass
class BuiltTask:
  task: Task
  info: dict[str, Any]      # facts for the report (e.g. unigram entropy)
  tokenizer: Any


def build_task(config: ml_collections.ConfigDict, stage_name: str,
               workdir: str) -> BuiltTask:
  """Model, loss and data of a stage, for the family of the config (with
  LoRA factors when the stage asks for them)."""
  built = _family_task(config, stage_name, workdir)
  built.task = lora.wrap(built.task, config.stages[stage_name])
  return built


def _family_task(config: ml_collections.ConfigDict, stage_name: str,
                 workdir: str) -> BuiltTask:
  if config.family == "mllm":
    from mmjax.train import mllm_tasks  # pylint: disable=g-import-not-at-top
    return mllm_tasks.build_mllm_task(config, stage_name, workdir)
  stage = config.stages[stage_name]
  if stage.loss != "lm":
    raise ConfigError(f"config.stages.{stage_name}.loss={stage.loss!r}; "
                      f"allowed values: {', '.join(map(repr, LOSSES))}")
  model, init = model_initializer(config)
  tok = parallel.first_process_then_others(
      lambda: text_pipeline.prepare_tokenizer(config, workdir), "tokenizer")
  data = text_pipeline.LMData.from_config(config, tok)

  def loss_fn(params, batch, rng):
    del rng  # no dropout in the LM
    logits, _ = model.apply({"params": params}, batch["tokens"])
    return losses.lm_loss(logits, batch["targets"], batch["loss_mask"])

  task = Task(
      init_params=init,
      loss_fn=loss_fn,
      train_iterator=data.train_iterator(
          stage_batch_size(config, stage_name), jax.process_index(),
          jax.process_count()),
      eval_batches=lambda: data.eval_batches(
          config.batch_size, config.eval_batches, jax.process_index(),
          jax.process_count()),
      tokens_per_example=config.data.seq_len,
      to_global=LM_TO_GLOBAL)
  info = {"unigram_entropy": data.unigram_entropy(),
          "train_windows": len(data.train_windows),
          "eval_windows": len(data.eval_windows),
          "vocab_size": tok.vocab_size}
  return BuiltTask(task=task, info=info, tokenizer=tok)
