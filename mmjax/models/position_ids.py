"""Position-id builders: 1-D RoPE, M-RoPE (Qwen2-VL) and V2PE (InternVL).

Host side (numpy): the pipeline describes each sequence as segments and gets
the batch's `positions`; `mmjax.models.positions` rotates by them on device.

Layout: a list of `TextSegment(length)` and `VisionSegment(t, h, w)` over the
block's *merged* token grid (t * h * w tokens, t-major, then h, then w). Image
start/end markers are ordinary text. `segments_from_tokens` derives a layout
from placeholder-expanded tokens.

M-RoPE follows Hugging Face transformers 4.57.1 `Qwen2VLModel.get_rope_index`:
  * text: t = h = w, continuing at (previous max) + 1, starting at 0;
  * a vision block at `st` = (previous max) + 1 gets t, h, w = st + arange;
  * text after a block continues at (max over all three axes of the block) + 1,
    so a video (T > max(H, W)) advances by T. transformers >= 5.3 advances by
    max(H, W) after videos instead; we keep 4.57.1 (see DESIGN.md section 5).
  * rope_delta = max_position + 1 - L; decoding uses cache_position + delta.

Qwen2.5-VL temporal scaling (`tokens_per_second`) gives temporal id
floor(frame * second_per_grid_t * tokens_per_second). 4.57.1 truncates
`second_per_grid_t` to an integer *before* multiplying (0.5 s -> 0); that was
fixed upstream (transformers PR #48669) and we follow the fixed formula. The
two agree whenever `second_per_grid_t` is integral (the default, 1.0).

V2PE follows InternVL's `get_rope_pos_id` ('v2pe_fix' / 'v2pe_rnd'): text steps
by 1; the k-th token (k = 1..n) of a vision block sits at `p + k * delta`, where
`p` is the position of the token before the block (-1 at the very start); the
token after the block sits at `ceil(p + n * delta) + 1`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Strides drawn for V2PE: delta = stride / tokens_per_tile, 1/256 .. 1.
V2PE_STRIDES: tuple[int, ...] = tuple(2**i for i in range(9))
# InternVL's inference default.
V2PE_DEFAULT_STRIDE = 64


class PlaceholderMismatchError(ValueError):
  """Vision placeholders in the tokens do not match the given grids."""


@dataclasses.dataclass(frozen=True)
class TextSegment:
  """`length` text tokens (including image start/end markers)."""
  length: int

  def __post_init__(self):
    if int(self.length) != self.length or self.length < 0:
      raise ValueError(f"TextSegment length must be an int >= 0, got "
                       f"{self.length!r}.")


@dataclasses.dataclass(frozen=True)
class VisionSegment:
  """One image or video: `t * h * w` tokens over its merged token grid.

  Attributes:
    t: temporal grid after temporal patching (Qwen2-VL images: 1).
    h: token rows after the spatial merge.
    w: token columns after the spatial merge.
    second_per_grid_t: seconds covered by one temporal grid step (Qwen2.5-VL
      videos; only used with `tokens_per_second`; irrelevant when t == 1).
  """
  t: int
  h: int
  w: int
  second_per_grid_t: float = 1.0

  def __post_init__(self):
    for name in ("t", "h", "w"):
      value = getattr(self, name)
      if int(value) != value or value < 1:
        raise ValueError(f"VisionSegment.{name} must be an int >= 1, got "
                         f"{value!r} in {self}.")
    if not self.second_per_grid_t >= 0:
      raise ValueError(f"second_per_grid_t must be >= 0, got "
                       f"{self.second_per_grid_t!r}.")

  @property
  def length(self) -> int:
    """Number of tokens in the block."""
    return self.t * self.h * self.w

  @classmethod
  def from_patch_grid(cls,
                      t: int,
                      h: int,
                      w: int,
                      spatial_merge_size: int = 2,
                      second_per_grid_t: float = 1.0) -> VisionSegment:
    """From a vision-tower patch grid (HF's `image_grid_thw`), before merging.

    Args:
      t: temporal patches.
      h: patch rows; must be divisible by `spatial_merge_size`.
      w: patch columns; must be divisible by `spatial_merge_size`.
      spatial_merge_size: m of the m x m patch merger (Qwen2-VL: 2).
      second_per_grid_t: see the class attributes.

    Returns:
      VisionSegment(t, h // m, w // m).
    """
    m = spatial_merge_size
    if h % m or w % m:
      raise ValueError(f"patch grid {(t, h, w)} is not divisible by the "
                       f"spatial merge size {m}.")
    return cls(t, h // m, w // m, second_per_grid_t)


Segment = TextSegment | VisionSegment


def sequence_length(segments: Sequence[Segment]) -> int:
  """Total number of tokens described by `segments` (checks their types)."""
  for seg in segments:
    if not isinstance(seg, (TextSegment, VisionSegment)):
      raise TypeError(f"expected TextSegment / VisionSegment, got {seg!r}.")
  return sum(seg.length for seg in segments)


def _as_vision_segment(grid) -> VisionSegment:
  return (grid if isinstance(grid, VisionSegment) else
          VisionSegment(*(int(g) for g in grid)))


def segments_from_tokens(
    tokens: np.ndarray, vision_token_id: int | Sequence[int],
    grids: Sequence[VisionSegment | tuple[int, int, int]]) -> list[Segment]:
  """Splits placeholder-expanded tokens into text and vision segments.

  Each maximal run of one placeholder id is one image or video, matched in
  order with `grids`. Adjacent vision blocks must therefore be separated by a
  non-placeholder token (every supported template puts start/end markers
  around them).

  Args:
    tokens: int[L] one sequence, without padding.
    vision_token_id: the placeholder id, or several (e.g. Qwen2-VL's image and
      video ids); a run is a maximal run of one id.
    grids: per image/video in order of appearance, its merged (t, h, w) grid,
      or a `VisionSegment` (to carry `second_per_grid_t`).

  Returns:
    Segments covering all L tokens; empty text segments are omitted.

  Raises:
    PlaceholderMismatchError: the number of runs differs from len(grids), or
      a run's length is not t * h * w of its grid.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"expected one sequence int[L], got {tokens.shape}.")
  ids = ([vision_token_id] if isinstance(vision_token_id, (int, np.integer))
         else list(vision_token_id))
  grids = [_as_vision_segment(g) for g in grids]
  n = len(tokens)
  starts_new = np.ones(n, bool)
  starts_new[1:] = tokens[1:] != tokens[:-1]
  bounds = np.append(np.flatnonzero(starts_new), n)
  is_vision = np.isin(tokens, ids)
  runs = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])
          if is_vision[a]]

  if len(runs) > len(grids):
    a, b = runs[len(grids)]
    raise PlaceholderMismatchError(
        f"image/video #{len(grids)} (0-based) has no grid: found {len(runs)} "
        f"runs of placeholder id {ids} but {len(grids)} grids; the extra run "
        f"is tokens [{a}, {b}). Pass one (t, h, w) grid per image/video.")
  if len(runs) < len(grids):
    raise PlaceholderMismatchError(
        f"image/video #{len(runs)} (0-based, grid "
        f"{_grid_str(grids[len(runs)])}) has no placeholders: found only "
        f"{len(runs)} runs of placeholder id {ids} for {len(grids)} grids. "
        f"Expand each image/video to t*h*w placeholder tokens.")
  for i, ((a, b), grid) in enumerate(zip(runs, grids)):
    if b - a != grid.length:
      raise PlaceholderMismatchError(
          f"image/video #{i} (0-based): grid {_grid_str(grid)} needs "
          f"t*h*w = {grid.length} placeholder tokens, found a run of {b - a} "
          f"at tokens [{a}, {b}). Expand it to exactly t*h*w placeholders "
          f"(merged grid), separated from neighbouring images by markers.")

  segments: list[Segment] = []
  cursor = 0
  for (a, b), grid in zip(runs, grids):
    if a > cursor:
      segments.append(TextSegment(a - cursor))
    segments.append(grid)
    cursor = b
  if n > cursor:
    segments.append(TextSegment(n - cursor))
  return segments


def _grid_str(grid: VisionSegment) -> str:
  return f"(t, h, w) = ({grid.t}, {grid.h}, {grid.w})"


def rope_positions(segments: Sequence[Segment]) -> np.ndarray:
  """1-D RoPE ids: every token steps by one. Returns int32[L] = arange(L)."""
  return np.arange(sequence_length(segments), dtype=np.int32)


def _vision_mrope_ids(seg: VisionSegment,
                      tokens_per_second: float | None) -> np.ndarray:
  """int64[3, T*H*W] ids of one block starting at 0, t-major, h, w order."""
  frames = np.arange(seg.t)
  if tokens_per_second is None:
    t_ids = frames
  else:
    t_ids = np.floor(frames * float(seg.second_per_grid_t) *
                     float(tokens_per_second)).astype(np.int64)
  hw = seg.h * seg.w
  return np.stack([
      np.repeat(t_ids, hw),
      np.tile(np.repeat(np.arange(seg.h), seg.w), seg.t),
      np.tile(np.arange(seg.w), seg.t * seg.h),
  ])


def mrope_positions(
    segments: Sequence[Segment],
    tokens_per_second: float | None = None) -> tuple[np.ndarray, int]:
  """M-RoPE (t, h, w) ids of one sequence (Qwen2-VL, transformers 4.57.1).

  Args:
    segments: the layout of the sequence.
    tokens_per_second: None for Qwen2-VL (temporal id = frame index);
      Qwen2.5-VL's `vision_config.tokens_per_second` to scale temporal ids to
      floor(frame * second_per_grid_t * tokens_per_second).

  Returns:
    positions: int32[3, L].
    rope_delta: max_position + 1 - L (0 for text only); decoding continues at
      `cache_position + rope_delta`.
  """
  if tokens_per_second is not None and not tokens_per_second > 0:
    raise ValueError(f"tokens_per_second must be > 0, got "
                     f"{tokens_per_second!r}.")
  sequence_length(segments)  # type check
  chunks = [np.zeros((3, 0), np.int64)]
  next_pos = 0  # (max so far) + 1
  for seg in segments:
    if isinstance(seg, TextSegment):
      ids = np.broadcast_to(np.arange(seg.length), (3, seg.length))
    else:
      ids = _vision_mrope_ids(seg, tokens_per_second)
    if ids.size:
      chunks.append(ids + next_pos)
      next_pos += int(ids.max()) + 1
  positions = np.concatenate(chunks, axis=1).astype(np.int32)
  return positions, next_pos - positions.shape[1]


def mrope_positions_batch(
    layouts: Sequence[Sequence[Segment]],
    attention_mask: np.ndarray | None = None,
    tokens_per_second: float | None = None,
    pad_position: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """M-RoPE ids of a padded batch, like HF `get_rope_index` with a mask.

  Row b's ids (from `layouts[b]`) fill the slots where `attention_mask[b]` is
  set, in order, so left, right (or any) padding works; padded slots get
  `pad_position` (HF: 1). As in HF the delta is taken against the padded
  length L: `max_position + 1 - L`, so a token appended after the whole padded
  row (left padding, as HF `generate` does) at cache position L gets ids
  `max_position + 1`. The max ignores padding slots.

  Args:
    layouts: B layouts; layout b must describe exactly the unmasked tokens of
      row b.
    attention_mask: [B, L] bool/int, 1 = real token. None: no padding; every
      layout must then have the same length.
    tokens_per_second: see `mrope_positions`.
    pad_position: id written to every axis of padded slots.

  Returns:
    positions: int32[3, B, L].
    rope_deltas: int32[B].
  """
  lengths = [sequence_length(layout) for layout in layouts]
  if attention_mask is None:
    if len(set(lengths)) > 1:
      raise ValueError(f"layouts have different lengths {lengths}; pass an "
                       f"attention_mask [B, L] that marks the real tokens.")
    mask = np.ones((len(layouts), lengths[0] if lengths else 0), bool)
  else:
    mask = np.asarray(attention_mask).astype(bool)
    if mask.ndim != 2 or mask.shape[0] != len(layouts):
      raise ValueError(f"attention_mask must be [B, L] with B = "
                       f"{len(layouts)} layouts, got shape {mask.shape}.")
  batch, length = mask.shape
  positions = np.full((3, batch, length), pad_position, np.int32)
  deltas = np.zeros(batch, np.int32)
  for b, layout in enumerate(layouts):
    if int(mask[b].sum()) != lengths[b]:
      raise ValueError(f"row {b}: attention_mask has {int(mask[b].sum())} "
                       f"real tokens but its layout describes {lengths[b]}.")
    row, delta = mrope_positions(layout, tokens_per_second)
    positions[:, b, mask[b]] = row
    deltas[b] = delta + lengths[b] - length  # max + 1 - L
  return positions, deltas


def mrope_decode_positions(cache_position: int | jax.Array,
                           rope_delta: int | jax.Array,
                           num_tokens: int = 1) -> jax.Array:
  """M-RoPE ids of tokens generated after a prompt (jit-safe, jnp).

  Every axis gets `cache_position + rope_delta (+ i for the i-th new token)`,
  as HF Qwen2-VL does once the prompt is in the cache.

  Args:
    cache_position: int or int[B], the cache slot of the first new token (the
      padded prompt length for the first decode step).
    rope_delta: int or int[B], from `mrope_positions(_batch)`.
    num_tokens: new tokens per row (static).

  Returns:
    int32[3, B, num_tokens] (B = 1 when both inputs are scalars).
  """
  start = (jnp.asarray(cache_position, jnp.int32) +
           jnp.asarray(rope_delta, jnp.int32))
  start = jnp.atleast_1d(start)
  pos = start[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)
  return jnp.broadcast_to(pos[None], (3,) + pos.shape)


def v2pe_delta(stride: int, tokens_per_tile: int = 256) -> float:
  """V2PE position increment of a visual token: stride / tokens_per_tile.

  Args:
    stride: one of `V2PE_STRIDES` = (1, 2, 4, ..., 256).
    tokens_per_tile: visual tokens per tile (InternVL: 256).

  Returns:
    delta in (0, 1] for the default tokens_per_tile.
  """
  if isinstance(stride, bool) or stride not in V2PE_STRIDES:
    raise ValueError(f"V2PE stride must be one of {V2PE_STRIDES}, got "
                     f"{stride!r}.")
  if int(tokens_per_tile) != tokens_per_tile or tokens_per_tile < 1:
    raise ValueError(f"tokens_per_tile must be an int >= 1, got "
                     f"{tokens_per_tile!r}.")
  return stride / tokens_per_tile


def sample_v2pe_stride(rng: np.random.Generator) -> int:
  """Training-time V2PE stride, uniform over `V2PE_STRIDES` (per image)."""
  return int(V2PE_STRIDES[rng.integers(len(V2PE_STRIDES))])


def v2pe_positions(segments: Sequence[Segment],
                   deltas: Sequence[float]) -> np.ndarray:
  """V2PE (InternVL) fractional positions of one sequence.

  Text tokens step by 1 from the previous position (the first token is 0).
  Vision block i with n tokens, after a token at position p, puts its k-th
  token (k = 1..n) at `p + k * deltas[i]`; the next token sits at
  `ceil(p + n * deltas[i]) + 1`. Example (delta 0.25): `<img>` at 2, four
  visual tokens at 2.25, 2.5, 2.75, 3.0, `</img>` at 4. With every delta = 1
  (stride 256) this is arange(L).

  Args:
    segments: the layout of the sequence.
    deltas: one per VisionSegment, in order (see `v2pe_delta`).

  Returns:
    float32[L]. Exact while positions stay below 2**16 at delta 1/256.
  """
  n_vision = sum(isinstance(s, VisionSegment) for s in segments)
  if len(deltas) != n_vision:
    raise ValueError(f"v2pe_positions needs one delta per vision block: "
                     f"{n_vision} blocks, {len(deltas)} deltas.")
  out = np.empty(sequence_length(segments), np.float64)
  last, cursor, deltas = -1.0, 0, iter(deltas)  # last: previous position
  for seg in segments:
    n = seg.length
    if isinstance(seg, TextSegment):
      out[cursor:cursor + n] = last + 1 + np.arange(n)
      last += n
    else:
      delta = float(next(deltas))
      if not delta > 0:
        raise ValueError(f"V2PE deltas must be > 0, got {delta!r}.")
      out[cursor:cursor + n] = last + delta * np.arange(1, n + 1)
      last = float(math.ceil(last + delta * n))
    cursor += n
  return out.astype(np.float32)
