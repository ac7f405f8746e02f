"""Image tiling on the host: LLaVA-NeXT AnyRes and InternVL dynamic tiling.

Both split one image of any size into square tiles of the tower's side so a
fixed-resolution ViT sees it at higher resolution (DESIGN.md section 5,
"Native and dynamic resolution"). Images are uint8 [H, W, C] (RGB, as
`images.to_rgb` gives); tiles come back uint8, to be normalised like any
other image (`images.normalize`).

AnyRes (`anyres_tiles`), as transformers' LlavaNextImageProcessor (slow):
  1. pick the pinpoint (h, w) with the largest effective resolution
     min(scaled image area, image area), ties: the least waste (pinpoint area
     - effective); `select_best_resolution`;
  2. resize keeping the aspect (the limiting side exactly, the other
     ceil(side * scale) capped) with PIL bicubic, pad centred with zeros;
  3. cut into (h / tile) x (w / tile) tiles, row-major;
  4. stack [base image resized to tile x tile] + tiles.
  The model (models/tiling.py) drops the feature rows/columns that are only
  padding (`anyres_unpadded`) and appends a learned newline after each row.

InternVL (`internvl_tiles`), as transformers' GotOcr2ImageProcessor
(`crop_to_patches`): grids (cols, rows) with min_tiles <= cols * rows <=
max_tiles, sorted by tile count; the one whose cols / rows is closest to the
image's W / H, ties going to the later (more tiles) grid while the image area
exceeds half the grid's area; the image is resized (bicubic, aspect not kept)
to (rows * tile, cols * tile) and cut row-major; a thumbnail (the whole image
at tile x tile) is appended when there is more than one tile.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

# LLaVA-NeXT's grid pinpoints (height, width) for 336 tiles (DESIGN.md).
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336),
                        (336, 1008))


@dataclasses.dataclass(frozen=True)
class Tiles:
  """One image's tile stack.

  Attributes:
    pixels: uint8[N, tile, tile, C]: AnyRes: base image then the tiles
      (row-major); InternVL: tiles (row-major) then the thumbnail if any.
    grid: (rows, cols) of the tiles proper (base / thumbnail excluded).
    image_size: (height, width) of the original image.
  """
  pixels: np.ndarray
  grid: tuple[int, int]
  image_size: tuple[int, int]


def _check_image(image: np.ndarray, who: str) -> None:
  if image.ndim != 3 or image.dtype != np.uint8:
    raise ValueError(f"{who}: expected a uint8 [H, W, C] image, got "
                     f"{image.dtype} {image.shape}; convert with "
                     f"mmjax.data.images.to_rgb first.")
  if min(image.shape[:2]) < 1:
    raise ValueError(f"{who}: empty image of shape {image.shape}.")


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """PIL bicubic resize of uint8 [H, W, C] (what transformers' slow
  processors do for uint8 input)."""
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.Resampling.BICUBIC))
  return out.reshape(height, width, image.shape[-1])


def _split(image: np.ndarray, tile: int) -> np.ndarray:
  """[r * tile, c * tile, C] -> [r * c, tile, tile, C], row-major."""
  h, w, c = image.shape
  rows, cols = h // tile, w // tile
  return (image.reshape(rows, tile, cols, tile, c).transpose(0, 2, 1, 3, 4)
          .reshape(rows * cols, tile, tile, c))


def select_best_resolution(image_size: tuple[int, int],
                           pinpoints: Sequence[Sequence[int]]
                           ) -> tuple[int, int]:
  """The pinpoint (h, w) that keeps most of the image, then wastes least."""
  if not pinpoints:
    raise ValueError("grid_pinpoints is empty; give (height, width) pairs, "
                     "each a multiple of the tile side.")
  h, w = image_size
  best, best_eff, best_waste = None, 0, float("inf")
  for ph, pw in pinpoints:
    scale = min(pw / w, ph / h)
    eff = min(int(w * scale) * int(h * scale), w * h)
    waste = pw * ph - eff
    if eff > best_eff or (eff == best_eff and waste < best_waste):
      best, best_eff, best_waste = (int(ph), int(pw)), eff, waste
  return best


def fit_size(image_size: tuple[int, int], target: tuple[int, int]
             ) -> tuple[int, int]:
  """(h, w) of the image resized into `target` keeping its aspect."""
  h, w = image_size
  th, tw = target
  sw, sh = tw / w, th / h
  if sw < sh:
    return min(int(np.ceil(h * sw)), th), tw
  return th, min(int(np.ceil(w * sh)), tw)


def anyres_grid(image_size: tuple[int, int],
                pinpoints: Sequence[Sequence[int]], tile: int
                ) -> tuple[int, int]:
  """(rows, cols) of AnyRes tiles for an image of (height, width)."""
  for p in pinpoints:
    if p[0] % tile or p[1] % tile:
      raise ValueError(f"grid pinpoint {tuple(p)} is not a multiple of the "
                       f"tile side {tile}; use multiples of {tile}.")
  ph, pw = select_best_resolution(image_size, pinpoints)
  return ph // tile, pw // tile


def anyres_tiles(image: np.ndarray, pinpoints: Sequence[Sequence[int]],
                 tile: int) -> Tiles:
  """AnyRes tile stack of one image: [1 + rows * cols, tile, tile, C]."""
  _check_image(image, "anyres_tiles")
  size = image.shape[:2]
  rows, cols = anyres_grid(size, pinpoints, tile)
  target = (rows * tile, cols * tile)
  nh, nw = fit_size(size, target)
  resized = _resize(image, nh, nw)
  top, left = (target[0] - nh) // 2, (target[1] - nw) // 2
  canvas = np.zeros(target + (image.shape[-1],), np.uint8)
  canvas[top:top + nh, left:left + nw] = resized
  base = _resize(image, tile, tile)[None]
  return Tiles(np.concatenate([base, _split(canvas, tile)]), (rows, cols),
               (int(size[0]), int(size[1])))


def anyres_unpadded(image_size: tuple[int, int], grid: tuple[int, int],
                    side: int) -> tuple[int, int, int, int]:
  """Which feature rows / columns of the tiles hold image, not padding.

  Args:
    image_size: (height, width) of the original image.
    grid: (rows, cols) of tiles.
    side: feature grid side of one tile (tile // patch).

  Returns:
    (top, bottom, left, right): the kept slice [top:bottom, left:right] of
    the (rows * side, cols * side) feature canvas (transformers'
    `unpad_image`: an odd leftover keeps one more row at the bottom).
  """
  h, w = image_size
  ch, cw = grid[0] * side, grid[1] * side
  if w / h > cw / ch:
    new_h = int(round(h * (cw / w), 7))
    pad = (ch - new_h) // 2
    return pad, ch - pad, 0, cw
  new_w = int(round(w * (ch / h), 7))
  pad = (cw - new_w) // 2
  return 0, ch, pad, cw - pad


def anyres_token_count(image_size: tuple[int, int],
                       pinpoints: Sequence[Sequence[int]], tile: int,
                       patch: int) -> int:
  """Visual tokens of one AnyRes image: the base image's side^2 plus the
  unpadded canvas with one newline per row."""
  side = tile // patch
  grid = anyres_grid(image_size, pinpoints, tile)
  top, bottom, left, right = anyres_unpadded(image_size, grid, side)
  return side * side + (bottom - top) * (right - left + 1)


def internvl_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
  """Allowed (cols, rows), by tile count (stable: cols-major within)."""
  if not 1 <= min_tiles <= max_tiles:
    raise ValueError(f"InternVL tiling needs 1 <= min_tiles <= max_tiles, "
                     f"got min_tiles={min_tiles}, max_tiles={max_tiles}.")
  grids = [(c, r) for c in range(1, max_tiles + 1)
           for r in range(1, max_tiles + 1)
           if min_tiles <= c * r <= max_tiles]
  return sorted(grids, key=lambda g: g[0] * g[1])


def internvl_grid(image_size: tuple[int, int], tile: int, min_tiles: int,
                  max_tiles: int) -> tuple[int, int]:
  """(rows, cols) of InternVL tiles for an image of (height, width)."""
  h, w = image_size
  aspect, area = w / h, w * h
  best, best_diff = (1, 1), float("inf")
  for cols, rows in internvl_grids(min_tiles, max_tiles):
    diff = abs(aspect - cols / rows)
    if diff < best_diff:
      best, best_diff = (cols, rows), diff
    elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
      best = (cols, rows)
  return best[1], best[0]


def internvl_tiles(image: np.ndarray, tile: int, min_tiles: int = 1,
                   max_tiles: int = 12, thumbnail: bool = True) -> Tiles:
  """InternVL tile stack: [rows * cols (+1 thumbnail), tile, tile, C]."""
  _check_image(image, "internvl_tiles")
  size = image.shape[:2]
  rows, cols = internvl_grid(size, tile, min_tiles, max_tiles)
  tiles = _split(_resize(image, rows * tile, cols * tile), tile)
  if thumbnail and rows * cols > 1:
    tiles = np.concatenate([tiles, _resize(image, tile, tile)[None]])
  return Tiles(tiles, (rows, cols), (int(size[0]), int(size[1])))


def internvl_tile_count(image_size: tuple[int, int], tile: int,
                        min_tiles: int = 1, max_tiles: int = 12,
                        thumbnail: bool = True) -> int:
  """Tiles of one InternVL image, the thumbnail included."""
  rows, cols = internvl_grid(image_size, tile, min_tiles, max_tiles)
  n = rows * cols
  return n + (1 if thumbnail and n > 1 else 0)


def internvl_token_count(image_size: tuple[int, int], tile: int,
                         tokens_per_tile: int, min_tiles: int = 1,
                         max_tiles: int = 12, thumbnail: bool = True) -> int:
  """Visual tokens of one InternVL image (tokens_per_tile per tile)."""
  return tokens_per_tile * internvl_tile_count(image_size, tile, min_tiles,
                                               max_tiles, thumbnail)


# ------------------------------------------- an MLLMConfig's tiles (train) --
# Training and generation with `MLLMConfig.tiling == 'internvl'`: every
# tile is one media item of the tower's side (its own placeholders, in
# order: tiles row-major, then the thumbnail), so the model encodes tiles
# exactly like images. AnyRes (its unpadding and newlines depend on each
# image's grid) stays import-and-encode only (models/tiling.py).
TRAINED_TILINGS = ("none", "internvl")


def takes_tiles(cfg) -> bool:
  """Whether an MLLMConfig cuts each image into InternVL tiles."""
  return getattr(cfg, "tiling", "none") == "internvl"


def tile_slots(cfg) -> int:
  """Most tiles one image can take under the config (thumbnail included)."""
  return cfg.max_tiles + (1 if cfg.thumbnail and cfg.max_tiles > 1 else 0)


def tile_count(cfg, height: int, width: int) -> int:
  """Tiles of an image of (height, width) under the config."""
  return internvl_tile_count((height, width), cfg.side, cfg.min_tiles,
                             cfg.max_tiles, cfg.thumbnail)


def image_tiles(cfg, image: np.ndarray) -> np.ndarray:
  """uint8[n, side, side, C]: an image's tiles under the config."""
  return internvl_tiles(image, cfg.side, cfg.min_tiles, cfg.max_tiles,
                        cfg.thumbnail).pixels


def pad_tiles(tiles: Tiles, max_tiles: int) -> tuple[np.ndarray, np.ndarray]:
  """A fixed-size tile stack for batching (static shapes in training).

  Returns:
    (pixels [max_tiles, tile, tile, C] with zero tiles after the real ones,
    valid bool[max_tiles]). With InternVL tiling, the tiles are the media
    items of an example (`images` [B, M=max_tiles, ...], `image_mask` =
    valid) and its image_token_mask holds tokens_per_tile x n real tiles:
    `scatter_visual` reads the real tiles' tokens, which come first.

  Raises:
    ValueError: the image has more tiles than max_tiles.
  """
  n = tiles.pixels.shape[0]
  if n > max_tiles:
    raise ValueError(f"an image of size {tiles.image_size} has {n} tiles, "
                     f"more than max_tiles={max_tiles}; raise max_tiles or "
                     f"lower the tiler's tile limit.")
  pad = np.zeros((max_tiles - n,) + tiles.pixels.shape[1:],
                 tiles.pixels.dtype)
  return np.concatenate([tiles.pixels, pad]), np.arange(max_tiles) < n
