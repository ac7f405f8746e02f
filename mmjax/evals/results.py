"""Evaluation results on disk: WORKDIR/eval/<name>.json and its markdown."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np


def _cell(value: Any) -> str:
  text = f"{value:.4f}" if isinstance(value, float) else str(value)
  return text.replace("|", "\\|").replace("\n", " ")


def results_markdown(stage: str, metrics: Mapping[str, Any],
                     title: str | None = None) -> str:
  """A markdown section: scalar metrics, then the sample answers if any.
  The heading names the stage, or says `title` when given."""
  heading = f"### {title}" if title else f"### Evaluation of stage `{stage}`"
  lines = [heading, "", "| metric | value |",
           "|---|---|"]
  lines += [f"| {k} | {_cell(v)} |" for k, v in metrics.items()
            if isinstance(v, (int, float, str))]
  samples = metrics.get("samples") or []
  if samples:
    lines += ["", "| question | answer | prediction |", "|---|---|---|"]
    lines += [f"| {_cell(s['question'])} | {_cell(s['answer'])} | "
              f"{_cell(s['prediction'])} |" for s in samples]
  return "\n".join(lines) + "\n"


def write_json(path: str, metrics: Mapping[str, Any]) -> None:
  """Writes metrics to `path` as JSON, atomically (a reader never sees half
  a file)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(json.dumps(dict(metrics), indent=2,
                       default=lambda v: np.asarray(v).tolist()))
  os.replace(path + ".tmp", path)


def write_results(workdir: str, stage: str, metrics: Mapping[str, Any]) -> str:
  """Writes WORKDIR/eval/<stage>.json (atomically); returns the markdown."""
  write_json(os.path.join(workdir, "eval", f"{stage}.json"), metrics)
  return results_markdown(stage, metrics)
