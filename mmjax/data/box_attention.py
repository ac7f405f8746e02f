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

An answer counts when its whole text (without the end-of-turn) is one box
(`grounding.parse_box`); other answers, and a grounded caption's boxes,
get no target. The boxes are in 0..1000 of the image as the model sees it:
one square image (the shapes benchmark; the pipeline letterboxes others,
which moves their boxes), its tokens a square grid in row-major order, as
the projection paradigm lays them out.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from mmjax.data import grounding
from mmjax.data.formats import BadExample, box_token_weights

# box_keys holds one bit per box of a chat.
MAX_BOXES = 31
KEYS = ("box_query", "box_keys")


def _answer_runs(loss_mask: np.ndarray) -> list[tuple[int, int]]:
  """[start, end) of every run of loss positions (one assistant answer)."""
  on = np.concatenate([[0], (np.asarray(loss_mask) > 0).astype(np.int8), [0]])
  edges = np.flatnonzero(np.diff(on))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def box_attention_targets(seq: Mapping[str, Any], tok: Any
                          ) -> dict[str, np.ndarray]:
  """`box_query`, `box_keys` int32[L] of one `formats.chat_sequence` output.

  Args:
    seq: tokens, targets, loss_mask, image_token_mask ([L] each).
    tok: the tokenizer that wrote it (`decode`, `end_of_turn_id`).

  Raises:
    BadExample('malformed'): a box answer in a chat whose image tokens are
      not one square grid, or more than MAX_BOXES box answers.
  """
  targets = np.asarray(seq["targets"])
  length = len(targets)
  query = np.zeros(length, np.int32)
  keys = np.zeros(length, np.int32)
  end = getattr(tok, "end_of_turn_id", None)
  boxes = []
  for start, stop in _answer_runs(seq["loss_mask"]):
    ids = [int(t) for t in targets[start:stop] if int(t) != end]
    box = grounding.parse_box(tok.decode(ids)) if ids else None
    if box is not None:
      boxes.append(box)
      query[start:stop] = len(boxes)
  if not boxes:
    return {"box_query": query, "box_keys": keys}
  if len(boxes) > MAX_BOXES:
    raise BadExample("malformed", f"{len(boxes)} box answers in one chat > "
                     f"{MAX_BOXES}; box attention targets hold one bit each")
  image = np.flatnonzero(np.asarray(seq["image_token_mask"]))
  side = math.isqrt(len(image))
  if not len(image) or side * side != len(image):
    raise BadExample("malformed", f"box attention needs one image of a "
                     f"square token grid; this chat has {len(image)} image "
                     "tokens")
  fractions = np.asarray(boxes, np.float32) / grounding.SCALE
  under = box_token_weights(fractions, (side, side)) > 0  # [K, side * side]
  bits = (under.astype(np.int64) << np.arange(len(boxes))[:, None]).sum(0)
  keys[image] = bits.astype(np.int32)
  return {"box_query": query, "box_keys": keys}
