"""The model side of tiling (MLLMConfig.tiling; host side: data/tiling.py).

Every tile of every image goes through the tower and the projector as one
batch [N, tile, tile, C] -> [N, T, D]; then per image:

  anyres    LLaVA-NeXT: tile 0 is the base image (its T = side^2 tokens as
            they are); the other rows * cols tiles are laid out as one
            (rows * side, cols * side) feature canvas, the rows / columns
            that only saw padding are cut (`data.tiling.anyres_unpadded`,
            transformers' `unpad_image`), and the learned `image_newline`
            (a top-level [D] parameter) is appended after every canvas row.
            Tokens: side^2 + kept_rows * (kept_cols + 1).
  internvl  InternVL: the tokens of each tile in order (tiles row-major,
            then the thumbnail); with projector 'pixel_shuffle' T = side^2/4
            (256 for 448 tiles of 14-pixel patches).

Each image's grid and size are host facts (`Layout`), so the token count is
static per layout: `encode_tiled` runs eagerly or under jit with the layouts
static (one compile per distinct layout tuple).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mmjax.data import tiling as host_tiling


@dataclasses.dataclass(frozen=True)
class Layout:
  """One image's tiles: grid (rows, cols), original (height, width), and
  the stack length (AnyRes: 1 + rows * cols; InternVL: rows * cols, + 1
  thumbnail when there are several tiles and the thumbnail is on)."""
  grid: tuple[int, int]
  image_size: tuple[int, int]
  n_tiles: int

  @classmethod
  def of(cls, tiles: host_tiling.Tiles) -> "Layout":
    return cls(tuple(tiles.grid), tuple(tiles.image_size),
               int(tiles.pixels.shape[0]))


def pack_anyres(features: jax.Array, layout: Layout, newline: jax.Array
                ) -> jax.Array:
  """LLaVA-NeXT packing of one image.

  Args:
    features: [1 + rows * cols, side * side, D]: base image, then tiles
      row-major.
    layout: the image's Layout.
    newline: [D], the learned image_newline.

  Returns:
    [side^2 + kept_rows * (kept_cols + 1), D].
  """
  n, t, d = features.shape
  side = int(round(t ** 0.5))
  rows, cols = layout.grid
  if side * side != t or n != 1 + rows * cols:
    raise ValueError(f"AnyRes features {features.shape} do not match grid "
                     f"{layout.grid} (expected [1 + {rows * cols}, side^2, "
                     f"D]).")
  canvas = (features[1:].reshape(rows, cols, side, side, d)
            .transpose(0, 2, 1, 3, 4).reshape(rows * side, cols * side, d))
  top, bottom, left, right = host_tiling.anyres_unpadded(
      layout.image_size, layout.grid, side)
  canvas = canvas[top:bottom, left:right]
  nl = jnp.broadcast_to(newline.astype(canvas.dtype),
                        (canvas.shape[0], 1, d))
  body = jnp.concatenate([canvas, nl], axis=1).reshape(-1, d)
  return jnp.concatenate([features[0], body])


def encode_tiled(mllm: Any, tiles: jax.Array, layouts: Sequence[Layout]
                 ) -> list[jax.Array]:
  """Visual tokens of tiled images (use as `MLLM.apply(..., method=)`).

  Args:
    mllm: the bound MLLM (cfg.tiling 'anyres' or 'internvl').
    tiles: f32[N, tile, tile, C], the normalised tile stacks of all images
      concatenated in order (N = sum of layout.n_tiles).
    layouts: one Layout per image.

  Returns:
    One [K_i, D] array per image (see the module docstring for K_i).
  """
  cfg = mllm.cfg
  if cfg.tiling not in ("anyres", "internvl"):
    raise ValueError(f"encode_tiled needs tiling 'anyres' or 'internvl', "
                     f"got {cfg.tiling!r}.")
  total = sum(l.n_tiles for l in layouts)
  if tiles.shape[0] != total:
    raise ValueError(f"{tiles.shape[0]} tiles given but the layouts count "
                     f"{total}.")
  out = mllm.vision(tiles, feature_layer=cfg.feature_layer)
  feats = mllm.connector(out.tokens, out.grid)  # [N, T, D]
  result, start = [], 0
  for layout in layouts:
    chunk = feats[start:start + layout.n_tiles]
    start += layout.n_tiles
    if cfg.tiling == "anyres":
      result.append(pack_anyres(chunk, layout, mllm.image_newline))
    else:
      result.append(chunk.reshape(-1, chunk.shape[-1]))
  return result


def visual_rows(per_example: Sequence[Sequence[jax.Array]]) -> jax.Array:
  """[B, 1, K_max, D] for `MLLM(visual=...)`: each example's images'
  tokens concatenated, zero-padded at the end (`scatter_visual` reads only
  as many as the example's image_token_mask holds)."""
  rows = [jnp.concatenate(list(images)) for images in per_example]
  k = max(r.shape[0] for r in rows)
  return jnp.stack([jnp.pad(r, ((0, k - r.shape[0]), (0, 0)))
                    for r in rows])[:, None]
