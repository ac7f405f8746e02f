"""One benchmark question as the runner asks it, and reading a benchmark's
files with one-line errors that say what is expected.

  Question(qid="262148000", prompt="Where is he looking?\\nAnswer ...",
           image="/data/vqav2/val2014/COCO_val2014_000000262148.jpg",
           truth={"answers": [...10 human answers...]})
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping

from mmjax.inference.prompts import InputError


class BenchmarkDataError(InputError):
  """A benchmark's files are not where or what its layout says; the message
  names the file and fields expected."""


@dataclasses.dataclass(frozen=True)
class Question:
  """One question to answer.

  Attributes:
    qid: unique within a benchmark split: the key of the answers file.
    prompt: the full user text (question, options, the answer instruction).
    image: a file path, or the encoded image (bytes: MMBench's base64
      cell decoded).
    truth: what the benchmark's score needs (answers, label, category, ...);
      JSON values only.
  """
  qid: str
  prompt: str
  image: str | bytes
  truth: Mapping[str, Any]


def with_instruction(question: str, instruction: str) -> str:
  """The question, then the benchmark's answer instruction on a new line,
  unless the question already ends with it (MME's do)."""
  question = question.strip()
  if question.endswith(instruction):
    return question
  return f"{question}\n{instruction}"


def require_file(path: str, layout: str) -> str:
  """`path` if it is a file; else BenchmarkDataError naming the layout."""
  if not os.path.isfile(path):
    raise BenchmarkDataError(f"{path} not found; expected {layout}")
  return path


def require_dir(path: str, layout: str) -> str:
  """`path` if it is a directory; else BenchmarkDataError."""
  if not os.path.isdir(path):
    raise BenchmarkDataError(f"{path} is not a directory; expected {layout}")
  return path


def read_json(path: str, layout: str) -> Any:
  """A JSON file of the layout, or BenchmarkDataError (missing, not JSON)."""
  require_file(path, layout)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BenchmarkDataError(f"{path} is not JSON ({e}); expected "
                             f"{layout}") from None


def read_json_lines(path: str, layout: str) -> list[Any]:
  """A JSON-lines file (blank lines skipped), or BenchmarkDataError."""
  require_file(path, layout)
  out = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise BenchmarkDataError(f"{path} line {number} is not JSON ({e}); "
                                   f"expected {layout}") from None
  return out


def require_fields(record: Any, fields: Iterable[str], where: str) -> None:
  """BenchmarkDataError unless `record` is a dict holding every field."""
  fields = tuple(fields)
  missing = ([f for f in fields if f not in record]
             if isinstance(record, dict) else list(fields))
  if missing:
    raise BenchmarkDataError(f"{where} lacks {', '.join(map(repr, missing))}; "
                             f"each record needs the fields "
                             f"{', '.join(fields)}")


def require_images(questions: Iterable[Question], layout: str) -> None:
  """BenchmarkDataError naming the first question whose image file is
  missing (checked before anything is generated)."""
  for q in questions:
    if isinstance(q.image, str) and not os.path.isfile(q.image):
      raise BenchmarkDataError(f"the image of question {q.qid}, {q.image}, "
                               f"is missing; expected {layout}")
