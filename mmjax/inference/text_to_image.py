"""A trained text-to-image run (configs/t2i.py): captions in, pictures out.

  run = load_text_to_image("runs/t2i")
  images = run.draw(["two red circles and a blue square."], seed=0,
                    guidance=3.0)                    # uint8[1, 64, 64, 3]
  run.save_png(images[0], "image.png")

The LM is the run's `llm` parameters, the VQ tokenizer its `t2i` stage's
loss state (the tokenizer run it trained with, frozen in the checkpoint),
the caption tokenizer the shapes dataset's. Captions are encoded as the
training pipeline encoded them (`formats.caption_tokens`: ids, </s>,
padding to P); a caption longer than P is refused, not cut.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import numpy as np

from mmjax import parallel
from mmjax.data import formats, grounding, shapes
from mmjax.data import images as images_lib
from mmjax.decoding import image_tokens
from mmjax.decoding.image_tokens import LayoutSampling
from mmjax.decoding.sampling import Sampling
from mmjax.inference import workdir as workdir_lib
from mmjax.models import scene_layout
from mmjax.models.text_to_image import TextToImageLM
from mmjax.train.stages import t2i as t2i_stage

STAGE_KIND = "t2i"


def is_text_to_image(config) -> bool:
  """Whether a run's last stage is a `t2i` stage."""
  order = list(config.get("stage_order", ()))
  return bool(order) and config.stages[order[-1]].get("loss") == STAGE_KIND


# How a run draws unless told otherwise: config.drawing of configs/t2i.py
# (the settings its measurements used), else these.
DRAWING_DEFAULTS = {"guidance": 3.0, "temperature": 1.0, "top_k": 0,
                    "top_p": 1.0, "plan_temperature": 0.0,
                    "place_temperature": 1.0, "apart": False}


def drawing_settings(config) -> tuple[float, Sampling, LayoutSampling]:
  """(guidance, code sampling, layout sampling) of a run's config.drawing,
  DRAWING_DEFAULTS for what it does not set."""
  d = dict(DRAWING_DEFAULTS, **dict(config.get("drawing", {})))
  return (float(d["guidance"]),
          Sampling(float(d["temperature"]), int(d["top_k"]),
                   float(d["top_p"])),
          LayoutSampling(Sampling(float(d["plan_temperature"])),
                         Sampling(float(d["place_temperature"])),
                         bool(d["apart"])))


def check_caption(caption: str) -> None:
  """ValueError (one line) for a caption asking for more objects than a
  shapes picture holds (counted when it has the short-caption form)."""
  asked = shapes.parse_caption(caption)
  if asked is not None and sum(asked.values()) > shapes.MAX_OBJECTS:
    raise ValueError(
        f"the prompt asks for {sum(asked.values())} objects; a picture holds "
        f"at most {shapes.MAX_OBJECTS} (the model never saw more): ask for "
        "fewer")


@dataclasses.dataclass
class TextToImageRun:
  """What generation needs from a `t2i` run."""
  model: TextToImageLM
  params: Any            # {'llm': ...}
  vq: dict[str, Any]     # {'params', 'codebook'}: the frozen tokenizer
  tokenizer: Any         # the caption tokenizer
  config: Any

  def prompt_ids(self, captions: Sequence[str]) -> np.ndarray:
    """int32[B, P]: each caption as training read it.

    Raises:
      ValueError: an empty caption, one longer than P tokens, or one asking
        for more objects than a picture holds.
    """
    rows = []
    for caption in captions:
      if not caption.strip():
        raise ValueError("the prompt is empty: describe the picture, e.g. "
                         "'a red circle and a blue star.'")
      check_caption(caption)
      n = len(self.tokenizer.encode(caption)) + 1  # and </s>
      image_tokens.check_request(self.model, n)
      rows.append(formats.caption_tokens(self.tokenizer, caption,
                                         self.model.prompt_len)[0])
    return np.stack(rows)

  def draw(self, captions: Sequence[str], *, seed: int = 0,
           guidance: float | None = None, sampling: Sampling | None = None,
           layout_sampling: LayoutSampling | None = None,
           with_layout: bool = False):
    """uint8[B, S, S, 3]: one picture per caption; with_layout: and per
    caption the objects the model planned before drawing (`layouts`; []
    for a run without a layout). guidance / sampling / layout_sampling
    None: the run's (`drawing_settings`)."""
    guidance, sampling, layout_sampling = self.settings(
        guidance, sampling, layout_sampling)
    ids = self.prompt_ids(captions)
    codes, layout = image_tokens.generate_codes(
        self.model, self.params, ids, jax.random.key(seed),
        guidance=guidance, sampling=sampling,
        layout_sampling=layout_sampling, with_layout=True)
    images = images_lib.to_uint8(self.model.decode_codes(self.vq, codes))
    return (images, self.layouts(layout)) if with_layout else images

  def settings(self, guidance: float | None = None,
               sampling: Sampling | None = None,
               layout_sampling: LayoutSampling | None = None
               ) -> tuple[float, Sampling, LayoutSampling]:
    """(guidance, sampling, layout_sampling): what is given, the run's
    own (`drawing_settings`) for what is None."""
    default = drawing_settings(self.config)
    given = (guidance, sampling, layout_sampling)
    return tuple(d if g is None else g for g, d in zip(given, default))

  def layouts(self, tokens) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    """Per row of layout tokens int32[B, L], its objects as (colour, shape,
    box (x0, y0, x1, y1) in 0..1000 of the side)."""
    if not self.model.layout_objects:
      return [[] for _ in range(len(tokens))]
    boxes, colours, kinds, valid = (np.asarray(x) for x in scene_layout.decode(
        self.model.layout_vocab, jax.numpy.asarray(tokens)))
    return [[(shapes.COLOURS[c], shapes.SHAPES[s],
              tuple(int(round(v * grounding.SCALE)) for v in box))
             for box, c, s, ok in zip(*row) if ok]
            for row in zip(boxes, colours, kinds, valid)]

  @staticmethod
  def save_png(image: np.ndarray, path: str) -> str:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path


def load_text_to_image(workdir: str) -> TextToImageRun:
  """The newest finished checkpoint of a `t2i` run.

  Raises:
    workdir_lib.WorkdirError: no such run or no finished checkpoint.
  """
  config = workdir_lib.read_config(workdir)
  if not is_text_to_image(config):
    raise workdir_lib.WorkdirError(
        f"{workdir} is not a text-to-image run (its last stage is not "
        f"loss='{STAGE_KIND}'): train one with configs/t2i.py")
  step_dir = workdir_lib.final_checkpoint(workdir, config)
  state = parallel.restore_on_one_device(
      os.path.join(step_dir, "state"), keys=("params", "loss_state"))
  model = t2i_stage.text_to_image_lm(config)
  return TextToImageRun(
      model=model, params=state["params"], vq=state["loss_state"],
      tokenizer=workdir_lib.find_tokenizer(workdir, config), config=config)
