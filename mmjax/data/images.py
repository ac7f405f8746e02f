"""Image preprocessing: any decoded image -> the model's normalised square.

`preprocess` = `to_rgb` (grey / grey+alpha / RGBA -> RGB, like PIL's
`convert("RGB")` that LLaVA uses) -> `resize_square` -> `normalize`.

Resize modes (`RESIZE_MODES`):
  square  stretch to side x side, bicubic (SigLIP, CLIP at a square input).
  pad     keep the aspect ratio: pad the short side with the mean colour to a
          square, centred, then resize (LLaVA-1.5's `expand2square`).

Normalisation by encoder convention (`NORMALIZATION`): SigLIP and Fuyu /
one_backbone map [0, 255] to [-1, 1] with mean 0.5, std 0.5; CLIP uses
OpenAI's ImageNet-style mean/std (so does Qwen2-VL). An image with a zero-sized side raises
`layout.ImageSizeError` (a bad record for the pipeline).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from mmjax.models.layout import ImageSizeError
from mmjax.models.mllm import MLLMConfig

RESIZE_MODES = ("square", "pad")
# (mean, std) per channel, in [0, 1] units.
NORMALIZATION = {
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073),
             (0.26862954, 0.26130258, 0.27577711)),
}
# Qwen2-VL's image processor uses OpenAI CLIP's mean and std.
NORMALIZATION["qwen2vl"] = NORMALIZATION["clip"]
# SigLIP2 NaFlex keeps SigLIP's.
NORMALIZATION["naflex"] = NORMALIZATION["siglip"]
# InternVL's checkpoints (preprocessor_config.json) use ImageNet's.
NORMALIZATION["internvit"] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalization_kind(cfg: MLLMConfig) -> str:
  """The tower's kind ('clip', 'qwen2vl', 'siglip'); 'siglip' without a
  tower (one_backbone)."""
  return cfg.vision.kind if cfg.vision is not None else "siglip"


def to_rgb(image: np.ndarray) -> np.ndarray:
  """Any decoded image -> uint8[H, W, 3].

  Args:
    image: [H, W] grey, [H, W, 1] grey, [H, W, 2] grey + alpha, [H, W, 3]
      RGB or [H, W, 4] RGBA; uint8, bool, or float in [0, 1].

  Raises:
    ImageSizeError: a side is 0 or the shape is not one of the above.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise ImageSizeError(f"image of shape {image.shape} is not an RGB, RGBA "
                         "or grey image; decode it to [H, W, 3]")
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise ImageSizeError(f"image of {image.shape[0]}x{image.shape[1]} px has "
                         "no pixels; remove the record or fix its file")
  if image.dtype == bool:
    image = image.astype(np.uint8) * 255
  elif np.issubdtype(image.dtype, np.floating):
    image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
  elif image.dtype != np.uint8:
    image = np.clip(image, 0, 255).astype(np.uint8)
  channels = image.shape[-1]
  if channels in (1, 2):  # Alpha is dropped, as PIL's convert("RGB") does.
    image = np.repeat(image[..., :1], 3, axis=-1)
  elif channels == 4:
    image = image[..., :3]
  return np.ascontiguousarray(image)


def resize_square(image: np.ndarray, side: int, mode: str = "square",
                  fill: tuple[int, int, int] = (127, 127, 127)) -> np.ndarray:
  """uint8[H, W, 3] -> uint8[side, side, 3].

  Args:
    image: an RGB image (see `to_rgb`).
    side: output side in pixels.
    mode: one of RESIZE_MODES.
    fill: RGB padding colour for mode 'pad' (the normalisation mean).
  """
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize={mode!r}; allowed values: {RESIZE_MODES}")
  h, w = image.shape[:2]
  if mode == "pad" and h != w:
    big = max(h, w)
    canvas = np.empty((big, big, 3), np.uint8)
    canvas[...] = np.asarray(fill, np.uint8)
    top, left = (big - h) // 2, (big - w) // 2  # expand2square centres it.
    canvas[top:top + h, left:left + w] = image
    image, h, w = canvas, big, big
  if (h, w) == (side, side):
    return image
  resized = Image.fromarray(image).resize((side, side),
                                          Image.Resampling.BICUBIC)
  return np.asarray(resized)


def normalize(image: np.ndarray, kind: str = "siglip") -> np.ndarray:
  """uint8[H, W, 3] -> f32[H, W, 3]: (x / 255 - mean) / std per channel."""
  if kind not in NORMALIZATION:
    raise ValueError(f"normalisation {kind!r}; allowed: {list(NORMALIZATION)}")
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[kind])
  # One multiply-add per pixel: x * (1 / (255 std)) - mean / std.
  scale = np.float32(1.0 / 255.0) / std
  return image.astype(np.float32) * scale - mean / std


def pad_colour(kind: str) -> tuple[int, int, int]:
  """The mean colour in uint8, as LLaVA's expand2square fills with."""
  return tuple(int(m * 255) for m in NORMALIZATION[kind][0])


def preprocess(image: np.ndarray, side: int, *, resize: str = "square",
               kind: str = "siglip") -> np.ndarray:
  """A decoded image -> f32[side, side, 3], normalised for the encoder.

  Raises:
    ImageSizeError: the image is empty or not an image (see `to_rgb`).
  """
  rgb = to_rgb(image)
  return normalize(resize_square(rgb, side, resize, pad_colour(kind)), kind)


def to_uint8(images) -> np.ndarray:
  """Pixels in the pipeline's [-1, 1] units (clipped) -> uint8, e.g. a
  decoded image: the inverse of the siglip normalisation, rounded."""
  x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) * 127.5
  return np.round(x).astype(np.uint8)
