"""PNG plots for WORKDIR/report.md: loss curves, accuracy by question type,
the confusion matrix of shape answers.

  records = metrics.read_metrics(workdir)
  plot_losses(records, os.path.join(workdir, "loss.png"))
  plot_accuracy({"sft": {"colour": 0.9, ...}}, os.path.join(workdir, "acc.png"))

Figures are drawn with matplotlib's object API on the Agg canvas: no pyplot
global state, no display needed, safe next to other matplotlib users.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmjax.data.shapes import QTYPES

_ACC_PREFIX = "acc/"


def _save(fig: Figure, path: str) -> str:
  """Writes the figure as a PNG atomically; returns the path."""
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  FigureCanvasAgg(fig)
  tmp = f"{path}.tmp-{os.getpid()}.png"
  fig.savefig(tmp, dpi=110, format="png")
  os.replace(tmp, path)
  return path


def _number(value: Any) -> float | None:
  """A finite float, or None (missing, text such as "nan", or inf)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def _curves(records: Sequence[Mapping[str, Any]]
            ) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """{stage: {"train": [(step, loss)], "eval": [(step, eval_loss)]}}, stages
  in order of first appearance, points sorted by step."""
  out: dict[str, dict[str, list[tuple[int, float]]]] = {}
  for record in records:
    stage = str(record.get("stage", "?"))
    for kind, key in (("train", "loss"), ("eval", "eval_loss")):
      value = _number(record.get(key))
      if value is not None and "step" in record:
        out.setdefault(stage, {"train": [], "eval": []})[kind].append(
            (int(record["step"]), value))
  for curves in out.values():
    for points in curves.values():
      points.sort()
  return out


def plot_losses(records: Sequence[Mapping[str, Any]], path: str) -> str:
  """Loss per step, one panel per stage, eval loss as points.

  Args:
    records: metrics.jsonl records (`metrics.read_metrics`); those with a
      "loss" are training points, those with "eval_loss" eval points.
    path: the PNG to write.

  Returns:
    path.
  """
  curves = _curves(records)
  n = max(len(curves), 1)
  cols = min(n, 3)
  rows = math.ceil(n / cols)
  fig = Figure(figsize=(4.6 * cols, 3.4 * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  if not curves:
    axes[0].text(0.5, 0.5, "no loss records", ha="center", va="center",
                 transform=axes[0].transAxes)
    axes[0].set_axis_off()
  for ax, (stage, points) in zip(axes, curves.items()):
    if points["train"]:
      steps, values = zip(*points["train"])
      ax.plot(steps, values, color="tab:blue", linewidth=1.5,
              marker="." if len(steps) < 30 else None, label="train loss")
    if points["eval"]:
      steps, values = zip(*points["eval"])
      ax.plot(steps, values, color="tab:orange", linestyle="none",
              marker="o", markersize=6, label="eval loss")
    ax.set_title(f"stage: {stage}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
  for ax in axes[max(len(curves), 1):]:  # Unused panels of the grid.
    ax.set_axis_off()
  fig.suptitle("Loss by training stage")
  return _save(fig, path)


def _accuracies(metrics: Mapping[str, Any]) -> dict[str, float]:
  """{qtype: acc} from {qtype: acc} or from evaluate's "acc/<qtype>" keys."""
  prefixed = any(str(k).startswith(_ACC_PREFIX) for k in metrics)
  out = {}
  for key, value in metrics.items():
    key = str(key)
    if prefixed:
      if not key.startswith(_ACC_PREFIX):
        continue
      key = key[len(_ACC_PREFIX):]
    number = _number(value)
    if number is not None:
      out[key] = number
  return out


def plot_accuracy(by_stage: Mapping[str, Mapping[str, Any]], path: str,
                  legend_title: str = "stage",
                  title: str = "VQA accuracy by question type") -> str:
  """Grouped bars: accuracy per question type, one bar per stage.

  Args:
    by_stage: {stage: {qtype: accuracy in [0, 1]}}; a stage's dict may also
      be `evaluate.evaluate_shapes_vqa` metrics (its "acc/<qtype>" keys are
      used, everything else ignored). Question types follow shapes.QTYPES,
      then others sorted, "all" last.
    path: the PNG to write.
    legend_title, title: what the bars are (stages, or a sweep's variants).

  Returns:
    path.
  """
  stages = {str(s): _accuracies(m) for s, m in by_stage.items()}
  present = set().union(*stages.values()) if stages else set()
  qtypes = [q for q in QTYPES if q in present]
  qtypes += sorted(present - set(QTYPES) - {"all"})
  qtypes += ["all"] if "all" in present else []
  fig = Figure(figsize=(max(6.0, 1.3 * len(qtypes) + 2.5), 4.2),
               layout="constrained")
  ax = fig.subplots()
  width = 0.8 / max(len(stages), 1)
  for i, (stage, acc) in enumerate(stages.items()):
    xs = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(qtypes))]
    heights = [acc.get(q, 0.0) for q in qtypes]
    bars = ax.bar(xs, heights, width=width * 0.95, label=stage)
    labels = [f"{acc[q]:.2f}" if q in acc else "n/a" for q in qtypes]
    ax.bar_label(bars, labels=labels, fontsize="x-small", padding=1)
  ax.set_xticks(range(len(qtypes)), qtypes)
  ax.set_ylim(0.0, 1.08)
  ax.set_xlabel("question type")
  ax.set_ylabel("exact-match accuracy")
  ax.set_title(title)
  ax.grid(True, axis="y", alpha=0.3)
  if stages:
    ax.legend(title=legend_title, fontsize="small", loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
  if not qtypes:
    ax.text(0.5, 0.5, "no accuracies", ha="center", va="center",
            transform=ax.transAxes)
  return _save(fig, path)


def plot_confusion(confusion: Mapping[str, Any], path: str,
                   title: str = "shape answers") -> str:
  """A heat map of `vqa.answer_confusion`: rows the gold answer, columns
  the predicted one, each cell its count and each row normalised to 1.

  Args:
    confusion: {"labels", "predicted", "matrix"} (int counts [G][P]).
    path: the PNG to write.

  Returns:
    path.
  """
  gold, predicted = list(confusion["labels"]), list(confusion["predicted"])
  matrix = [list(map(int, row)) for row in confusion["matrix"]]
  shares = [[c / max(sum(row), 1) for c in row] for row in matrix]
  fig = Figure(figsize=(1.0 * len(predicted) + 2.5,
                        0.7 * max(len(gold), 1) + 1.8), layout="constrained")
  ax = fig.subplots()
  if gold:
    image = ax.imshow(shares, vmin=0.0, vmax=1.0, cmap="Blues")
    for i, row in enumerate(matrix):
      for j, count in enumerate(row):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if shares[i][j] > 0.6 else "black",
                fontsize="small")
    fig.colorbar(image, ax=ax, label="share of the row")
  else:
    ax.text(0.5, 0.5, "no questions", ha="center", va="center",
            transform=ax.transAxes)
  ax.set_xticks(range(len(predicted)), predicted, rotation=30, ha="right")
  ax.set_yticks(range(len(gold)), gold)
  ax.set_xlabel("predicted")
  ax.set_ylabel("answer")
  ax.set_title(f"{title} (n={sum(map(sum, matrix))})")
  return _save(fig, path)
