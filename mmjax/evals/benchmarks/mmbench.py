"""MMBench (Liu et al. 2023): multiple-choice questions over 20 abilities,
scored with CircularEval.

Layout (the TSV OpenCompass publishes, as VLMEvalKit downloads it):

  DIR/MMBench_DEV_EN.tsv   (split dev_en; dev_cn -> MMBench_DEV_CN.tsv,
                            dev_en_v11 -> MMBench_DEV_EN_V11.tsv, ...)
      tab-separated, a header row; columns index, question, hint, A, B,
      C, D (options, empty when absent), answer (a letter), category,
      l2-category, image (the image as base64; a short cell holding
      another row's index reuses that row's image)

CircularEval: rows whose index differs by a multiple of 1,000,000 are one
question (files may carry the shifted copies); its first row is asked N
times, N its number of options, the options rotated by one each time
(options[k:] + options[:k]), the answer letter moved with them. The
question counts right only if every rotation is answered right.

Prompt (as LLaVA's): the hint (if any), the question, one line per option
"A. text", then "Answer with the option's letter from the given choices
directly." `parse_option` reads the letter. Metrics (x 100): accuracy
(circular), accuracy_single (the unrotated asking alone), and
`category/<name>`, `l2/<name>` circular accuracies with counts.
"""
from __future__ import annotations

import base64
import binascii
import collections
import csv
import re
import sys
from typing import Any, Sequence

import numpy as np

from mmjax.evals.benchmarks import registry
from mmjax.evals.benchmarks.question import (BenchmarkDataError, Question,
                                             require_fields, require_file)

LETTER_ONLY = "Answer with the option's letter from the given choices directly."
SPLITS = ("dev_en", "dev_cn", "dev_en_v11", "dev_cn_v11")
LETTERS = "ABCDEFGHI"
COPY_STRIDE = 1_000_000  # VLMEvalKit: a shifted copy's index = index + k * 1e6
LAYOUT = ("DIR/MMBench_<SPLIT>.tsv (e.g. MMBench_DEV_EN.tsv), tab-separated "
          "with a header: index, question, hint, A, B, C, D, answer, "
          "category, l2-category, image (base64)")


def _missing(cell: Any) -> bool:
  return cell is None or str(cell).strip() in ("", "nan", "NaN", "None")


def parse_option(prediction: str, options: dict[str, str]) -> str | None:
  """The option letter an answer names, or None.

  As VLMEvalKit's matching without its LLM judge: punctuation -> spaces;
  exactly one option letter standing as a word ("B", "(B)", "B. cat") is
  the choice; else exactly one option's text inside the answer (case
  ignored); else None (counted wrong).
  """
  words = re.sub(r"[^\w\s]", " ", prediction).split()
  letters = {w for w in words if w in options}
  if len(letters) == 1:
    return letters.pop()
  if letters:
    return None
  said = prediction.lower()
  named = [k for k, text in options.items() if text.strip().lower() in said
           and text.strip()]
  return named[0] if len(named) == 1 else None


def _rows(path: str) -> list[dict[str, str]]:
  csv.field_size_limit(sys.maxsize)  # base64 images exceed the default
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  if not rows:
    raise BenchmarkDataError(f"{path} holds no rows; expected {LAYOUT}")
  require_fields(rows[0], ["index", "question", "A", "B", "answer",
                           "category", "image"], f"the header of {path}")
  return rows


def _image_bytes(row: dict[str, str], by_index: dict[str, dict[str, str]],
                 path: str) -> bytes:
  cell = row["image"].strip()
  if len(cell) < 64 and cell in by_index:  # another row's image
    cell = by_index[cell]["image"].strip()
  try:
    return base64.b64decode(cell, validate=True)
  except (binascii.Error, ValueError):
    raise BenchmarkDataError(
        f"row {row['index']} of {path}: its image cell is not base64 (nor "
        "the index of another row); expected the image as base64") from None


def _prompt(row: dict[str, str], options: list[tuple[str, str]]) -> str:
  lines = [] if _missing(row.get("hint")) else [row["hint"].strip()]
  lines.append(row["question"].strip())
  lines += [f"{letter}. {text}" for letter, text in options]
  lines.append(LETTER_ONLY)
  return "\n".join(lines)


def circular_questions(row: dict[str, str], image: bytes) -> list[Question]:
  """The N rotations of one question (module docstring)."""
  texts = [row[k].strip() for k in LETTERS if not _missing(row.get(k))]
  answer = row["answer"].strip()
  right = LETTERS.index(answer) if answer in LETTERS[:len(texts)] else -1
  if right < 0:
    raise BenchmarkDataError(
        f"row {row['index']}: answer {answer!r} names none of its options "
        f"{', '.join(LETTERS[:len(texts)])}")
  group = int(float(row["index"])) % COPY_STRIDE
  out = []
  for k in range(len(texts)):
    rotated = texts[k:] + texts[:k]
    options = list(zip(LETTERS, rotated))
    out.append(Question(
        f"{group}/{k}", _prompt(row, options), image,
        {"group": group, "answer": LETTERS[(right - k) % len(texts)],
         "options": dict(options), "category": row.get("category", ""),
         "l2_category": row.get("l2-category", "")}))
  return out


def read_mmbench(data_dir: str, split: str) -> list[Question]:
  """Every rotation of every question of the split's TSV, in file order."""
  path = require_file(f"{data_dir}/MMBench_{split.upper()}.tsv", LAYOUT)
  rows = _rows(path)
  by_index = {r["index"].strip(): r for r in rows}
  firsts: dict[int, dict[str, str]] = {}
  for r in rows:
    try:
      index = int(float(r["index"]))
    except (TypeError, ValueError):
      raise BenchmarkDataError(f"{path}: index {r['index']!r} is no number; "
                               f"expected {LAYOUT}") from None
    if _missing(r.get("answer")):
      raise BenchmarkDataError(
          f"row {index} of {path} has no answer (a test TSV has no public "
          "answers); use a dev TSV, whose rows have an answer letter")
    group = index % COPY_STRIDE
    if group not in firsts or index < int(float(firsts[group]["index"])):
      firsts[group] = r
  out = []
  for r in firsts.values():
    out += circular_questions(r, _image_bytes(r, by_index, path))
  return out


def score_mmbench(questions: Sequence[Question], predictions: Sequence[str]
                  ) -> dict[str, Any]:
  """CircularEval accuracies (module docstring)."""
  right: dict[int, bool] = {}
  single: dict[int, bool] = {}
  first: dict[int, Question] = {}
  for q, p in zip(questions, predictions, strict=True):
    g = q.truth["group"]
    ok = parse_option(p, q.truth["options"]) == q.truth["answer"]
    right[g] = right.get(g, True) and ok
    if q.qid.endswith("/0"):
      single[g] = ok
    first.setdefault(g, q)
  out: dict[str, Any] = {
      "accuracy": 100.0 * float(np.mean(list(right.values()))) if right
      else 0.0,
      "accuracy_single": 100.0 * float(np.mean(list(single.values())))
      if single else 0.0,
      "count": len(right)}
  for key, prefix in (("category", "category"), ("l2_category", "l2")):
    groups = collections.defaultdict(list)
    for g, ok in right.items():
      groups[first[g].truth[key]].append(ok)
    for name in sorted(groups):
      out[f"{prefix}/{name}"] = 100.0 * float(np.mean(groups[name]))
      out[f"count/{prefix}/{name}"] = len(groups[name])
  return out


registry.register(registry.Benchmark(
    "mmbench", splits=SPLITS, layout=LAYOUT, read=read_mmbench,
    score=score_mmbench, headline="accuracy", max_new_tokens=8))
