"""The multimodal grain pipeline: schema, masks, images, state, skips."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax import config as config_lib
from mmjax import testing
from mmjax.config import load_config
from mmjax.data import batching, builders, formats, images, pipeline
from mmjax.data.tokenizer import Tokenizer
from mmjax.models import layout
from mmjax.models.mllm import MLLMConfig
from mmjax.train.stages import task
from tests.conftest import REPO

MAX_LEN = 256


def _config(fusion: str, positions: str = "rope", kind: str = "siglip"
            ) -> MLLMConfig:
  """The tiny model: 64 px images in 8 px patches, 16 resampler latents,
  M-RoPE sections (4, 6, 6)."""
  return testing.tiny_mllm_config(fusion, positions, vision=dict(kind=kind))


_SPLITS = dict(num_train=64, num_validation=4, num_test=4, num_heldout=4)


@pytest.fixture(scope="module")
def shapes_builder(tmp_path_factory):
  return builders.build(builders.ShapesBuilder,
                        str(tmp_path_factory.mktemp("data")), **_SPLITS)


@pytest.fixture(scope="module")
def shapes(shapes_builder):
  builder = shapes_builder
  tok = Tokenizer.load(os.path.join(builder.data_dir, builders.TOKENIZER_FILE))
  return builders.load_source(builder, "train"), tok


def _iterator(source, tok, cfg=None, **kwargs):
  args = dict(fmt="shapes", cfg=cfg or _config("projection"), tokenizer=tok,
              batch_size=8, seed=0, max_len=MAX_LEN)
  args.update(kwargs)
  return pipeline.make_iterator(source, **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("fusion,positions", [
    ("projection", "rope"), ("resampler", "mrope"),
    ("cross_attention", "v2pe"), ("one_backbone", "rope")])
def test_batch_schema(shapes, fusion, positions):
  source, tok = shapes
  cfg = _config(fusion, positions)
  batch = next(_iterator(source, tok, cfg))
  b, length = batch["tokens"].shape
  assert b == 8 and length in batching.default_buckets(MAX_LEN)
  want = {"tokens": np.int32, "targets": np.int32, "loss_mask": np.float32,
          "image_token_mask": bool, "media_locations": bool,
          "images": np.float32, "image_mask": bool, "valid": bool,
          "positions": {"v2pe": np.float32}.get(positions, np.int32)}
  assert {k: v.dtype for k, v in batch.items()} == {
      k: np.dtype(v) for k, v in want.items()}
  for key in ("targets", "loss_mask", "image_token_mask", "media_locations"):
    assert batch[key].shape == (b, length), key
  pos_shape = (3, b, length) if positions == "mrope" else (b, length)
  assert batch["positions"].shape == pos_shape
  assert batch["images"].shape == (b, 1, 64, 64, 3)
  assert batch["image_mask"].all() and batch["valid"].all()
  per_image = layout.placeholder_tokens(cfg, 64, 64)
  if fusion == "cross_attention":
    assert not batch["image_token_mask"].any()
    np.testing.assert_array_equal(batch["media_locations"].sum(1), 1)
  else:
    assert not batch["media_locations"].any()
    np.testing.assert_array_equal(batch["image_token_mask"].sum(1), per_image)
  # Every placeholder slot holds the <image> id; targets are tokens shifted.
  slots = batch["image_token_mask"] | batch["media_locations"]
  assert (batch["tokens"][slots] == tok.image_id).all()
  real = batch["loss_mask"].sum(1) > 0
  assert real.all()
  shifted = batch["tokens"][:, 1:] != tok.pad_id
  np.testing.assert_array_equal(batch["targets"][:, :-1][shifted],
                                batch["tokens"][:, 1:][shifted])


def test_loss_mask_is_exactly_the_answer(shapes):
  source, tok = shapes
  batch = next(_iterator(source, tok, train=False))
  record = source[0]  # In order: record 0's questions first.
  for i in range(len(record["questions"])):
    mask = batch["loss_mask"][i] == 1
    assert tok.decode(batch["targets"][i][mask]) == (
        record["answers"][i] + "<|end|>")
    assert not mask[batch["targets"][i] == tok.image_id].any()
    assert not mask[batch["image_token_mask"][i]].any()
    prompt = tok.decode(batch["tokens"][i][~batch["image_token_mask"][i]])
    assert record["questions"][i] in prompt


def test_shapes_chat_supervises_every_answer_of_a_record(shapes):
  source, tok = shapes
  batch = next(_iterator(source, tok, fmt="shapes_chat", train=False))
  for i in range(2):  # In order: records 0 and 1, one chat each.
    record = source[i]
    mask = batch["loss_mask"][i] == 1
    answers = tok.decode(batch["targets"][i][mask]).split("<|end|>")[:-1]
    prompt = tok.decode(batch["tokens"][i][~batch["image_token_mask"][i]])
    # Every question once, each followed by its own answer, one image.
    order = sorted(range(len(record["questions"])),
                   key=lambda q: prompt.index(record["questions"][q]))
    assert [a.strip() for a in answers] == [record["answers"][q]
                                            for q in order]
    assert batch["image_token_mask"][i].sum() == layout.placeholder_tokens(
        _config("projection"), 64, 64)
  # The order differs between records (fixed per record id).
  firsts = set()
  for record in (source[j] for j in range(8)):
    turns = formats.shapes_chat_turns(str(record["id"]), record["questions"],
                                      record["answers"])
    assert turns == formats.shapes_chat_turns(
        str(record["id"]), record["questions"], record["answers"])
    firsts.add(turns[0]["content"].split("\n")[1].split()[0])
  assert len(firsts) > 1


def test_positions_padding(shapes):
  source, tok = shapes
  rope = next(_iterator(source, tok, train=False))
  n = int((rope["tokens"][0] != tok.pad_id).sum())
  np.testing.assert_array_equal(rope["positions"][0], np.arange(
      rope["tokens"].shape[1]))  # 1-D RoPE without padding gaps: 0, 1, ...
  assert n < rope["tokens"].shape[1]
  mrope = next(_iterator(source, tok, _config("resampler", "mrope"),
                         train=False))
  n = int((mrope["tokens"][0] != tok.pad_id).sum())
  assert (mrope["positions"][:, 0, n:] == 1).all()
  assert mrope["positions"][:, 0, n - 1].max() > 1


def test_v2pe_strides_random_in_training_fixed_at_eval(shapes):
  source, tok = shapes
  cfg = _config("projection", "v2pe")
  train = next(_iterator(source, tok, cfg))
  visual = train["positions"][train["image_token_mask"]]
  assert (visual != np.round(visual)).any()  # Fractional steps (stride < 256).
  first, last = train["positions"][:, 0], [
      p[m][-1] for p, m in zip(train["positions"], train["image_token_mask"])]
  assert len(set(np.round(np.subtract(last, first), 4))) > 1  # Strides vary.
  full = next(_iterator(source, tok, cfg, train=False, v2pe_eval_stride=256))
  np.testing.assert_array_equal(full["positions"], np.broadcast_to(
      np.arange(full["tokens"].shape[1]), full["tokens"].shape))


def test_normalisation_and_resize():
  white = np.full((10, 20, 3), 255, np.uint8)
  np.testing.assert_allclose(images.preprocess(white, 64), 1.0, atol=1e-6)
  np.testing.assert_allclose(images.preprocess(white * 0, 64), -1.0)
  clip = images.preprocess(white, 32, kind="clip")
  mean, std = (np.asarray(v) for v in images.NORMALIZATION["clip"])
  np.testing.assert_allclose(clip[0, 0], (1 - mean) / std, rtol=1e-5)
  assert clip.shape == (32, 32, 3) and clip.dtype == np.float32
  grey = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
  rgb = images.to_rgb(grey)
  assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == grey).all()
  assert images.to_rgb(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)
  # 'pad' keeps the aspect ratio: a red 32x64 strip is centred on grey.
  strip = np.zeros((32, 64, 3), np.uint8)
  strip[..., 0] = 255
  padded = images.resize_square(strip, 64, "pad", fill=(127, 127, 127))
  assert (padded[:16] == 127).all() and (padded[48:] == 127).all()
  assert (padded[16:48, :, 0] == 255).all()
  stretched = images.resize_square(strip, 64, "square")
  assert (stretched[..., 0] == 255).all()
  with pytest.raises(layout.ImageSizeError, match="no pixels"):
    images.preprocess(np.zeros((0, 5, 3), np.uint8), 64)
  clip_cfg = _config("projection", kind="clip")
  assert images.normalization_kind(clip_cfg) == "clip"
  assert images.normalization_kind(_config("one_backbone")) == "siglip"


def test_buckets(shapes):
  source, tok = shapes
  assert batching.default_buckets(256) == (64, 128, 256)
  assert batching.default_buckets(200) == (64, 128, 200)
  assert batching.check_buckets([96, 32], 256) == (32, 96, 256)
  with pytest.raises(ValueError, match="buckets"):
    batching.check_buckets([512], 256)
  lengths = {b["tokens"].shape[1] for b in _take(
      _iterator(source, tok, buckets=(80, 96, 112)), 6)}
  assert lengths <= {80, 96, 112, MAX_LEN} and lengths


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_restores_the_following_batches(shapes, num_workers):
  source, tok = shapes
  cfg = _config("projection", "v2pe")  # Random V2PE strides must replay too.
  it = _iterator(source, tok, cfg)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  after = _take(it, 3)
  # Batches are a function of their index: the same with or without workers.
  with _iterator(source, tok, cfg, num_workers=num_workers) as restored:
    restored.set_state(state)
    for a, b in zip(after, _take(restored, 3)):
      _same(a, b)
    assert restored.get_state() == it.get_state()
    assert json.loads(json.dumps(restored.get_state())) == it.get_state()


def test_state_from_another_pipeline_is_refused(shapes):
  source, tok = shapes
  state = _iterator(source, tok).get_state()
  with pytest.raises(ValueError, match="batch_size"):
    _iterator(source, tok, batch_size=4).set_state(state)


def test_the_run_seed_reorders_the_batches_of_the_same_data(shapes_builder):
  """`config.seed` moves a stage's batch order (docs/recipes.md): seed 0
  is the order `data.seed` alone gives, another seed another order over
  the same build."""
  # builder.data_dir is <root>/<name>/<config>/<version>.
  data_dir = shapes_builder.data_dir
  for _ in range(3):
    data_dir = os.path.dirname(data_dir)

  def first_batch(seed):
    config = load_config(f"{REPO}/configs/shapes.py:size=tiny")
    config.update_from_flattened_dict(dict(
        {f"data.{k}": v for k, v in _SPLITS.items()},
        **{"data.data_dir": data_dir, "seed": seed, "batch_size": 4}))
    data = task._mllm_data(config, "sft")  # pylint: disable=protected-access
    return next(data.task_fields["train_iterator"])

  base = first_batch(0)
  _same(first_batch(0), base)
  assert (config_lib.data_order_seed(load_config(
      f"{REPO}/configs/shapes.py:size=tiny")) == 0)
  other = first_batch(1)
  assert not np.array_equal(other["tokens"], base["tokens"])


def test_process_shards_make_the_global_batch(shapes):
  source, tok = shapes
  cfg = _config("resampler", "mrope")
  exact = tuple(range(1, MAX_LEN + 1))  # Pad to the longest of the batch.
  whole = _take(_iterator(source, tok, cfg, buckets=exact), 2)
  parts = [_take(_iterator(source, tok, cfg, buckets=exact, process_index=i,
                           process_count=2), 2) for i in range(2)]
  for step in range(2):
    for key, value in whole[step].items():
      axis = 1 if key == "positions" else 0
      np.testing.assert_array_equal(value, np.concatenate(
          [parts[0][step][key], parts[1][step][key]], axis=axis), key)


def test_epochs_cover_every_question_and_reshuffle(shapes):
  _, tok = shapes
  image = np.zeros((64, 64, 3), np.uint8)
  source = [{"id": f"r{r}", "image": image,
             "questions": [f"q{r}{i}" for i in range(r + 1)],
             "answers": [f"answer {r} {i}" for i in range(r + 1)]}
            for r in range(3)]  # 1 + 2 + 3 = 6 examples.
  it = _iterator(source, tok, batch_size=3, max_len=128)
  answers = []
  for batch in _take(it, 4):
    for row in range(3):
      mask = batch["loss_mask"][row] == 1
      answers.append(tok.decode(batch["targets"][row][mask]))
  epoch1, epoch2 = answers[:6], answers[6:]
  assert sorted(epoch1) == sorted(epoch2) == sorted(
      f"answer {r} {i}<|end|>" for r in range(3) for i in range(r + 1))
  assert epoch1 != epoch2


def _bad_records():
  image = np.full((64, 64, 3), 200, np.uint8)
  chat = lambda q, a: json.dumps([{"from": "human", "value": q},
                                  {"from": "gpt", "value": a}])
  return [
      {"id": "good", "image": image, "conversations": chat("<image>\nq?", "a")},
      {"id": "empty-image", "image": np.zeros((0, 8, 3), np.uint8),
       "conversations": chat("<image>\nq?", "a")},
      {"id": "two-markers", "image": image,
       "conversations": chat("<image>\n<image>\nq?", "a")},
      {"id": "late-image", "image": image,
       "conversations": chat("word " * 150 + "<image>", "a")},
      {"id": "long-answer", "image": image,
       "conversations": chat("<image>\nq?", "word " * 150)},
  ]


def test_bad_records_are_skipped_and_counted(shapes):
  _, tok = shapes
  source = _bad_records()
  kwargs = dict(fmt="llava_conversations", batch_size=5, max_len=128)
  batch = next(_iterator(source, tok, train=False, **kwargs))
  np.testing.assert_array_equal(batch["valid"], [1, 0, 0, 0, 1])
  assert (batch["loss_mask"][~batch["valid"]] == 0).all()
  assert not batch["image_mask"][~batch["valid"]].any()
  assert batch["tokens"].shape[1] == 128  # The cut example fills max_len.
  it = _iterator(source, tok, train=False, **kwargs)
  next(it)
  stats = it.stats()
  assert stats == dict(stats, skipped_image_size=1, truncated=1,
                       skipped_placeholder_mismatch=1, skipped_too_long=1)
  # Training refills the rows: full batches, counts keep growing.
  train = _iterator(source, tok, **kwargs)
  for batch in _take(train, 3):
    assert batch["valid"].all() and (batch["loss_mask"].sum(1) > 0).all()
  assert train.stats()["skipped_too_long"] >= 3


@pytest.mark.parametrize("record_id,problem", [
    ("empty-image", "image_size"), ("two-markers", "placeholder_mismatch"),
    ("late-image", "too_long")])
def test_bad_records_raise_when_asked(shapes, record_id, problem):
  _, tok = shapes
  source = [r for r in _bad_records() if r["id"] in ("good", record_id)]
  it = _iterator(source, tok, fmt="llava_conversations", batch_size=2,
                 max_len=128, train=False, on_bad_record="raise")
  with pytest.raises(builders.BadRecordError,
                     match=f"'{record_id}'.*{problem}"):
    next(it)


def test_llava_folder(shapes, tmp_path):
  _, tok = shapes
  (tmp_path / "img").mkdir()
  for i, size in enumerate([(64, 48), (30, 90)]):
    Image.new("RGB", size, (40 * i, 100, 200)).save(tmp_path / f"img/{i}.png")
  records = [
      {"id": "a", "image": "0.png", "conversations": [
          {"from": "human", "value": "<image>\nwhat colour?"},
          {"from": "gpt", "value": "blue"},
          {"from": "human", "value": "sure?"},
          {"from": "gpt", "value": "yes"}]},
      {"id": "b", "image": "1.png", "conversations": [
          {"from": "human", "value": "describe <image>"},
          {"from": "gpt", "value": "a wide box"}]},
      {"id": "c", "conversations": [
          {"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}]},
  ]
  (tmp_path / "data.json").write_text(json.dumps(records))
  builder = builders.build(builders.LlavaConversationsBuilder,
                           str(tmp_path / "tfds"),
                           json_path=str(tmp_path / "data.json"),
                           image_dir=str(tmp_path / "img"))
  source = builders.load_source(builder, "train")
  batch = next(_iterator(source, tok, fmt="llava_conversations", batch_size=3,
                         train=False, resize="pad"))
  ids = [source[i]["id"] for i in range(3)]
  np.testing.assert_array_equal(batch["image_mask"][:, 0],
                                [i != "c" for i in ids])
  row = ids.index("a")
  mask = batch["loss_mask"][row] == 1
  assert tok.decode(batch["targets"][row][mask]) == "blue<|end|> yes<|end|>"
  assert batch["valid"].all() and batch["images"].shape[1:] == (1, 64, 64, 3)


def test_preference_and_contrastive(shapes):
  source, tok = shapes
  pref = next(_iterator(source, tok, fmt="preference", train=False))
  record = source[0]
  for name in ("chosen", "rejected"):
    assert pref[f"{name}_tokens"].shape == pref["chosen_tokens"].shape
    for i in range(len(record["pref_questions"])):
      mask = pref[f"{name}_loss_mask"][i] == 1
      assert tok.decode(pref[f"{name}_targets"][i][mask]) == (
          record[name][i] + "<|end|>")
  assert pref["images"].shape == (8, 1, 64, 64, 3)
  con = next(_iterator(source, tok, fmt="contrastive", max_len=16,
                       train=False))
  assert con.keys() == {"images", "image_mask", "text_tokens",
                        "text_pad_mask", "object_boxes", "object_labels",
                        "object_valid", "valid"}
  assert con["images"].shape == (8, 1, 64, 64, 3) and con["image_mask"].all()
  # Each picture's objects, as a regions batch would carry them.
  index = formats.example_index(source, "contrastive")
  for i in range(8):
    objects = source[int(index[i, 0])]["objects"]
    n = len(json.loads(objects) if isinstance(objects, (str, bytes))
            else objects)
    assert con["object_valid"][i].tolist() == [1.0] * n + [0.0] * (8 - n)
    assert (con["object_boxes"][i, :n, 2:] > con["object_boxes"][i, :n, :2]
            ).all()
  assert con["text_tokens"].shape == con["text_pad_mask"].shape == (8, 16)
  real = con["text_pad_mask"].sum(1)
  for i in range(8):
    assert con["text_tokens"][i, real[i] - 1] == tok.eos_id
    assert (con["text_tokens"][i, real[i]:] == tok.pad_id).all()
  short = source[0]["captions"][0]
  assert tok.decode(con["text_tokens"][0]) == short[:len(tok.decode(
      con["text_tokens"][0]))]


def test_eval_is_one_pass_in_order(shapes):
  source, tok = shapes
  n = len(formats.example_index(source, "shapes"))
  batches = list(_iterator(source, tok, train=False, batch_size=16))
  assert len(batches) == -(-n // 16)
  assert sum(int(b["valid"].sum()) for b in batches) == n
  assert not batches[-1]["loss_mask"][~batches[-1]["valid"]].any()
