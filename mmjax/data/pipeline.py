"""grain pipelines for multimodal models: records -> padded, bucketed batches.

  it = pipeline.make_iterator(builders.load_source(builder, "train"),
                              fmt="shapes", cfg=model_cfg, tokenizer=tok,
                              batch_size=32, seed=0, max_len=256)
  batch = next(it); state = it.get_state()   # JSON; it.set_state(state)

Stages: `formats` (record -> conversation -> laid-out sequence), `images`
(resize, normalise), `batching` (buckets, padding, collation), this module
(order, bad examples, grain wiring, iterator state).

Order. Examples (`formats.example_index`: one per shapes question / caption)
form an endless stream of epochs, each a fresh permutation from (seed,
epoch) (numpy: grain's index_shuffle costs 0.3 ms a call); global batch k is
stream rows [k*B, (k+1)*B). Every process prepares (reads, tokenises, lays
out, checks) all B rows, so that all agree on the bucket and on the refills
below, and resizes / normalises only its own rows: the data of a step does
not depend on the process count. The price: each process reads and decodes
every record of the global batch (~1 ms a record for tfds sources).
train=False is one unshuffled pass; the last batch is filled with pad rows
(`valid` False, loss_mask 0).

Bad examples (image the model cannot take, `<image>` count != images, too
long after truncation, empty, malformed): with on_bad_record='skip' the row
is refilled from (seed, row, attempt)-seeded random examples (train) or
becomes a pad row (eval); `stats()` counts `skipped_<kind>` and `truncated`.
'raise' raises builders.BadRecordError naming the record.

A batch is a pure function of its index k, so the iterator state is
{"next_batch": k, "stats": ..., and fields that must match on restore}: JSON,
independent of num_workers and process count. Packed batches
(`packing=True`) depend on the ones before: the state adds the stream rows
of the examples carried over (`packing` module doc). Workers
(`mp_prefetch`, grain slices whole batches among them) need a `__main__`
guard in scripts; absl flags are marked parsed if no app.run did it
(grain's workers read them).

Batch (numpy, process-local rows b = batch_size / process_count, L a bucket,
M = max_images, S = cfg.side):
  tokens, targets int32[b, L]; loss_mask f32[b, L]; positions int32[b, L]
  (rope) | int32[3, b, L] (mrope) | f32[b, L] (v2pe); image_token_mask,
  media_locations bool[b, L]; images f32[b, M, S, S, 3]; image_mask
  bool[b, M]; valid bool[b]. A native-resolution (Qwen2-VL) model gets
  instead of images one packed sequence of patches per row, each image at
  its own `smart_resize` size (`native_resolution.BATCH_KEYS`:
  native_patches f32[b, N, C*T*p*p], native_rope_ids int32[b, N, 2],
  native_segment_ids int32[b, N], native_row_index int32[b, N/4]; N a
  power of two from 64 holding the longest row). Padding: pad_id tokens/targets, loss 0, masks
  False, positions last+1, last+2... (rope, v2pe) or 1 (mrope, as HF).
  preference: chosen_* and rejected_* for each sequence key (one L for both),
  shared images, image_mask, valid. contrastive: images, image_mask, valid,
  text_tokens int32[b, max_len], text_pad_mask bool[b, max_len] (True = real
  token). regions: images, image_mask, valid, region_weights f32[b, K, N]
  (each object's box as weights over the N patch tokens), region_labels
  int32[b, K, A] (class ids per formats.REGION_ATTRIBUTES), region_valid
  f32[b, K] (K = formats.MAX_REGIONS). Audio formats
  (`formats.AUDIO_FORMATS`; a model with `MLLMConfig.audio`): audio
  f32[b, 1, T, n_mels] (log-mel, zero padded), audio_mask bool[b, 1, T]
  (real frames), audio_token_mask bool[b, L] (`audio_batch`); no images
  when the model has no vision tower.
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Mapping, Sequence

import grain
import numpy as np
from absl import flags, logging

from mmjax.data import audio_batch, batching
from mmjax.data import answer_weights
from mmjax.data import box_attention as box_attention_lib
from mmjax.data import formats
from mmjax.data import images as images_lib
from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib
from mmjax.data import packing as packing_lib
from mmjax.data import recolour as recolour_lib
from mmjax.data import tiling as tiling_lib
from mmjax.data.builders import ON_BAD_RECORD, BadRecordError
from mmjax.data.text_pipeline import DataStateError
from mmjax.data.tokenizer import Tokenizer
from mmjax.models import layout
from mmjax.models.mllm import MLLMConfig

MAX_ATTEMPTS = 64  # Bad examples in a row before the dataset is given up on.
_ENDLESS_ROWS = 1 << 62
_LOGGED_BAD = 5  # Per process: the first bad examples are logged in full.


@functools.lru_cache(maxsize=4)  # Batches can straddle two epochs.
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """int64[n]: the example order of one epoch."""
  return np.random.default_rng([seed, epoch]).permutation(n)


# source -> {fmt: example_index}: evaluation makes a new iterator per eval,
# and indexing reads every record (~1 ms each for tfds sources).
_INDEX_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _example_index(source: Sequence[Mapping[str, Any]], fmt: str
                   ) -> np.ndarray:
  try:
    cached = _INDEX_CACHE.setdefault(source, {})
  except TypeError:  # Not weak-referenceable (a list): no caching.
    return formats.example_index(source, fmt)
  if fmt not in cached:
    cached[fmt] = formats.example_index(source, fmt)
  return cached[fmt]


def _classify(error: Exception) -> str:
  if isinstance(error, formats.BadExample):
    return error.kind
  if isinstance(error, layout.ImageSizeError):
    return "image_size"
  if isinstance(error, layout.PlaceholderMismatchError):
    return "placeholder_mismatch"
  return "malformed"


def media_items(cfg: MLLMConfig, height: int, width: int
                ) -> list[tuple[int, int]]:
  """(h, w) of each item the model reads of one height x width image: the
  image at its own resized size (a native-resolution or NaFlex tower), its
  InternVL tiles, else one square of the tower's side."""
  if native_lib.takes_native(cfg):  # each image at its own size
    return [native_lib.size_for(cfg.vision, height, width)]
  if naflex_lib.takes_naflex(cfg):  # aspect kept, patch budget
    return [naflex_lib.size_for(cfg.vision, height, width)]
  side = cfg.side
  if tiling_lib.takes_tiles(cfg):  # InternVL: tiles of the side
    return [(side, side)] * tiling_lib.tile_count(cfg, height, width)
  return [(side, side)]


def visual_tokens(cfg: MLLMConfig, height: int, width: int) -> int:
  """Visual tokens the LM reads for one height x width image."""
  return sum(layout.visual_tokens(cfg, h, w)
             for h, w in media_items(cfg, height, width))


class _RowMaker:
  """Global row index -> a prepared example (grain map; runs in workers).

  Images stay uint8 here: only the process that keeps a row resizes it.
  """
  _logged = 0

  def __init__(self, source, index: np.ndarray, *, fmt: str, cfg: MLLMConfig,
               tok: Tokenizer, seed: int, max_len: int, max_images: int,
               train: bool, on_bad_record: str, v2pe_eval_stride: int | None,
               grounding_questions: int = 0, extra_questions: int = 0,
               name_heldout: bool = True, recolour: float = 0.0,
               audio_frames: int = 0, grounded_captions: bool = False,
               box_attention: str = "", loss_weighting: str = "token"):
    self.source, self.index, self.fmt, self.cfg = source, index, fmt, cfg
    self.box_attention = box_attention  # "" or a box_attention.TARGETS
    self.loss_weighting = loss_weighting
    self.grounding_questions = grounding_questions
    self.grounded_captions = grounded_captions
    self.extra_questions = extra_questions
    self.name_heldout = name_heldout
    self.recolour = recolour
    # Each record's object pixels, found once (recolour.PixelCache).
    self._pixels = (recolour_lib.PixelCache(recolour_lib.CACHE_BYTES)
                    if recolour else None)
    self.audio_frames = audio_frames
    self.tok, self.seed, self.max_len = tok, seed, max_len
    self.max_images, self.train = max_images, train
    self.on_bad_record, self.v2pe_eval_stride = on_bad_record, v2pe_eval_stride

  def _example_number(self, row: int, attempt: int) -> int:
    n = len(self.index)
    if not self.train:
      return row
    if attempt:  # A refill: any example, from (seed, row, attempt).
      return int(np.random.default_rng([self.seed, row, attempt]).integers(n))
    epoch, position = divmod(row, n)
    return int(_permutation(self.seed, epoch, n)[position])

  def __call__(self, row: int) -> dict[str, Any]:
    counts: dict[str, int] = {}
    if not self.train and row >= len(self.index):
      return {"valid": False, "counts": counts}
    for attempt in range(MAX_ATTEMPTS):
      number = self._example_number(row, attempt)
      record_index, item = (int(v) for v in self.index[number])
      record_id = str(record_index)
      try:
        record = self.source[record_index]
        record_id = str(record.get("id", record_index))
        prepared = self._prepare(record, item, row, attempt, record_index)
      except (ValueError, KeyError, IndexError, TypeError, AttributeError,
              OSError) as e:
        kind = _classify(e)
        where = (f"record {record_id!r} (index {record_index}, item {item}, "
                 f"fmt={self.fmt!r})")
        if self.on_bad_record == "raise":
          raise BadRecordError(
              f"{where}: {kind}: {e}. Fix or remove it, or pass "
              "on_bad_record='skip'.") from e
        if _RowMaker._logged < _LOGGED_BAD:
          _RowMaker._logged += 1
          logging.warning("skipping %s: %s: %s", where, kind, e)
        key = f"skipped_{kind}"
        counts[key] = counts.get(key, 0) + 1
        if not self.train:
          return {"valid": False, "counts": counts}
        continue
      if prepared.pop("truncated", False):
        counts["truncated"] = counts.get("truncated", 0) + 1
      downscaled = prepared.pop("downscaled", 0)
      if downscaled:
        counts["downscaled"] = downscaled
      prepared["counts"] = counts
      return prepared
    raise BadRecordError(
        f"{MAX_ATTEMPTS} bad examples in a row at row {row} ({counts}); the "
        f"source is mostly unusable for fmt={self.fmt!r} under this config")

  def _prepare(self, record: Mapping[str, Any], item: int, row: int,
               attempt: int, record_index: int) -> dict[str, Any]:
    example = formats.record_example(
        record, item, self.fmt, grounding_questions=self.grounding_questions,
        extra_questions=self.extra_questions, name_heldout=self.name_heldout,
        grounded_captions=self.grounded_captions)
    if isinstance(example, formats.RegionTargets) and self.recolour:
      # Drawn per (seed, row, attempt): the same on resume.
      pixels = self._pixels.get(
          (record_index, item),
          lambda: recolour_lib.object_pixels(example))
      example = recolour_lib.recolour_objects(
          example, self.recolour,
          np.random.default_rng([self.seed, row, attempt, 1]), pixels)
    raw = ([example.image] if isinstance(
        example, (formats.CaptionText, formats.RegionTargets))
           else example.images)
    if len(raw) > self.max_images:
      raise formats.BadExample("too_many_images", f"{len(raw)} images > "
                               f"max_images={self.max_images}")
    rgb = [images_lib.to_rgb(im) for im in raw]
    out: dict[str, Any] = {"valid": True, "images": rgb}
    clips = getattr(example, "audio", [])
    if clips:  # log-mel here: every process needs the frame counts
      out["audio"] = audio_batch.clip_features(self.cfg, clips,
                                               self.audio_frames)
    items = None  # per image the (h, w) of the items the model reads
    if (native_lib.takes_native(self.cfg) or
        naflex_lib.takes_naflex(self.cfg) or tiling_lib.takes_tiles(self.cfg)):
      items = [media_items(self.cfg, *im.shape[:2]) for im in rgb]
    if native_lib.takes_native(self.cfg):  # one item: the resized image
      out["media_sizes"] = [item[0] for item in items]
      out["downscaled"] = sum(im.shape[0] * im.shape[1] >
                              self.cfg.vision.max_pixels for im in rgb)
    if isinstance(example, formats.RegionTargets):
      out["boxes"], out["labels"] = example.boxes, example.labels
      return out
    if isinstance(example, formats.CaptionText):
      out["text_tokens"], out["text_pad_mask"] = formats.caption_tokens(
          self.tok, example.text, self.max_len)
      if example.boxes is not None:
        out["boxes"], out["labels"] = example.boxes, example.labels
      return out

    def sequence(turns):
      rng = None
      if self.train and self.cfg.positions == "v2pe":
        # The same seed for chosen and rejected: equal strides for the prompt.
        rng = np.random.default_rng([self.seed, row, attempt])
      return formats.chat_sequence(
          self.cfg, self.tok, turns, len(rgb), max_len=self.max_len, rng=rng,
          v2pe_stride=None if self.train else self.v2pe_eval_stride,
          media_items=items,
          audio_frames=[int(m.sum()) for _, m in out.get("audio", [])])

    if isinstance(example, formats.PreferencePair):
      for name, answer in (("chosen", example.chosen),
                           ("rejected", example.rejected)):
        out[name] = sequence(example.prompt + [{"role": "assistant",
                                                "content": answer}])
      out["truncated"] = out["chosen"]["truncated"] or out["rejected"][
          "truncated"]
    else:
      out["seq"] = sequence(example.turns)
      out["truncated"] = out["seq"]["truncated"]
      if self.box_attention:  # where each box answer's tokens should look
        out["seq"].update(box_attention_lib.box_attention_targets(
            out["seq"], self.tok, self.box_attention))
      if self.loss_weighting != "token":  # each answer's share of the loss
        out["seq"]["loss_mask"] = answer_weights.answer_loss_weights(
            out["seq"]["loss_mask"], self.loss_weighting)
    return out


def _copy_arrays(tree: Any) -> Any:
  """The tree with its numpy arrays copied (out of grain's shared memory)."""
  if isinstance(tree, np.ndarray):
    return np.array(tree)
  if isinstance(tree, dict):
    return {k: _copy_arrays(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_copy_arrays(v) for v in tree)
  return tree


class BatchIterator:
  """Process-local batches with JSON state (`get_state` / `set_state`).

  Attributes:
    fingerprint: what a restored state must match (format, batch_size,
      seed, max_len, train, num_examples).
  """

  def __init__(self, batches: grain.MapDataset, *, num_workers: int,
               read_options: grain.ReadOptions, fingerprint: dict[str, Any],
               packer: packing_lib.Packer | None = None,
               make_row: Any = None):
    # With a packer, `batches` is the dataset of prepared stream rows.
    self._packer, self._make_row = packer, make_row
    self._batches, self._num_workers = batches, num_workers
    self._read_options, self.fingerprint = read_options, fingerprint
    self._next, self._it = 0, None
    self._stats = dict.fromkeys(batching.STAT_KEYS, 0)

  def __iter__(self) -> BatchIterator:
    return self

  def _start(self) -> None:
    start = self._packer.next_row if self._packer else self._next
    ds = self._batches[start:] if start else self._batches
    ds = ds.to_iter_dataset(self._read_options)
    if self._num_workers > 0:
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain reads its flags in workers.
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._num_workers))
    self._it = iter(ds)

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._start()
    batch = (self._packer.next_batch(self._pull) if self._packer
             else next(self._it))
    for key, n in batch.pop("_stats").items():
      self._stats[key] += int(n)
    self._next += 1
    # Copies out of worker shared memory, which is freed with grain's array.
    return {k: np.array(v) for k, v in batch.items()}

  def _pull(self, n: int) -> list[dict[str, Any]]:
    """The next n prepared stream rows (fewer at the end of the stream)."""
    out = []
    for row in self._it:
      # Pending rows outlive the iterator: copies out of worker memory.
      out.append(_copy_arrays(row) if self._num_workers else row)
      if len(out) == n:
        break
    return out

  def stats(self) -> dict[str, int]:
    """Counts since the start of training: truncated, skipped_<kind>,
    real_tokens, batch_tokens, pack_overflow."""
    return dict(self._stats)

  def log_stats(self) -> dict[str, float]:
    """`stats` and the packing efficiency since the start (metrics)."""
    return {**self.stats(), **packing_lib.efficiency(self._stats)}

  def get_state(self) -> dict[str, Any]:
    return {"next_batch": self._next, "stats": self.stats(),
            **(self._packer.state() if self._packer else {}),
            **self.fingerprint}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues at the state's batch (a JSON round trip is fine).

    Raises:
      DataStateError: the state is damaged (a key missing, a value of the
        wrong type, a negative count): a checkpoint restore falls back.
      ValueError: the state is another pipeline's (other fingerprint).
    """
    # Exact types: a bool is an int, a JSON round trip keeps them.
    same_type = lambda a, b: type(a) is type(b)  # pylint: disable=unidiomatic-typecheck
    is_count = lambda v: same_type(v, 0) and v >= 0
    damaged = []
    if not isinstance(state, Mapping):
      damaged.append(f"a {type(state).__name__}, not a dict")
    else:
      if not is_count(state.get("next_batch")):
        damaged.append(f"next_batch={state.get('next_batch')!r} is not an "
                       "int >= 0")
      stats = state.get("stats")
      if not (isinstance(stats, Mapping) and
              all(is_count(v) for v in stats.values())):
        damaged.append(f"stats={stats!r} is not a dict of ints >= 0")
      if self._packer is not None and (
          "pack_next_row" in state or "pack_pending" in state) and not (
          is_count(state.get("pack_next_row")) and
          isinstance(state.get("pack_pending"), list) and
          all(is_count(i) for i in state["pack_pending"])):
        damaged.append("pack_next_row / pack_pending are not an int >= 0 / "
                       "a list of them")
      damaged += [f"{k}={state.get(k)!r} is not a {type(v).__name__}"
                  for k, v in self.fingerprint.items()
                  if k in state and not same_type(state[k], v)]
    if damaged:
      raise DataStateError(
          f"damaged data-iterator state: {'; '.join(damaged)}")
    wrong = {k: (state.get(k), v) for k, v in self.fingerprint.items()
             if state.get(k) != v}
    if wrong:
      raise ValueError(
          "The data state was saved by another pipeline, (saved, now): "
          f"{wrong}; resuming would not replay the same batches. Restore with "
          "the same data settings, or start in a new workdir.")
    self.close()
    self._next = int(state["next_batch"])
    self._stats = {k: int(state["stats"].get(k, 0)) for k in batching.STAT_KEYS}
    if self._packer is not None:
      self._packer.restore(state, self._make_row)

  def close(self) -> None:
    """Stops worker processes (also done at garbage collection)."""
    if self._it is not None:
      self._it.close()
      self._it = None

  def __enter__(self) -> BatchIterator:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def make_iterator(source: Sequence[Mapping[str, Any]], *, fmt: str,
                  cfg: MLLMConfig, tokenizer: Tokenizer, batch_size: int,
                  seed: int, max_len: int, max_images: int = 1,
                  train: bool = True, process_index: int = 0,
                  process_count: int = 1, num_workers: int = 0,
                  buckets: Sequence[int] | None = None,
                  on_bad_record: str = "skip", resize: str = "square",
                  v2pe_eval_stride: int | None = None,
                  read_threads: int = 2,
                  grounding_questions: int = 0, extra_questions: int = 0,
                  name_heldout: bool = True,
                  recolour: float = 0.0, packing: bool = False,
                  pack_window: int = 0, pack_images: int = 0,
                  pack_policy: str = packing_lib.DEFAULT_POLICY,
                  audio_frames: int = 0,
                  grounded_captions: bool = False,
                  box_attention: bool | str = False,
                  loss_weighting: str = "token") -> BatchIterator:
  """An iterator of this process's rows of each global batch (module doc).

  Args:
    source: random-access decoded records (`builders.load_source`).
    fmt: one of formats.FORMATS.
    cfg: the model config: image side, fusion, positions, normalisation.
    tokenizer: its `image_id` marks images in the text.
    batch_size: global batch size, divisible by process_count.
    seed: shuffling, refill and V2PE-stride seed (int >= 0).
    max_len: longest input sequence (contrastive: the fixed text length).
    max_images: M, image slots per example (more: a bad example).
    train: endless reshuffled epochs, or one pass in order.
    process_index, process_count: this process and how many share a batch.
    num_workers: worker processes (0: in this process).
    buckets: sequence lengths a batch is padded to (None: default_buckets).
    on_bad_record: 'skip' (count it) or 'raise' (BadRecordError).
    resize: images.RESIZE_MODES.
    v2pe_eval_stride: V2PE stride when train=False (None: the default).
    read_threads: threads preparing batches in each process.
    grounding_questions: shapes_chat: up to this many referring questions
      answered by a box per chat (`formats.record_example`); 0 = none.
    extra_questions: shapes_chat: up to this many more questions of the
      five types per chat (`shapes.extra_questions`); 0 = none.
    name_heldout: shapes_chat, preference, training: False swaps each
      question naming a held-out colour x shape pair for another
      (`formats.record_example`).
    recolour: regions, training: the chance that each object is painted a
      random colour, its colour not asked (`recolour.recolour_objects`).
    packing: several examples per row (`packing` module doc).
    pack_window: packing: candidates per global batch (0: 4 per row).
    pack_images: packing: images a row holds (0: 4 x max_images).
    pack_policy: packing: `packing.POLICIES` ('fill' or 'first_fit').
    audio_frames: audio formats: every batch's clips padded to this many
      log-mel frames (one program for every batch; a longer clip is a
      skipped `bad_audio` example); 0 = the longest clip of each batch.
    grounded_captions: shapes_chat: each chat also asks "describe the image
      with boxes." answered by every object named and boxed
      (`grounding.grounded_caption`).
    box_attention: chat formats: each sequence also carries `box_query` and
      `box_keys` (`box_attention.box_attention_targets`: which positions
      write a box answer, which image tokens lie under it), for the
      `box_attention_weight` stage option. True or "box": the whole box;
      "edges": each coordinate's edge of it (`box_attention.TARGETS`).
    loss_weighting: chat formats: what each answer token weighs in
      `loss_mask` (`answer_weights.SCHEMES`: "token", every one 1;
      "square", 1 / sqrt(its answer's length)).
  """
  formats.check_format(fmt)
  if on_bad_record not in ON_BAD_RECORD:
    raise ValueError(f"on_bad_record={on_bad_record!r}; allowed values: "
                     f"{ON_BAD_RECORD}")
  if resize not in images_lib.RESIZE_MODES:
    raise ValueError(f"resize={resize!r}; allowed values: "
                     f"{images_lib.RESIZE_MODES}")
  if cfg.frames != 1:
    raise ValueError(f"cfg.frames={cfg.frames}: the pipeline makes images, "
                     "not videos; use frames=1")
  if not (isinstance(seed, int) and seed >= 0):
    raise ValueError(f"seed={seed!r} must be an int >= 0")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple "
                     f"of process_count={process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, {process_count})")
  for name, value in (("grounding_questions", grounding_questions),
                      ("extra_questions", extra_questions)):
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 0):
      raise ValueError(f"{name}={value!r} must be an int >= 0")
  box_attention = "box" if box_attention is True else box_attention or ""
  if box_attention and box_attention not in box_attention_lib.TARGETS:
    raise ValueError(f"box_attention={box_attention!r}; allowed values: "
                     f"True, False, {box_attention_lib.TARGETS}")
  if loss_weighting not in answer_weights.SCHEMES:
    raise ValueError(f"loss_weighting={loss_weighting!r}; allowed values: "
                     f"{tuple(answer_weights.SCHEMES)}")
  if loss_weighting != "token" and fmt not in formats.CHAT_FORMATS:
    raise ValueError(f"loss_weighting={loss_weighting!r} weighs the answers "
                     f"of chat formats; fmt={fmt!r}: use 'token'")
  if box_attention and (packing or fmt not in formats.CHAT_FORMATS):
    raise ValueError(f"box_attention=True marks box answers in unpacked chat "
                     f"sequences; fmt={fmt!r}, packing={packing}: use a chat "
                     "format and packing=False")
  if not isinstance(grounded_captions, bool):
    raise ValueError(f"grounded_captions={grounded_captions!r} must be True "
                     "or False")
  if not name_heldout and not (fmt in ("shapes_chat", "preference") and
                                train):
    raise ValueError("name_heldout=False swaps questions of training "
                     "shapes_chat and preference examples only; keep it "
                     f"True for fmt={fmt!r}"
                     f"{'' if train else ' and for evaluation'}")
  if not 0.0 <= recolour <= 1.0 or (recolour and not (
      fmt == "regions" and train)):
    raise ValueError(f"recolour={recolour!r} must be in [0, 1], and 0 but "
                     "for training on fmt='regions'")
  if max_images < 1 or max_len < 2 or num_workers < 0:
    raise ValueError(f"need max_images >= 1 (got {max_images}), max_len >= 2 "
                     f"(got {max_len}), num_workers >= 0 (got {num_workers})")
  index = _example_index(source, fmt)
  if not len(index):
    raise ValueError(f"the source has no {fmt!r} examples ({len(source)} "
                     "records)")
  rows = _RowMaker(source, index, fmt=fmt, cfg=cfg, tok=tokenizer, seed=seed,
                   max_len=max_len, max_images=max_images, train=train,
                   on_bad_record=on_bad_record,
                   v2pe_eval_stride=v2pe_eval_stride,
                   grounding_questions=grounding_questions,
                   extra_questions=extra_questions,
                   name_heldout=name_heldout, recolour=recolour,
                   audio_frames=audio_frames,
                   grounded_captions=grounded_captions,
                   box_attention=box_attention,
                   loss_weighting=loss_weighting)
  local = batch_size // process_count
  collate = batching.Collate(
      fmt=fmt, cfg=cfg, pad_id=tokenizer.pad_id,
      buckets=batching.check_buckets(buckets, max_len), max_len=max_len,
      max_images=max_images, lo=process_index * local, local=local,
      resize=resize, audio_frames=audio_frames)
  per_batch = batch_size
  if (native_lib.takes_native(cfg) or naflex_lib.takes_naflex(cfg)) and (
      packing or fmt in ("contrastive", "regions")):
    raise ValueError(
        f"a native-resolution (Qwen2-VL, NaFlex) tower reads each image at "
        f"its own size; {'packing' if packing else f'fmt={fmt!r}'} needs "
        "square images: use packing=False and a chat, caption or preference "
        "format")
  if packing:
    if fmt in ("preference", "contrastive", "regions") + formats.AUDIO_FORMATS:
      raise ValueError(f"packing=True packs image chat sequences; fmt="
                       f"{fmt!r} cannot be packed: use packing=False")
    per_batch = pack_window or packing_lib.DEFAULT_WINDOW_PER_ROW * batch_size
    pack_images = pack_images or 4 * max_images
    if pack_policy not in packing_lib.POLICIES:
      raise ValueError(f"pack_policy={pack_policy!r} is not one of "
                       f"{sorted(packing_lib.POLICIES)}")
    if per_batch < batch_size or pack_images < max_images:
      raise ValueError(f"pack_window={per_batch} must be >= batch_size="
                       f"{batch_size} and pack_images={pack_images} >= "
                       f"max_images={max_images}")
    collate = packing_lib.PackedCollate(
        batch_size=batch_size, pack_images=pack_images, fmt=fmt, cfg=cfg,
        pad_id=tokenizer.pad_id, buckets=batching.check_buckets(
            buckets, max_len), max_len=max_len, max_images=max_images,
        lo=process_index * local, local=local, resize=resize)
  n_rows = (_ENDLESS_ROWS if train
            else math.ceil(len(index) / per_batch) * per_batch)
  if packing:  # Rows, packed one batch after another (`packing.Packer`).
    batches = grain.MapDataset.range(_ENDLESS_ROWS if train
                                     else len(index)).map(rows)
  else:
    batches = (grain.MapDataset.range(n_rows).map(rows)
               .batch(per_batch, drop_remainder=True, batch_fn=collate))
  fingerprint = {"format": fmt, "batch_size": batch_size, "seed": seed,
                 "max_len": max_len, "train": train,
                 "num_examples": len(index)}
  # Absent at 0: states saved before they existed still fit.
  if grounding_questions:
    fingerprint["grounding_questions"] = grounding_questions
  if extra_questions:
    fingerprint["extra_questions"] = extra_questions
  if grounded_captions:
    fingerprint["grounded_captions"] = True
  if not name_heldout:
    fingerprint["name_heldout"] = False
  if recolour:
    fingerprint["recolour"] = recolour
  if audio_frames:
    fingerprint["audio_frames"] = audio_frames
  if packing:  # Absent when off, likewise.
    fingerprint.update(pack_window=per_batch, pack_images=pack_images)
    if pack_policy != "first_fit":  # the only policy before the key
      fingerprint["pack_policy"] = pack_policy
  read = grain.ReadOptions(num_threads=read_threads,
                           prefetch_buffer_size=max(2, read_threads))
  packer = (packing_lib.Packer(collate, per_batch, pack_policy) if packing
            else None)
  return BatchIterator(batches, num_workers=num_workers, read_options=read,
                       fingerprint=fingerprint, packer=packer, make_row=rows)
