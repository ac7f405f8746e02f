"""shapes_detail: digits on non-square canvases, its builder, recipe,
legibility reader and sweep."""
import os
import sys

import ml_collections
import numpy as np
import pytest

from mmjax import testing
from mmjax.config import ConfigError, load_config
from mmjax.data import (builders, datasets, detail_builder, pipeline, shapes,
                        shapes_detail)
from mmjax.data.tokenizer import Tokenizer
from mmjax.evals import legibility
from mmjax.sweeps import plan as sweep_plan
from mmjax.train import config_checks
from tests.conftest import REPO

N = 12  # Examples per split that the pure-function tests look at.


def test_examples_are_a_pure_function_of_their_index():
  a = shapes_detail.example("train", 5, seed=3)
  b = shapes_detail.example("train", 5, seed=3)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert {k: v for k, v in a.items() if k != "image"} == {
      k: v for k, v in b.items() if k != "image"}
  other = shapes_detail.example("train", 6, seed=3)
  assert a["qa"] != other["qa"] or not np.array_equal(a["image"],
                                                      other["image"])
  with pytest.raises(ValueError, match="split"):
    shapes_detail.example("dev", 0)


def test_canvases_are_the_listed_ones_and_objects_fit():
  seen = set()
  for i in range(N):
    ex = shapes_detail.example("train", i)
    height, width, _ = ex["image"].shape
    assert (width, height) in shapes_detail.CANVASES
    seen.add((width, height))
    for obj in ex["objects"]:
      x0, y0, x1, y1 = obj["bbox"]
      dx0, dy0, dx1, dy1 = obj["digit_box"]
      assert 0 <= x0 <= dx0 < dx1 <= x1 <= width
      assert 0 <= y0 <= dy0 < dy1 <= y1 <= height
  assert len(seen) > 1 and any(w != h for w, h in seen)


def test_font_digits_are_distinct_and_legible_at_native_size():
  flat = shapes_detail.FONT.reshape(10, -1)
  assert len({row.tobytes() for row in flat}) == 10
  for i in range(N):
    ex = shapes_detail.example("test", i)
    for obj in ex["objects"]:
      x0, y0, x1, y1 = obj["digit_box"]
      crop = ex["image"][y0:y1, x0:x1].astype(int)
      inked = np.all(crop == shapes_detail.ink(obj["colour"]), axis=-1)
      # Nearest glyph by differing pixels: exactly the digit drawn.
      errors = [np.sum(inked != shapes_detail.glyph(d)) for d in range(10)]
      assert errors[obj["digit"]] == 0 and sorted(errors)[1] > 0


def test_questions_match_the_scene():
  for split in ("train", "heldout"):
    for i in range(N):
      ex = shapes_detail.example(split, i)
      objects = ex["objects"]
      pairs = [(o["colour"], o["shape"]) for o in objects]
      held = [p for p in pairs if p in shapes.HELDOUT_PAIRS]
      assert bool(held) == (split == "heldout")
      assert {q["qtype"] for q in ex["qa"]} <= set(shapes_detail.QTYPES)
      numbers = [q for q in ex["qa"] if q["qtype"] == "number"]
      assert len(numbers) <= shapes_detail.NUMBER_QUESTIONS
      for q in numbers:
        named = [o for o in objects
                 if f"the {o['colour']} {o['shape']}?" in q["question"]]
        assert len(named) == 1 and q["answer"] == str(named[0]["digit"])
      for p, q in zip(ex["preference"], ex["qa"]):
        assert (p["question"], p["chosen"]) == (q["question"], q["answer"])
        assert p["rejected"] != p["chosen"]
  asked = [q for i in range(N) for q in shapes_detail.example("test", i)["qa"]
           if q["qtype"] == "number"]
  assert asked  # The new kind occurs.


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("detail"))
  builder = builders.build(detail_builder.ShapesDetailBuilder, root,
                           num_train=16, num_validation=4, num_test=4,
                           num_heldout=4)
  return root, builder


def test_builder_writes_array_record_the_pipeline_reads(built):
  _, builder = built
  names = os.listdir(builder.data_dir)
  assert "shapes_detail-train.array_record-00000-of-00001" in names
  source = builders.load_source(builder, "train")
  record, ex = source[3], shapes_detail.example("train", 3)
  np.testing.assert_array_equal(record["image"], ex["image"])
  assert list(record["qtypes"]) == [q["qtype"] for q in ex["qa"]]
  tok = Tokenizer.load(os.path.join(builder.data_dir,
                                    builders.TOKENIZER_FILE))
  cfg = testing.tiny_mllm_config("projection", "rope")
  batch = next(pipeline.make_iterator(
      source, fmt="shapes_chat", cfg=cfg, tokenizer=tok, batch_size=4,
      seed=0, max_len=256, train=False))
  assert batch["images"].shape == (4, 1, cfg.side, cfg.side, 3)
  answers = tok.decode(batch["targets"][0][batch["loss_mask"][0] == 1])
  # Every answer, the digits included, is supervised (in the chat's order).
  assert sorted(a.strip() for a in answers.split("<|end|>")[:-1]) == sorted(
      source[0]["answers"])


def test_config_data_dataset_picks_the_builder(built):
  root, _ = built
  config = ml_collections.ConfigDict(dict(data=dict(
      dataset="shapes_detail", data_dir=root, num_train=16, num_validation=4,
      num_test=4, num_heldout=4, seed=0, vocab_size=512, image_size=64)))
  assert isinstance(datasets.shapes_builder(config),
                    detail_builder.ShapesDetailBuilder)
  config.data.dataset = "shapes"
  assert type(datasets.shapes_builder(config)) is builders.ShapesBuilder
  config.data.dataset = "shape_detail"
  with pytest.raises(ConfigError, match="allowed values: shapes, "):
    datasets.shapes_builder(config)
  with pytest.raises(ValueError, match="Unknown shapes_detail options"):
    detail_builder.detail_config(image_size=64)


def test_recipe_inputs_native_and_tiled():
  path = os.path.join(REPO, "configs", "shapes_detail.py")
  native = load_config(f"{path}:size=tiny,input=native")
  assert native.model.vision.kind == "qwen2vl"
  # The largest canvas, 256 x 128, at its own size: 16 x 8 merged tokens.
  assert native.model.vision.max_pixels == 256 * 128
  tiled = load_config(f"{path}:size=tiny,input=tiled,side=64")
  assert tiled.model.tiling == "internvl" and tiled.model.max_tiles == 6
  assert tiled.data.max_len == 160 + 7 * 64
  for config in (native, tiled):
    config_checks.validate_config(config)
    assert "siglip" not in config.stage_order
    assert config.stages.align.trainable[0] == "vision"
  square = load_config(f"{path}:size=tiny")
  assert "siglip" in square.stage_order
  assert "vision" not in square.stages.sft.trainable
  for bad, match in (("input=native,tower=0", "needs tower=1"),
                     ("input=tiled,fusion=resampler", "needs tower=1"),
                     ("input=naflex", "allowed values: square, native")):
    with pytest.raises(ConfigError, match=match):
      load_config(f"{path}:size=tiny,{bad}")


def test_recipe_sets_side_and_refuses_regions_and_bad_sides():
  path = os.path.join(REPO, "configs", "shapes_detail.py")
  config = load_config(f"{path}:size=tiny,side=96")
  assert config.data.dataset == "shapes_detail"
  assert config.model.vision.image_size == 96
  assert "regions" not in config.stage_order
  assert config.data.max_len >= (96 // 8) ** 2 + 16
  config_checks.validate_config(config)
  with pytest.raises(ConfigError, match="multiple of the patch size"):
    load_config(f"{path}:side=100")
  shapes_config = load_config(os.path.join(REPO, "configs", "shapes.py"))
  shapes_config.data.dataset = "shapes_detail"
  with pytest.raises(ConfigError, match="needs square images"):
    config_checks.validate_config(shapes_config)


def test_resolution_sweep_plans_validate():
  path = os.path.join(REPO, "experiments", "resolution_sweep.py")
  sys.path.insert(0, os.path.dirname(path))  # As mmjax.sweep does.
  try:
    plans = sweep_plan.build_plans(sweep_plan.load_sweep(path), path,
                                   "/tmp/unused", size="tiny")
  finally:
    sys.path.remove(os.path.dirname(path))
  inputs = [(p.config.model.vision.kind, p.config.model.vision.image_size,
             p.config.model.projector, p.config.model.get("tiling", "none"))
            for p in plans]
  assert inputs == [("siglip", 64, "mlp", "none"), ("siglip", 96, "mlp", "none"),
                    ("siglip", 128, "mlp", "none"),
                    ("siglip", 128, "pixel_shuffle", "none"),
                    ("qwen2vl", 32, "patch_merger", "none"),
                    ("siglip", 64, "mlp", "internvl")]
  for p in plans:  # one recipe: towers trained in align and sft, no siglip
    config_checks.validate_config(p.config)
    assert p.config.stage_order == ("align", "sft", "dpo")
    assert "vision" in p.config.stages.sft.trainable


def test_legibility_reader_reads_native_and_loses_detail_when_small():
  rows = legibility.legibility([24, None], num_examples=3, noises=(48.0,))
  small, native = rows
  assert native["exact"] == 1.0 and native["noisy"] == [1.0]
  assert small["separation"] < native["separation"] / 3
  assert small["noisy"][0] < 1.0
  assert legibility.main(["--sides=4"]) == 2
  wide = shapes_detail.DetailScene((), 256, 128)
  assert legibility._glyph_size(wide, 64, "square") == (1.5, 5.0)
  assert legibility._glyph_size(wide, 64, "pad") == (1.5, 2.5)


def test_vqa_accuracy_reports_number_questions():
  # The sweep's results.md reads acc/<qtype> for every type present.
  from mmjax.evals import vqa  # pylint: disable=g-import-not-at-top
  metrics = vqa.vqa_accuracy(["7", "3", "red"], ["7", "8", "red"],
                             ["number", "number", "colour"])
  assert metrics["acc/number"] == 0.5 and metrics["count/number"] == 2
