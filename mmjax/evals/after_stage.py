"""Evaluations after each stage of the multimodal recipe, and the report.

A stage's `evals` lists what to measure once it finishes, by the names of
the evaluator registry (evals/registry.py):
  retrieval  image<->caption recall@1/@5 of the contrastive model (test split)
  vqa        greedy answers to the test and held-out questions: exact match
             by question type, yes/no (POPE-style) metrics, absent-object
             yes-rate
  captions   greedy captions of config.eval.caption_examples (default 32)
             test images: BLEU-4 and token F1 against both references
  grounding  greedy boxes for "where is the <colour> <shape>?" (one object
             per test / held-out image): accuracy at IoU >= 0.5, mean IoU,
             share of answers that parse as a box
  grounded_captions
             greedy answers to "describe the image with boxes." (test /
             held-out images): share of objects named and boxed at IoU >=
             0.5, share of mentions that land, images fully right
  vqav2, textvqa, gqa, pope, mmbench, mme
             an official benchmark from config.eval.benchmarks.<name>.data
             (evals/benchmarks/stage.py)
Answers come from the KV-cache generation of `mmjax.decoding.decode`.
Results go to WORKDIR/eval/<stage>.json, to metrics.jsonl (with "stage" and
"step"), and into WORKDIR/report.md with plots beside it.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import ml_collections

from mmjax.data import datasets
from mmjax.evals import plots, registry, results
from mmjax.evals.benchmarks import BENCHMARKS
from mmjax.train import metrics as metrics_lib
from mmjax.train import stages


# The one number of each official benchmark printed after a stage.
_BENCHMARK_HEADLINES = frozenset(f"{b.name}/{b.headline}"
                                 for b in BENCHMARKS.values())


def _eval_path(workdir: str, stage: str) -> str:
  return os.path.join(workdir, "eval", f"{stage}.json")


class StageEvaluator:
  """The `after_stage` hook of `run_recipe` for the multimodal recipe."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.results: dict[str, dict[str, Any]] = {}

  def __call__(self, name: str, built, result) -> None:
    stage = self.config.stages[name]
    evals = registry.stage_evals(stage)
    if not evals:
      return
    path = _eval_path(self.workdir, name)
    finished_before = (result.resumed_from is not None and
                       result.resumed_from >= stage.steps)
    if finished_before and os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        self.results[name] = json.load(f)  # measured in an earlier run
      return
    t0 = time.perf_counter()
    metrics = self.measure(name, evals, built, result)
    metrics["eval_time_s"] = time.perf_counter() - t0
    self.results[name] = metrics
    if jax.process_index() == 0:
      results.write_results(self.workdir, name, metrics)
      writer = metrics_lib.MetricWriter(self.workdir, name, tensorboard=False)
      writer.write(result.step, {f"eval/{k}": v for k, v in metrics.items()
                                 if isinstance(v, (int, float))})
      writer.close()
      print(f"[{name}] " + ", ".join(
          f"{k}={v:.3f}" for k, v in metrics.items()
          if isinstance(v, float) and ("acc/all" in k or "recall@1" in k
                                       or "absent_yes_rate" in k
                                       or "acc@0.5" in k
                                       or "recall@0.5" in k
                                       or k in _BENCHMARK_HEADLINES)),
            flush=True)

  def measure(self, name: str, evals, built, result) -> dict[str, Any]:
    """The metrics of every evaluator in `evals`, merged."""
    ctx = registry.EvalContext(
        config=self.config, stage=name,
        model=stages.stage_model(self.config, name).model,
        params=result.params, tokenizer=built.tokenizer,
        dataset=datasets.shapes_dataset(self.config), workdir=self.workdir)
    out: dict[str, Any] = {}
    for entry in evals:
      out.update(registry.EVALUATORS[entry](ctx))
    return out

  def report(self) -> str:
    """Markdown of every evaluation, with the plots it refers to."""
    records = metrics_lib.read_metrics(self.workdir)
    lines = []
    loss_png = plots.plot_losses(records,
                                 os.path.join(self.workdir, "losses.png"))
    lines += ["## Plots", "", f"![losses]({os.path.basename(loss_png)})"]
    by_stage = {name: {k[len("test/"):]: v for k, v in m.items()
                       if k.startswith("test/acc/")}
                for name, m in self.results.items()}
    by_stage = {k: v for k, v in by_stage.items() if v}
    if by_stage:
      acc_png = plots.plot_accuracy(by_stage, os.path.join(
          self.workdir, "accuracy.png"))
      lines += ["", f"![accuracy by question type]"
                    f"({os.path.basename(acc_png)})"]
    confusions = [(name, m["test/confusion/shape"])
                  for name, m in self.results.items()
                  if m.get("test/confusion/shape")]
    if confusions:  # the last stage that answered shape questions
      name, confusion = confusions[-1]
      png = plots.plot_confusion(
          confusion, os.path.join(self.workdir, "shape_confusion.png"),
          title=f"shape answers after {name} (test)")
      lines += ["", f"![shape confusion]({os.path.basename(png)})"]
    lines.append("")
    table = _accuracy_table(self.results)
    if table:
      lines += [table, ""]
    for name, m in self.results.items():
      lines.append(results.results_markdown(name, _headline(m)))
    return "\n".join(lines)


def _accuracy_table(results_by_stage: Mapping[str, Mapping[str, Any]]) -> str:
  """Markdown: accuracy +- standard error (questions) per stage, split and
  question type."""
  rows, qtypes = [], []
  for name, m in results_by_stage.items():
    for split in ("test", "heldout"):
      prefix = f"{split}/acc/"
      found = [k[len(prefix):] for k in m if k.startswith(prefix)]
      if found:
        qtypes += [q for q in found if q not in qtypes]
        rows.append((name, split, m))
  if not rows:
    return ""
  qtypes = [q for q in qtypes if q != "all"] + ["all"]
  lines = ["### Accuracy by question type (+- standard error, questions)", "",
           "| stage | split | " + " | ".join(qtypes) + " |",
           "|---|---|" + "---|" * len(qtypes)]
  for name, split, m in rows:
    cells = []
    for q in qtypes:
      acc = m.get(f"{split}/acc/{q}")
      cells.append("n/a" if acc is None else
                   f"{acc:.3f} +- {m.get(f'{split}/se/{q}', 0.0):.3f} "
                   f"({m.get(f'{split}/count/{q}', 0)})")
    lines.append(f"| {name} | {split} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """The metrics worth a table row (no counts), samples of the test split."""
  keep = {k: v for k, v in metrics.items()
          if isinstance(v, (int, float)) and "count" not in k
          and "/se/" not in k}  # in the accuracy table
  samples = metrics.get("test/samples")
  if samples:
    keep["samples"] = samples
  return keep
