"""Answering a benchmark with a loaded run: batched greedy generation
through `Run.generate` (the compiled KV-cache decode loop), sharded over
processes, resumable, scored by the benchmark's official metric.

  metrics, markdown = run_benchmark(run, get("pope"), "/data/pope", "all",
                                    out_dir=WORKDIR/eval, name="pope_all")

Process i of n answers the questions whose position in the (limited) list
is i mod n, appending to its own answers file (answers.py) as each batch
finishes; after a barrier, process 0 reads every file, scores and writes
<out_dir>/<name>.json and .md (the workdir must be on a filesystem all
processes see, as for checkpoints). A rerun answers only what is missing.
"""
from __future__ import annotations

import io
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax

from mmjax.decoding.fastv import FastVConfig
from mmjax.evals import results
from mmjax.evals.benchmarks.answers import AnswerLog
from mmjax.evals.benchmarks.question import (BenchmarkDataError, Question,
                                             require_images)
from mmjax.evals.benchmarks.registry import Benchmark

PROGRESS_EVERY_S = 10.0


def first_questions(questions: Sequence[Question], limit: int
                    ) -> list[Question]:
  """The first `limit` questions (0: all), counting a question asked
  several ways once: the rows sharing truth["group"] (MMBench's rotations,
  MME's two questions about an image) stay together."""
  if not limit:
    return list(questions)
  kept, groups = [], set()
  for q in questions:
    group = q.truth.get("group", q.qid)
    if group not in groups:
      if len(groups) == limit:
        break
      groups.add(group)
    kept.append(q)
  return kept


def image_input(question: Question) -> Any:
  """What `Run.generate` takes for the question's image: the path, or the
  decoded image of encoded bytes."""
  if isinstance(question.image, str):
    return question.image
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    image = Image.open(io.BytesIO(question.image))
    image.load()
    return image
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise BenchmarkDataError(f"the image of question {question.qid} cannot "
                             f"be decoded ({e})") from None


class Progress:
  """A progress line on stderr at most every PROGRESS_EVERY_S seconds, and
  at the end: answered / total, questions per second, time left."""

  def __init__(self, name: str, total: int, done: int,
               stream: Any = None):
    self.name, self.total, self.done = name, total, done
    self.stream = stream if stream is not None else sys.stderr
    self.start = self.last = time.perf_counter()
    self.start_done = done

  def update(self, answered: int) -> None:
    self.done += answered
    now = time.perf_counter()
    if now - self.last < PROGRESS_EVERY_S and self.done < self.total:
      return
    self.last = now
    rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
    left = (self.total - self.done) / rate if rate > 0 else 0.0
    print(f"[{self.name}] {self.done}/{self.total} questions, {rate:.2f}/s, "
          f"{left / 60:.1f} min left", file=self.stream, flush=True)


def answer_questions(run: Any, questions: Sequence[Question], log: AnswerLog,
                     *, checkpoint: str, batch_size: int, max_new_tokens: int,
                     fastv: FastVConfig | None = None,
                     progress: Callable[[int], None] | None = None) -> None:
  """Answers the questions `log` lacks, a batch at a time, appending each
  batch's answers to it."""
  done = log.answered(checkpoint)
  todo = [q for q in questions if q.qid not in done]
  for start in range(0, len(todo), batch_size):
    batch = todo[start:start + batch_size]
    texts = run.generate([q.prompt for q in batch],
                         [image_input(q) for q in batch],
                         max_new_tokens=max_new_tokens,
                         batch_size=batch_size, fastv=fastv).texts
    log.append({"qid": q.qid, "prediction": t, "checkpoint": checkpoint}
               for q, t in zip(batch, texts))
    if progress is not None:
      progress(len(batch))


def select_questions(benchmark: Benchmark, data_dir: str, split: str,
                     limit: int = 0) -> list[Question]:
  """The questions to ask: read, limited (first_questions), every image
  present; BenchmarkDataError otherwise (before any model loads)."""
  if not os.path.isdir(data_dir):
    raise BenchmarkDataError(f"--data={data_dir} is not a directory; "
                             f"{benchmark.name} expects {benchmark.layout}")
  questions = first_questions(benchmark.read(data_dir, split), limit)
  if not questions:
    raise BenchmarkDataError(f"{data_dir} holds no {benchmark.name} "
                             f"questions; expected {benchmark.layout}")
  require_images(questions, benchmark.layout)
  return questions


def run_benchmark(run: Any, benchmark: Benchmark, data_dir: str,
                  split: str | None, *, out_dir: str, name: str,
                  limit: int = 0, batch_size: int = 16,
                  max_new_tokens: int | None = None,
                  fastv: FastVConfig | None = None, write: bool = True,
                  questions: Sequence[Question] | None = None,
                  shard: bool = True) -> tuple[dict[str, Any], str]:
  """Reads, answers (what is not answered yet) and scores a benchmark.

  Args:
    run: a `mmjax.inference.Run` (anything with `generate` and
      `checkpoint`).
    benchmark, data_dir, split: what to read (split None: the default).
    out_dir, name: answers go to <out_dir>/<name>.answers*.jsonl, results
      to <name>.json and .md (when `write`).
    limit: the first N questions (first_questions); 0 = all.
    batch_size: rows per compiled program.
    max_new_tokens: None: the benchmark's budget.
    write: write <name>.json and .md (a stage's evaluation writes its own).
    questions: `select_questions` already read (None: read them here).
    shard: each process answers its slice; False: every process answers
      every question (parameters sharded over all processes, as after a
      stage, need every process in each program).

  Raises:
    BenchmarkDataError: the layout is not there, a field or an image is
      missing, or nothing to evaluate.

  Returns:
    (metrics, markdown): the benchmark's metrics plus benchmark, split,
    data, checkpoint and questions (rows answered); on processes other
    than 0, ({}, "").
  """
  split = benchmark.check_split(split)
  if questions is None:
    questions = select_questions(benchmark, data_dir, split, limit)
  index, count = jax.process_index(), jax.process_count()
  mine = questions[index::count] if shard else list(questions)
  log = AnswerLog(out_dir, name, index, count)
  checkpoint = str(run.checkpoint)
  answered = log.answered(checkpoint)
  progress = Progress(name, len(mine), sum(q.qid in answered for q in mine))
  answer_questions(run, mine, log, checkpoint=checkpoint,
                   batch_size=batch_size,
                   max_new_tokens=max_new_tokens or benchmark.max_new_tokens,
                   fastv=fastv, progress=progress.update)
  if count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"benchmark answers {name}")
  if index != 0:
    return {}, ""
  answers = log.merged(checkpoint)
  missing = [q.qid for q in questions if q.qid not in answers]
  if missing:
    raise BenchmarkDataError(f"{len(missing)} questions have no answer in "
                             f"{out_dir}/{name}.answers*.jsonl (first "
                             f"{missing[0]}): rerun to answer them")
  metrics = benchmark.score(questions, [answers[q.qid] for q in questions])
  metrics.update(benchmark=benchmark.name, split=split,
                 data=os.path.abspath(data_dir), checkpoint=checkpoint,
                 questions=len(questions))
  title = f"{benchmark.name} ({split})"
  markdown = results.results_markdown(name, metrics, title=title)
  if write:
    results.write_json(os.path.join(out_dir, f"{name}.json"), metrics)
    with open(os.path.join(out_dir, f"{name}.md"), "w",
              encoding="utf-8") as f:
      f.write(markdown)
  return metrics, markdown
