"""Tests for mmjax.data.shapes: determinism, correctness of every answer."""
import collections
import io
import re

import numpy as np
import pytest
from PIL import Image

from mmjax.data import shapes
from mmjax.data.text_corpus import COLOURS, COUNT_WORDS, SHAPES, SIZES

_N = 200


@pytest.fixture(scope="module")
def examples():
  return [shapes.example("train", i, seed=0) for i in range(_N)]


def _matching(objects, colour=None, shape=None):
  return [o for o in objects if colour in (None, o["colour"])
          and shape in (None, o["shape"])]


def test_same_seed_gives_identical_bytes():
  a = shapes.example("validation", 17, seed=5)
  b = shapes.example("validation", 17, seed=5)
  assert a["image"].tobytes() == b["image"].tobytes()
  assert a == {**b, "image": a["image"]}
  assert shapes.benchmark_texts(5, seed=2) == shapes.benchmark_texts(5, seed=2)


@pytest.mark.parametrize("other", [("validation", 18, 5), ("validation", 17, 6),
                                   ("test", 17, 5)])
def test_index_seed_and_split_change_the_example(other):
  a = shapes.example("validation", 17, seed=5)
  b = shapes.example(*other)
  assert a["image"].tobytes() != b["image"].tobytes()
  assert a["id"] != b["id"] or other[2] != 5


def test_png_is_lossless_and_image_size_is_honoured():
  ex = shapes.example("train", 3, image_size=96)
  assert ex["image"].shape == (96, 96, 3) and ex["image"].dtype == np.uint8
  png = shapes.example("train", 3, image_size=96, png=True)["image"]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))),
                                ex["image"])


def test_vocabulary_and_object_counts(examples):
  counts = [len(ex["objects"]) for ex in examples]
  assert min(counts) == 1 and max(counts) == shapes.MAX_OBJECTS
  seen = {key: {o[key] for ex in examples for o in ex["objects"]}
          for key in ("colour", "shape", "size")}
  assert seen["colour"] == set(COLOURS) and len(COLOURS) >= 6
  assert seen["shape"] == set(SHAPES) and len(SHAPES) >= 6
  assert seen["size"] == set(SIZES)
  rgbs = {tuple(v) for v in shapes.COLOUR_RGB.values()}
  assert len(rgbs) == len(COLOURS)
  backgrounds = {ex["captions"][1].rsplit(" on ", 1)[1] for ex in examples}
  assert len(backgrounds) == len(shapes.BACKGROUNDS)


def test_every_filled_centre_pixel_has_its_colour_and_bbox_holds_it(examples):
  for ex in examples:
    image = ex["image"]
    for obj in ex["objects"]:
      x, y = obj["centre"]
      assert tuple(image[y, x]) == shapes.COLOUR_RGB[obj["colour"]], ex["id"]
    for colour in {o["colour"] for o in ex["objects"]}:
      mask = np.all(image == shapes.COLOUR_RGB[colour], axis=-1)
      inside = np.zeros_like(mask)
      for obj in _matching(ex["objects"], colour=colour):
        x0, y0, x1, y1 = obj["bbox"]
        inside[y0:y1, x0:x1] = True
      assert not np.any(mask & ~inside), (ex["id"], colour)


def _check_answer(qa, objects, image_size):
  q, answer = qa["question"], qa["answer"]
  if qa["qtype"] == "colour":
    shape = re.fullmatch(r"what colour is the (\w+)\?", q).group(1)
    (obj,) = _matching(objects, shape=shape)
    return answer == obj["colour"]
  if qa["qtype"] == "shape":
    colour = re.fullmatch(r"what shape is the (\w+) object\?", q).group(1)
    (obj,) = _matching(objects, colour=colour)
    return answer == obj["shape"]
  if qa["qtype"] == "count":
    what = re.fullmatch(r"how many (\w+?)s? (objects )?are there\?", q)
    word = what.group(1)
    n = (len(objects) if word == "object" and not what.group(2)
         else len(_matching(objects, colour=word)) if word in COLOURS
         else len(_matching(objects, shape=word)))
    return answer == COUNT_WORDS[n - 1]
  if qa["qtype"] == "spatial":
    c1, s1, rel, c2, s2 = re.fullmatch(
        r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?",
        q).groups()
    (a,), (b,) = _matching(objects, c1, s1), _matching(objects, c2, s2)
    axis = 0 if rel in ("left of", "right of") else 1
    delta = b["centre"][axis] - a["centre"][axis]
    # Pixel centres are floored, so the margin shrinks by at most a pixel.
    assert abs(delta) >= shapes.SPATIAL_MARGIN * image_size - 1
    truth = delta > 0 if rel in ("left of", "above") else delta < 0
    return answer == ("yes" if truth else "no")
  assert qa["qtype"] == "existence"
  colour, shape = re.fullmatch(r"is there an? (\w+) (\w+)\?", q).groups()
  return answer == ("yes" if _matching(objects, colour, shape) else "no")


def test_questions_are_answered_correctly(examples):
  types = collections.Counter()
  for ex in examples:
    assert ex["qa"], ex["id"]
    for qa in ex["qa"]:
      assert qa["qtype"] in shapes.QTYPES
      assert re.fullmatch(r"[a-z]+", qa["answer"]), qa
      assert _check_answer(qa, ex["objects"], 64), (ex["id"], qa)
      types[qa["qtype"]] += 1
  assert set(types) == set(shapes.QTYPES)
  assert min(types.values()) >= _N // 4, types


def test_existence_questions_are_half_about_absent_objects(examples):
  answers = collections.Counter(
      qa["answer"] for ex in examples for qa in ex["qa"]
      if qa["qtype"] == "existence")
  assert answers["yes"] == answers["no"] == _N


def test_spatial_answers_and_relations_vary(examples):
  spatial = [qa for ex in examples for qa in ex["qa"]
             if qa["qtype"] == "spatial"]
  answers = collections.Counter(qa["answer"] for qa in spatial)
  assert 0.3 < answers["yes"] / len(spatial) < 0.7, answers
  for rel in ("left of", "right of", "above", "below"):
    assert any(f" {rel} " in qa["question"] for qa in spatial), rel


def test_captions_name_every_object(examples):
  for ex in examples:
    short, detailed = ex["captions"]
    assert short.endswith(".") and detailed.endswith(".")
    for obj in ex["objects"]:
      assert obj["colour"] in short and obj["shape"] in short
    described = re.findall(r"\b(small|medium|large) (\w+) (\w+)\b", detailed)
    assert sorted(described) == sorted(
        (o["size"], o["colour"], o["shape"]) for o in ex["objects"])


def test_preferences_reject_a_wrong_answer_of_the_same_type(examples):
  for ex in examples:
    assert [p["question"] for p in ex["preference"]] == [
        q["question"] for q in ex["qa"]]
    for pref, qa in zip(ex["preference"], ex["qa"]):
      chosen, rejected = pref["chosen"], pref["rejected"]
      assert chosen == qa["answer"] and rejected != chosen
      if qa["qtype"] in ("spatial", "existence"):
        assert {chosen, rejected} == {"yes", "no"}
      elif qa["qtype"] == "count":
        assert abs(COUNT_WORDS.index(rejected) - COUNT_WORDS.index(chosen)) == 1
      else:
        words = COLOURS if qa["qtype"] == "colour" else SHAPES
        in_image = {o[qa["qtype"]] for o in ex["objects"]} - {chosen}
        assert rejected in (in_image or set(words)), (ex["id"], pref)


def test_heldout_pairs_only_in_heldout():
  pairs = set(shapes.HELDOUT_PAIRS)
  assert 0.1 <= len(pairs) / len(shapes.ALL_PAIRS) <= 0.2
  assert {c for c, _ in pairs} == set(COLOURS)  # Each colour still trains.
  assert {s for _, s in pairs} == set(SHAPES)
  for split, n in (("train", 300), ("validation", 100), ("test", 100)):
    for i in range(n):
      objects = shapes.example(split, i, image_size=32)["objects"]
      present = {(o["colour"], o["shape"]) for o in objects}
      assert not present & pairs, (split, i)
  for i in range(150):
    objects = shapes.example("heldout", i, image_size=32)["objects"]
    assert {(o["colour"], o["shape"]) for o in objects} & pairs, i


def test_benchmark_texts_are_the_train_captions_and_qa():
  texts = shapes.benchmark_texts(3, seed=1)
  expected = []
  for i in range(3):
    ex = shapes.example("train", i, seed=1)
    expected += ex["captions"] + [f"q: {q['question']} a: {q['answer']}."
                                  for q in ex["qa"]]
  assert texts == expected


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="split"):
    shapes.example("dev", 0)
  with pytest.raises(ValueError, match="index"):
    shapes.example("train", -1)
  with pytest.raises(ValueError, match="allowed_pairs"):
    shapes.sample_scene(np.random.default_rng(0),
                        allowed_pairs=[("pink", "star")])
  with pytest.raises(ValueError, match="image_size"):
    shapes.draw(shapes.Scene(()), image_size=4)
