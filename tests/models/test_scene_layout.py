"""Scene layouts (models/scene_layout.py): tokens round-trip real shapes
boxes in the short caption's order, the grammar allows what a layout may
hold, and each code cell sees the box that covers it and where."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data import formats, shapes
from mmjax.data.tokenizer import PAD_ID
from mmjax.models import scene_layout
from mmjax.train.stages import t2i

VOCAB = scene_layout.LayoutVocab(first_id=1538, colours=6, shapes=6, bins=64,
                                 max_objects=6)


def _objects(index):
  """(example, boxes f32[1, 8, 4], labels int32[1, 8, A], valid bool[1, 8])
  of a shapes training record, as a caption batch carries them."""
  ex = shapes.example("train", index)
  record = {"id": ex["id"], "image": ex["image"], "objects": ex["objects"],
            "captions": ex["captions"]}
  caption = formats.record_example(record, 0, "contrastive")
  k = formats.MAX_REGIONS
  n = len(caption.boxes)
  boxes = np.zeros((1, k, 4), np.float32)
  labels = np.zeros((1, k, len(formats.REGION_ATTRIBUTES)), np.int32)
  boxes[0, :n], labels[0, :n] = caption.boxes, caption.labels
  return ex, boxes, labels, np.arange(k)[None] < n


def test_vocabulary_ids():
  assert (VOCAB.first_shape_id, VOCAB.first_bin_id, VOCAB.eol_id, VOCAB.size,
          VOCAB.length) == (1544, 1550, 1614, 77, 37)
  with pytest.raises(ValueError, match="must be >= 1"):
    scene_layout.LayoutVocab(10, 6, 0, 64, 6)


def test_tokens_round_trip_in_the_short_captions_order():
  seen = agree = 0
  for index in range(12):
    ex, boxes, labels, valid = _objects(index)
    colours, kinds = t2i.object_attributes(jnp.asarray(labels))
    tokens = scene_layout.encode(VOCAB, jnp.asarray(boxes), colours, kinds,
                                 valid, PAD_ID)
    n = int(valid.sum())
    row = np.asarray(tokens[0])
    assert row[6 * n] == VOCAB.eol_id and not row[6 * n + 1:].any()
    got_boxes, got_colours, got_kinds, got_valid = scene_layout.decode(
        VOCAB, tokens)
    assert int(got_valid.sum()) == n
    # Pixel boxes at 64 px and 64 bins come back exactly.
    want = sorted((tuple(b), int(c), int(s)) for b, c, s in
                  zip(boxes[0, :n], np.asarray(colours)[0, :n],
                      np.asarray(kinds)[0, :n]))
    got = sorted((tuple(b), int(c), int(s)) for b, c, s in
                 zip(np.asarray(got_boxes)[0, :n],
                     np.asarray(got_colours)[0, :n],
                     np.asarray(got_kinds)[0, :n]))
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want])
    assert [g[1:] for g in got] == [w[1:] for w in want]
    # The first object written is the short caption's first pair (the
    # caption sorts by object centre, the layout by box centre: a triangle's
    # differ, so near-ties may swap).
    first = next(iter(shapes.parse_caption(ex["captions"][0])))
    agree += (shapes.COLOURS[int(got_colours[0, 0])],
              shapes.SHAPES[int(got_kinds[0, 0])]) == first
    seen += n > 1
  assert seen >= 4 and agree >= 10


def _written_pairs(index, order):
  """The (colour, shape) pairs a layout of train record `index` writes, in
  its order, and the short caption's pairs, each repeated as it counts."""
  ex, boxes, labels, valid = _objects(index)
  colours, kinds = t2i.object_attributes(jnp.asarray(labels))
  tokens = scene_layout.encode(VOCAB, jnp.asarray(boxes), colours, kinds,
                               valid, PAD_ID, order)
  _, got_colours, got_kinds, got_valid = scene_layout.decode(VOCAB, tokens)
  written = [(shapes.COLOURS[int(c)], shapes.SHAPES[int(s)])
             for c, s, ok in zip(got_colours[0], got_kinds[0], got_valid[0])
             if ok]
  caption = [pair for pair, n in
             shapes.parse_caption(ex["captions"][0]).items()
             for _ in range(n)]
  return written, caption


def test_caption_order_writes_the_objects_as_the_caption_names_them():
  # "two red circles, a blue square": both circles, then the square, even
  # where the square stands between them.
  same = {order: 0 for order in scene_layout.ORDERS}
  for index in range(40):
    for order in scene_layout.ORDERS:
      written, caption = _written_pairs(index, order)
      assert sorted(written) == sorted(caption)
      same[order] += written == caption
  # Left to right by box centre differs: repeated pairs apart, and centres
  # tied to the pixel, which the caption breaks by the exact centres.
  assert same["caption"] == 40 > same["left_to_right"], same
  with pytest.raises(ValueError, match="order='random': choose one of"):
    scene_layout.encode(VOCAB, jnp.zeros((1, 1, 4)), jnp.zeros((1, 1), int),
                        jnp.zeros((1, 1), int), jnp.ones((1, 1), bool),
                        PAD_ID, "random")


def test_a_caption_that_does_not_name_the_objects_keeps_the_record_order():
  ex = shapes.example("train", 2)
  record = {"id": ex["id"], "image": ex["image"], "objects": ex["objects"]}
  listed = [(o["colour"], o["shape"]) for o in ex["objects"]]
  for caption in ("a photo of shapes.", "a red circle."):
    got = formats.record_example({**record, "captions": [caption]}, 0,
                                 "contrastive")
    colours, kinds = t2i.object_attributes(jnp.asarray(got.labels))
    assert [(shapes.COLOURS[int(c)], shapes.SHAPES[int(s)])
            for c, s in zip(colours, kinds)] == listed
  ordered = formats.record_example({**record, "captions": ex["captions"]}, 0,
                                   "contrastive")
  assert sorted(map(tuple, ordered.boxes.tolist())) == sorted(
      map(tuple, got.boxes.tolist())) and not np.array_equal(
          ordered.boxes, got.boxes)


def test_decode_keeps_objects_up_to_the_first_malformed_one():
  c, s, b = VOCAB.first_id, VOCAB.first_shape_id, VOCAB.first_bin_id
  row = [c + 3, s + 1, b + 40, b + 10, b + 30, b + 20,   # corners swapped
         c + 5, s + 0, b + 1, b + 2, b + 3, b + 4,
         c + 1, c + 1, b + 1, b + 2, b + 3, b + 4]       # no shape: stops
  tokens = jnp.asarray([row + [VOCAB.eol_id] * 19], jnp.int32)
  boxes, colours, kinds, valid = scene_layout.decode(VOCAB, tokens)
  assert np.asarray(valid[0]).tolist() == [True, True] + [False] * 4
  np.testing.assert_allclose(boxes[0, 0], np.array([30, 10, 41, 21]) / 64)
  assert colours[0, :2].tolist() == [3, 5] and kinds[0, :2].tolist() == [1, 0]


def test_grammar():
  v = VOCAB.eol_id + 1
  ended = jnp.asarray([False, True])
  first = np.asarray(VOCAB.allowed(0, ended, v, PAD_ID))
  assert first[0, VOCAB.first_id:VOCAB.first_shape_id].all()
  assert first[0, VOCAB.eol_id] and first[0].sum() == 7
  assert first[1].tolist() == [i == PAD_ID for i in range(v)]
  shape = np.asarray(VOCAB.allowed(7, ended, v, PAD_ID))[0]
  assert shape.sum() == 6 and shape[VOCAB.first_shape_id:VOCAB.first_bin_id].all()
  corner = np.asarray(VOCAB.allowed(3, ended, v, PAD_ID))[0]
  assert corner.sum() == 64 and corner[VOCAB.first_bin_id:VOCAB.eol_id].all()
  last = np.asarray(VOCAB.allowed(VOCAB.length - 1, ended, v, PAD_ID))[0]
  assert last.sum() == 1 and last[VOCAB.eol_id]


def test_cells_see_the_box_that_covers_them():
  # One box over cells (rows 1-2, columns 2-5) of a 8 x 8 grid, another
  # covering half of cell (6, 0).
  boxes = jnp.asarray([[[0.25, 0.125, 0.75, 0.375],
                        [0.0, 0.75, 0.0625, 0.875]]], jnp.float32)
  labels, features = scene_layout.cells(
      boxes, jnp.asarray([[2, 5]]), jnp.asarray([[1, 4]]),
      jnp.asarray([[True, True]]), 8)
  grid = np.asarray(labels).reshape(8, 8, 2)
  want = np.zeros((8, 8, 2), int)
  want[1:3, 2:6] = (3, 2)
  want[6, 0] = (6, 5)
  np.testing.assert_array_equal(grid, want)
  f = np.asarray(features).reshape(8, 8, -1)
  assert f.shape[-1] == scene_layout.CELL_FEATURES
  assert not f[0].any() and not f[7].any()
  np.testing.assert_allclose(f[1, 2, -3:], [0.5, 0.25, 1.0])  # w, h, share
  np.testing.assert_allclose(f[6, 0, -1], 0.5)
  # u = 1/8 at the box's first column: sin(pi u) is the first feature.
  np.testing.assert_allclose(f[1, 2, 0], np.sin(np.pi / 8), rtol=1e-5)
  # Invalid boxes cover nothing.
  none, _ = scene_layout.cells(boxes, jnp.asarray([[2, 5]]),
                               jnp.asarray([[1, 4]]),
                               jnp.asarray([[False, False]]), 8)
  assert not np.asarray(none).any()


def test_cells_with_edges_say_where_the_box_cuts_them():
  # A box from 2.5 to 5.25 cells across and 1 to 3 down, on an 8 x 8 grid.
  boxes = jnp.asarray([[[2.5 / 8, 1 / 8, 5.25 / 8, 3 / 8]]], jnp.float32)
  args = (jnp.asarray([[2]]), jnp.asarray([[1]]), jnp.asarray([[True]]), 8)
  plain = np.asarray(scene_layout.cells(boxes, *args)[1]).reshape(8, 8, -1)
  labels, features = scene_layout.cells(boxes, *args, edges=True)
  f = np.asarray(features).reshape(8, 8, -1)
  assert f.shape[-1] == scene_layout.cell_features(True) == (
      scene_layout.CELL_FEATURES + scene_layout.EDGE_FEATURES)
  np.testing.assert_array_equal(f[..., :scene_layout.CELL_FEATURES], plain)
  # Cell (row 1, column 2): the box starts half a cell in, ends 3.25 cells
  # on (clipped to 3), spans rows 0..2 of it; its centre (3.875, 2) lies
  # (1.375, 0.5) cells from the cell's (2.5, 1.5), given / 4.
  np.testing.assert_allclose(f[1, 2, -6:], [0.5, 3.0, 0.0, 2.0,
                                            1.375 / 4, 0.5 / 4], atol=1e-6)
  # Cell (row 2, column 5): the box ends a quarter cell in.
  np.testing.assert_allclose(f[2, 5, -6:-2], [-2.0, 0.25, -1.0, 1.0],
                             atol=1e-6)
  assert not f[5].any() and not np.asarray(labels).reshape(8, 8, 2)[5].any()


def test_training_layout_masks_the_padding_and_dropped_rows():
  _, boxes, labels, valid = _objects(3)
  model = type("M", (), {"layout_vocab": VOCAB, "grid": 16,
                         "cell_edges": False})
  batch = {"object_boxes": jnp.asarray(np.repeat(boxes, 2, 0)),
           "object_labels": jnp.asarray(np.repeat(labels, 2, 0)),
           "object_valid": jnp.asarray(np.repeat(valid, 2, 0))}
  tokens, (cell_labels, _), weights = t2i.training_layout(
      model, batch, jnp.asarray([False, True]))
  n = int(valid.sum())
  assert np.asarray(weights[0]).tolist() == [1.0] * (6 * n + 1) + [0.0] * (
      36 - 6 * n)
  assert not np.asarray(weights[1]).any() and not np.asarray(tokens[1]).any()
  assert np.asarray(cell_labels[0]).any() and not np.asarray(
      cell_labels[1]).any()
  with pytest.raises(ValueError, match="needs each picture's objects"):
    t2i.training_layout(model, {}, jnp.asarray([False]))


def test_free_bins_keep_a_new_box_clear_of_the_earlier_ones():
  c, s, b = VOCAB.first_id, VOCAB.first_shape_id, VOCAB.first_bin_id
  first = [c, s, b + 10, b + 10, b + 20, b + 20]   # bins 10..20 x 10..20

  def free(slot, mine):
    row = first + mine + [0] * (VOCAB.length - 6 - len(mine))
    return np.asarray(scene_layout.free_bins(
        VOCAB, jnp.asarray([row], jnp.int32), slot))[0]

  assert free(8, []).all()                       # x0: anything
  # x0 = 15 lies in the first box's columns: y0 must leave rows 9..21.
  y0 = free(9, [c, s, b + 15])
  assert not y0[9:22].any() and y0[:9].all() and y0[22:].all()
  # (x0, y0) = (5, 15): x1 must stop before column 9 on row 15 (and not
  # precede x0).
  x1 = free(10, [c, s, b + 5, b + 15])
  assert x1.tolist() == [5 <= v <= 8 for v in range(64)]
  # (x0, y0, x1) = (12, 25, 30): under the first box, any y1 >= 25.
  y1 = free(11, [c, s, b + 12, b + 25, b + 30])
  assert y1.tolist() == [v >= 25 for v in range(64)]
  # (x0, y0, x1) = (12, 2, 30): above it, y1 must stop at row 8.
  y1 = free(11, [c, s, b + 12, b + 2, b + 30])
  assert y1.tolist() == [2 <= v <= 8 for v in range(64)]
  # No free bin at all (x0 = 15, y0 = 15 inside the box): no constraint.
  assert free(10, [c, s, b + 15, b + 15]).all()
