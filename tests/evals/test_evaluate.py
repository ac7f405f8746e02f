"""Tests for mmjax.evals: VQA metrics, greedy decoding, shapes VQA, retrieval, the evaluate CLI."""
import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.evals import retrieval
from mmjax.evals import caption_metrics
from mmjax.evals import vqa
from mmjax.decoding import decode
from mmjax.evals import results
from mmjax.config import load_config
from mmjax.data import shapes
from mmjax.data.tokenizer import IMAGE_ID, Tokenizer
from mmjax.models import layout
from mmjax.models.mllm import MLLM, mllm_config_from_dict
from mmjax.models.text_tower import TextTowerConfig, TwoTower
from tests.conftest import REPO

MAX_NEW = 4


def test_vqa_accuracy_exact_numbers():
  preds = ["Red.", " square ", "two", "yes", "no", "blue", "yes", "no"]
  answers = ["red", "square", "three", "yes", "no", "red", "no", "no"]
  qtypes = ["colour", "shape", "count", "spatial", "existence", "colour",
            "existence", "existence"]
  m = vqa.vqa_accuracy(preds, answers, qtypes)
  assert m["acc/all"] == pytest.approx(5 / 8) and m["count/all"] == 8
  assert m["acc/colour"] == pytest.approx(0.5) and m["count/colour"] == 2
  assert m["acc/shape"] == 1.0 and m["acc/count"] == 0.0
  assert m["acc/spatial"] == 1.0
  assert m["acc/existence"] == pytest.approx(2 / 3)
  assert m["count/existence"] == 3
  assert list(m)[:2] == ["acc/colour", "count/colour"]  # shapes.QTYPES order


def test_vqa_accuracy_rejects_unequal_lengths():
  with pytest.raises(ValueError, match="equally many"):
    vqa.vqa_accuracy(["a"], ["a", "b"], ["colour"])


def test_yes_no_metrics():
  preds = ["yes", "yes", "yes", "no", "Yes.", "no"]
  answers = ["yes", "yes", "no", "yes", "no", "no"]
  m = vqa.yes_no_metrics(preds, answers)
  # tp=2, fp=2, fn=1, tn=1.
  assert m["accuracy"] == pytest.approx(3 / 6)
  assert m["precision"] == pytest.approx(2 / 4)
  assert m["recall"] == pytest.approx(2 / 3)
  assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
  assert m["yes_rate"] == pytest.approx(4 / 6) and m["count"] == 6
  never = vqa.yes_no_metrics(["no", "no"], ["yes", "no"])
  assert never["precision"] == 0.0 and never["f1"] == 0.0
  assert never["yes_rate"] == 0.0


def test_retrieval_recall_identity_and_permutation():
  z = np.eye(6, dtype=np.float32)
  r = retrieval.retrieval_recall(z, z, ks=(1, 5))
  assert all(v == 1.0 for v in r.values()) and len(r) == 4
  # Texts 0 and 1 swapped: image 0's own text scores 0, below text 1 and
  # tied with the four others (ties count against it): rank 5 of 0..5.
  perm = np.array([1, 0, 2, 3, 4, 5])
  r = retrieval.retrieval_recall(z, z[perm], ks=(1, 5, 6))
  assert r["i2t/recall@1"] == pytest.approx(4 / 6)
  assert r["t2i/recall@1"] == pytest.approx(4 / 6)
  assert r["i2t/recall@5"] == pytest.approx(4 / 6)
  assert r["i2t/recall@6"] == 1.0


def test_retrieval_recall_graded_ranks():
  zimg = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
  ztxt = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], np.float32)
  # sims rows: img0 [0, 1, .6]  -> positive 0 ranks 2
  #            img1 [1, 0, .8]  -> positive 0 ranks 2
  #            img2 [.8, .6, 1] -> positive 1 ranks 0
  r = retrieval.retrieval_recall(zimg, ztxt, ks=(1, 2, 3))
  assert r["i2t/recall@1"] == pytest.approx(1 / 3)
  assert r["i2t/recall@2"] == pytest.approx(1 / 3)
  assert r["i2t/recall@3"] == 1.0


def test_collapsed_embeddings_do_not_score_recall():
  z = np.ones((4, 3), np.float32)
  assert retrieval.retrieval_recall(z, z, ks=(1,))["i2t/recall@1"] == 0.0


def _fill(path, leaf, rng, scale):
  """Random weights without compiling init: norms 1, biases 0, weights
  ~ scale / sqrt(fan_in) (scale 3: far from uniform attention, so the
  greedy tokens vary and depend on positions; DESIGN.md section 7)."""
  name = jax.tree_util.keystr(path)
  if name.endswith("['bias']") or "alpha" in name:
    return jnp.zeros(leaf.shape, leaf.dtype)
  if name.endswith("['scale']"):
    return jnp.ones(leaf.shape, leaf.dtype)
  fan_in = leaf.shape[0] if leaf.ndim > 1 else 1
  return jnp.asarray(rng.normal(0, scale * fan_in ** -0.5, leaf.shape),
                     leaf.dtype)


def _random_params(init_fn, scale=1.0):
  abstract = nn.unbox(jax.eval_shape(init_fn, jax.random.key(0)))["params"]
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: _fill(p, x, rng, scale), abstract)


@functools.lru_cache(maxsize=None)
def _model(positions):
  config = load_config(os.path.join(
      REPO, f"configs/shapes.py:size=tiny,positions={positions}"))
  cfg = mllm_config_from_dict(config.model.to_dict())
  model = MLLM(cfg)
  seq = layout.assemble(cfg, [[2, 5], layout.Media(64, 64), [7]], IMAGE_ID)
  pos = seq["positions"][..., None, :]
  params = _random_params(lambda r: model.init(
      r, jnp.asarray(seq["tokens"][None]), jnp.asarray(pos),
      images=jnp.zeros((1, 1, 64, 64, 3)), image_mask=jnp.ones((1, 1), bool),
      image_token_mask=jnp.asarray(seq["image_token_mask"][None])), scale=3.0)
  return model, params


@functools.partial(jax.jit, static_argnames=("model",))
def _encode(model, params, image):
  """f32[1, H, W, C] -> visual tokens [1, 1, T, D] (encoded once, jitted)."""
  return model.apply({"params": params}, image[None],
                     method=MLLM.encode_images)


@functools.partial(jax.jit, static_argnames=("model",))
def _forward(model, params, seq, visual):
  """Logits f32[L, V] of one unpadded sequence (a layout.assemble dict)."""
  return model.apply(
      {"params": params}, seq["tokens"][None],
      seq["positions"][..., None, :], visual=visual,
      image_mask=jnp.ones((1, 1), bool),
      image_token_mask=seq["image_token_mask"][None],
      media_locations=seq["media_locations"][None])[0][0]


def _reference(model, params, pieces, image, generated, shift=0):
  """Greedy tokens of the unpadded sequence prompt + generated.

  One full forward over the unpadded sequence; under the causal mask its
  logits at the slot before generated token k are those of the growing
  sequence prompt + generated[:k] at its last slot, so the argmax there is
  the step-by-step greedy token k (one compile per example instead of one
  per step: per-step shapes took 100 s here).

  Args:
    image: f32[1, H, W, C], the prompt's one image.
    generated: the tokens to check.
    shift: added to the positions of the generated tokens (a wrong layout).
  """
  seq = layout.assemble(model.cfg, pieces + [generated], IMAGE_ID,
                        v2pe_stride=64)
  seq.pop("rope_delta")
  n, length = len(generated), len(seq["tokens"])
  seq["positions"][..., length - n:] += shift
  logits = _forward(model, params, seq, _encode(model, params, image))
  return [int(t) for t in jnp.argmax(logits[length - n - 1:length - 1], -1)]


def _prompts():
  rng = np.random.default_rng(1)
  prompts = [[[2, 9, 10, 11], layout.Media(64, 64), [12, 13, 14, 15, 16, 8]],
             [[2, 9], layout.Media(64, 64), [17, 8]]]
  images = [rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
            for _ in prompts]
  return prompts, images


def test_greedy_generate_matches_stepwise_reference():
  # Every paradigm and position scheme: tests/inference/test_inference.py.
  model, params = _model("rope")
  prompts, images = _prompts()
  # A batch of 3 rows: the two prompts plus one padding row.
  out = decode.greedy_generate(model, params, prompts, images,
                                 image_token_id=IMAGE_ID,
                                 max_new_tokens=MAX_NEW, stop_id=-1,
                                 batch_size=3)
  assert out.texts == ["", ""] and [len(t) for t in out.tokens] == [MAX_NEW] * 2
  assert len(set(out.tokens[0] + out.tokens[1])) > 2  # Not one token repeated.
  shifted = []
  for pieces, image, tokens in zip(prompts, images, out.tokens):
    assert tokens == _reference(model, params, pieces, image, tokens)
    shifted.append(_reference(model, params, pieces, image, tokens, shift=1))
  # The check can fail: generated tokens one position off give others.
  assert shifted != out.tokens
  # Stop at the second token the first prompt generates (same program).
  stop = out.tokens[0][1]
  stopped = decode.greedy_generate(model, params, prompts, images,
                                     image_token_id=IMAGE_ID,
                                     max_new_tokens=MAX_NEW, stop_id=stop,
                                     batch_size=3)
  want = [t[:t.index(stop)] if stop in t else t for t in out.tokens]
  assert stopped.tokens == want and len(stopped.tokens[0]) <= 1


def test_greedy_generate_checks_image_count():
  model, params = _model("rope")
  prompts, images = _prompts()
  with pytest.raises(ValueError, match="equally many"):
    decode.greedy_generate(model, params, prompts, [images[0], images[0][:0]],
                             image_token_id=IMAGE_ID, max_new_tokens=2,
                             stop_id=3)


@functools.lru_cache(maxsize=None)
def _tokenizer():
  return Tokenizer.train(shapes.benchmark_texts(60), 512)


def _source(n):
  records = []
  for i in range(n):
    ex = shapes.example("test", i)
    records.append({"id": ex["id"], "image": ex["image"],
                    "captions": ex["captions"],
                    "questions": [q["question"] for q in ex["qa"]],
                    "answers": [q["answer"] for q in ex["qa"]],
                    "qtypes": [q["qtype"] for q in ex["qa"]]})
  return records


def test_evaluate_shapes_vqa_and_write_results(tmp_path):
  model, params = _model("rope")
  tok = _tokenizer()
  source = _source(2)
  m = vqa.evaluate_shapes_vqa(model, params, model.cfg, tok, source,
                                   max_examples=9, batch_size=3,
                                   num_samples=3)
  assert m["count/all"] == 9
  qtypes = (source[0]["qtypes"] + source[1]["qtypes"])[:9]
  assert m["pope/count"] == qtypes.count("existence") >= 2
  assert m[f"count/{qtypes[0]}"] == qtypes.count(qtypes[0])
  assert 0.0 <= m["absent_yes_rate"] <= 1.0
  assert [s["question"] for s in m["samples"]] == source[0]["questions"][:3]
  preds = [s["prediction"] for s in m["samples"]]
  assert all(isinstance(p, str) and p == p.strip().lower() for p in preds)
  table = results.write_results(str(tmp_path), "sft", m)
  saved = json.loads((tmp_path / "eval" / "sft.json").read_text())
  assert saved["acc/all"] == m["acc/all"] and len(saved["samples"]) == 3
  assert "| acc/all |" in table
  assert "| question | answer | prediction |" in table


def test_evaluate_retrieval_runs_and_counts():
  config = load_config(os.path.join(REPO, "configs/shapes.py:size=tiny"))
  vision = mllm_config_from_dict(config.model.to_dict()).vision
  model = TwoTower(vision, TextTowerConfig(max_len=16), embed_dim=32)
  params = _random_params(lambda r: model.init(
      r, jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 16), jnp.int32)))
  m = retrieval.evaluate_retrieval(model, params, _tokenizer(), _source(5),
                                  text_len=16, batch_size=4, ks=(1, 5))
  assert m["count"] == 5 and m["i2t/recall@5"] == 1.0
  assert 0.0 <= m["t2i/recall@1"] <= 1.0


def test_caption_metrics_match_sacrebleu():
  preds = ["two red circles and a blue square.",
           "a big green triangle on the left.",
           "a blue square above a red circle ."]
  refs = [["two red circles and a blue square.",
           "the image shows two circles."],
          ["a large green triangle on the left.", "a green triangle."],
          ["a blue square and a red circle.",
           "the image shows a small blue square at the top and a red circle."]]
  m = caption_metrics.caption_metrics(preds, refs)
  # sacrebleu 2.6.0 corpus_bleu(tokenize="13a", lowercase=True,
  # smooth_method="none") on the same captions: 75.30360902481641.
  assert m["bleu4"] == pytest.approx(0.7530360902481641, abs=1e-12)
  assert m["count"] == 3
  # Token F1 (words and '.'): 8 predicted, 8 in the best reference, 7 shared.
  assert caption_metrics.token_f1(preds[1], refs[1]) == pytest.approx(7 / 8)
  assert caption_metrics.token_f1(preds[2], refs[2]) == pytest.approx(7 / 8)
  assert m["token_f1"] == pytest.approx((1 + 7 / 8 + 7 / 8) / 3)
  assert caption_metrics.caption_metrics(["a b c d"], [["a b c d"]])[
      "bleu4"] == 1.0
  assert caption_metrics.bleu4(["x y z w"], [["a b c d"]]) == 0.0


def test_evaluate_cli_writes_json_and_markdown(tmp_path):
  from tests.helpers import make_workdir  # pylint: disable=g-import-not-at-top
  run = make_workdir(tmp_path / "run", tmp_path / "data")
  cmd = [sys.executable, "-m", "mmjax.evaluate", f"--workdir={run}",
         "--split=heldout", "--max_examples=6", "--batch_size=4",
         "--captions=2"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads((tmp_path / "run" / "eval" /
                      "final_heldout.json").read_text())
  assert saved["count/all"] == 6 and saved["caption/count"] == 2
  assert 0 <= saved["caption/bleu4"] <= 1 and "pope/f1" in saved
  assert saved["checkpoint"].endswith(os.path.join("dpo", "2"))
  md = (tmp_path / "run" / "eval" / "final_heldout.md").read_text()
  assert "| acc/all |" in md and "| caption/token_f1 |" in md
  assert "### Evaluation of stage `final_heldout`" in proc.stdout
  bad = subprocess.run(cmd[:3] + ["--split=train"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "split" in bad.stderr
