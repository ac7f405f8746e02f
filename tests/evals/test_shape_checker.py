"""The independent checker of shapes pictures: captions parse to the
renderer's objects, the checker reads renders (its own training split
excluded) and PIL drawings in other colours' nearby shades, and its
agreement metrics mean what they say."""
import collections

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmjax.data import shapes
from mmjax.evals import shape_checker as sc


@pytest.fixture(scope="module")
def checker():
  return sc.ShapeChecker.fit_on_renders(400)


def test_captions_parse_to_the_renderers_objects():
  for split in ("test", "heldout"):
    for i in range(100):
      ex = shapes.example(split, i)
      truth = collections.Counter(
          (o["colour"], o["shape"]) for o in sc.shapes_objects(ex))
      assert shapes.parse_caption(ex["captions"][0]) == truth
  assert shapes.parse_caption("draw me something nice.") is None
  assert shapes.parse_caption("seven red circles.") is None


def test_reads_unseen_renders(checker):
  hits = [sc.agreement(shapes.parse_caption(ex["captions"][0]),
                       checker.objects(ex["image"]))
          for ex in (shapes.example("test", i) for i in range(150))]
  pairs = np.mean([h["pairs"] for h in hits])
  colours = np.mean([h["colours"] for h in hits])
  print("checker on test renders: pairs", pairs, "colours", colours)
  assert colours >= 0.98 and pairs >= 0.93


def test_reads_a_pil_drawing_and_ignores_grey(checker):
  picture = Image.new("RGB", (64, 64), (210, 214, 206))
  draw = ImageDraw.Draw(picture)
  draw.ellipse([6, 8, 24, 26], fill=(230, 50, 45))           # a red circle
  draw.rectangle([38, 36, 56, 54], fill=(45, 85, 210))       # a blue square
  draw.line([0, 60, 63, 60], fill=(190, 190, 190), width=2)  # grey: no object
  assert sorted(checker.objects(np.asarray(picture))) == [
      ("blue", "square"), ("red", "circle")]


def test_agreement():
  asked = collections.Counter({("red", "circle"): 2, ("blue", "star"): 1})
  a = sc.agreement(asked, [("red", "circle"), ("blue", "star")])
  assert a == {"pairs": True, "colours": True, "shapes": True,
               "counts": False}
  a = sc.agreement(asked, [("red", "star"), ("blue", "circle")])
  assert a == {"pairs": False, "colours": True, "shapes": True,
               "counts": False}
