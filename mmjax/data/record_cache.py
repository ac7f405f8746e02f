"""Decoded training records kept in memory, so later epochs skip decoding.

A stage reads its training split many times over: the shapes recipe's
`regions` stage draws 96,000 rows from 10,000 records, `sft` 48,000. Each
read deserialises the TFDS record and decodes its PNG (about 0.9 ms a
record on a 2-core CPU, in Python, under the GIL that the train step's
inputs share): measured, more than half of the `regions` stage's data time.
`CachedSource` keeps the decoded records it has returned, up to a byte
budget, and serves later reads from memory:

  source = CachedSource(builders.load_source(builder, "train"),
                        max_bytes=256 << 20)
  source[7]  # decoded once; a dict of fresh lists, read-only arrays

The records it returns are the source's, so batches are bit for bit what
they were without it. Their arrays are read-only (a consumer that edited one
in place would corrupt every later epoch; it raises instead) and their lists
are copies. Once the budget is full, records past it are decoded on every
read, as without a cache: no eviction, since shuffled epochs read every
record equally often. Each worker process keeps its own cache (a pickled
source starts empty).
"""
from __future__ import annotations

import operator
import threading
from typing import Any, Sequence

import numpy as np

# Bytes counted for each cached record beyond its arrays and strings (the
# dict and its keys), so a budget of text-only records still binds.
_RECORD_OVERHEAD = 256


def _frozen(value: Any) -> Any:
  """The value with its numpy arrays made read-only (in place: the source
  hands out a new array per read)."""
  if isinstance(value, np.ndarray):
    value.flags.writeable = False
    return value
  if isinstance(value, dict):
    return {k: _frozen(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_frozen(v) for v in value)
  return value


def _fresh(value: Any) -> Any:
  """A copy of the record's dicts and lists (a consumer may edit those);
  arrays and strings are shared (read-only, immutable)."""
  if isinstance(value, dict):
    return {k: _fresh(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_fresh(v) for v in value]
  return value


def _nbytes(value: Any) -> int:
  if isinstance(value, np.ndarray):
    return value.nbytes
  if isinstance(value, (str, bytes)):
    return len(value)
  if isinstance(value, dict):
    return sum(_nbytes(v) + len(k) for k, v in value.items())
  if isinstance(value, (list, tuple)):
    return sum(_nbytes(v) + 8 for v in value)
  return 8


class CachedSource:
  """Random access (len, [i]) to `source`'s records, decoded once each
  while `max_bytes` lasts (module doc). Thread-safe (grain reads with
  several threads)."""

  def __init__(self, source: Sequence[Any], max_bytes: int):
    if max_bytes < 0:
      raise ValueError(f"max_bytes={max_bytes} must be >= 0")
    self._source, self.max_bytes = source, int(max_bytes)
    self._records: dict[int, Any] = {}
    self.cached_bytes = 0
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Any:
    index = operator.index(index)
    if index < 0:
      index += len(self)
    record = self._records.get(index)
    if record is None:
      record = _frozen(self._source[index])
      size = _nbytes(record) + _RECORD_OVERHEAD
      with self._lock:
        if (index not in self._records and
            self.cached_bytes + size <= self.max_bytes):
          self._records[index] = record
          self.cached_bytes += size
    return _fresh(record)

  @property
  def cached_records(self) -> int:
    """How many records are held."""
    return len(self._records)

  def __getstate__(self) -> dict[str, Any]:
    # Worker processes get the source, not this process's records or lock.
    return {"source": self._source, "max_bytes": self.max_bytes}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["source"], state["max_bytes"])
