"""The `grounded_captions` evaluator: its metrics on hand-made captions, end
to end on a tiny random model, in standalone evaluation, and a recipe that
trains on grounded captions and reports them."""
import json

import pytest

from mmjax import evals, testing
from mmjax.data import builders, grounding
from mmjax.evals import grounded_captions as gc
from mmjax.evals import registry, vqa
from mmjax.models.mllm import MLLM
from tests.helpers import make_workdir, tiny_shapes_dataset
from tests.train.recipe_runner import run_main

RED_CIRCLE = ("red", "circle", (0, 0, 100, 100))
BLUE_STAR = ("blue", "star", (500, 500, 700, 700))


def test_metrics_by_hand():
  images = [[RED_CIRCLE, BLUE_STAR], [RED_CIRCLE], [BLUE_STAR]]
  captions = [
      # Both objects, the star's box off by a little (IoU 0.81): 2 of 2.
      "a red circle [0, 0, 100, 100] and a blue star [520, 500, 700, 700].",
      # Right place, wrong name; then the right one twice (one counts).
      "a blue circle [0, 0, 100, 100], a red circle [0, 0, 100, 100] and a "
      "red circle [0, 0, 100, 90].",
      # No mention at all.
      "a blue star.",
  ]
  m = gc.grounded_caption_metrics(captions, images)
  assert m["count"] == 3
  assert m["precision@0.5"] == pytest.approx(3 / 5)   # 3 land of 5 mentions
  assert m["recall@0.5"] == pytest.approx(3 / 4)      # 3 of 4 objects found
  assert m["se@0.5"] == pytest.approx(vqa.standard_error(3 / 4, 4))
  assert m["exact@0.5"] == pytest.approx(1 / 3)       # only the first image
  assert m["mentions"] == pytest.approx(5 / 3)
  assert m["objects"] == pytest.approx(4 / 3)
  # One object cannot be claimed twice; the better IoU wins it.
  assert gc.match_mentions([RED_CIRCLE, RED_CIRCLE], [RED_CIRCLE]) == 1
  two = [("red", "circle", (0, 0, 100, 100)), ("red", "circle",
                                               (0, 0, 100, 80))]
  assert gc.match_mentions(two[::-1], two) == 2
  empty = gc.grounded_caption_metrics([], [])
  assert empty["count"] == 0 and empty["recall@0.5"] == 0.0
  with pytest.raises(ValueError, match="2 captions for 1 images"):
    gc.grounded_caption_metrics(["a", "b"], images[:1])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return tiny_shapes_dataset(tmp_path_factory.mktemp("data"), num_train=8,
                             num_test=6, num_heldout=6)


def test_evaluator_end_to_end_on_a_random_model(data):
  builder, tok = data
  config = testing.tiny_recipe()
  config.eval.max_examples = 3
  config.eval.batch_size = 4
  model = MLLM(testing.tiny_mllm_config())
  params = testing.random_params(model, scale=3.0)
  ctx = registry.EvalContext(config=config, stage="sft", model=model,
                             params=params, tokenizer=tok, dataset=builder)
  m = registry.EVALUATORS["grounded_captions"](ctx)
  source = builders.load_source(builder, "test")
  for split in ("test", "heldout"):
    assert m[f"{split}/grounded_captions/count"] == 3
    for key in ("precision@0.5", "recall@0.5", "exact@0.5"):
      assert 0.0 <= m[f"{split}/grounded_captions/{key}"] <= 1.0
    samples = m[f"{split}/grounded_captions/samples"]
    assert len(samples) == 3
    for s in samples:
      assert isinstance(s["prediction"], str) and s["matched"] >= 0
  first = m["test/grounded_captions/samples"][0]["answer"]
  assert first == grounding.record_grounded_caption(source[0])
  objects = sum(len(grounding.record_objects(source[i])) for i in range(3))
  assert m["test/grounded_captions/objects"] == pytest.approx(objects / 3)
  # The decode budget fits six objects of the longest names.
  longest = grounding.grounded_caption(
      [{"colour": "purple", "shape": "hexagon", "bbox": (64, 64, 64, 64)}] * 6,
      64)
  assert gc.answer_tokens(tok) >= len(tok.encode(longest)) + 1


@pytest.mark.slow
def test_standalone_evaluation_reports_grounded_captions(tmp_path):
  workdir = make_workdir(tmp_path / "run", tmp_path / "data")
  metrics, markdown = evals.evaluate_run(workdir, "test", max_examples=2,
                                         captions=0, grounded_captions=2)
  assert metrics["grounded_captions/count"] == 2
  assert "| grounded_captions/recall@0.5 |" in markdown
  with pytest.raises(ValueError, match="grounded_captions=-1 must be >= 0"):
    evals.evaluate_run(workdir, "test", grounded_captions=-1)


@pytest.mark.slow
def test_a_recipe_trains_on_grounded_captions_and_reports_them(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main(["--config=configs/shapes.py:size=tiny,steps=2",
                   "--config.stage_order=('sft',)",
                   "--config.data.grounded_captions=True",
                   "--config.data.max_len=320",
                   "--config.stages.sft.evals=grounded_captions",
                   "--config.eval.max_examples=2"],
                  workdir, str(tmp_path / "data"))
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert "test/grounded_captions/recall@0.5=" in out
  report = (workdir / "report.md").read_text()
  for key in ("test/grounded_captions/recall@0.5",
              "heldout/grounded_captions/precision@0.5"):
    assert f"| {key} |" in report, key
  saved = json.loads((workdir / "eval" / "sft.json").read_text())
  assert saved["test/grounded_captions/count"] == 2
  assert json.loads((workdir / "config.json").read_text())["data"][
      "grounded_captions"] is True
