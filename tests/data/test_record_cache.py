"""The decoded-record cache of training sources (mmjax/data/record_cache.py)."""
import pickle

import numpy as np
import pytest

from mmjax import testing
from mmjax.config import ConfigError
from mmjax.data import builders, datasets, pipeline, record_cache
from tests.helpers import tiny_shapes_dataset


class _CountingSource:
  """A source that counts its reads and hands out new arrays each time."""

  def __init__(self, n):
    self.n, self.reads = n, 0

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.reads += 1
    return {"image": np.full((4, 4, 3), i, np.uint8), "caption": f"r{i}",
            "questions": [f"q{i}", f"p{i}"], "boxes": [[0.1, 0.2]]}


def test_records_are_decoded_once_and_handed_out_fresh():
  source = _CountingSource(5)
  cached = record_cache.CachedSource(source, max_bytes=1 << 20)
  first = cached[3]
  first["questions"].append("edited")      # a consumer's list edit ...
  first["boxes"][0].append(9.0)
  second = cached[-2]                       # ... does not reach the cache
  assert source.reads == 1
  assert second["questions"] == ["q3", "p3"] and second["boxes"] == [[0.1,
                                                                      0.2]]
  np.testing.assert_array_equal(second["image"], np.full((4, 4, 3), 3))
  with pytest.raises(ValueError, match="read-only"):
    second["image"][0, 0, 0] = 7           # in-place edits raise
  assert len(cached) == 5 and cached.cached_records == 1


def test_the_budget_bounds_what_is_kept():
  source = _CountingSource(10)
  one = record_cache._nbytes(source[0]) + record_cache._RECORD_OVERHEAD
  source.reads = 0
  cached = record_cache.CachedSource(source, max_bytes=3 * one)
  for _ in range(2):
    for i in range(10):
      cached[i]
  assert cached.cached_records == 3 and cached.cached_bytes <= 3 * one
  assert source.reads == 10 + 7             # 3 records served from memory
  assert record_cache.CachedSource(source, 0)[1]["caption"] == "r1"


def test_a_pickled_source_starts_empty():
  cached = record_cache.CachedSource(_CountingSource(3), max_bytes=1 << 20)
  cached[0]
  copy = pickle.loads(pickle.dumps(cached))  # what a grain worker gets
  assert copy.cached_records == 0 and copy.max_bytes == cached.max_bytes
  assert copy[2]["caption"] == "r2"


def test_batches_are_the_same_with_and_without_the_cache(tmp_path):
  """Three epochs of recoloured region rows and of grounding chats with box
  attention: every batch equal, so the cache cannot change a run."""
  builder, tok = tiny_shapes_dataset(tmp_path, num_train=16)
  config = testing.tiny_recipe()           # cache_mb 256: the recipe's own
  uncached = builders.load_source(builder, "train")
  plain = datasets.cached(config, builders.load_source(builder, "train"))
  assert isinstance(plain, record_cache.CachedSource)
  cfg = testing.tiny_mllm_config()
  for fmt, extra in (("regions", dict(recolour=0.5)),
                     ("shapes_chat", dict(grounding_questions=2,
                                          box_attention="edges"))):
    batches = []
    for source in (plain, uncached):
      it = pipeline.make_iterator(source, fmt=fmt, cfg=cfg, tokenizer=tok,
                                  batch_size=8, seed=3, max_len=256, **extra)
      batches.append([next(it) for _ in range(6)])
    for a, b in zip(*batches):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert plain.cached_records == 16


def test_the_budget_is_checked():
  config = testing.tiny_recipe()
  config.data.cache_mb = 0
  assert datasets.cached(config, [1]) == [1]
  config.data.cache_mb = -1
  with pytest.raises(ConfigError, match="cache_mb=-1 must be a number >= 0"):
    datasets.cached(config, [])
