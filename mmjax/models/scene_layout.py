"""Scene layouts: a picture's objects as tokens a text-to-image LM writes
before the picture's codes (plan, then draw), and what each code cell
learns of the plan.

Drawing 256 codes straight from a caption asks a small LM to count, bind
colours to shapes, place objects and draw outlines all in one softmax over
codes; measured, it draws colour blobs (docs/image-generation.md). With a
layout the LM first writes, after the caption, every object as six tokens
(Pix2Seq / Kosmos-2 style location tokens):

  <colour> <shape> <x0> <y0> <x1> <y1>  ...  <eol>  PAD ... (L = 6 M + 1)

in the short caption's order (`encode`: as the data lists them, which for
shapes records is the caption's, "two red circles" together; or left to
right by box centre), corners as bins
of 1/B of the side (B = 64: one pixel at 64 px; x1, y1 name the last pixel
inside). Colour and shape are separate tokens, not one token per pair, so
a pair training never showed (the held-out split's red star) is still
written from a colour and a shape that were. Then, drawing, every code
slot also carries its cell's share of the plan (`cells`): the colour and
shape of the object that covers the cell (0: none) and where the cell
sits inside that object's box, as Fourier features. The layout tokens
follow the image vocabulary (models/image_vocab.py) in the LM's one
vocabulary:

  vocab = LayoutVocab(first_id=1538, colours=6, shapes=6, bins=64,
                      max_objects=6)
  tokens = encode(vocab, boxes, colours, shapes, valid, pad_id=0)  # [b, 37]
  boxes, colours, shapes, valid = decode(vocab, tokens)           # [b, 6..]
  labels, features = cells(boxes, colours, shapes, valid, grid=16)
  # labels int32[b, 256, 2], features f32[b, 256, CELL_FEATURES]
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

TOKENS_PER_OBJECT = 6  # colour, shape, x0, y0, x1, y1
FOURIER_OCTAVES = 4    # sin / cos of pi * 2^k * u, k < 4, per axis
# Per cell: the Fourier features of (u, v), the box's width and height, and
# the share of the cell the box covers.
CELL_FEATURES = 2 * 2 * FOURIER_OCTAVES + 3
# With edges: where the box's four edges cut the cell and where the box's
# centre lies from the cell's, in cell widths (`cells(..., edges=True)`).
EDGE_FEATURES = 6


def cell_features(edges: bool) -> int:
  """F, the features per cell `cells` gives."""
  return CELL_FEATURES + (EDGE_FEATURES if edges else 0)


@dataclasses.dataclass(frozen=True)
class LayoutVocab:
  """The ids of layout tokens: C colours, S shapes, B location bins, then
  <eol>.

  Attributes:
    first_id: the id of colour 0 (the size of the vocabulary before them).
    colours: C object colours.
    shapes: S object shapes.
    bins: B location bins per side.
    max_objects: M, objects a layout holds.
  """
  first_id: int
  colours: int
  shapes: int
  bins: int
  max_objects: int

  def __post_init__(self):
    if min(self.colours, self.shapes, self.bins, self.max_objects) < 1:
      raise ValueError(f"{self}: colours, shapes, bins and max_objects "
                       "must be >= 1")

  @property
  def first_shape_id(self) -> int:
    return self.first_id + self.colours

  @property
  def first_bin_id(self) -> int:
    return self.first_shape_id + self.shapes

  @property
  def eol_id(self) -> int:
    return self.first_bin_id + self.bins

  @property
  def size(self) -> int:
    """Ids the layout adds to the vocabulary: C + S + B + 1."""
    return self.colours + self.shapes + self.bins + 1

  @property
  def length(self) -> int:
    """L: layout slots, 6 per object and <eol>."""
    return TOKENS_PER_OBJECT * self.max_objects + 1

  def allowed(self, slot: jax.Array, ended: jax.Array, vocab_size: int,
              pad_id: int) -> jax.Array:
    """bool[B, V]: the ids layout slot `slot` may hold (the grammar).

    slot: int scalar in [0, L); ended: bool[B], the row wrote <eol>
    already (then PAD only). An object's first slot holds a colour or
    <eol> (the last slot: <eol> only), the second a shape, the other four
    a location bin.
    """
    ids = jnp.arange(vocab_size)
    is_colour = (ids >= self.first_id) & (ids < self.first_shape_id)
    is_shape = (ids >= self.first_shape_id) & (ids < self.first_bin_id)
    is_bin = (ids >= self.first_bin_id) & (ids < self.eol_id)
    is_eol = ids == self.eol_id
    place = slot % TOKENS_PER_OBJECT
    last = slot == self.length - 1
    open_ = jnp.where(place == 0, (is_colour & ~last) | is_eol,
                      jnp.where(place == 1, is_shape, is_bin))
    return jnp.where(ended[:, None], (ids == pad_id)[None], open_[None])


def free_bins(vocab: LayoutVocab, tokens: jax.Array, slot: jax.Array,
              gap: int = 1) -> jax.Array:
  """bool[b, B]: the location bins layout slot `slot` may take so that the
  object being written keeps `gap` bins clear of every object written
  before it and its far corner does not precede its near one.

  The shapes renderer never lets objects touch, so a plan whose boxes
  overlap is one training never showed (drawn, they merge into one blob);
  this removes such continuations while the box is written: y0 may not
  put (x0, y0) inside an earlier box, x1 may not cross one on row y0, y1
  may not make the box meet one. Slots that are not bins, and rows where
  no bin is free, get all True (no constraint).

  tokens: int32[b, L], the slots before `slot` written; slot: int scalar.
  """
  b = tokens.shape[0]
  m, t = vocab.max_objects, TOKENS_PER_OBJECT
  obj = tokens[:, :t * m].reshape(b, m, t)
  bins = obj[..., 2:] - vocab.first_bin_id                       # [b, M, 4]
  current, place = slot // t, slot % t
  earlier = (jnp.arange(m) < current)[None] & jnp.all(
      (bins >= 0) & (bins < vocab.bins), -1)                     # [b, M]
  lo, hi = bins[..., :2] - gap, bins[..., 2:] + gap              # x, y
  mine = jnp.take(bins, current, axis=1, mode="clip")            # [b, 4]
  x0, y0, x1 = mine[:, 0:1], mine[:, 1:2], mine[:, 2:3]          # [b, 1]
  v = jnp.arange(vocab.bins)[None, None, :]                      # [1, 1, B]

  def meets(a0, a1, axis):  # [a0, a1] meets earlier boxes' widened axis
    return (a0[..., None] <= hi[..., axis, None]) & (
        lo[..., axis, None] <= a1[..., None])

  x0m, y0m, x1m = (z[:, :, None] for z in (x0, y0, x1))        # [b, 1, 1]
  row = meets(y0, y0, 1)                                         # [b, M, 1]
  span = meets(jnp.minimum(x0, x1), jnp.maximum(x0, x1), 0)     # [b, M, 1]
  clash = jnp.where(
      place == 3, meets(x0, x0, 0) & (lo[..., 1, None] <= v)
      & (v <= hi[..., 1, None]),
      jnp.where(place == 4, row & (jnp.minimum(x0m, v) <= hi[..., 0, None])
                & (lo[..., 0, None] <= jnp.maximum(x0m, v)),
                span & (jnp.minimum(y0m, v) <= hi[..., 1, None])
                & (lo[..., 1, None] <= jnp.maximum(y0m, v))))
  clash = jnp.any(clash & earlier[..., None], axis=1)            # [b, B]
  order = jnp.where(place == 4, v[:, 0] >= x0, jnp.where(
      place == 5, v[:, 0] >= y0, True))                          # [b, B]
  free = ~clash & order
  constrained = (place >= 3) & jnp.any(free, axis=1, keepdims=True)
  return jnp.where(constrained, free, True)


def _corner_bins(boxes: jax.Array, bins: int) -> jax.Array:
  """f32[..., 4] fractions (x1, y1 exclusive) -> int32[..., 4] bins, the
  far corner naming the last bin inside."""
  near = jnp.floor(boxes[..., :2] * bins)
  far = jnp.ceil(boxes[..., 2:] * bins) - 1
  return jnp.clip(jnp.concatenate([near, far], -1), 0,
                  bins - 1).astype(jnp.int32)


ORDERS = ("caption", "left_to_right")


def encode(vocab: LayoutVocab, boxes: jax.Array, colours: jax.Array,
           shapes: jax.Array, valid: jax.Array, pad_id: int,
           order: str = "caption") -> jax.Array:
  """The layout tokens of a batch of scenes.

  Args:
    vocab: the layout's ids.
    boxes: f32[b, K, 4] (x0, y0, x1, y1) as fractions of the side.
    colours, shapes: int32[b, K] in [0, C), [0, S).
    valid: bool[b, K]; the first M valid objects in `order` are kept.
    pad_id: the id after <eol>.
    order: "caption": as given (the data lists a shapes record's objects
      as its short caption names them, data/formats.py: pair by pair, so
      "two red circles" are written together and the plan copies the
      caption item by item); "left_to_right": by box centre (ties: top
      first).

  Returns:
    int32[b, L]: objects in `order`, <eol>, PAD.
  """
  if order not in ORDERS:
    raise ValueError(f"order={order!r}: choose one of {', '.join(ORDERS)}")
  b, k = colours.shape
  m = vocab.max_objects
  valid = valid.astype(bool)
  if order == "caption":
    rank = jnp.arange(k, dtype=jnp.float32)[None]
  else:
    rank = ((boxes[..., 0] + boxes[..., 2]) / 2 +
            1e-3 * (boxes[..., 1] + boxes[..., 3]) / 2)
  key = jnp.where(valid, rank, jnp.inf)                          # [b, K]
  order_idx = jnp.argsort(key, axis=1)[:, :m]
  if k < m:
    order_idx = jnp.pad(order_idx, ((0, 0), (0, m - k)))
  take = lambda x: jnp.take_along_axis(x, order_idx, 1)  # noqa: E731
  kept = take(valid) & (jnp.arange(m) < k)[None]
  corner = _corner_bins(jnp.take_along_axis(boxes, order_idx[..., None], 1),
                        vocab.bins) + vocab.first_bin_id
  objects = jnp.concatenate([(take(colours) + vocab.first_id)[..., None],
                             (take(shapes) + vocab.first_shape_id)[..., None],
                             corner], -1)                     # [b, M, 6]
  objects = jnp.where(kept[..., None], objects, pad_id).reshape(b, -1)
  n = kept.sum(1)
  tail = jnp.full((b, 1), pad_id, jnp.int32)
  tokens = jnp.concatenate([objects, tail], 1)
  eol_at = TOKENS_PER_OBJECT * n                               # [b]
  return jnp.where(jnp.arange(vocab.length)[None] == eol_at[:, None],
                   vocab.eol_id, tokens).astype(jnp.int32)


def decode(vocab: LayoutVocab, tokens: jax.Array
           ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(boxes f32[b, M, 4], colours int32[b, M], shapes int32[b, M], valid
  bool[b, M]) of layout tokens int32[b, L]. An object is valid when its
  six tokens are a colour, a shape and four bins and every object before
  it is valid; corners out of order are swapped (a box is at least one bin
  wide)."""
  b = tokens.shape[0]
  m = vocab.max_objects
  obj = tokens[:, :TOKENS_PER_OBJECT * m].reshape(b, m, TOKENS_PER_OBJECT)
  colour = obj[..., 0] - vocab.first_id
  shape = obj[..., 1] - vocab.first_shape_id
  bins = obj[..., 2:] - vocab.first_bin_id
  well_formed = ((colour >= 0) & (colour < vocab.colours)
                 & (shape >= 0) & (shape < vocab.shapes)
                 & jnp.all((bins >= 0) & (bins < vocab.bins), -1))
  valid = jnp.cumprod(well_formed, axis=1).astype(bool)  # none after a gap
  bins = jnp.clip(bins, 0, vocab.bins - 1).astype(jnp.float32)
  lo = jnp.minimum(bins[..., :2], bins[..., 2:])
  hi = jnp.maximum(bins[..., :2], bins[..., 2:]) + 1
  boxes = jnp.concatenate([lo, hi], -1) / vocab.bins
  return (jnp.where(valid[..., None], boxes, 0.0),
          jnp.where(valid, colour, 0).astype(jnp.int32),
          jnp.where(valid, shape, 0).astype(jnp.int32), valid)


def cells(boxes: jax.Array, colours: jax.Array, shapes: jax.Array,
          valid: jax.Array, grid: int, edges: bool = False
          ) -> tuple[jax.Array, jax.Array]:
  """What each of grid x grid code cells (row-major) knows of the layout.

  Args:
    boxes: f32[b, K, 4] fractions; colours, shapes: int32[b, K]; valid:
      bool[b, K].
    grid: code cells per side.
    edges: also the box's edges from the cell's left / top edge (x0, x1,
      y0, y1; in cells, clipped to [-2, 3]) and the box's centre from the
      cell's (x, y; in cells / 4, clipped to [-2, 2]).

  Returns:
    labels int32[b, grid^2, 2]: 1 + the colour and 1 + the shape of the
      box covering most of the cell, (0, 0) where none does.
    features f32[b, grid^2, cell_features(edges)]: for that box, the Fourier
      features of the cell centre's place inside it (u, v: 0 at the box's
      left / top edge, 1 at its right / bottom), its width and height, and
      the share of the cell it covers; 0 where no box does.
  """
  bounds = jnp.arange(grid + 1, dtype=jnp.float32) / grid
  lo, hi = bounds[:-1], bounds[1:]

  def overlap(a, z):  # [b, K] -> [b, K, grid]
    return jnp.clip(jnp.minimum(hi, z[..., None]) - jnp.maximum(lo, a[..., None]),
                    0.0, None)

  ox = overlap(boxes[..., 0], boxes[..., 2])
  oy = overlap(boxes[..., 1], boxes[..., 3])
  area = oy[..., :, None] * ox[..., None, :] * grid * grid  # share of cell
  area = jnp.where(valid[..., None, None], area, 0.0)       # [b, K, g, g]
  best = jnp.argmax(area, axis=1)                           # [b, g, g]
  share = jnp.max(area, axis=1)
  covered = share > 0
  pick = lambda x: jnp.take_along_axis(  # noqa: E731
      x, best.reshape(x.shape[0], -1), 1).reshape(best.shape)
  labels = jnp.where(covered[..., None],
                     jnp.stack([pick(colours), pick(shapes)], -1) + 1, 0)
  x0, y0, x1, y1 = (pick(boxes[..., i]) for i in range(4))
  width, height = jnp.maximum(x1 - x0, 1e-3), jnp.maximum(y1 - y0, 1e-3)
  centre = (lo + hi) / 2
  u = (centre[None, None, :] - x0) / width
  v = (centre[None, :, None] - y0) / height
  freqs = jnp.pi * 2.0 ** jnp.arange(FOURIER_OCTAVES)
  angles = jnp.stack([u, v], -1)[..., None] * freqs           # [b,g,g,2,F]
  fourier = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)
  parts = [fourier.reshape(*u.shape, -1), width[..., None], height[..., None],
           share[..., None]]
  if edges:
    # Why: (u, v) place the cell in the box's own units; a square's corner
    # or a circle's rim falls inside a 4-pixel cell at an offset that the
    # box's size times u would have to recover. Given in cells, the MLP
    # reads where the outline cuts the cell directly.
    left, top = lo[None, None, :], lo[None, :, None]
    cut = [jnp.clip((e - o) * grid, -2.0, 3.0)
           for e, o in ((x0, left), (x1, left), (y0, top), (y1, top))]
    off = [jnp.clip(((a + z) / 2 - c) * grid / 4, -2.0, 2.0)
           for a, z, c in ((x0, x1, centre[None, None, :]),
                           (y0, y1, centre[None, :, None]))]
    parts += [jnp.broadcast_to(f, u.shape)[..., None] for f in cut + off]
  features = jnp.concatenate(parts, -1)
  features = jnp.where(covered[..., None], features, 0.0)
  b = boxes.shape[0]
  return (labels.reshape(b, grid * grid, 2).astype(jnp.int32),
          features.reshape(b, grid * grid, cell_features(edges)))
