"""The registry of official benchmarks by name: how each reads its local
files and scores the answers.

  register(Benchmark("pope", splits=(...), layout=..., read=..., score=...))
  benchmark = get("pope")                 # BenchmarkDataError if unknown
  questions = benchmark.read("/data/pope", "adversarial")
  metrics = benchmark.score(questions, predictions)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from mmjax.evals.benchmarks.question import BenchmarkDataError, Question

Reader = Callable[[str, str], list[Question]]
Scorer = Callable[[Sequence[Question], Sequence[str]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """An official benchmark read from its published local layout.

  Attributes:
    name: what `--benchmark` and a stage's `evals` say.
    splits: the splits it can read; the first is the default.
    layout: the files expected under the data directory (one line: errors
      and docs quote it).
    read: (data_dir, split) -> the questions, in the files' order; raises
      BenchmarkDataError for a layout that is not there.
    score: (questions, predictions) -> flat metrics; `headline` among them.
    headline: the metric printed after a stage.
    max_new_tokens: the answer budget (short answers: the papers' prompts
      ask for a word, a phrase, yes / no or a letter).
  """
  name: str
  splits: tuple[str, ...]
  layout: str
  read: Reader
  score: Scorer
  headline: str
  max_new_tokens: int = 16

  def check_split(self, split: str | None) -> str:
    """`split`, or the default for None; BenchmarkDataError if unknown."""
    if split is None:
      return self.splits[0]
    if split not in self.splits:
      raise BenchmarkDataError(
          f"{self.name} has no split {split!r}; its splits: "
          f"{', '.join(self.splits)}")
    return split


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
  """Adds a benchmark under its name."""
  if benchmark.name in BENCHMARKS:
    raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
  BENCHMARKS[benchmark.name] = benchmark
  return benchmark


def get(name: str) -> Benchmark:
  """The benchmark called `name`; BenchmarkDataError listing the names."""
  if name not in BENCHMARKS:
    raise BenchmarkDataError(f"unknown benchmark {name!r}; benchmarks: "
                             f"{', '.join(BENCHMARKS)}")
  return BENCHMARKS[name]
