"""Record formats -> conversations -> laid-out token sequences (host side).

A *format* says how a decoded source record (`builders.load_source`) becomes
training examples. Records that hold several items (a shapes record's
questions or captions) give one example per item: `example_index` flattens
them into (record, item) pairs, so an epoch covers every item.

  shapes               user `<image>\\n{question}` / assistant `{answer}`
  shapes_chat          all of a record's questions as one multi-turn chat
                       (image in the first user turn, order shuffled per
                       record): one image pass supervises every answer;
                       with grounding_questions=k > 0 also up to k
                       referring questions (`grounding.grounding_qa`,
                       answered by a box), and with extra_questions=k > 0
                       up to k more questions of the five types
                       (`shapes.extra_questions`), shuffled in with the
                       others
  caption              user `<image>\\ndescribe the image.` / assistant
                       caption (shapes `captions`, or image_caption's
                       `caption`): alignment pretraining
  image_caption        the same as caption (image_caption folder builds)
  llava_conversations  the record's turns as given (`from`/`value` or
                       `role`/`content`), 0 or 1 image
  preference           prompt as `shapes`, then chosen / rejected answers
                       (shapes `pref_questions`, `chosen`, `rejected`)
  contrastive          image + caption text for a SigLIP text tower
  regions              image + every object's box and class ids (a shapes
                       record's `objects`): region-level supervision of the
                       vision tower (stage loss `region_classification`)
  tones                user `<audio>\n{question}` / assistant `{answer}`
                       (a tones record: `mmjax.data.tones`, its clip)
  tones_chat           all of a tones record's questions as one chat, the
                       clip in the first user turn
  audio_caption        user `<audio>\ndescribe the sound.` / assistant
                       caption: audio-caption alignment
  joint                user `<image>\n<audio>\n{question}` / assistant
                       `{answer}`, for every question of a shapes_tones
                       record (`mmjax.data.shapes_tones`): the joint ones,
                       then the image's, then the clip's
  joint_chat           all of them as one chat, both media in the first
                       user turn with the joint questions first (nothing
                       said about either medium comes before them), the
                       others shuffled per record

On a shapes_tones record the image formats read its shapes fields and the
audio formats its clip's (`audio_captions`, `audio_questions`, ...).

Audio formats give a `Chat` whose `audio` holds the clip (f32[L] at 16
kHz); `chat_sequence` expands each `<audio>` marker (the tokenizer's
`audio_id`) into `layout.audio_tokens` placeholders for the clip's frame
count, as `<image>` markers are expanded per image.

`chat_sequence` tokenises a conversation with the tokenizer's chat template
(`encode_chat` of mmjax's `Tokenizer` or of a `hf_tokenizer.HFTokenizer`,
whose `<image>` id need not be 4), expands
each `<image>` with `layout.assemble` and makes next-token inputs / targets;
`caption_tokens` pads caption text the SigLIP way. Problems raise
`BadExample` (kind in `BAD_KINDS`) or layout's `ImageSizeError` /
`PlaceholderMismatchError`; the pipeline turns them into counted skips or a
`builders.BadRecordError` naming the record.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from mmjax.data import grounding
from mmjax.data import shapes
from mmjax.data.text_corpus import COLOURS, SHAPES
from mmjax.data.tokenizer import AUDIO_TOKEN, IMAGE_TOKEN, Tokenizer
from mmjax.models import layout
from mmjax.models.mllm import MLLMConfig

# Formats whose examples carry a clip (their batches hold `audio`).
AUDIO_FORMATS = ("tones", "tones_chat", "audio_caption", "joint",
                 "joint_chat")
FORMATS = ("shapes", "shapes_chat", "caption", "image_caption",
           "llava_conversations", "preference", "contrastive",
           "regions") + AUDIO_FORMATS
CHAT_FORMATS = ("shapes", "shapes_chat", "caption", "image_caption",
                "llava_conversations") + AUDIO_FORMATS
CAPTION_PROMPT = "describe the image."
AUDIO_CAPTION_PROMPT = "describe the sound."
# The cell of a 3 x 3 grid an object's box centre falls in, row-major.
PLACES = tuple(f"{row} {col}" for row in ("top", "middle", "bottom")
               for col in ("left", "centre", "right"))
# Each edge of an object's box (x0, y0, x1, y1, x1 and y1 exclusive) as one
# of EDGE_BINS equal bins of the image side: bin i holds the coordinates
# i / EDGE_BINS .. (i + 1) / EDGE_BINS of the side (2 px of a 64-px image).
EDGE_BINS = 32
BOX_EDGES = ("left", "top", "right", "bottom")
_EDGE_CLASSES = tuple(f"{i}/{EDGE_BINS}" for i in range(EDGE_BINS))
# The classes a `regions` example labels each object with: attribute ->
# class names (ids are indices), in the order of RegionTargets.labels. An
# object's record gives its shape and colour; its place and box edges come
# from its box (a head that must say where each object is keeps position in
# the tokens: an LM reads it there to say where an object is, which it
# does not learn from the ViT's own position embedding; docs/evaluation.md
# "Grounding").
REGION_ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "place": PLACES,
                     **{edge: _EDGE_CLASSES for edge in BOX_EDGES}}
MAX_REGIONS = 8  # Objects per image a regions batch holds (shapes: <= 6).
# Roles whose turns are answers (`Tokenizer.encode_chat` accepts both).
_ANSWER_ROLES = ("assistant", "gpt")
# Reasons an example is skipped (the pipeline counts `skipped_<kind>`).
BAD_KINDS = ("image_size", "placeholder_mismatch", "too_long",
             "too_many_images", "empty", "malformed", "bad_audio")


class BadExample(ValueError):
  """An example the pipeline cannot use; `kind` is one of BAD_KINDS."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


@dataclasses.dataclass
class Chat:
  """One conversation, its images (uint8[H, W, 3] each, in order) and its
  audio clips (f32[L] at 16 kHz each, in order)."""
  record_id: str
  turns: list[dict[str, str]]
  images: list[np.ndarray]
  audio: list[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PreferencePair:
  """A prompt, two completions of it, and the prompt's images."""
  record_id: str
  prompt: list[dict[str, str]]
  chosen: str
  rejected: str
  images: list[np.ndarray]


@dataclasses.dataclass
class CaptionText:
  """An image and its caption text (contrastive pretraining, text to
  image); `boxes` / `labels` as RegionTargets' when the record lists its
  objects (shapes records do: a text-to-image layout learns from them),
  else None."""
  record_id: str
  image: np.ndarray
  text: str
  boxes: np.ndarray | None = None
  labels: np.ndarray | None = None


@dataclasses.dataclass
class RegionTargets:
  """An image, its objects' boxes and their class ids (region supervision).

  boxes: f32[K, 4] (x0, y0, x1, y1) as fractions of the image's width and
  height; labels: int32[K, len(REGION_ATTRIBUTES)] (shape, colour, place,
  the four box edges' bins).
  """
  record_id: str
  image: np.ndarray
  boxes: np.ndarray
  labels: np.ndarray


def _region_targets(rid: str, record: Mapping[str, Any]) -> RegionTargets:
  images = _images(record)
  if len(images) != 1 or "objects" not in record:
    raise BadExample("malformed", "a regions example needs one image and an "
                     "'objects' list (shapes records have both)")
  objects = record["objects"]
  if isinstance(objects, (str, bytes)):
    objects = json.loads(objects)
  if not objects:
    raise BadExample("empty", "the record has no objects")
  if len(objects) > MAX_REGIONS:
    raise BadExample("malformed", f"{len(objects)} objects > MAX_REGIONS="
                     f"{MAX_REGIONS}")
  height, width = np.shape(images[0])[:2]
  if height != width:  # The pipeline letterboxes other images: boxes move.
    raise BadExample("image_size", f"a regions example needs a square image"
                     f" (boxes are kept as fractions), got {width}x{height}")
  boxes, labels = [], []
  for obj in objects:
    try:
      x0, y0, x1, y1 = (float(v) for v in obj["bbox"])
      col = min(int((x0 + x1) / 2 / width * 3), 2)
      row = min(int((y0 + y1) / 2 / height * 3), 2)
      edges = (x0 / width, y0 / height, x1 / width, y1 / height)
      named = {**obj, "place": PLACES[3 * row + col], **{
          edge: _EDGE_CLASSES[min(max(int(v * EDGE_BINS), 0), EDGE_BINS - 1)]
          for edge, v in zip(BOX_EDGES, edges)}}
      ids = [classes.index(named[name])
             for name, classes in REGION_ATTRIBUTES.items()]
    except (KeyError, ValueError, TypeError) as e:
      raise BadExample("malformed", f"object {obj!r} needs a pixel 'bbox' "
                       "[x0, y0, x1, y1] and "
                       f"{', '.join(list(REGION_ATTRIBUTES)[:2])} from "
                       f"{dict(REGION_ATTRIBUTES)}") from e
    boxes.append((x0 / width, y0 / height, x1 / width, y1 / height))
    labels.append(ids)
  return RegionTargets(rid, images[0], np.asarray(boxes, np.float32),
                       np.asarray(labels, np.int32))


def _in_caption_order(targets: RegionTargets, short_caption: str
                      ) -> RegionTargets:
  """The objects as the record's short caption names them: its colour x
  shape pairs in their order ("two red circles and a blue square": both
  circles, then the square), the objects of one pair left to right by box
  centre. A text-to-image plan copies that order (models/scene_layout.py);
  the boxes alone cannot give it, since the caption sorts by the objects'
  exact centres, which tie to the pixel in about one scene in seven. A
  caption that does not parse (not a shapes record) or does not name every
  object keeps the record's order."""
  asked = shapes.parse_caption(short_caption)
  if asked is None:
    return targets
  rank = {pair: i for i, pair in enumerate(asked)}
  colour, shape = (list(REGION_ATTRIBUTES).index(k)
                   for k in ("colour", "shape"))
  pairs = [(COLOURS[row[colour]], SHAPES[row[shape]])
           for row in targets.labels]
  if any(p not in rank for p in pairs):
    return targets
  centre = (targets.boxes[:, :2] + targets.boxes[:, 2:]) / 2
  order = sorted(range(len(pairs)), key=lambda k: (
      rank[pairs[k]], centre[k, 0], centre[k, 1]))
  return dataclasses.replace(targets, boxes=targets.boxes[order],
                             labels=targets.labels[order])


def box_token_weights(boxes: np.ndarray, grid: tuple[int, int]
                      ) -> np.ndarray:
  """f32[K, gh * gw]: each patch's share of each box's area (rows sum to 1).

  boxes: f32[K, 4] fractions (x0, y0, x1, y1); tokens row-major like the
  vision tower's. A box thinner than a patch still weights the patches it
  overlaps.
  """
  gh, gw = grid
  out = np.zeros((len(boxes), gh * gw), np.float32)
  ey, ex = np.arange(gh + 1) / gh, np.arange(gw + 1) / gw
  for k, (x0, y0, x1, y1) in enumerate(boxes):
    wx = np.clip(np.minimum(ex[1:], x1) - np.maximum(ex[:-1], x0), 0, None)
    wy = np.clip(np.minimum(ey[1:], y1) - np.maximum(ey[:-1], y0), 0, None)
    w = np.outer(wy, wx).reshape(-1)
    out[k] = w / max(w.sum(), 1e-12)
  return out


def _captions(record: Mapping[str, Any]) -> list[str]:
  if "captions" in record:
    return list(record["captions"])
  if "caption" in record:
    return [record["caption"]]
  raise BadExample("malformed", "record has neither 'captions' nor 'caption'")


def clip_field(record: Mapping[str, Any], name: str) -> list[Any]:
  """A record's clip texts: `audio_<name>` of a record that also has an
  image's (shapes_tones), else `<name>` (tones)."""
  return list(record.get(f"audio_{name}", record.get(name, [])))


def joint_qa(record: Mapping[str, Any]) -> list[tuple[str, str, str]]:
  """(question, answer, qtype) of a shapes_tones record, in the `joint`
  format's order: the joint questions, the image's, the clip's."""
  qa = []
  for prefix in ("joint_", "", "audio_"):
    qa += zip(*(record.get(prefix + name, []) for name in
                ("questions", "answers", "qtypes")))
  return qa


def clip_qa(record: Mapping[str, Any], fmt: str
            ) -> list[tuple[str, str, str]]:
  """(question, answer, qtype) of every item of a record under the
  one-question audio formats: 'joint' (`joint_qa`) or 'tones' (the clip's
  own questions)."""
  if fmt == "joint":
    return joint_qa(record)
  return list(zip(*(clip_field(record, name)
                    for name in ("questions", "answers", "qtypes"))))


def num_items(record: Mapping[str, Any], fmt: str) -> int:
  """Examples one record gives under `fmt` (0 if it has no items)."""
  if fmt == "shapes":
    return len(record.get("questions", []))
  if fmt in ("tones", "joint"):
    return len(clip_qa(record, fmt))
  if fmt == "audio_caption":
    return len(clip_field(record, "captions"))
  if fmt == "preference":
    return len(record.get("pref_questions", []))
  if fmt in ("caption", "image_caption", "contrastive"):
    return len(record.get("captions", [])) if "captions" in record else 1
  return 1


def example_index(source: Sequence[Mapping[str, Any]], fmt: str
                  ) -> np.ndarray:
  """int64[N, 2]: (record index, item index) of every example of a source.

  Multi-item formats read every record once.
  """
  check_format(fmt)
  n = len(source)
  # Records of one source share a schema: one-caption records (image_caption
  # builds) need no read per record. Reads decode images: ~1 ms per record.
  single = fmt in ("llava_conversations", "shapes_chat", "tones_chat",
                   "joint_chat") or (
      n == 0) or (
      fmt in ("caption", "image_caption", "contrastive")
      and "captions" not in source[0])
  if single:
    return np.stack([np.arange(n), np.zeros(n, np.int64)], axis=1)
  pairs = [(r, i) for r in range(n) for i in range(num_items(source[r], fmt))]
  return np.asarray(pairs, np.int64).reshape(-1, 2)


def shapes_chat_turns(record_id: str, questions: Sequence[str],
                      answers: Sequence[str],
                      extra: Sequence[tuple[str, str]] = (),
                      marker: str | None = IMAGE_TOKEN
                      ) -> list[dict[str, str]]:
  """A record's Q&A as one chat, in an order fixed by the record id.

  A fixed order per record keeps every example a pure function of the
  record (exact resume); shuffling across records keeps the model from
  learning that a question type always comes first. `extra` (question,
  answer) pairs (grounding) are shuffled in with the others, so that a
  grounding question is sometimes the first turn, as evaluation asks it;
  without them the order is the one before they existed. `marker` (the
  media, `<audio>` for a clip; None: none) opens the first user turn.
  """
  if not questions:
    raise BadExample("empty", "the record has no questions")
  if extra:
    questions = list(questions) + [q for q, _ in extra]
    answers = list(answers) + [a for _, a in extra]
  order = np.random.default_rng(zlib.crc32(record_id.encode())).permutation(
      len(questions))
  turns = []
  for k, i in enumerate(order):
    q = questions[i]
    turns += [_user_with_media(q, marker) if k == 0 and marker
              else {"role": "user", "content": q},
              {"role": "assistant", "content": answers[i]}]
  return turns


def check_format(fmt: str) -> None:
  if fmt not in FORMATS:
    raise ValueError(f"fmt={fmt!r}; allowed values: {', '.join(FORMATS)}")


def _images(record: Mapping[str, Any]) -> list[np.ndarray]:
  image = record.get("image")
  return [] if image is None else [image]


def _user_with_media(text: str, marker: str = IMAGE_TOKEN
                     ) -> dict[str, str]:
  """A user turn: the media marker (`<image>` or `<audio>`), then text."""
  return {"role": "user", "content": f"{marker}\n{text}"}


def _clips(record: Mapping[str, Any]) -> list[np.ndarray]:
  """A record's audio clip as f32[L] in [-1, 1] (stored as int16 PCM)."""
  if record.get("audio") is None:
    raise BadExample("bad_audio", "the record has no audio clip")
  clip = np.asarray(record["audio"])
  if clip.ndim != 1 or clip.size == 0:
    raise BadExample("bad_audio", f"the audio clip has shape {clip.shape}; "
                     "need a non-empty mono clip")
  if clip.dtype == np.int16:
    return [clip.astype(np.float32) / 32767.0]
  return [clip.astype(np.float32)]


def _audio_chat(record: Mapping[str, Any], item: int, fmt: str) -> Chat:
  """An audio format's example (module docstring)."""
  rid = str(record.get("id", "?"))
  both = f"{IMAGE_TOKEN}\n{AUDIO_TOKEN}"
  if fmt in ("tones", "joint"):
    question, answer, _ = clip_qa(record, fmt)[item]
    marker = both if fmt == "joint" else AUDIO_TOKEN
    turns = [_user_with_media(question, marker),
             {"role": "assistant", "content": answer}]
  elif fmt == "joint_chat":
    qa = joint_qa(record)
    n_joint = len(record.get("joint_questions", []))
    if not n_joint:
      raise BadExample("empty", "the record has no joint questions")
    turns = []
    for k, (question, answer, _) in enumerate(qa[:n_joint]):
      turns += [_user_with_media(question, both) if k == 0
                else {"role": "user", "content": question},
                {"role": "assistant", "content": answer}]
    if qa[n_joint:]:  # the others shuffled as shapes_chat shuffles
      turns += shapes_chat_turns(rid, *zip(*[x[:2] for x in qa[n_joint:]]),
                                 marker=None)
  elif fmt == "tones_chat":
    turns = shapes_chat_turns(rid, clip_field(record, "questions"),
                              clip_field(record, "answers"),
                              marker=AUDIO_TOKEN)
  else:
    turns = [_user_with_media(AUDIO_CAPTION_PROMPT, AUDIO_TOKEN),
             {"role": "assistant",
              "content": clip_field(record, "captions")[item]}]
  images = _images(record) if fmt in ("joint", "joint_chat") else []
  return Chat(rid, turns, images, _clips(record))


def _grounding_turns(record: Mapping[str, Any], k: int
                     ) -> list[tuple[str, str]]:
  """Up to k (question, box answer) pairs of a shapes record (none: k=0)."""
  if k <= 0:
    return []
  if "objects" not in record or record.get("image") is None:
    raise BadExample("malformed", "grounding questions need the record's "
                     "image and 'objects' (shapes records have both)")
  return [(q, a) for q, a, _ in grounding.record_grounding_qa(record, k)]


def _grounded_caption_turn(record: Mapping[str, Any], on: bool
                           ) -> list[tuple[str, str]]:
  """The (prompt, grounded caption) pair of a shapes record (none: off)."""
  if not on:
    return []
  if "objects" not in record or record.get("image") is None:
    raise BadExample("malformed", "a grounded caption needs the record's "
                     "image and 'objects' (shapes records have both)")
  return [(grounding.GROUNDED_CAPTION_PROMPT,
           grounding.record_grounded_caption(record))]


def _record_scene(record: Mapping[str, Any], what: str) -> shapes.Scene:
  """The scene of a shapes record (its objects; BadExample without)."""
  if "objects" not in record or record.get("image") is None:
    raise BadExample("malformed", f"{what} need the record's image and "
                     "'objects' (shapes records have both)")
  side = int(np.shape(record["image"])[0])
  return shapes.scene_from_objects(grounding.record_objects(record), side)


def _record_rng(record: Mapping[str, Any], key: int) -> np.random.Generator:
  """A stream of its own per record and use (a pure function of the id):
  key 1 grounding questions, 2 extra questions, 3 held-out name swaps."""
  return np.random.default_rng(
      [zlib.crc32(str(record.get("id", "?")).encode()), key])


def _extra_question_turns(record: Mapping[str, Any], k: int,
                          asked: list[str], name_heldout: bool = True
                          ) -> list[tuple[str, str]]:
  """Up to k more (question, answer) pairs of a shapes record, none of
  `asked` (its own questions; none: k=0); a pure function of the record."""
  if k <= 0:
    return []
  scene = _record_scene(record, "extra questions")
  return [(q.question, q.answer) for q in shapes.extra_questions(
      scene, asked, k, _record_rng(record, 2), name_heldout)]


def _own_questions(record: Mapping[str, Any], questions: list[str],
                   answers: list[str], name_heldout: bool) -> list[str]:
  """The record's questions; name_heldout=False swaps those that name a
  held-out pair (`shapes.without_heldout_names`). The chat and the
  preference pairs pass their own lists and get the same swaps."""
  if name_heldout:
    return list(questions)
  return [q for q, _ in shapes.without_heldout_names(
      _record_scene(record, "held-out name swaps"),
      list(zip(questions, answers)), _record_rng(record, 3))]


def record_example(record: Mapping[str, Any], item: int, fmt: str, *,
                   grounding_questions: int = 0, extra_questions: int = 0,
                   name_heldout: bool = True, grounded_captions: bool = False
                   ) -> Chat | PreferencePair | CaptionText | RegionTargets:
  """The `item`-th example of a decoded record under `fmt`.

  grounding_questions: shapes_chat only: add up to this many referring
  questions answered by a box (`grounding.grounding_qa`); 0 = none.
  grounded_captions: shapes_chat only: add the turn "describe the image
  with boxes." answered by every object named and boxed
  (`grounding.grounded_caption`).
  extra_questions: shapes_chat only: add up to this many more questions of
  the record's five types (`shapes.extra_questions`); 0 = none.
  name_heldout: shapes_chat and preference: False swaps every question
  naming a held-out colour x shape pair (absent objects only, "no") for
  another (`shapes.without_heldout_names`), in the record's, the extra and
  the preference ones.
  """
  rid = str(record.get("id", "?"))
  if fmt in AUDIO_FORMATS:
    return _audio_chat(record, item, fmt)
  if fmt == "shapes":
    turns = [_user_with_media(record["questions"][item]),
             {"role": "assistant", "content": record["answers"][item]}]
    return Chat(rid, turns, _images(record))
  if fmt == "shapes_chat":
    answers = list(record["answers"])
    questions = _own_questions(record, record["questions"], answers,
                               name_heldout)
    return Chat(rid, shapes_chat_turns(
        rid, questions, answers,
        _extra_question_turns(record, extra_questions, questions,
                              name_heldout) +
        _grounding_turns(record, grounding_questions) +
        _grounded_caption_turn(record, grounded_captions)), _images(record))
  if fmt in ("caption", "image_caption"):
    turns = [_user_with_media(CAPTION_PROMPT),
             {"role": "assistant", "content": _captions(record)[item]}]
    return Chat(rid, turns, _images(record))
  if fmt == "llava_conversations":
    turns = record["conversations"]
    if isinstance(turns, str):
      turns = json.loads(turns)
    if not isinstance(turns, list):
      raise BadExample("malformed", "conversations is not a list of turns")
    return Chat(rid, list(turns), _images(record))
  if fmt == "preference":
    question = _own_questions(record, record["pref_questions"],
                              record["chosen"], name_heldout)[item]
    prompt = [_user_with_media(question)]
    return PreferencePair(rid, prompt, record["chosen"][item],
                          record["rejected"][item], _images(record))
  if fmt == "contrastive":
    images = _images(record)
    if len(images) != 1:
      raise BadExample("placeholder_mismatch", "a contrastive example needs "
                       f"exactly one image, the record has {len(images)}")
    try:  # a layout's objects where the record lists them
      objects = (_in_caption_order(_region_targets(rid, record),
                                   _captions(record)[0])
                 if "objects" in record else None)
    except BadExample:
      objects = None
    return CaptionText(rid, images[0], _captions(record)[item],
                       *((objects.boxes, objects.labels) if objects
                         else ()))
  if fmt == "regions":
    return _region_targets(rid, record)
  check_format(fmt)
  raise AssertionError(fmt)


def _expand_mask(mask: list[int], markers: list[int], counts: list[int]
                 ) -> list[int]:
  """The loss mask with `<image>` marker i replaced by counts[i] zeros."""
  out, start = [], 0
  for m, n in zip(markers, counts):
    out += mask[start:m] + [0] * n
    start = m + 1
  return out + mask[start:]


def chat_sequence(cfg: MLLMConfig, tok: Tokenizer,
                  turns: Sequence[Mapping[str, str]], num_images: int, *,
                  max_len: int, rng: np.random.Generator | None = None,
                  v2pe_stride: int | None = None,
                  media_items: Sequence[Sequence[tuple[int, int]]] | None
                  = None, audio_frames: Sequence[int] = ()
                  ) -> dict[str, Any]:
  """Tokenises and lays out a conversation; next-token inputs and targets.

  Every image is one item at the model's side (the pipeline resizes to
  it), or what `media_items` says: an image at its own size (a
  native-resolution model), or its tiles (InternVL tiling). A
  sequence longer than max_len is cut after its last image block; when an
  image block itself would be cut it is a BadExample('too_long'). A blank
  (whitespace-only) answer is a BadExample('empty').

  Args:
    cfg: the model config (fusion, positions, image side).
    tok: the tokenizer (`encode_chat`, `image_id`).
    turns: the conversation (`encode_chat` turns).
    num_images: images given with it; must equal its `<image>` markers.
    max_len: the longest input allowed (tokens, not counting the shift).
    rng: V2PE stride generator (training), or None.
    v2pe_stride: fixed V2PE stride (eval), or None for the default.
    media_items: per `<image>` marker, the (height, width) of each media
      item the model reads for it, in order: [(h, w)] for an image at its
      own size (`native_resolution.size_for`), n x [(side, side)] for n
      InternVL tiles; None: one item at cfg.side per image.
    audio_frames: per audio clip, in order, its log-mel frame count: each
      `<audio>` marker (`tok.audio_id`) becomes `layout.Audio(frames)`.

  Returns:
    tokens, targets int32[L]; loss_mask f32[L] (1 on answer tokens and the
    assistant's end-of-turn, 0 on prompts and placeholders); positions
    int32[L] / int32[3, L] / f32[L]; image_token_mask, media_locations
    bool[L]; with audio clips also audio_token_mask bool[L]; truncated
    bool. L <= max_len.
  """
  if not turns or not any(str(t.get("content", t.get("value", ""))).strip()
                          for t in turns):
    raise BadExample("empty", "the conversation has no text")
  for index, turn in enumerate(turns):
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if role in _ANSWER_ROLES and isinstance(content, str) and (
        not content.strip()):
      # Its loss would teach the model to answer nothing.
      raise BadExample("empty", f"turn {index} ({role}) is a blank answer")
  try:
    ids, mask = tok.encode_chat(turns)
  except ValueError as e:
    raise BadExample("malformed", str(e)) from e
  if not any(mask):
    raise BadExample("empty", "the conversation has no assistant answer")
  audio_id = getattr(tok, "audio_id", None)
  heard = [i for i, t in enumerate(ids) if audio_id is not None
           and t == audio_id]
  if len(heard) != len(audio_frames):
    raise layout.PlaceholderMismatchError(
        f"the text has {len(heard)} {AUDIO_TOKEN} marker(s) but "
        f"{len(audio_frames)} audio clip(s) were given; put exactly one "
        f"{AUDIO_TOKEN} per clip in the text")
  markers = [i for i, t in enumerate(ids) if t == tok.image_id]
  if len(markers) != num_images:
    raise layout.PlaceholderMismatchError(
        f"the text has {len(markers)} {IMAGE_TOKEN} marker(s) but "
        f"{num_images} image(s) were given; put exactly one {IMAGE_TOKEN} "
        "per image in the text")
  items = (list(media_items) if media_items is not None
           else [[(cfg.side, cfg.side)]] * len(markers))
  if len(items) != len(markers):
    raise ValueError(f"media items of {len(items)} images for "
                     f"{len(markers)} <image> markers")
  # Every marker, images and clips in text order, with what replaces it.
  slots = sorted([(m, [layout.Media(h, w, cfg.frames) for h, w in sizes])
                  for m, sizes in zip(markers, items)] +
                 [(m, [layout.Audio(int(f))])
                  for m, f in zip(heard, audio_frames)], key=lambda x: x[0])
  pieces: list[Any] = []
  start = 0
  for m, media in slots:
    pieces += [ids[start:m]] + media
    start = m + 1
  pieces.append(ids[start:])
  for frames in audio_frames:  # too short for a token, or over 30 s
    try:
      layout.audio_tokens(cfg, int(frames))
    except ValueError as e:
      raise BadExample("bad_audio", str(e)) from e
  out = layout.assemble(cfg, pieces, tok.image_id, v2pe_stride=v2pe_stride,
                        rng=rng, audio_token_id=audio_id)
  counts = [sum(layout.audio_tokens(cfg, p.frames)
                if isinstance(p, layout.Audio) else
                layout.placeholder_tokens(cfg, p.height, p.width, p.frames)
                for p in media) for _, media in slots]
  full_mask = np.asarray(_expand_mask(mask, [m for m, _ in slots], counts),
                         np.float32)
  tokens = out["tokens"]
  visual = (out["image_token_mask"] | out["media_locations"] |
            out["audio_token_mask"])
  length = len(tokens) - 1
  truncated = length > max_len
  if truncated:
    vis = np.flatnonzero(visual)
    end = int(vis[-1]) + 1 if len(vis) else 0
    if end > max_len:
      raise BadExample("too_long", f"{length} tokens > max_len={max_len} and "
                       f"its last image / audio block ends at token {end}: "
                       "truncation would cut it; raise max_len or shorten "
                       "the text")
    length = max_len
  loss_mask = full_mask[1:length + 1]
  if not loss_mask.any():
    raise BadExample("too_long", f"no answer token is left within max_len="
                     f"{max_len} ({len(tokens) - 1} tokens); raise max_len")
  return {"tokens": tokens[:length], "targets": tokens[1:length + 1],
          "loss_mask": loss_mask,
          "positions": out["positions"][..., :length],
          "image_token_mask": out["image_token_mask"][:length],
          "media_locations": out["media_locations"][:length],
          **({"audio_token_mask": out["audio_token_mask"][:length]}
             if heard else {}),
          "truncated": truncated}


def caption_tokens(tok: Tokenizer, text: str, length: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Caption text padded the SigLIP way: int32[length], bool[length].

  `tok.encode(text)` then eos, cut to `length` keeping eos last ("sticky"),
  right-padded with pad_id to exactly `length`: the SigLIP text tower pools
  the last position, so every text must have the same fixed length. The mask
  is True on real tokens.
  """
  if not text.strip():
    raise BadExample("empty", "the caption is empty")
  ids = tok.encode(text)[:length - 1] + [tok.eos_id]
  tokens = np.full(length, tok.pad_id, np.int32)
  tokens[:len(ids)] = ids
  return tokens, np.arange(length) < len(ids)
