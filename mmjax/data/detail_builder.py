"""The TFDS builder of `mmjax.data.shapes_detail` (digits on non-square
canvases): the shapes builder with another example function and images of
any size.

  builder = builders.build(detail_builder.ShapesDetailBuilder, "/data",
                           num_train=40)
  train = builders.load_source(builder, "train")  # train[0]["image"]: [H, W, 3]

Same splits, record fields and stored tokenizer as `builders.ShapesBuilder`;
`objects` also holds each object's `digit` and `digit_box`. Config names look
like `t40_v8_e8_h8_s0_vocab512` (no image size: the canvas varies).
"""
from __future__ import annotations

import dataclasses
import functools

import tensorflow_datasets as tfds

from mmjax.data import builders, shapes_detail


@dataclasses.dataclass(eq=False)
class ShapesDetailConfig(tfds.core.BuilderConfig):
  """Split sizes, seed and tokenizer size of a shapes_detail build."""
  num_train: int = 10_000
  num_validation: int = 500
  num_test: int = 1_000
  num_heldout: int = 1_000
  seed: int = 0
  vocab_size: int = 512


def detail_config(**options: int) -> ShapesDetailConfig:
  """A ShapesDetailConfig named by its values."""
  return builders.named_config(
      ShapesDetailConfig, "shapes_detail",
      "t{num_train}_v{num_validation}_e{num_test}_h{num_heldout}"
      "_s{seed}_vocab{vocab_size}", "Shapes with digits.", **options)


class ShapesDetailBuilder(builders.ShapesBuilder):
  """The shapes_detail benchmark; options are ShapesDetailConfig's fields."""
  name = "shapes_detail"
  BUILDER_CONFIGS = [detail_config()]

  make_config = staticmethod(detail_config)

  def _source_module(self):
    return shapes_detail

  def _image_shape(self) -> tuple[None, None, int]:
    return (None, None, 3)  # One of shapes_detail.CANVASES per image.

  def _example_fn(self, split: str):
    return functools.partial(shapes_detail.example, split,
                             seed=self.builder_config.seed, png=True)
