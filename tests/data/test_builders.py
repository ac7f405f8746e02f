"""Tests for mmjax.data.builders: TFDS builds without TensorFlow."""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data import builders
from mmjax.data import shapes
from mmjax.data.tokenizer import Tokenizer

_SIZES = dict(num_train=40, num_validation=8, num_test=8, num_heldout=8)


@pytest.fixture(scope="module", autouse=True)
def _quiet():
  tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def shapes_build(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return builders.build(builders.ShapesBuilder, data_dir, **_SIZES), data_dir


def test_shapes_round_trip_through_tfds_data_source(shapes_build):
  builder, data_dir = shapes_build
  name = f"shapes/{builder.builder_config.name}"
  sources = tfds.data_source(name, data_dir=data_dir, download=False)
  assert {s: len(v) for s, v in sources.items()} == {
      "train": 40, "validation": 8, "test": 8, "heldout": 8}
  record = sources["heldout"][3]
  assert set(record) == {"id", "image", "captions", "questions", "answers",
                         "qtypes", "pref_questions", "chosen", "rejected",
                         "objects"}
  assert record["id"] == b"heldout-0000003"  # Text comes back as bytes.
  assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("split", shapes.SPLITS)
def test_decoded_records_equal_the_generator(shapes_build, split):
  source = builders.load_source(shapes_build[0], split)
  for index in (0, len(source) - 1):
    record, ex = source[index], shapes.example(split, index)
    np.testing.assert_array_equal(record["image"], ex["image"])  # Lossless.
    assert record["id"] == ex["id"] and record["captions"] == ex["captions"]
    assert record["questions"] == [q["question"] for q in ex["qa"]]
    assert record["answers"] == [q["answer"] for q in ex["qa"]]
    assert record["qtypes"] == [q["qtype"] for q in ex["qa"]]
    assert record["pref_questions"] == [p["question"] for p in ex["preference"]]
    assert record["chosen"] == [p["chosen"] for p in ex["preference"]]
    assert record["rejected"] == [p["rejected"] for p in ex["preference"]]
    assert json.loads(record["objects"]) == ex["objects"]


def test_building_twice_does_no_work(shapes_build, monkeypatch):
  _, data_dir = shapes_build

  def fail(*args, **kwargs):
    raise AssertionError("the second build generated examples")
  monkeypatch.setattr(shapes, "example", fail)
  builder = builders.build(builders.ShapesBuilder, data_dir, **_SIZES)
  assert builder.data_dir == shapes_build[0].data_dir


def test_tokenizer_is_stored_with_the_dataset(shapes_build):
  builder, _ = shapes_build
  tok = Tokenizer.load(os.path.join(builder.data_dir, "tokenizer.model"))
  assert tok.vocab_size == 512
  # One piece (after sentencepiece's dummy-prefix whitespace piece).
  pieces = [tok.id_to_piece(i) for i in tok.encode("<image>")]
  assert [p for p in pieces if p != "\u2581"] == ["<image>"]
  expected = Tokenizer.train(shapes.benchmark_texts(40), 512, seed=0)
  assert tok.serialized == expected.serialized


def test_worker_processes_write_the_same_records(shapes_build, tmp_path):
  sizes = dict(num_train=6, num_validation=2, num_test=2, num_heldout=3)
  serial = builders.build(builders.ShapesBuilder, str(tmp_path / "a"),
                          num_workers=0, **sizes)
  parallel = builders.build(builders.ShapesBuilder, str(tmp_path / "b"),
                            num_workers=2, **sizes)
  for split in shapes.SPLITS:
    a, b = serial.as_data_source(split), parallel.as_data_source(split)
    assert len(a) == len(b) == sizes[f"num_{split}"]
    for i in range(len(a)):
      assert a[i]["image"].tobytes() == b[i]["image"].tobytes()
      assert a[i]["questions"] == b[i]["questions"]


def test_shapes_options_are_validated():
  with pytest.raises(ValueError, match="num_trian"):
    builders.shapes_config(num_trian=5)
  with pytest.raises(ValueError, match="num_test"):
    builders.shapes_config(num_test=0)


def _png(path, array):
  Image.fromarray(array).save(path)
  return array


@pytest.fixture
def folder(tmp_path):
  """Images: two PNGs, a JPEG, a corrupt file and a 0-byte file."""
  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  (images / "sub").mkdir()
  pixels = {"a.png": _png(images / "a.png", rng.integers(0, 255, (20, 30, 3),
                                                         dtype=np.uint8)),
            "sub/b.png": _png(images / "sub/b.png",
                              np.full((7, 9, 3), 40, np.uint8))}
  Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(images / "c.jpg")
  pixels["c.jpg"] = np.asarray(Image.open(images / "c.jpg").convert("RGB"))
  (images / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
  (images / "empty.png").write_bytes(b"")
  return tmp_path, pixels


def _turns(*values):
  return [{"from": "human" if i % 2 == 0 else "gpt", "value": v}
          for i, v in enumerate(values)]


_LLAVA_BAD = {"missing": "missing image file", "corrupt": "undecodable image",
              "empty_file": "zero-size image",
              "two_tokens": "image token mismatch",
              "no_turns": "empty conversation", "bad_utf8": "invalid UTF-8"}


@pytest.fixture
def llava(folder):
  root, pixels = folder
  records = [
      {"id": "one", "image": "a.png", "conversations": _turns(
          "<image>\nwhat is this?", "noise.")},
      {"id": "missing", "image": "nope.jpg",
       "conversations": _turns("<image>\nq", "a")},
      {"id": "two_turns", "image": "c.jpg", "conversations": _turns(
          "<image>\nwhat colour?", "grey.", "and the size?", "small.")},
      {"id": "corrupt", "image": "corrupt.jpg",
       "conversations": _turns("<image>\nq", "a")},
      {"id": "empty_file", "image": "empty.png",
       "conversations": _turns("<image>\nq", "a")},
      {"id": "two_tokens", "image": "a.png",
       "conversations": _turns("<image>\n<image>\nq", "a")},
      {"id": "no_turns", "image": "a.png", "conversations": []},
      {"id": "bad_utf8", "image": "a.png",
       "conversations": _turns("<image>\nBAD", "a")},
      {"id": "sub", "image": "sub/b.png",
       "conversations": _turns("describe <image>", "flat.")},
      {"id": "text_only", "conversations": _turns("hello", "hi.")},
  ]
  data = json.dumps(records).encode().replace(b"BAD", b"\xc3\x28")
  (root / "llava.json").write_bytes(data)
  return root, pixels, records


def _build_llava(root, data_dir="tfds", **kwargs):
  return builders.build(builders.LlavaConversationsBuilder,
                        str(root / data_dir),
                        json_path=str(root / "llava.json"),
                        image_dir=str(root / "images"), **kwargs)


def test_llava_good_records_load(llava):
  root, pixels, records = llava
  builder = _build_llava(root)
  source = builders.load_source(builder, "train")
  assert [source[i]["id"] for i in range(len(source))] == [
      "one", "two_turns", "sub", "text_only"]
  by_id = {r["id"]: r for r in records}
  for i, name in enumerate(("a.png", "c.jpg", "sub/b.png")):
    np.testing.assert_array_equal(source[i]["image"], pixels[name])
    assert json.loads(source[i]["conversations"]) == by_id[
        source[i]["id"]]["conversations"]
  assert len(json.loads(source[1]["conversations"])) == 4
  assert source[3]["image"] is None  # Text-only conversation.
  raw = builder.as_data_source("train")[1]["image"]
  assert raw == (root / "images" / "c.jpg").read_bytes()  # JPEG kept as is.
  assert "tensorflow" not in sys.modules


def test_llava_bad_records_are_skipped_with_reasons(llava, caplog):
  root, _, _ = llava
  caplog.set_level("INFO")
  builder = _build_llava(root)
  skipped = builders.skipped_records(builder)
  assert {s["id"]: s["reason"].split(":")[0] for s in skipped} == _LLAVA_BAD
  with open(os.path.join(builder.data_dir, builders.SKIPPED_FILE)) as f:
    assert json.load(f) == skipped
  assert "skipped 6 bad records" in caplog.text
  name = f"llava_conversations/{builder.builder_config.name}"
  source = tfds.data_source(name, data_dir=str(root / "tfds"), download=False)
  assert len(source["train"]) == 4


def test_llava_raise_names_the_record(llava):
  root, _, _ = llava
  with pytest.raises(builders.BadRecordError, match="'missing'.*missing image"):
    _build_llava(root, on_bad_record="raise")
  _build_llava(root, data_dir="other")
  # Reusing a build that skipped records does not hide them either.
  with pytest.raises(builders.BadRecordError, match="skipped 6 records"):
    _build_llava(root, data_dir="other", on_bad_record="raise")
  with pytest.raises(ValueError, match="on_bad_record"):
    _build_llava(root, on_bad_record="ignore")


def _build_captions(root, lines, **kwargs):
  (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  return builders.build(builders.ImageCaptionBuilder, str(root / "tfds"),
                        json_path=str(root / "captions.jsonl"),
                        image_dir=str(root / "images"), **kwargs)


_CAPTION_LINES = [
    b'{"image": "a.png", "caption": "random noise."}',
    b'{"image": "nope.png", "caption": "gone."}',
    b'{"image": "c.jpg", "caption": "a grey square.", "id": "grey"}',
    b'{"image": "corrupt.jpg", "caption": "broken."}',
    b'{"image": "empty.png", "caption": "nothing."}',
    b'{"image": "a.png", "caption": "  "}',
    b'{"image": "a.png", "caption": "caf\xe9"}',
    b'{"image": "a.png", "caption": ',
    b'{"image": "sub/b.png", "caption": "flat."}',
]


def test_image_caption_good_and_bad_records(folder):
  root, pixels = folder
  builder = _build_captions(root, _CAPTION_LINES)
  source = builders.load_source(builder, "train")
  assert [(source[i]["id"], source[i]["caption"]) for i in range(3)] == [
      ("0", "random noise."), ("grey", "a grey square."), ("8", "flat.")]
  for i, name in enumerate(("a.png", "c.jpg", "sub/b.png")):
    np.testing.assert_array_equal(source[i]["image"], pixels[name])
  reasons = {s["index"]: s["reason"].split(":")[0]
             for s in builders.skipped_records(builder)}
  assert reasons == {1: "missing image file", 3: "undecodable image",
                     4: "zero-size image", 5: "empty caption",
                     6: "invalid UTF-8", 7: "invalid JSON"}


def test_image_caption_raise(folder):
  root, _ = folder
  with pytest.raises(builders.BadRecordError, match="'1'.*nope.png"):
    _build_captions(root, _CAPTION_LINES, on_bad_record="raise")


def test_decoded_source_converts_modes(folder):
  root, _ = folder
  images = root / "images"
  Image.fromarray(np.full((5, 6), 9, np.uint8)).convert("P").save(
      images / "palette.png")
  Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(images / "alpha.png")
  lines = [b'{"image": "palette.png", "caption": "p"}',
           b'{"image": "alpha.png", "caption": "a"}']
  source = builders.load_source(_build_captions(root, lines), "train")
  np.testing.assert_array_equal(source[0]["image"],
                                np.full((5, 6, 3), 9, np.uint8))
  np.testing.assert_array_equal(source[1]["image"][0, 0], [10, 20, 30])
  assert source[1]["image"].shape == (3, 4, 3)
