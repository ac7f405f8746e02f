"""The shapes evaluators read each record as the model takes images: at its
own size (Qwen2-VL, NaFlex) or as InternVL tiles, with each prompt's
placeholders to match (`vqa.record_pixels`, `vqa.fit_prompts`)."""
import functools

import numpy as np
import pytest

from mmjax import testing
from mmjax.config import load_config
from mmjax.data import shapes
from mmjax.data.tokenizer import Tokenizer
from mmjax.evals import vqa
from mmjax.inference import media as media_lib
from mmjax.models import build, layout
from tests.conftest import REPO

_LLAVA = f"{REPO}/configs/llava.py"


def _tiled():
  config = load_config(f"{_LLAVA}:llava15_7b_tiny")
  config.model.tiling = "internvl"
  config.model.max_tiles = 4
  return config


CONFIGS = {
    "native": lambda: load_config(f"{_LLAVA}:qwen2vl_2b_tiny"),
    "naflex": lambda: load_config(f"{_LLAVA}:naflex_qwen2_1_5b_tiny"),
    "tiled": _tiled,
}


@functools.lru_cache(maxsize=None)
def _tokenizer():
  return Tokenizer.train(shapes.benchmark_texts(60), 512)


def _source(n):
  out = []
  for i in range(n):
    ex = shapes.example("test", i)
    out.append({"id": ex["id"], "image": ex["image"],
                "questions": [q["question"] for q in ex["qa"]],
                "answers": [q["answer"] for q in ex["qa"]],
                "qtypes": [q["qtype"] for q in ex["qa"]]})
  return out


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_shapes_vqa_runs_at_the_models_own_image_layout(kind):
  model = build.build_model(CONFIGS[kind]())
  params = testing.random_params(model, seed=2)
  cfg, tok, source = model.cfg, _tokenizer(), _source(2)
  media = vqa.record_pixels(cfg, source[0], "square")
  pieces = [[1, 2], layout.Media(cfg.side, cfg.side), [3]]
  fitted, model_media = vqa.fit_prompts([pieces], [media])
  n_items = len(model_media[0])
  assert sum(isinstance(p, layout.Media) for p in fitted[0]) == n_items
  if kind == "tiled":
    assert isinstance(media, media_lib.TiledMedia) and n_items > 1
  if kind == "naflex":
    assert isinstance(media, media_lib.NaFlexMedia)
  m = vqa.evaluate_shapes_vqa(model, params, cfg, tok, source,
                              max_examples=4, batch_size=2, num_samples=4)
  assert m["count/all"] == 4
  assert all(isinstance(s["prediction"], str) for s in m["samples"])
  assert np.isfinite(m["acc/all"])
