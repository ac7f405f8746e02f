"""The shapes recipe on shapes_detail: digits on non-square canvases, read
through a fixed side x side input (docs/resolution.md).

  python -m mmjax.main --config=configs/shapes_detail.py:size=tiny,side=96 --workdir=W

Args: those of configs/shapes.py (size, fusion, positions, steps, batch) and
  side=N   the square every image is resized to (default 128; a multiple of
           the patch size, 8): the vision tower's input, so the image costs
           (side / 8)^2 tokens with projector=mlp, a quarter of that with
           --config.model.projector=pixel_shuffle.
  input=   how the tower reads a canvas (fusion=projection):
             square  resized to side x side (default)
             native  a Qwen2-VL tower (patch 8, 2x2 PatchMerger) at the
                     canvas's own size: 96-128 tokens (`NATIVE_MAX_PIXELS`)
             tiled   InternVL tiling: up to `MAX_TILES` side x side tiles of
                     the closest aspect ratio + a thumbnail, (side / 8)^2
                     tokens each (192x128 at side 64: 3 x 2 + 1 = 448)
  tower=1  train the vision tower in align and sft, and drop the siglip
           stage (contrastive training needs one square image); native and
           tiled inputs need it (default 0 for square, 1 otherwise).

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
INPUTS = ("square", "native", "tiled")
# The largest canvas (256 x 128) at its own size: 16 x 8 merged tokens.
NATIVE_MAX_PIXELS = 256 * 128
MAX_TILES = 6  # 256x128 -> 2 x 1 tiles, 192x128 -> 3 x 2 (+ thumbnails)


def _native_tower(config: ml_collections.ConfigDict) -> None:
  """config.model reads every canvas at its own size with a Qwen2-VL tower
  of the recipe's widths (patch 8, 2-frame patches, 2x2 PatchMerger)."""
  v = config.model.vision
  config.model.vision = ml_collections.ConfigDict(dict(
      kind="qwen2vl", image_size=32, patch_size=v.patch_size,
      temporal_patch_size=2, spatial_merge=2, channels=3, width=v.width,
      depth=v.depth, mlp_dim=v.mlp_dim, n_heads=v.n_heads,
      activation="quick_gelu", norm_eps=1e-6, rope_theta=10000.0,
      min_pixels=(2 * v.patch_size) ** 2 * 4, max_pixels=NATIVE_MAX_PIXELS,
      dtype=v.dtype, param_dtype=v.param_dtype))
  config.model.projector = "patch_merger"
  config.model.feature_layer = None  # its merger reads the last block
  config.model.image_size = 32


def get_config(arg=None) -> ml_collections.ConfigDict:
  """Returns the shapes_detail recipe; see the module docstring."""
  args = config_lib.parse_arg(arg, size="small", fusion="projection",
                              positions="rope", steps=0, batch=0, side=128,
                              input="square", tower=-1)
  if args.input not in INPUTS:
    raise config_lib.ConfigError(
        f"config arg input={args.input!r} is not allowed; allowed values: "
        f"{', '.join(INPUTS)}")
  tower = args.tower if args.tower >= 0 else int(args.input != "square")
  if args.input != "square" and (not tower or args.fusion != "projection"):
    raise config_lib.ConfigError(
        f"config arg input={args.input} needs tower=1 and fusion=projection "
        "(its tower is trained in align and sft; contrastive pretraining "
        "needs square images)")
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
  tokens = (args.side // patch) ** 2
  if args.input == "native":
    _native_tower(config)
    tokens = NATIVE_MAX_PIXELS // (2 * patch) ** 2
  elif args.input == "tiled":
    config.model.tiling = "internvl"
    config.model.min_tiles, config.model.max_tiles = 1, MAX_TILES
    config.model.thumbnail = True
    tokens *= MAX_TILES + 1
  config.data.max_len = _TEXT_TOKENS + tokens
  drop = ("regions", "siglip") if tower else ("regions",)
  for name in drop:
    if name in config.stages:  # one_backbone has neither.
      del config.stages[name]
  config.stage_order = tuple(s for s in config.stage_order if s not in drop)
  if tower:
    for name in ("align", "sft"):
      stage = config.stages[name]
      stage.trainable = ("vision",) + tuple(stage.trainable)
  return config
