"""Resumable answers: one JSON line per answered question, appended as
batches finish, so a rerun skips what is already answered.

  log = AnswerLog(WORKDIR/eval, "pope_all", process_index=0, process_count=1)
  done = log.answered(checkpoint)      # {qid: prediction} of this model
  log.append([{"qid": ..., "prediction": ..., "checkpoint": ...}])
  everyone = log.merged(checkpoint)    # every process's answers

A process writes its own file (<name>.answers.jsonl with one process,
<name>.answers.p<i>-of-<n>.jsonl with n): nothing is shared while
answering. Lines of another checkpoint are ignored (re-answered), and a
line cut short by a crash is skipped.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterable, Mapping


class AnswerLog:
  """The answers file(s) of one benchmark evaluation (module docstring)."""

  def __init__(self, directory: str, name: str, process_index: int = 0,
               process_count: int = 1):
    self.directory = directory
    self.name = name
    suffix = ("" if process_count == 1
              else f".p{process_index}-of-{process_count}")
    self.path = os.path.join(directory, f"{name}.answers{suffix}.jsonl")

  def _read(self, path: str, checkpoint: str) -> dict[str, str]:
    out = {}
    if not os.path.exists(path):
      return out
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue  # the tail of an interrupted write
        if isinstance(row, dict) and row.get("checkpoint") == checkpoint:
          out[str(row["qid"])] = str(row["prediction"])
    return out

  def answered(self, checkpoint: str) -> dict[str, str]:
    """{qid: prediction} this process answered with `checkpoint`."""
    return self._read(self.path, checkpoint)

  def merged(self, checkpoint: str) -> dict[str, str]:
    """{qid: prediction} of every process's file (any process count)."""
    out = {}
    pattern = os.path.join(self.directory, f"{glob.escape(self.name)}"
                           ".answers*.jsonl")
    for path in sorted(glob.glob(pattern)):
      out.update(self._read(path, checkpoint))
    return out

  def _ends_with_newline(self) -> bool:
    with open(self.path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      return f.read(1) == b"\n"

  def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
    """Appends rows and flushes them to disk (a crash loses at most the
    batch being answered)."""
    os.makedirs(self.directory, exist_ok=True)
    with open(self.path, "a", encoding="utf-8") as f:
      if f.tell() and not self._ends_with_newline():
        f.write("\n")  # end a line a crash cut short, so ours stay whole
      for row in rows:
        f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
