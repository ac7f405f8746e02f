"""Box-attention targets: which positions write a box answer, and which image
tokens lie under the box, checked against the records' pixel boxes."""

import numpy as np
import pytest

from mmjax import testing
from mmjax.data import box_attention, builders, formats, grounding, pipeline
from tests.helpers import tiny_shapes_dataset

MAX_LEN = 320


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  builder, tok = tiny_shapes_dataset(tmp_path_factory.mktemp("data"),
                                     num_train=16)
  return builders.load_source(builder, "train"), tok


def _iterator(source, tok, **kwargs):
  args = dict(fmt="shapes_chat", cfg=testing.tiny_mllm_config(),
              tokenizer=tok, batch_size=8, seed=0, max_len=MAX_LEN,
              train=False)
  args.update(kwargs)
  return pipeline.make_iterator(source, **args)


def _patches_under(bbox, side, grid):
  """Row-major indices of the grid patches a pixel box overlaps (x1, y1
  exclusive), from pixels: independent of the 0..1000 text."""
  x0, y0, x1, y1 = bbox
  cell = side / grid
  return {r * grid + c for r in range(grid) for c in range(grid)
          if x0 < (c + 1) * cell and x1 > c * cell and
          y0 < (r + 1) * cell and y1 > r * cell}


def _row(source, batch, i):
  """(box questions, objects, box_query, box_keys, image token indices,
  grid side) of row i of a batch of records 0.. in order."""
  record = source[i]
  image = np.flatnonzero(batch["image_token_mask"][i])
  return (grounding.record_grounding_qa(record, 3),
          grounding.record_objects(record), batch["box_query"][i],
          batch["box_keys"][i], image, int(round(len(image) ** 0.5)))


def test_targets_mark_box_answers_and_the_patches_under_them(shapes):
  source, tok = shapes
  batch = next(_iterator(source, tok, grounding_questions=3,
                         box_attention=True))
  assert batch["box_query"].dtype == np.int32
  assert batch["box_query"].shape == batch["tokens"].shape
  side = testing.tiny_mllm_config().side
  boxes_seen = 0
  for i in range(8):  # in order: records 0..7
    qa, objects, query, keys, image, grid = _row(source, batch, i)
    assert grid * grid == len(image) == 64
    # No key bits outside the image, no query bits on it.
    assert not keys[~batch["image_token_mask"][i]].any()
    assert not query[image].any()
    assert query.max() == len(qa)
    for k in range(1, len(qa) + 1):
      at = np.flatnonzero(query == k)
      assert (np.diff(at) == 1).all()  # one run of positions
      assert (batch["loss_mask"][i][at] == 1).all()
      written = tok.decode(batch["targets"][i][at]).replace("<|end|>", "")
      box = grounding.parse_box(written)
      assert box is not None
      obj = next(o for o in objects
                 if grounding.normalise_box(o["bbox"], side) == box)
      under = {j for j, t in enumerate(image) if keys[t] >> (k - 1) & 1}
      assert under == _patches_under(obj["bbox"], side, grid)
      assert under  # every object covers a patch
      boxes_seen += 1
    # Answers that are not a box are not marked.
    answered = (batch["loss_mask"][i] == 1) & (query == 0)
    assert answered.any()
  assert boxes_seen > 8


def test_edge_targets_mark_each_coordinate_and_its_edge(shapes):
  source, tok = shapes
  batch = next(_iterator(source, tok, grounding_questions=3,
                         box_attention="edges"))
  whole = next(_iterator(source, tok, grounding_questions=3,
                         box_attention=True))
  side = testing.tiny_mllm_config().side
  for i in range(8):
    qa, objects, query, keys, image, grid = _row(source, batch, i)
    # The same positions as the whole-box targets, split by coordinate.
    np.testing.assert_array_equal(query > 0, whole["box_query"][i] > 0)
    assert query.max() == 4 * len(qa)
    for k in range(1, len(qa) + 1):
      run = np.flatnonzero(whole["box_query"][i] == k)
      written = tok.decode(batch["targets"][i][run]).replace("<|end|>", "")
      box = grounding.parse_box(written)
      obj = next(o for o in objects
                 if grounding.normalise_box(o["bbox"], side) == box)
      patches = _patches_under(obj["bbox"], side, grid)
      rows = sorted({p // grid for p in patches})
      cols = sorted({p % grid for p in patches})
      edges = [{p for p in patches if p % grid == cols[0]},
               {p for p in patches if p // grid == rows[0]},
               {p for p in patches if p % grid == cols[-1]},
               {p for p in patches if p // grid == rows[-1]}]
      for c in range(4):
        bit = 4 * (k - 1) + c
        at = np.flatnonzero(query == bit + 1)
        assert (np.diff(at) == 1).all()
        # Its positions write that coordinate's digits, and no other's.
        digits = "".join(ch for ch in tok.decode(batch["targets"][i][at])
                         if ch.isdigit())
        assert digits == str(box[c])
        under = {j for j, t in enumerate(image) if keys[t] >> bit & 1}
        assert under == edges[c], (i, k, c)


def test_without_box_answers_or_without_the_option(shapes):
  source, tok = shapes
  plain = next(_iterator(source, tok, grounding_questions=2))
  assert "box_query" not in plain and "box_keys" not in plain
  marked = next(_iterator(source, tok, box_attention=True))
  assert not marked["box_query"].any() and not marked["box_keys"].any()
  for key in plain:  # the option adds targets and changes nothing else
    if key != "_stats":
      np.testing.assert_array_equal(
          plain[key], next(_iterator(source, tok, grounding_questions=2,
                                     box_attention=True))[key], err_msg=key)


def test_refused_where_it_cannot_hold(shapes):
  source, tok = shapes
  with pytest.raises(ValueError, match="box_attention=True"):
    _iterator(source, tok, box_attention=True, packing=True, train=True)
  with pytest.raises(ValueError, match="box_attention=True"):
    _iterator(source, tok, fmt="regions", box_attention=True)
  with pytest.raises(ValueError, match="allowed values"):
    _iterator(source, tok, box_attention="corners")
  # A box answer with an image that is not one square token grid.
  seq = {"targets": np.array([5, 6, 7], np.int32),
         "loss_mask": np.array([0, 1, 1], np.float32),
         "image_token_mask": np.array([True, True, False])}

  class BoxTok:
    end_of_turn_id = 7

    def decode(self, ids):
      return "[0, 0, 500, 500]"

  with pytest.raises(formats.BadExample, match="square token grid"):
    box_attention.box_attention_targets(seq, BoxTok())
