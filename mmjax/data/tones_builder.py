"""The TFDS builder of `mmjax.data.tones` (the synthetic audio benchmark):
array_record without TensorFlow, like `builders.ShapesBuilder`.

  builder = builders.build(tones_builder.TonesBuilder, "/data", num_train=40)
  train = builders.load_source(builder, "train")  # train[0]["audio"]: int16[L]

Splits train / validation / test. Records: id, audio (int16[CLIP_SAMPLES]
PCM at 16 kHz; the pipeline computes log-mel features from it), captions,
questions, answers, qtypes, tones (JSON: each tone's waveform, pitch, level,
start, duration) and trend. Record i of a split is `tones.example(split,
i)`. The build stores a sentencepiece tokenizer trained on the train
split's texts, with `<audio>` as a piece of its own
(`<dataset dir>/tokenizer.model`). Config names look like
`t40_v8_e8_s0_vocab512`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import builders, tones
from mmjax.data.tokenizer import AUDIO_TOKEN, Tokenizer

_TEXTS = tfds.features.Sequence(tfds.features.Text())
# Record field -> key of the items of `tones.example`'s "qa" list.
_QA_COLUMNS = {"questions": "question", "answers": "answer",
               "qtypes": "qtype"}


@dataclasses.dataclass(eq=False)
class TonesConfig(tfds.core.BuilderConfig):
  """Split sizes, seed and tokenizer size of a tones build."""
  num_train: int = 4_000
  num_validation: int = 200
  num_test: int = 500
  seed: int = 0
  vocab_size: int = 512


def tones_config(**options: int) -> TonesConfig:
  """A TonesConfig named by its values, e.g. t40_v8_e8_s0_vocab512."""
  return builders.named_config(
      TonesConfig, "tones",
      "t{num_train}_v{num_validation}_e{num_test}_s{seed}_vocab{vocab_size}",
      "Synthetic tones.", **options)


class TonesBuilder(builders.ShapesBuilder):
  """The tones benchmark; options are TonesConfig's fields as keywords.

  Reuses the shapes builder's machinery (worker pool, tokenizer written
  into the build); only the features, the example function and the record
  layout differ.
  """
  name = "tones"
  BUILDER_CONFIGS = [tones_config()]

  make_config = staticmethod(tones_config)
  SPLITS = tones.SPLITS

  def _info(self) -> tfds.core.DatasetInfo:
    return self._info_of(
        tones.__doc__.split("\n")[0],
        audio=tfds.features.Tensor(shape=(tones.CLIP_SAMPLES,),
                                   dtype=np.int16),
        tones=tfds.features.Text(), trend=tfds.features.Text(),
        **dict.fromkeys(("captions", *_QA_COLUMNS), _TEXTS))

  def _source_module(self):
    return tones

  def _example_fn(self, split: str):
    return functools.partial(tones.example, split,
                             seed=self.builder_config.seed)

  def _extra_symbols(self) -> tuple[str, ...]:
    return (AUDIO_TOKEN,)

  def _texts_of(self, ex: dict[str, Any]) -> list[str]:
    return ex["captions"] + [tones.qa_text(q["question"], q["answer"])
                             for q in ex["qa"]]

  def _record(self, ex: dict[str, Any]) -> dict[str, Any]:
    return {"id": ex["id"], "audio": ex["audio"], "captions": ex["captions"],
            **{name: [q[key] for q in ex["qa"]]
               for name, key in _QA_COLUMNS.items()},
            "tones": json.dumps(ex["tones"], sort_keys=True),
            "trend": ex["trend"]}
