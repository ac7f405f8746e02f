"""The shapes recipe on shapes_detail: digits on non-square canvases, read
through a fixed side x side input (docs/resolution.md).

  python -m mmjax.main --config=configs/shapes_detail.py:size=tiny,side=96 --workdir=W

Args: those of configs/shapes.py (size, fusion, positions, steps, batch) and
  side=N   the square every image is resized to (default 128; a multiple of
           the patch size, 8): the vision tower's input, so the image costs
           (side / 8)^2 tokens with projector=mlp, a quarter of that with
           --config.model.projector=pixel_shuffle.

What differs from configs/shapes.py:
  data.dataset = 'shapes_detail' (canvases 192x128, 128x192, 256x128,
    160x160; `number` questions besides the five shapes kinds).
  model.vision.image_size = side (and model.image_size for one_backbone).
  data.max_len grows with the image's tokens (160 text tokens + the tokens
    of a side x side image).
  No `regions` stage: its boxes are stored as fractions of a square image
    (data/formats.py refuses non-square records).
"""
import os

import ml_collections

from mmjax import config as config_lib

_SHAPES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "shapes.py")
_TEXT_TOKENS = 160  # configs/shapes.py's data.max_len at 64 px.


def get_config(arg=None) -> ml_collections.ConfigDict:
  """Returns the shapes_detail recipe; see the module docstring."""
  args = config_lib.parse_arg(arg, size="small", fusion="projection",
                              positions="rope", steps=0, batch=0, side=128)
  shapes_arg = ",".join(f"{k}={args[k]}" for k in
                        ("size", "fusion", "positions", "steps", "batch"))
  config = config_lib.load_config(f"{_SHAPES}:{shapes_arg}")
  patch = config.model.vision.patch_size
  if args.side < patch or args.side % patch:
    raise config_lib.ConfigError(
        f"config arg side={args.side} must be a positive multiple of the "
        f"patch size {patch} (e.g. 64, 96, 128)")
  config.data.dataset = "shapes_detail"
  config.data.image_size = args.side  # Unused by shapes_detail; for logs.
  config.model.vision.image_size = args.side
  config.model.image_size = args.side
  config.data.max_len = _TEXT_TOKENS + (args.side // patch) ** 2
  if "regions" in config.stages:  # one_backbone has none.
    del config.stages["regions"]
  config.stage_order = tuple(s for s in config.stage_order if s != "regions")
  return config
