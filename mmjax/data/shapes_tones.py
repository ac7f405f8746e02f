"""Joint image + audio benchmark: a shapes scene and a tones clip per example.

An example pairs the shapes benchmark's scene `index` (its image, captions
and questions, unchanged) with a tones clip drawn for it, and asks about
both at once:

  same_count  "are there as many tones as objects?"          yes / no

Half of the scenes with at most `tones.MAX_TONES` objects get a clip with
as many tones as the scene has objects ("yes"); the other clips take a
different count, uniform over the rest of 1..MAX_TONES (a scene of six
objects always gets "no": a clip holds at most five tones). Answering needs
both media: neither the image nor the clip alone says anything about it.

The clip's own questions keep their tones types with a `tone_` prefix
(`tone_count`, `tone_pitch`, ...): the shapes benchmark already has a
`count` type. Like both parts, an example is a pure function of (seed,
split, index).

Usage:
  ex = shapes_tones.example("test", 3)   # ex["image"], ex["audio"], ...
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mmjax.data import shapes, tones

SPLITS = tones.SPLITS  # The shapes splits without `heldout`.
QTYPES = ("same_count",)
SAME_COUNT_QUESTION = "are there as many tones as objects?"
TONE_PREFIX = "tone_"


def tone_count(n_objects: int, rng: np.random.Generator) -> int:
  """The clip's tone count for a scene of n_objects: equal half of the time
  when it can be, else another count, uniform over 1..MAX_TONES."""
  if n_objects <= tones.MAX_TONES and rng.random() < 0.5:
    return n_objects
  others = [n for n in range(1, tones.MAX_TONES + 1) if n != n_objects]
  return int(others[int(rng.integers(len(others)))])


def _clip_and_text(split: str, index: int, seed: int, n_objects: int):
  """(clip, captions, tone questions, joint questions) of one example."""
  if split not in SPLITS:
    raise ValueError(f"Need split in {SPLITS}; got {split!r}.")
  # Streams of their own: the scene stays the shapes benchmark's.
  streams = np.random.SeedSequence(
      [int(seed), 11, SPLITS.index(split), int(index)]).spawn(3)
  count_rng, clip_rng, text_rng = (np.random.default_rng(s) for s in streams)
  n = tone_count(n_objects, count_rng)
  clip = tones.sample_clip(clip_rng, n_tones=n)
  qa = [tones.QA(q.question, q.answer, TONE_PREFIX + q.qtype)
        for q in tones.questions(clip, text_rng)]
  joint = [tones.QA(SAME_COUNT_QUESTION, "yes" if n == n_objects else "no",
                    "same_count")]
  return clip, tones.captions(clip), qa, joint


def example(split: str, index: int, seed: int = 0, image_size: int = 64,
            png: bool = False) -> dict[str, Any]:
  """Example `index` of a split; a pure function of its args.

  Returns `shapes.example(split, index, ...)`'s dict (image, captions, qa,
  preference, objects) plus "audio" int16[tones.CLIP_SAMPLES],
  "audio_captions" [short, detailed], "audio_qa" and "joint_qa" (lists of
  {"question", "answer", "qtype"}), "tones" and "trend" (as
  `tones.example`).
  """
  ex = shapes.example(split, index, seed=seed, image_size=image_size,
                      png=png)
  clip, caps, qa, joint = _clip_and_text(split, index, seed,
                                         len(ex["objects"]))
  return ex | {"audio": tones.to_int16(tones.render(clip)),
               "audio_captions": caps,
               "audio_qa": [q._asdict() for q in qa],
               "joint_qa": [q._asdict() for q in joint],
               "tones": tones.tones_json(clip), "trend": clip.trend}


def benchmark_texts(n: int, seed: int = 0) -> list[str]:
  """Captions and Q&A lines of train examples 0..n-1 (images, scenes and
  clips' texts; no image drawn, no audio made)."""
  texts = shapes.benchmark_texts(n, seed=seed)
  for index in range(n):
    n_objects = len(shapes.example_scene("train", index, seed).objects)
    _, caps, qa, joint = _clip_and_text("train", index, seed, n_objects)
    texts += caps + [tones.qa_text(q.question, q.answer) for q in qa + joint]
  return texts
