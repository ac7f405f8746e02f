"""Reading media for generation: image files, video frame folders, and their
preprocessing into the arrays a model takes.

  stills = [read_image("photo.png")]
  media = media_arrays(cfg, stills, video=None, resize="square", max_frames=4)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from mmjax.data import images as images_lib
from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib
from mmjax.data import tiling as tiling_lib
from mmjax.models import layout
from mmjax.inference.prompts import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_image(path: str) -> np.ndarray:
  """uint8[H, W, 3] of an image file; InputError when it cannot be read."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    reason = str(e).split("\n")[0] or type(e).__name__
    raise InputError(f"cannot read image {path!r} ({reason}); give a PNG, "
                     "JPEG or other image file PIL can open") from None


def read_video(directory: str) -> list[np.ndarray]:
  """The frames of a folder, in name order."""
  if not os.path.isdir(directory):
    raise InputError(f"--video={directory!r} is not a folder; give a folder "
                     "of frame images")
  names = sorted(n for n in os.listdir(directory)
                 if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise InputError(f"--video={directory!r} holds no image files "
                     f"({', '.join(IMAGE_EXTENSIONS)})")
  return [read_image(os.path.join(directory, n)) for n in names]


def evenly(items: Sequence, n: int) -> list:
  """n items spread evenly over the sequence (all when it has <= n)."""
  if len(items) <= n:
    return list(items)
  return [items[int(i)] for i in np.linspace(0, len(items) - 1, n)]


def media_arrays(cfg, stills: Sequence[np.ndarray],
                 video: Sequence[np.ndarray] | None, resize: str,
                 max_frames: int) -> np.ndarray | None:
  """Preprocessed media items f32[M, S, S, 3] or [M, F, S, S, 3] (F =
  cfg.frames; a still image is repeated F times), None without media."""
  if native_lib.takes_native(cfg):
    return native_media(cfg.vision, stills, video, max_frames)
  if naflex_lib.takes_naflex(cfg) and (stills or video):
    if video:
      raise InputError("a NaFlex model takes images, not video; pass the "
                       "frames as images")
    return NaFlexMedia(tuple(naflex_lib.preprocess_for(cfg.vision, im)
                             for im in stills), cfg.vision.patch_size)
  if tiling_lib.takes_tiles(cfg) and (stills or video):
    if video:
      raise InputError("an InternVL-tiled model takes images, not video; "
                       "pass the frames as images")
    return tiled_media(cfg, stills)
  tiling = getattr(cfg, "tiling", "none")
  if tiling != "none" and (stills or video):
    # A square resize would silently skip the model's tiles (and newline).
    raise InputError(
        f"this model tiles its images (tiling={tiling!r}), which generation "
        f"from image files does not do yet; encode tiles with "
        f"mmjax.models.tiling.encode_tiled and pass batch['visual'] to "
        f"mmjax.decoding.decode.prefill (docs/models.md, Tiling).")
  kind = images_lib.normalization_kind(cfg)
  prep = lambda im: images_lib.preprocess(im, cfg.side, resize=resize,
                                          kind=kind)
  items = [np.stack([prep(im)] * cfg.frames) if cfg.frames > 1 else prep(im)
           for im in stills]
  if video:
    if cfg.frames > 1:
      items.append(np.stack([prep(im) for im in evenly(video, cfg.frames)]))
    else:
      items += [prep(im) for im in evenly(video, max_frames)]
  return np.stack(items) if items else None


def native_media(vision, stills: Sequence[np.ndarray],
                 video: Sequence[np.ndarray] | None,
                 max_frames: int) -> list[np.ndarray] | None:
  """Native resolution (Qwen2-VL): each still f32[h, w, 3] at its own
  `smart_resize` size within the tower's pixel budget (`vision.min_pixels`
  / `max_pixels`, as training resized), the video one item f32[F, h, w, 3]
  of up to max_frames frames (F padded to the temporal patch by the
  tower's packing); None without media. No square resize, no crop."""
  items = [native_lib.preprocess_for(vision, im) for im in stills]
  if video:
    items.append(native_lib.preprocess_video(
        evenly(video, max_frames), vision.unit, vision.min_pixels,
        vision.max_pixels))
  return items or None


@dataclasses.dataclass(frozen=True)
class TiledMedia:
  """InternVL-tiled images of one prompt.

  Attributes:
    tiles: f32[N, S, S, 3], every image's tiles in order (tiles row-major,
      then the thumbnail), normalised; the model encodes each as an image.
    counts: tiles per image (sum = N).
  """
  tiles: np.ndarray
  counts: tuple[int, ...]

  def __len__(self) -> int:  # images, as a prompt's <image> markers count
    return len(self.counts)


def tiled_media(cfg, stills: Sequence[np.ndarray]) -> TiledMedia:
  """InternVL tiling (`data/tiling.py`, as the training pipeline cuts)."""
  kind = images_lib.normalization_kind(cfg)
  per_image = [tiling_lib.image_tiles(cfg, images_lib.to_rgb(im))
               for im in stills]
  tiles = [images_lib.normalize(t, kind) for image in per_image
           for t in image]
  return TiledMedia(np.stack(tiles), tuple(len(t) for t in per_image))


@dataclasses.dataclass(frozen=True)
class NaFlexMedia:
  """NaFlex images of one prompt: each a padded patch row at its own aspect
  ratio (`data.naflex.NaFlexImage`), and the tower's patch size."""
  items: tuple[Any, ...]
  patch: int

  def __len__(self) -> int:
    return len(self.items)


def expand_tiles(pieces: Sequence, media: Any) -> list:
  """Prompt pieces as the model reads `media`: each image's `layout.Media`
  repeated once per tile (TiledMedia) or sized as its NaFlex patch grid
  (NaFlexMedia); other media leave the pieces as they are."""
  if isinstance(media, NaFlexMedia):
    sizes = iter(media.items)
    out = []
    for piece in pieces:
      if isinstance(piece, layout.Media):
        h, w = next(sizes).spatial_shape
        piece = layout.Media(h * media.patch, w * media.patch)
      out.append(piece)
    return out
  if not isinstance(media, TiledMedia):
    return list(pieces)
  counts = iter(media.counts)
  out = []
  for piece in pieces:
    out += [piece] * next(counts) if isinstance(piece, layout.Media) else [
        piece]
  return out


def model_media(media: Any) -> Any:
  """What the decode loop takes: TiledMedia's tile stack, else `media`."""
  return media.tiles if isinstance(media, TiledMedia) else media


def image_list(images: Any) -> list[Any]:
  """None -> [], one image -> [it], a list or tuple -> itself."""
  if images is None:
    return []
  if isinstance(images, (list, tuple)):
    return list(images)
  return [images]


def as_image(image: Any) -> np.ndarray:
  """uint8[H, W, 3] of a file path, a PIL image or an array."""
  if isinstance(image, (str, os.PathLike)):
    return read_image(os.fspath(image))
  if hasattr(image, "convert"):  # a PIL image
    return np.asarray(image.convert("RGB"))
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise InputError(f"an image array must be [H, W, 3]; got shape "
                     f"{list(array.shape)}")
  return array


def read_clip(path: str) -> np.ndarray:
  """f32[L] mono at 16 kHz of an audio file (`data.audio.load_audio`:
  resampled, channels averaged); InputError in one line when it cannot be
  read, holds no samples or has a rate the resampler does not take."""
  from mmjax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  try:
    clip = audio_lib.load_audio(path)
  except (OSError, ValueError) as e:
    reason = str(e).split("\n")[0].rstrip(".") or type(e).__name__
    raise InputError(f"{reason}; give a WAV (or FLAC / OGG with soundfile "
                     "installed) with at least one sample") from None
  if not clip.size:
    raise InputError(f"cannot use audio file {path!r}: it holds no samples "
                     "(zero length)")
  return clip


def clip_features(cfg, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A clip as the model's audio tower takes it: (log-mel f32[T, n_mels],
  frame mask bool[T]), only the clip's frames; InputError for a model
  without an audio tower or a clip over its 30 s window."""
  from mmjax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  if cfg.audio is None:
    raise InputError("this model has no audio tower (config.model.audio): "
                     "it takes no --audio; train configs/audio.py for one")
  try:
    return audio_lib.log_mel(clip, n_mels=cfg.audio.n_mels, pad=False,
                             truncate=False)
  except ValueError as e:
    raise InputError(f"{e} (the audio tower reads up to 30 s)") from None
