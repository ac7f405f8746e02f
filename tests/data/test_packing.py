"""Packing (data.packing): fill and first-fit rows, segment ids, per-example
positions, resume, efficiency counts, refusals; packed == unpacked logits."""
import json
import os

import jax
import numpy as np
import pytest

from mmjax import testing
from mmjax.config import ConfigError
from mmjax.data import batching, builders, packing, pipeline
from mmjax.data.text_pipeline import DataStateError
from mmjax.data.tokenizer import Tokenizer
from mmjax.models.mllm import MLLM
from mmjax.train import config_checks, losses
from mmjax.train.stages import lm

MAX_LEN = 256


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  builder = builders.build(builders.ShapesBuilder,
                           str(tmp_path_factory.mktemp("data")), num_train=32,
                           num_validation=4, num_test=4, num_heldout=4)
  tok = Tokenizer.load(os.path.join(builder.data_dir, builders.TOKENIZER_FILE))
  return builders.load_source(builder, "train"), tok


def _iterator(source, tok, cfg, **kwargs):
  args = dict(fmt="shapes", cfg=cfg, tokenizer=tok, batch_size=4, seed=0,
              max_len=MAX_LEN, packing=True, pack_window=12)
  args.update(kwargs)
  return pipeline.make_iterator(source, **args)


def test_first_fit_places_in_order_and_counts_overflow():
  rows, overflow = packing.first_fit([5, 4, 3, 6, 1, 9], [1, 1, 0, 1, 1, 1],
                                     rows=2, capacity=10, max_images=2)
  # Item 4 fits row 0 by tokens but not by images (2 already).
  assert rows == [[0, 1], [2, 3, 4]] and overflow == [5]


def test_fill_rows_opens_each_row_with_the_oldest_and_fills_it():
  # First-fit puts 6 after 5 and strands 4 + 5 = 9 < 10 elsewhere; fill
  # opens row 0 with item 0 (5) and finds 5 + 4 + 1 = 10.
  lengths, images = [5, 6, 4, 3, 1, 7], [1, 1, 1, 0, 1, 1]
  rows, left = packing.fill_rows(lengths, images, rows=2, capacity=10,
                                 max_images=3)
  assert rows == [[0, 2, 4], [1, 3]] and left == [5]
  assert [sum(lengths[i] for i in r) for r in rows] == [10, 9]
  # The image room binds: with 2 a row, 5 + 4 + 1 needs 3 images; 5 + 4
  # and 5 + 3 + 1 tie at 9 (the first found is kept); row 1 is 6 + 3 + 1.
  rows, left = packing.fill_rows(lengths, images, rows=2, capacity=10,
                                 max_images=2)
  assert rows == [[0, 2], [1, 3, 4]] and left == [5]


def test_fill_rows_exact_on_small_cases():
  # Against brute force: each row's fill is the best any subset of the
  # waiting items (the oldest first, by rule) reaches.
  import itertools  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for _ in range(200):
    n, capacity, max_images = int(rng.integers(1, 9)), 20, 3
    lengths = rng.integers(1, capacity + 1, n).tolist()
    images = rng.integers(0, 2, n).tolist()
    rows, left = packing.fill_rows(lengths, images, rows=2,
                                   capacity=capacity, max_images=max_images)
    placed = [i for r in rows for i in r]
    assert sorted(placed + left) == list(range(n))
    waiting = list(range(n))
    for row in rows:
      if not waiting:
        assert row == []
        continue
      assert row[0] == waiting[0] == min(waiting)
      assert sum(lengths[i] for i in row) <= capacity
      assert sum(images[i] for i in row) <= max_images
      best = max(sum(lengths[i] for i in (row[0],) + c)
                 for k in range(len(waiting))
                 for c in itertools.combinations(waiting[1:], k)
                 if sum(lengths[i] for i in (row[0],) + c) <= capacity and
                 sum(images[i] for i in (row[0],) + c) <= max_images)
      assert sum(lengths[i] for i in row) == best
      waiting = [i for i in waiting if i not in row]
  # Coarse units on long rows never overflow them.
  lengths = rng.integers(100, 900, 64).tolist()
  rows, _ = packing.fill_rows(lengths, [1] * 64, rows=8, capacity=2048,
                              max_images=4)
  assert all(sum(lengths[i] for i in r) <= 2048 for r in rows)
  assert np.mean([sum(lengths[i] for i in r) for r in rows]) > 0.97 * 2048


def test_unknown_pack_policy(shapes):
  source, tok = shapes
  with pytest.raises(ValueError, match="pack_policy='best'"):
    _iterator(source, tok, testing.tiny_mllm_config("projection"),
              pack_policy="best")


@pytest.mark.parametrize("positions", ["rope", "mrope", "v2pe"])
def test_packed_batch_layout(shapes, positions):
  source, tok = shapes
  cfg = testing.tiny_mllm_config("projection", positions)
  padded = pipeline.make_iterator(source, fmt="shapes", cfg=cfg, tokenizer=tok,
                                  batch_size=12, seed=0, max_len=MAX_LEN,
                                  train=False)
  first = next(padded)      # the same 12 examples, one per row
  # First-fit keeps the stream order, which this test reads row by row.
  it = _iterator(source, tok, cfg, train=False, pack_policy="first_fit")
  batch = next(it)
  seg = batch["segment_ids"]
  assert seg.shape == batch["tokens"].shape and (seg.max(1) >= 3).all()
  # Examples in stream order, row by row: each segment is one padded row.
  example = 0
  for r in range(4):
    for s in range(1, seg[r].max() + 1):
      where = seg[r] == s
      n = int((first["tokens"][example] != tok.pad_id).sum())
      assert where.sum() == n
      for key in ("tokens", "targets", "loss_mask", "image_token_mask"):
        np.testing.assert_array_equal(batch[key][r][where],
                                      first[key][example][:n], key)
      pos = batch["positions"][..., r, :][..., where]
      np.testing.assert_array_equal(pos, first["positions"][..., example, :n])
      np.testing.assert_array_equal(batch["images"][r, s - 1],
                                    first["images"][example, 0])
      example += 1
    assert batch["image_mask"][r].sum() == seg[r].max()
    assert (batch["loss_mask"][r][seg[r] == 0] == 0).all()
  stats = it.log_stats()
  assert stats["real_tokens"] == (seg > 0).sum()
  assert stats["batch_tokens"] == seg.size
  assert stats["packing_efficiency"] == pytest.approx((seg > 0).mean())
  eff = padded.log_stats()["packing_efficiency"]
  assert eff < stats["packing_efficiency"]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_packed_state_restores_the_following_batches(shapes, num_workers):
  source, tok = shapes
  cfg = testing.tiny_mllm_config("projection", "v2pe")
  it = _iterator(source, tok, cfg, batch_size=2)  # 2 rows: leftovers
  for _ in range(2):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  after = [next(it) for _ in range(2)]
  # Leftovers are pending at the save: the restore prepares them again.
  assert state["pack_pending"] and state["stats"]["pack_overflow"]
  # The same batches when a worker process prepares the rows.
  with _iterator(source, tok, cfg, batch_size=2,
                 num_workers=num_workers) as restored:
    restored.set_state(state)
    for a, b in zip(after, [next(restored) for _ in range(2)]):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert restored.get_state() == it.get_state()
  with pytest.raises(ValueError, match="pack_window"):
    _iterator(source, tok, cfg, batch_size=2,
              pack_window=16).set_state(state)


def test_damaged_or_old_packed_state(shapes):
  source, tok = shapes
  cfg = testing.tiny_mllm_config("projection")
  it = _iterator(source, tok, cfg)
  next(it)
  state = it.get_state()
  for key, value in (("pack_pending", [-1]), ("pack_next_row", None)):
    with pytest.raises(DataStateError, match="pack_next_row / pack_pending"):
      _iterator(source, tok, cfg).set_state({**state, key: value})
  # A state of the fixed-window packing (no carry-over) goes on at its
  # next window.
  old = {k: v for k, v in state.items()
         if k not in ("pack_next_row", "pack_pending")}
  it = _iterator(source, tok, cfg)
  it.set_state({**old, "next_batch": 3})
  assert it.get_state()["pack_next_row"] == 36


def _sequences(batch, pad_id, segments):
  """The token sequences of a batch: per row, or per segment if packed."""
  out = []
  for r, tokens in enumerate(batch["tokens"]):
    if segments:
      out += [tuple(tokens[batch["segment_ids"][r] == s])
              for s in range(1, batch["segment_ids"][r].max() + 1)]
    elif batch["valid"][r]:
      out.append(tuple(tokens[tokens != pad_id]))
  return out


@pytest.mark.parametrize("policy", ["fill", "first_fit"])
def test_carry_over_packs_every_example_once(shapes, policy):
  # 2 rows of 256 tokens hold ~6 of the ~80-token examples: half of each
  # 12-example window is carried over, and the eval pass ends only when
  # nothing is pending.
  source, tok = shapes
  cfg = testing.tiny_mllm_config("projection")
  padded = pipeline.make_iterator(source, fmt="shapes", cfg=cfg, tokenizer=tok,
                                  batch_size=8, seed=0, max_len=MAX_LEN,
                                  train=False)
  want = [s for b in padded for s in _sequences(b, tok.pad_id, False)]
  it = _iterator(source, tok, cfg, batch_size=2, train=False,
                 pack_policy=policy)
  batches, waits = [], {}
  for batch in it:
    batches.append(batch)
    pending = it.get_state()["pack_pending"]
    assert len(pending) <= 12 - 2  # W - B: the first B always fit
    for row in pending:
      waits[row] = waits.get(row, 0) + 1
  # Oldest first: an example waits at most W / B - 1 = 5 batches.
  print("longest wait", max(waits.values()), "batches")
  assert waits and max(waits.values()) <= 5
  got = [s for b in batches for s in _sequences(b, tok.pad_id, True)]
  assert sorted(got) == sorted(want) and len(want) >= 32
  assert it.stats()["pack_overflow"] > len(want) // 2  # carries counted
  # A row takes <= 4 images (pack_images), so the pass needs >= n / 8
  # batches, twice the 15 windows of 12 it reads.
  assert len(batches) >= len(want) / 8
  if policy == "first_fit":  # in stream order
    assert got[:5] == want[:5]
  else:  # each row opens with the oldest example not yet placed
    first = batches[0]
    rows = [_sequences({k: v[r:r + 1] for k, v in first.items()}, tok.pad_id,
                       True) for r in range(2)]
    assert rows[0][0] == want[0]
    assert rows[1][0] == min((s for s in want[:12] if s not in rows[0]),
                             key=want.index)


def test_packing_refusals(shapes):
  source, tok = shapes
  cfg = testing.tiny_mllm_config("projection")
  with pytest.raises(ValueError, match="fmt='preference' cannot be packed"):
    _iterator(source, tok, cfg, fmt="preference")
  config = testing.tiny_recipe("cross_attention")
  config.data.packing = True
  with pytest.raises(ConfigError, match="data.packing=True cannot pack"):
    config_checks.validate_config(config)
  config = testing.tiny_recipe()
  config.data.packing = True
  config_checks.validate_config(config)


def _packed_pair(cfg, rows=2, per_row=2):
  """The same examples unpacked (one per row) and packed (per_row a row)."""
  n = rows * per_row
  examples = [testing.dummy_batch(cfg, 1, text_len=3 + 2 * i, seed=i)
              for i in range(n)]
  seqs = [{k: (e[k][:, 0] if k == "positions" and e[k].ndim == 3 else e[k][0])
           for k in batching.SEQUENCE_KEYS} for e in examples]
  lengths = [len(s["tokens"]) for s in seqs]
  longest = max(sum(lengths[r * per_row:(r + 1) * per_row])
                for r in range(rows))
  unpacked = batching.pad_sequences(seqs, max(lengths), cfg.positions, 0)
  unpacked["images"] = np.concatenate([e["images"] for e in examples])
  unpacked["image_mask"] = np.ones((n, 1), bool)
  joined = [packing.concat_sequences(seqs[r * per_row:(r + 1) * per_row],
                                     cfg.positions) for r in range(rows)]
  packed = batching.pad_sequences(joined, longest + 3, cfg.positions, 0)
  packed["segment_ids"] = np.zeros(packed["tokens"].shape, np.int32)
  for r, j in enumerate(joined):
    packed["segment_ids"][r, :len(j["segment_ids"])] = j["segment_ids"]
  packed["images"] = unpacked["images"].reshape(
      (rows, per_row) + unpacked["images"].shape[2:])
  packed["image_mask"] = np.ones((rows, per_row), bool)
  return unpacked, packed, lengths


@pytest.mark.slow  # three compiles of the tiny MLLM
@pytest.mark.parametrize("positions", ["rope", "mrope", "v2pe"])
def test_packed_logits_and_loss_equal_unpacked(positions):
  cfg = testing.tiny_mllm_config("projection", positions)
  model = MLLM(cfg)
  params = testing.random_params(model, scale=2.0)
  unpacked, packed, lengths = _packed_pair(cfg)
  apply = jax.jit(lambda p, b: lm.mllm_apply(model, p, b))
  a = np.asarray(apply(params, unpacked))
  b = np.asarray(apply(params, packed))
  worst, i = 0.0, 0
  for r in range(2):
    start = 0
    for _ in range(2):
      n = lengths[i]
      worst = max(worst, np.abs(a[i, :n] - b[r, start:start + n]).max())
      start += n
      i += 1
  print(f"{positions}: packed vs unpacked max abs logit diff {worst:.2e}")
  assert worst < 2e-4, worst
  la, _ = losses.lm_loss(a, unpacked["targets"], unpacked["loss_mask"])
  lb, _ = losses.lm_loss(b, packed["targets"], packed["loss_mask"])
  assert abs(float(la) - float(lb)) < 1e-4
  # Without segment ids the second example would read the first.
  del packed["segment_ids"]
  leak = np.asarray(apply(params, packed))
  assert np.abs(leak[0, lengths[0]:lengths[0] + lengths[1]] -
                a[1, :lengths[1]]).max() > 1e-3
