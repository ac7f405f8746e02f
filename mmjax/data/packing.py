"""Packing: several examples per row of a batch (opt-in, `config.data.packing`).

Global batch k packs a window of W candidates (W = `pack_window`): the
examples earlier batches could not place (oldest first), then the next
W - (those) examples of the pipeline's example stream. A policy
(`POLICIES`, `config.data.pack_policy`) places them into the B rows, each
row holding at most max_len tokens and `pack_images` images:

  fill (default)  row by row: the oldest candidate not yet placed opens the
                  row, then the subset of the next `FILL_CANDIDATES` waiting
                  candidates that fills the row's remaining tokens most
                  (an exact subset sum over tokens and images, `fill_rows`).
                  98% real tokens on LLaVA-1.5's length mix at max_len 2048,
                  where first-fit reaches 89% (docs/performance.md).
  first_fit       in order, each candidate to the first row with room
                  (`first_fit`); rows keep the stream order.

Candidates that fit no row are carried over to the next batch, never
dropped (counted each time in `pack_overflow`). Under both policies the
B oldest candidates are placed (an example the pipeline keeps fits an empty
row), so at most W - B examples are pending, each for at most W / B - 1
batches (B of those ahead of it leave each batch). Batch k therefore depends
on the batches before it: `Packer` runs in the iterator's process on the
prepared examples, and its state is the next stream row and the pending
examples' stream rows (not their contents): a restore prepares those rows
again, so a resumed run yields exactly the batches of an uninterrupted one.

A packed row holds its examples back to back, then padding:
  segment_ids int32[b, L]: 1, 2, ... per example, 0 on padding; the model
    attends only within a segment (block-diagonal causal,
    `masks.segment_mask`).
  positions: each example's own (restarting at 0 for 1-D RoPE; each image's
    grid from the example's start for M-RoPE; V2PE's fractional positions
    from 0), laid out by `formats.chat_sequence` per example.
  targets, loss_mask: each example's own (its last target is its own next
    token, so no loss crosses a boundary); loss 0 on padding.
  images [b, P, S, S, 3], image_mask [b, P] (P = pack_images): the row's
    images in order, matching the order of its visual tokens.
Every other key is the padded pipeline's (`pipeline` module doc).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mmjax.data import batching

# Stream examples per global batch row when pack_window is not given.
DEFAULT_WINDOW_PER_ROW = 4
# Waiting candidates `fill_rows` searches per row: the subset sum costs
# candidates x (row tokens / granularity) x (images + 1) per row; 64 fill a
# 2,048-token row of the LLaVA-like mix to 98% (all 128 of a window: 98.1%).
FILL_CANDIDATES = 64
# `fill_rows` counts tokens in units of max(1, capacity // FILL_CELLS)
# (lengths rounded up, so a row never overflows): a 2,048-token row is
# searched in steps of 4 tokens, an 8,192-token row in steps of 16.
FILL_CELLS = 512


def first_fit(lengths: Sequence[int], images: Sequence[int], *, rows: int,
              capacity: int, max_images: int
              ) -> tuple[list[list[int]], list[int]]:
  """Places items, in order, into the first row with room.

  Args:
    lengths: tokens of each item (each <= capacity).
    images: images of each item.
    rows: number of rows (bins).
    capacity: tokens a row holds.
    max_images: images a row holds.

  Returns:
    (per row, the indices of its items in order; indices that fit no row).
  """
  placed: list[list[int]] = [[] for _ in range(rows)]
  room = [capacity] * rows
  image_room = [max_images] * rows
  overflow = []
  for i, (n, m) in enumerate(zip(lengths, images)):
    for r in range(rows):
      if n <= room[r] and m <= image_room[r]:
        placed[r].append(i)
        room[r] -= n
        image_room[r] -= m
        break
    else:
      overflow.append(i)
  return placed, overflow


def _largest_subset(lengths: Sequence[int], images: Sequence[int],
                    room: int, image_room: int) -> list[int]:
  """Indices of a subset of the items with the largest token sum <= room
  and at most image_room images (exact: a subset-sum table over (images,
  tokens); ties go to the subset found first, items in the given order)."""
  # reach[m, s]: some subset has m images and s tokens; last[m, s]: the item
  # that first reached it (its predecessor is at (m - images, s - length)).
  reach = np.zeros((image_room + 1, room + 1), bool)
  reach[0, 0] = True
  last = np.full(reach.shape, -1, np.int64)
  for i, (n, m) in enumerate(zip(lengths, images)):
    if n > room or m > image_room:
      continue
    new = reach[:image_room + 1 - m, :room + 1 - n] & ~reach[m:, n:]
    reach[m:, n:] |= new
    last[m:, n:][new] = i
  used, filled = np.nonzero(reach)
  best = int(np.argmax(filled))  # the fewest images among the fullest
  m, s = int(used[best]), int(filled[best])
  chosen = []
  while s or m:
    i = int(last[m, s])
    chosen.append(i)
    s, m = s - lengths[i], m - images[i]
  return sorted(chosen)


def fill_rows(lengths: Sequence[int], images: Sequence[int], *, rows: int,
              capacity: int, max_images: int,
              candidates: int = FILL_CANDIDATES
              ) -> tuple[list[list[int]], list[int]]:
  """Fills the rows one after another, each as full as the waiting items
  allow (the `fill` policy, module doc).

  Row r opens with the oldest (lowest-index) item not yet placed, then takes
  the subset of the next `candidates` waiting items that adds the most
  tokens within the row's room and image room. Tokens are counted in units
  of max(1, capacity // FILL_CELLS), lengths rounded up (never over
  capacity).

  Args: as `first_fit` (each length <= capacity, each item's images <=
    max_images), plus candidates: waiting items searched per row.

  Returns:
    (per row, the indices of its items in increasing order; indices that fit
    no row, in increasing order).
  """
  unit = max(1, capacity // FILL_CELLS)
  cells = [-(-int(n) // unit) for n in lengths]  # rounded up
  waiting = list(range(len(lengths)))
  placed: list[list[int]] = []
  for _ in range(rows):
    if not waiting:
      placed.append([])
      continue
    first, rest = waiting[0], waiting[1:candidates + 1]
    room = (capacity - int(lengths[first])) // unit
    picked = [rest[j] for j in _largest_subset(
        [cells[i] for i in rest], [int(images[i]) for i in rest], room,
        max_images - int(images[first]))]
    taken = set(picked)
    waiting = [i for i in waiting[1:] if i not in taken]
    placed.append([first] + picked)
  return placed, waiting


# Placement policies: name -> (lengths, images, *, rows, capacity,
# max_images) -> (items per row, overflow). Both place the `rows` oldest.
POLICIES = {"fill": fill_rows, "first_fit": first_fit}
DEFAULT_POLICY = "fill"


def concat_sequences(seqs: Sequence[Mapping[str, np.ndarray]], positions: str
                     ) -> dict[str, np.ndarray]:
  """One packed row: `formats.chat_sequence` outputs back to back, plus
  segment_ids int32[n] (1, 2, ... per sequence). Positions stay each
  sequence's own (mrope: [3, n], joined on the last axis)."""
  out = {key: np.concatenate([s[key] for s in seqs], axis=-1)
         for key in batching.SEQUENCE_KEYS if key != "positions"}
  out["positions"] = np.concatenate([s["positions"] for s in seqs], axis=-1)
  out["segment_ids"] = np.concatenate(
      [np.full(len(s["tokens"]), i + 1, np.int32) for i, s in enumerate(seqs)])
  del positions  # every scheme joins the same way; kept for symmetry
  return out


def efficiency(stats: Mapping[str, int]) -> dict[str, float]:
  """{'packing_efficiency': real tokens / all batch tokens} from pipeline
  stats (padded and packed batches alike); {} before any sequence batch."""
  total = stats.get("batch_tokens", 0)
  return {"packing_efficiency": stats["real_tokens"] / total} if total else {}


class PackedCollate(batching.Collate):
  """Packed rows of prepared examples -> this process's batch.

  Every process packs the same candidates the same way (first-fit is
  deterministic) and builds only its own batch rows.
  """

  def __init__(self, *, batch_size: int, pack_images: int, **kwargs):
    super().__init__(**kwargs)
    self.batch_size, self.pack_images = batch_size, pack_images

  def build(self, bins: Sequence[Sequence[dict[str, Any]]],
            counts: dict[str, int]) -> dict[str, Any]:
    """bins: per global row, its prepared examples in order (B lists)."""
    packed = [concat_sequences([e["seq"] for e in b], self.cfg.positions)
              if b else None for b in bins]
    longest = max([len(p["tokens"]) for p in packed if p is not None],
                  default=1)
    length = batching.bucket_length(longest, self.buckets)
    counts["real_tokens"] += sum(len(p["tokens"]) for p in packed
                                 if p is not None)
    counts["batch_tokens"] += self.batch_size * length
    mine = list(range(self.lo, self.lo + self.local))
    batch = batching.pad_sequences([packed[r] for r in mine], length,
                                   self.cfg.positions, self.pad_id)
    segments = np.zeros((len(mine), length), np.int32)
    side = self.cfg.side
    images = np.zeros((len(mine), self.pack_images, side, side, 3),
                      np.float32)
    image_mask = np.zeros((len(mine), self.pack_images), bool)
    for i, r in enumerate(mine):
      if packed[r] is None:
        continue
      segments[i, :len(packed[r]["segment_ids"])] = packed[r]["segment_ids"]
      row_images = [im for e in bins[r] for im in e["images"]]
      for j, image in enumerate(row_images):
        images[i, j] = self._pixels(image)
        image_mask[i, j] = True
    valid = np.asarray([packed[r] is not None for r in mine], bool)
    return {**batch, "segment_ids": segments, "images": images,
            "image_mask": image_mask, "valid": valid, "_stats": counts}


class Packer:
  """Packs the example stream into batches, carrying leftovers over.

  Attributes:
    next_row: the stream row the next batch reads first.
    pending: (stream row, prepared example) of the carried examples,
      oldest first.
  """

  def __init__(self, collate: PackedCollate, window: int,
               policy: str = DEFAULT_POLICY):
    if policy not in POLICIES:
      raise ValueError(f"pack_policy={policy!r} is not one of "
                       f"{sorted(POLICIES)}")
    self.collate, self.window = collate, window
    self.place = POLICIES[policy]
    self.next_row = 0
    self.pending: list[tuple[int, dict[str, Any]]] = []

  def next_batch(self, pull: Callable[[int], list[dict[str, Any]]]
                 ) -> dict[str, Any]:
    """The next packed batch (PackedCollate.build) from the pending examples
    and `pull(n)`: the next n prepared stream rows (fewer at the end of an
    eval pass). Raises StopIteration when nothing is left."""
    take = self.window - len(self.pending)
    new = pull(take)
    counts = dict.fromkeys(batching.STAT_KEYS, 0)
    for row in new:  # Counted once, when read (not when restored).
      for key, n in row["counts"].items():
        counts[key] += n
    rows = range(self.next_row, self.next_row + len(new))
    self.next_row += len(new)
    candidates = self.pending + [(i, r) for i, r in zip(rows, new)
                                 if r["valid"]]
    c = self.collate
    for i, r in candidates[len(self.pending):]:
      if (len(r["seq"]["tokens"]) > c.max_len
          or len(r["images"]) > c.pack_images):  # the row maker skips these
        raise ValueError(f"stream row {i} fits no empty packed row")
    if not candidates and len(new) < take:
      raise StopIteration
    bins, left = self.place(
        [len(r["seq"]["tokens"]) for _, r in candidates],
        [len(r["images"]) for _, r in candidates],
        rows=self.collate.batch_size, capacity=self.collate.max_len,
        max_images=self.collate.pack_images)
    self.pending = [candidates[i] for i in left]
    counts["pack_overflow"] += len(left)
    return self.collate.build([[candidates[i][1] for i in b] for b in bins],
                              counts)

  def state(self) -> dict[str, Any]:
    return {"pack_next_row": self.next_row,
            "pack_pending": [i for i, _ in self.pending]}

  def restore(self, state: Mapping[str, Any],
              make_row: Callable[[int], dict[str, Any]]) -> None:
    """Continues from `state()`; make_row(stream row) prepares a pending
    example again (the row maker is a pure function of the row). A state
    of the first packing pipeline (fixed windows, leftovers dropped) has
    neither key: its batch k had read rows [0, k W), nothing pending."""
    self.next_row = int(state.get("pack_next_row",
                                  state["next_batch"] * self.window))
    self.pending = [(int(i), make_row(int(i)))
                    for i in state.get("pack_pending", [])]
