"""Where a box answer's tokens should look: targets for attention supervision.

A referring answer (`where is the red circle?` -> `[125, 250, 391, 516]`,
`mmjax/data/grounding.py`) is written digit by digit, and every digit has
to come from the named object's image tokens. The LM learns to find that
object slowly (docs/evaluation.md#grounding: between 3,000 and 6,000 sft
steps on the shapes recipe); the stage option `box_attention_weight`
(`mmjax/train/box_attention_loss.py`) teaches it directly, by rewarding one
attention head for putting its weight on the image tokens under the box.
This module finds, in one laid-out chat sequence, which positions write a
box and which image tokens lie under it:

  targets = box_attention_targets(seq, tok)
  targets["box_query"]  # int32[L]: k >= 1 at the positions whose next token
                        #   is part of the chat's k-th box answer, else 0
  targets["box_keys"]   # int32[L]: bit k - 1 set on the image tokens whose
                        #   patch overlaps box k

With `target="edges"` each coordinate gets its own target: the positions
writing x0 (the answer's text up to its first comma) should look at the
box's first column of image tokens, y0 at its first row, x1 at its last
column, y1 at its last row (the tokens of those lines under the box). One
head's weighted sum over an edge then carries that edge's position, where
a sum over the whole box carries only its centre. The encoding is the
same, one bit per target: `box_query` = 4 (k - 1) + c + 1 for coordinate c
of box k, and that bit - 1 in `box_keys`, so the loss is unchanged.

An answer counts when its whole text (without the end-of-turn) is one box
(`grounding.parse_box`); other answers, and a grounded caption's boxes,
get no target. The boxes are in 0..1000 of the image as the model sees it:
one square image (the shapes benchmark; the pipeline letterboxes others,
which moves their boxes), its tokens a square grid in row-major order, as
the projection paradigm lays them out.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Mapping

import numpy as np

from mmjax.data import answer_weights, grounding
from mmjax.data.formats import BadExample, box_token_weights

# box_keys holds one bit per target of a chat (int32, sign bit unused).
MAX_TARGETS = 31
KEYS = ("box_query", "box_keys")
# What a box answer's positions look at: the whole box, or per coordinate
# the edge it names (x0: first column, y0: first row, x1, y1: last ones).
TARGETS = ("box", "edges")
_TARGETS_PER_BOX = {"box": 1, "edges": 4}
# tokenizer -> {token id: commas in its text}; entries go with the tokenizer.
_COMMAS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _coordinates(tok: Any, ids: list[int], run: int,
                 commas_of: dict[int, int]) -> np.ndarray:
  """int[run]: which coordinate (0..3) each position of an answer run writes:
  the commas its answer text has before the position's target token (the
  end-of-turn, after `ids`, writes the last). `commas_of` memoises each
  token's comma count (boxes share a dozen pieces: decoding each position
  alone cost ~0.5 ms a chat, in the data loader's Python)."""
  for t in ids:
    if t not in commas_of:
      commas_of[t] = tok.decode([t]).count(",")
  commas = np.cumsum([commas_of[t] for t in ids])
  before = np.concatenate([[0], commas])[:run]
  before = np.pad(before, (0, run - len(before)), mode="edge")
  return np.minimum(before, 3)


def _edges(under: np.ndarray, side: int) -> np.ndarray:
  """bool[K * 4, side * side]: per box, the tokens under it in its first
  column, first row, last column and last row (x0, y0, x1, y1)."""
  out = []
  for grid in under.reshape(-1, side, side):
    rows, cols = np.flatnonzero(grid.any(1)), np.flatnonzero(grid.any(0))
    for axis, line in ((1, cols[0]), (0, rows[0]), (1, cols[-1]),
                       (0, rows[-1])):
      edge = np.zeros_like(grid)
      if axis == 1:
        edge[:, line] = grid[:, line]
      else:
        edge[line] = grid[line]
      out.append(edge.reshape(-1))
  return np.stack(out)


def box_attention_targets(seq: Mapping[str, Any], tok: Any,
                          target: str = "box") -> dict[str, np.ndarray]:
  """`box_query`, `box_keys` int32[L] of one `formats.chat_sequence` output.

  Args:
    seq: tokens, targets, loss_mask, image_token_mask ([L] each).
    tok: the tokenizer that wrote it (`decode`, `end_of_turn_id`).
    target: "box" (every position of an answer looks at its box) or
      "edges" (each coordinate's positions at the edge it names).

  Raises:
    ValueError: an unknown target.
    BadExample('malformed'): a box answer in a chat whose image tokens are
      not one square grid, or more targets than MAX_TARGETS (31 boxes,
      7 with edges).
  """
  if target not in TARGETS:
    raise ValueError(f"box attention target {target!r} is not one of "
                     f"{TARGETS}")
  per_box = _TARGETS_PER_BOX[target]
  targets = np.asarray(seq["targets"])
  length = len(targets)
  query = np.zeros(length, np.int32)
  keys = np.zeros(length, np.int32)
  end = getattr(tok, "end_of_turn_id", None)
  boxes = []
  # Comma counts of single tokens, kept per tokenizer for the process.
  commas_of = _COMMAS.setdefault(tok, {})
  for start, stop in answer_weights.answer_runs(seq["loss_mask"]):
    ids = [int(t) for t in targets[start:stop] if int(t) != end]
    box = grounding.parse_box(tok.decode(ids)) if ids else None
    if box is not None:
      first = len(boxes) * per_box + 1
      boxes.append(box)
      query[start:stop] = first + (
          _coordinates(tok, ids, stop - start, commas_of)
          if per_box > 1 else 0)
  if not boxes:
    return {"box_query": query, "box_keys": keys}
  if len(boxes) * per_box > MAX_TARGETS:
    raise BadExample("malformed", f"{len(boxes)} box answers in one chat > "
                     f"{MAX_TARGETS // per_box} ({target!r} targets); box "
                     "attention targets hold one bit each")
  image = np.flatnonzero(np.asarray(seq["image_token_mask"]))
  side = math.isqrt(len(image))
  if not len(image) or side * side != len(image):
    raise BadExample("malformed", f"box attention needs one image of a "
                     f"square token grid; this chat has {len(image)} image "
                     "tokens")
  fractions = np.asarray(boxes, np.float32) / grounding.SCALE
  under = box_token_weights(fractions, (side, side)) > 0  # [K, side * side]
  if target == "edges":
    under = _edges(under, side)  # [K * 4, side * side]
  bits = (under.astype(np.int64) << np.arange(len(under))[:, None]).sum(0)
  keys[image] = bits.astype(np.int32)
  return {"box_query": query, "box_keys": keys}
