"""Grounding on the shapes benchmark: referring questions answered by a box.

  qa = grounding_qa(objects, side=64, record_id="train-0000012", k=2)
  # [("where is the red circle?", "[125, 250, 391, 516]", (8, 16, 25, 33))]
  parse_box("[125, 250, 391, 516].")   # -> (125, 250, 391, 516)
  iou((0, 0, 10, 10), (5, 0, 15, 10))  # -> 1/3
  grounded_caption(objects, side=64)
  # "a red circle [125, 250, 391, 516] and a blue star [625, 625, 938, 938]."
  parse_mentions("a red circle [125, 250, 391, 516].")
  # [("red", "circle", (125, 250, 391, 516))]

Boxes are text, as Qwen2-VL and Shikra write them: `[x0, y0, x1, y1]`, each
coordinate an integer in 0..1000, the pixel coordinate divided by the
image side (width for x, height for y) times 1000 and rounded (Qwen2-VL's
convention; it adds `<|box_start|>` markers, which the shapes tokenizer
does not have). (x0, y0) is the top-left corner and (x1, y1) the
bottom-right, exclusive: `image[y0:y1, x0:x1]` holds the object, as the
shapes records' `bbox` says.

A question names an object by colour and shape (`where is the red circle?`)
and is asked only when that pair occurs once in the image, so the answer is
one box. The question type is `QTYPE` ("grounding").

A grounded caption (Kosmos-2's grounded description, in Shikra's text form)
names every object of the image in reading order, each followed by its box;
the prompt is `GROUNDED_CAPTION_PROMPT`.
"""
from __future__ import annotations

import json
import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from mmjax.data.text_corpus import COLOURS, SHAPES

QTYPE = "grounding"
SCALE = 1000  # Box coordinates run 0..SCALE (Qwen2-VL).
QUESTION = "where is the {colour} {shape}?"
Box = tuple[int, int, int, int]
GROUNDED_CAPTION_PROMPT = "describe the image with boxes."

# Four integers, separated by commas, in square brackets; spaces anywhere
# and a trailing '.' are fine.
_BOX_RE = re.compile(r"^\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*"
                     r"(-?\d+)\s*\]\s*\.?$")


# "<colour> <shape> [x0, y0, x1, y1]" anywhere in a text (a grounded caption).
_MENTION_RE = re.compile(
    r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) +
    r")\s*\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")


def _sides(side: int | Sequence[int]) -> tuple[int, int]:
  """(width, height) from one side (a square) or (width, height)."""
  if isinstance(side, (int, np.integer)):
    return int(side), int(side)
  width, height = side
  return int(width), int(height)


def normalise_box(bbox_px: Sequence[float], side: int | Sequence[int]) -> Box:
  """A pixel box (x0, y0, x1, y1) -> integers in 0..1000 of the image side.

  Args:
    bbox_px: pixel coordinates (x1, y1 exclusive).
    side: the image's side in pixels, or (width, height).
  """
  width, height = _sides(side)
  x0, y0, x1, y1 = (float(v) for v in bbox_px)
  out = (x0 / width, y0 / height, x1 / width, y1 / height)
  return tuple(min(max(int(round(v * SCALE)), 0), SCALE) for v in out)


def box_text(bbox_px: Sequence[float], side: int | Sequence[int]) -> str:
  """The answer text of a pixel box: "[x0, y0, x1, y1]" in 0..1000."""
  return format_box(normalise_box(bbox_px, side))


def format_box(box: Sequence[int]) -> str:
  """"[x0, y0, x1, y1]" of a box already in 0..1000."""
  return "[" + ", ".join(str(int(v)) for v in box) + "]"


def parse_box(text: str) -> Box | None:
  """(x0, y0, x1, y1) of an answer "[x0, y0, x1, y1]" (spaces and a trailing
  '.' allowed), or None when the text is no such box, or its corners are
  out of order (x1 < x0 or y1 < y0) or outside 0..1000."""
  match = _BOX_RE.match(text.strip())
  if match is None:
    return None
  box = tuple(int(v) for v in match.groups())
  return box if _valid(box) else None


def _valid(box: Sequence[int]) -> bool:
  x0, y0, x1, y1 = box
  return 0 <= x0 <= x1 <= SCALE and 0 <= y0 <= y1 <= SCALE


def grounded_caption(objects: Sequence[Mapping[str, Any]],
                     side: int | Sequence[int]) -> str:
  """Every object named and boxed, in reading order (top to bottom by box
  centre row in 8 bands of the image, then left to right):
  "a red circle [125, 250, 391, 516], a blue star [...] and a green square
  [...]." An empty scene gives "".

  Args:
    objects: the record's objects (`record_objects`): colour, shape, bbox.
    side: the image's side in pixels, or (width, height).
  """
  width, height = _sides(side)
  def reading_order(obj):
    x0, y0, x1, y1 = obj["bbox"]
    # Bands, so that two objects side by side read left to right even when
    # one sits a pixel higher.
    return (int((y0 + y1) / 2 / height * 8), (x0 + x1) / 2)
  mentions = []
  for obj in sorted(objects, key=reading_order):
    article = "an" if obj["colour"][0] in "aeiou" else "a"
    mentions.append(f"{article} {obj['colour']} {obj['shape']} "
                    f"{box_text(obj['bbox'], (width, height))}")
  if not mentions:
    return ""
  if len(mentions) == 1:
    return mentions[0] + "."
  return ", ".join(mentions[:-1]) + " and " + mentions[-1] + "."


def record_boxes(record: Mapping[str, Any]) -> list[tuple[str, str, Box]]:
  """(colour, shape, box in 0..1000) of each object of a decoded shapes
  record (its image sets the side)."""
  height, width = np.shape(record["image"])[:2]
  return [(o["colour"], o["shape"], normalise_box(o["bbox"], (width, height)))
          for o in record_objects(record)]


def record_grounded_caption(record: Mapping[str, Any]) -> str:
  """`grounded_caption` of a decoded shapes record (its image sets the side)."""
  height, width = np.shape(record["image"])[:2]
  return grounded_caption(record_objects(record), (width, height))


def parse_mentions(text: str) -> list[tuple[str, str, Box]]:
  """(colour, shape, box) of every "<colour> <shape> [x0, y0, x1, y1]" in a
  text, in order; boxes out of order or outside 0..1000 are left out."""
  out = []
  for match in _MENTION_RE.finditer(text):
    box = tuple(int(v) for v in match.groups()[2:])
    if _valid(box):
      out.append((match.group(1), match.group(2), box))
  return out


def box_to_pixels(box: Sequence[float], width: int, height: int,
                  resize: str = "square") -> tuple[int, int, int, int]:
  """A 0..1000 box of what the model saw -> pixel (x0, y0, x1, y1) of the
  width x height image it was given.

  resize: how the image was made square (`images.RESIZE_MODES`):
  'square' stretched it (the box scales by width and height), 'pad'
  centred it on a max(width, height) square (the box is in that square's
  coordinates; the result is clipped to the image).
  """
  x0, y0, x1, y1 = (float(v) / SCALE for v in box)
  if resize == "pad":
    big = max(width, height)
    left, top = (big - width) // 2, (big - height) // 2  # as images.py pads
    clip = lambda v, hi: min(max(v, 0), hi)
    return (clip(int(round(x0 * big)) - left, width),
            clip(int(round(y0 * big)) - top, height),
            clip(int(round(x1 * big)) - left, width),
            clip(int(round(y1 * big)) - top, height))
  return (int(round(x0 * width)), int(round(y0 * height)),
          int(round(x1 * width)), int(round(y1 * height)))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when both
  have zero area (or the union is empty)."""
  ax0, ay0, ax1, ay1 = (float(v) for v in a)
  bx0, by0, bx1, by1 = (float(v) for v in b)
  inter = (max(0.0, min(ax1, bx1) - max(ax0, bx0)) *
           max(0.0, min(ay1, by1) - max(ay0, by0)))
  area = lambda x0, y0, x1, y1: max(0.0, x1 - x0) * max(0.0, y1 - y0)
  union = area(ax0, ay0, ax1, ay1) + area(bx0, by0, bx1, by1) - inter
  return inter / union if union > 0 else 0.0


def record_objects(record: Mapping[str, Any]) -> list[dict[str, Any]]:
  """A record's `objects` (the builders store a JSON string) as a list."""
  objects = record["objects"]
  if isinstance(objects, (str, bytes)):
    objects = json.loads(objects)
  return list(objects)


def eligible(objects: Sequence[Mapping[str, Any]]) -> list[int]:
  """Indices of the objects whose (colour, shape) pair occurs once."""
  pairs = [(o["colour"], o["shape"]) for o in objects]
  return [i for i, p in enumerate(pairs) if pairs.count(p) == 1]


def grounding_qa(objects: Sequence[Mapping[str, Any]],
                 side: int | Sequence[int], record_id: str, k: int
                 ) -> list[tuple[str, str, Box]]:
  """Up to k referring questions about one image, with their answers.

  Args:
    objects: the record's objects (`record_objects`): colour, shape and a
      pixel `bbox`.
    side: the image's side in pixels (the drawn size), or (width, height).
    record_id: picks which eligible objects are asked about, and in what
      order: the same every time (exact resume), different per record.
    k: how many (fewer when fewer objects are eligible).

  Returns:
    [(question, answer text, box in 0..1000)], at most k.
  """
  candidates = eligible(objects)
  if k <= 0 or not candidates:
    return []
  # Its own stream (key 1): shapes_chat_turns seeds with the bare crc32.
  rng = np.random.default_rng([zlib.crc32(record_id.encode()), 1])
  chosen = rng.permutation(candidates)[:k]
  out = []
  for i in chosen:
    obj = objects[int(i)]
    box = normalise_box(obj["bbox"], side)
    out.append((QUESTION.format(colour=obj["colour"], shape=obj["shape"]),
                format_box(box), box))
  return out


def record_grounding_qa(record: Mapping[str, Any], k: int
                        ) -> list[tuple[str, str, Box]]:
  """`grounding_qa` of a decoded shapes record (its image sets the side)."""
  height, width = np.shape(record["image"])[:2]
  return grounding_qa(record_objects(record), (width, height),
                      str(record.get("id", "?")), k)


def draw_box(image: Any, box: Sequence[float] | Sequence[Sequence[float]],
             path: str, *, colour: str | tuple[int, int, int] = (255, 0, 255),
             width: int | None = None, resize: str = "square") -> str:
  """Writes the image with 0..1000 boxes drawn on it; returns the path.

  Args:
    image: a file path, a PIL image or uint8[H, W, 3].
    box: (x0, y0, x1, y1) in 0..1000 (`parse_box` of an answer), or a list
      of such boxes (the mentions of a grounded caption).
    path: the output file (its extension picks the format, e.g. .png).
    colour: the outline colour (default magenta: visible on the shapes).
    width: outline width in pixels (default: 1 per 64 px of the short side).
    resize: how the model saw the image (`box_to_pixels`).
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  if isinstance(image, str):
    with Image.open(image) as im:
      picture = im.convert("RGB")
  elif isinstance(image, Image.Image):
    picture = image.convert("RGB")
  else:
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
  w, h = picture.size
  line = width or max(1, min(w, h) // 64)
  boxes = [box] if np.ndim(box) == 1 else list(box)
  pen = ImageDraw.Draw(picture)
  for one in boxes:
    x0, y0, x1, y1 = box_to_pixels(one, w, h, resize)
    # PIL's rectangle includes its end pixel; the box's x1, y1 are exclusive.
    pen.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour,
                  width=line)
  picture.save(path)
  return path
