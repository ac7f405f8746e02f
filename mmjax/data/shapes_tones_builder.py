"""The TFDS builder of `mmjax.data.shapes_tones` (an image and a clip per
record, questions about both): array_record without TensorFlow at run time.

  builder = builders.build(shapes_tones_builder.ShapesTonesBuilder, "/data",
                           num_train=40)
  train = builders.load_source(builder, "train")

Splits train / validation / test. A record holds every field of a shapes
record (id, image, captions, questions, answers, qtypes, the preference
columns, objects: the image formats read it as a shapes record) and the
clip's: audio (int16[tones.CLIP_SAMPLES] PCM at 16 kHz), audio_captions,
audio_questions / audio_answers / audio_qtypes, tones, trend; and the
questions about both: joint_questions / joint_answers / joint_qtypes.
Record i of a split is `shapes_tones.example(split, i)`. The stored
tokenizer is trained on all of the train split's texts, with `<audio>`.
Config names look like `t40_v8_e8_px64_s0_vocab512`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import builders, shapes_tones, tones
from mmjax.data.tokenizer import AUDIO_TOKEN

_TEXTS = tfds.features.Sequence(tfds.features.Text())
# Record field prefix -> key of `shapes_tones.example`'s Q&A list.
_QA_PARTS = {"audio_": "audio_qa", "joint_": "joint_qa"}
_QA_KEYS = {"questions": "question", "answers": "answer", "qtypes": "qtype"}


@dataclasses.dataclass(eq=False)
class ShapesTonesConfig(tfds.core.BuilderConfig):
  """Split sizes, image size, seed and tokenizer size of a build."""
  num_train: int = 4_000
  num_validation: int = 200
  num_test: int = 1_000
  image_size: int = 64
  seed: int = 0
  vocab_size: int = 512


def shapes_tones_config(**options: int) -> ShapesTonesConfig:
  """A ShapesTonesConfig named by its values."""
  return builders.named_config(
      ShapesTonesConfig, "shapes_tones",
      "t{num_train}_v{num_validation}_e{num_test}_px{image_size}_s{seed}"
      "_vocab{vocab_size}", "Shapes with tones.", **options)


class ShapesTonesBuilder(builders.ShapesBuilder):
  """The joint benchmark; options are ShapesTonesConfig's fields."""
  name = "shapes_tones"
  BUILDER_CONFIGS = [shapes_tones_config()]

  make_config = staticmethod(shapes_tones_config)
  SPLITS = shapes_tones.SPLITS

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    qa_fields = {prefix + name: _TEXTS for prefix in _QA_PARTS
                 for name in _QA_KEYS}
    return self._info_of(
        shapes_tones.__doc__.split("\n")[0], **info.features,
        audio=tfds.features.Tensor(shape=(tones.CLIP_SAMPLES,),
                                   dtype=np.int16),
        audio_captions=_TEXTS, tones=tfds.features.Text(),
        trend=tfds.features.Text(), **qa_fields)

  def _source_module(self):
    return shapes_tones

  def _example_fn(self, split: str):
    config = self.builder_config
    return functools.partial(shapes_tones.example, split, seed=config.seed,
                             image_size=config.image_size, png=True)

  def _extra_symbols(self) -> tuple[str, ...]:
    return (AUDIO_TOKEN,)

  def _texts_of(self, ex: dict[str, Any]) -> list[str]:
    return super()._texts_of(ex) + ex["audio_captions"] + [
        tones.qa_text(q["question"], q["answer"])
        for part in _QA_PARTS.values() for q in ex[part]]

  def _record(self, ex: dict[str, Any]) -> dict[str, Any]:
    record = super()._record(ex) | {
        "audio": ex["audio"], "audio_captions": ex["audio_captions"],
        "tones": json.dumps(ex["tones"], sort_keys=True),
        "trend": ex["trend"]}
    for prefix, part in _QA_PARTS.items():
      for name, key in _QA_KEYS.items():
        record[prefix + name] = [q[key] for q in ex[part]]
    return record
