"""Metric sinks: WORKDIR/metrics.jsonl and TensorBoard event files.

Only process 0 writes. Every record carries "stage" and "step" keys; a run
leaves each (stage, step, kind) once (`record_kind`; the trainer drops what a
resumed stage redoes). A line that does not parse (what a crash or a full
disk leaves) is skipped and counted when read.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
  value = np.asarray(value).item() if np.ndim(value) == 0 else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep it readable.
  return value


class MetricWriter:
  """Appends metrics to metrics.jsonl and TensorBoard (`WORKDIR/tb/<stage>`)."""

  def __init__(self, workdir: str, stage: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.stage = stage
    self._jsonl = None
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    self._jsonl = open(path, "a", encoding="utf-8")
    if not _ends_with_newline(path):
      # A line cut short by a crash must not swallow the next record.
      self._jsonl.write("\n")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tb", stage))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.active:
      return
    record = {"stage": self.stage, "step": int(step)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("stage", "step") and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _ends_with_newline(path: str) -> bool:
  """Whether the file is empty or its last byte is a newline."""
  with open(path, "rb") as f:
    if f.seek(0, os.SEEK_END) == 0:
      return True
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


def record_kind(record: Mapping[str, Any]) -> str:
  """What a record logs: 'compile', 'stage_eval' (the evaluations after a
  stage, `eval/...`), 'eval' (held-out loss, `eval_...`) or 'train'."""
  keys = [k for k in record if k not in ("stage", "step")]
  if "compile_time_s" in keys:
    return "compile"
  if any(k.startswith("eval/") for k in keys):
    return "stage_eval"
  if any(k.startswith("eval_") for k in keys):
    return "eval"
  return "train"


def parse_metrics(workdir: str) -> tuple[list[dict[str, Any]], int]:
  """(records of WORKDIR/metrics.jsonl, number of lines that are not a JSON
  object and were skipped); ([], 0) when the file is absent."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return [], 0
  records, skipped = [], 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        record = None
      if isinstance(record, dict):
        records.append(record)
      else:
        skipped += 1
  return records, skipped


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of WORKDIR/metrics.jsonl (empty when absent).

  Lines that do not parse are skipped, with one warning line saying how many.
  """
  records, skipped = parse_metrics(workdir)
  if skipped:
    warn_skipped(workdir, skipped)
  return records


def warn_skipped(workdir: str, skipped: int) -> None:
  """The warning line of `read_metrics` (process 0 only)."""
  if jax.process_index() == 0:
    print(f"WARNING: {os.path.join(workdir, METRICS_FILE)}: skipped "
          f"{skipped} line(s) that are not JSON records (cut short by a "
          "crash or a full disk?)", flush=True)
