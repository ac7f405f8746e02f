"""The benchmarks as evaluators a stage's `evals` can name (evals/registry):

  config.stages.sft.evals = ("vqa", "pope")
  config.eval.benchmarks.pope.data = "/data/pope"     # the local layout
  config.eval.benchmarks.pope.split = "adversarial"   # "" = the default
  config.eval.benchmarks.pope.limit = 500             # 0 = every question

After the stage, the benchmark is answered with the stage's final
parameters (by every process: they may be sharded over all of them); its metrics join the stage's (`<benchmark>/<metric>`), its
answers go to WORKDIR/eval/<stage>_<benchmark>_<split>.answers.jsonl (a
resumed stage evaluation skips what is answered).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections

from mmjax import config as config_lib
from mmjax.evals import registry as evals_registry
from mmjax.evals.benchmarks import registry
from mmjax.evals.benchmarks.runner import run_benchmark
from mmjax.inference import run as run_lib


def benchmark_config(config: ml_collections.ConfigDict, name: str
                     ) -> ml_collections.ConfigDict:
  """config.eval.benchmarks.<name> ({} when absent)."""
  slots = config.get("eval", {}).get("benchmarks", None) or {}
  return slots.get(name, None) or ml_collections.ConfigDict()


def check_benchmark_config(config: ml_collections.ConfigDict,
                           name: str) -> None:
  """ConfigError unless config.eval.benchmarks.<name>.data is a directory
  and its split one of the benchmark's."""
  slot = benchmark_config(config, name)
  data = slot.get("data", "")
  if not data or not os.path.isdir(data):
    raise config_lib.ConfigError(
        f"a stage's evals names {name!r}, so config.eval.benchmarks.{name}"
        f".data must be the directory of its files ({data!r} is not); "
        f"expected {registry.get(name).layout}")
  split = slot.get("split", "") or None
  if split is not None and split not in registry.get(name).splits:
    raise config_lib.ConfigError(
        f"config.eval.benchmarks.{name}.split={split!r}; its splits: "
        f"{', '.join(registry.get(name).splits)}")


def stage_run(ctx: evals_registry.EvalContext) -> run_lib.Run:
  """The stage's model and final parameters as a `Run` to generate with."""
  tok = ctx.tokenizer
  return run_lib.Run(
      config=ctx.config, model=ctx.model, params=ctx.params, tokenizer=tok,
      workdir=ctx.workdir, checkpoint=f"stage {ctx.stage} (final)",
      max_len=int(ctx.config.data.max_len),
      stop_ids=(tok.end_of_turn_id, tok.eos_id),
      pad_id=getattr(tok, "pad_id", 0))


def evaluate_after_stage(name: str, ctx: evals_registry.EvalContext
                         ) -> dict[str, Any]:
  """The evaluator of benchmark `name` (module docstring)."""
  slot = benchmark_config(ctx.config, name)
  bench = registry.get(name)
  split = bench.check_split(slot.get("split", "") or None)
  metrics, _ = run_benchmark(
      stage_run(ctx), bench, slot.data, split,
      out_dir=os.path.join(ctx.workdir, "eval"),
      name=f"{ctx.stage}_{name}_{split}", limit=int(slot.get("limit", 0)),
      batch_size=int(ctx.config.eval.batch_size), write=False,
      shard=False)  # the stage's parameters may span every process
  return {f"{name}/{k}": v for k, v in metrics.items()}


def register_stage_evaluators() -> None:
  """Every benchmark under its own name in the evaluator registry."""
  for name in registry.BENCHMARKS:
    evals_registry.register(
        name, functools.partial(evaluate_after_stage, name),
        check=functools.partial(check_benchmark_config, name=name))
