"""The `grounding` evaluator: its metric on hand-made answers, end to end on
a tiny random model, as a stage lists it, and in standalone evaluation."""
import json

import pytest

from mmjax import config as C
from mmjax import evals, testing
from mmjax.data import builders, grounding
from mmjax.evals import grounding as grounding_eval
from mmjax.evals import registry, vqa
from mmjax.models.mllm import MLLM
from mmjax.train import config_checks
from tests.helpers import make_workdir, one_error_line, run_cli, tiny_shapes_dataset
from tests.train.recipe_runner import run_main

KEYS = ("acc@0.5", "se@0.5", "miou", "parsed", "count")


def test_grounding_metrics_by_hand():
  gold = [(0, 0, 100, 100)] * 5
  preds = ["[0, 0, 100, 100]",       # IoU 1
           "[0, 0, 100, 50].",       # IoU 0.5: counts (>=)
           "[50, 0, 150, 100]",      # IoU 1/3
           "[200, 200, 300, 300]",   # IoU 0
           "the red circle"]         # no box: IoU 0, not parsed
  m = grounding_eval.grounding_metrics(preds, gold)
  assert set(m) == set(KEYS)
  assert m["acc@0.5"] == pytest.approx(2 / 5)
  assert m["se@0.5"] == pytest.approx(vqa.standard_error(2 / 5, 5))
  assert m["miou"] == pytest.approx((1 + 0.5 + 1 / 3) / 5)
  assert m["parsed"] == pytest.approx(4 / 5) and m["count"] == 5
  stricter = grounding_eval.grounding_metrics(preds, gold, threshold=0.75)
  assert stricter["acc@0.75"] == pytest.approx(1 / 5)
  empty = grounding_eval.grounding_metrics([], [])
  assert empty["count"] == 0 and empty["acc@0.5"] == 0.0
  with pytest.raises(ValueError, match="2 predictions for 1 boxes"):
    grounding_eval.grounding_metrics(["a", "b"], gold[:1])
  # On some object of the image: the 3rd and 4th answers sit on other
  # objects there (IoU 1), so 4 of 5 answers are on an object.
  others = [(50, 0, 150, 100), (200, 200, 300, 300)]
  on_objects = grounding_eval.grounding_metrics(
      preds, gold, image_boxes=[[g, *others] for g in gold])
  assert on_objects["any_object@0.5"] == pytest.approx(4 / 5)
  assert on_objects["acc@0.5"] == m["acc@0.5"]
  alone = grounding_eval.grounding_metrics(
      preds, gold, image_boxes=[[g] for g in gold])
  assert alone["any_object@0.5"] == pytest.approx(2 / 5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return tiny_shapes_dataset(tmp_path_factory.mktemp("data"), num_train=8,
                             num_test=6, num_heldout=6)


def test_evaluator_end_to_end_on_a_random_model(data):
  builder, tok = data
  config = testing.tiny_recipe()
  config.eval.max_examples = 5
  config.eval.batch_size = 4
  model = MLLM(testing.tiny_mllm_config())
  params = testing.random_params(model, scale=3.0)
  ctx = registry.EvalContext(config=config, stage="sft", model=model,
                             params=params, tokenizer=tok, dataset=builder)
  m = registry.EVALUATORS["grounding"](ctx)
  for split in ("test", "heldout"):
    for key in KEYS:
      assert f"{split}/grounding/{key}" in m, (split, key)
    assert m[f"{split}/grounding/count"] == 5
    for key in ("acc@0.5", "miou", "parsed", "any_object@0.5"):
      assert 0.0 <= m[f"{split}/grounding/{key}"] <= 1.0
    assert (m[f"{split}/grounding/any_object@0.5"] >=
            m[f"{split}/grounding/acc@0.5"])
    samples = m[f"{split}/grounding/samples"]
    assert len(samples) == 4
    for s in samples:
      assert s["question"].startswith("where is the ")
      assert grounding.parse_box(s["answer"]) is not None
      assert isinstance(s["prediction"], str) and 0.0 <= s["iou"] <= 1.0
  # The questions are the first eligible one of each record, in order.
  source = builders.load_source(builder, "test")
  first = grounding.record_grounding_qa(source[0], 1)[0]
  assert m["test/grounding/samples"][0]["question"] == first[0]
  # A box answer needs ~25 tokens with this tokenizer: the decode budget.
  assert grounding_eval.answer_tokens(tok) == len(
      tok.encode("[1000, 1000, 1000, 1000]")) + 1


def test_a_stage_lists_it_as_the_command_line_writes_it():
  config = testing.tiny_recipe()
  # --config.stages.sft.evals=vqa,grounding reaches the config like this.
  config.stages.sft.evals = ("vqa,grounding",)
  assert registry.stage_evals(config.stages.sft) == ("vqa", "grounding")
  C.validate(config, registry.checks(config))
  config.stages.sft.evals = ("vqa", "grounding")
  C.validate(config, registry.checks(config))
  config.stages.sft.evals = ("vqa,groundin",)
  with pytest.raises(C.ConfigError, match="names 'groundin', which is no "
                     "evaluator; evaluators: .*'grounding'"):
    C.validate(config, registry.checks(config))


@pytest.mark.slow
def test_standalone_evaluation_reports_grounding(tmp_path):
  workdir = make_workdir(tmp_path / "run", tmp_path / "data")
  metrics, markdown = evals.evaluate_run(workdir, "test", max_examples=2,
                                         captions=0, grounding=3)
  assert metrics["grounding/count"] == 3
  assert 0.0 <= metrics["grounding/acc@0.5"] <= 1.0
  assert "| grounding/acc@0.5 |" in markdown
  assert "| grounding/miou |" in markdown
  with pytest.raises(ValueError, match="grounding=-1 must be >= 0"):
    evals.evaluate_run(workdir, "test", grounding=-1)


@pytest.mark.slow
def test_a_recipe_trains_with_grounding_and_reports_it(tmp_path):
  """... the grounding recipe (config arg grounding=1: box attention on
  each edge, square answer weights; its metrics in metrics.jsonl)."""
  workdir = tmp_path / "run"
  proc = run_main(["--config=configs/shapes.py:size=tiny,steps=2,grounding=1",
                   "--config.stage_order=('sft',)",
                   "--config.eval.max_examples=3"],
                  workdir, str(tmp_path / "data"))
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  report = (workdir / "report.md").read_text()
  for key in ("test/grounding/acc@0.5", "heldout/grounding/miou",
              "test/grounding/parsed", "test/grounding/se@0.5",
              "test/acc/all"):
    assert f"| {key} |" in report, key
  saved = json.loads((workdir / "eval" / "sft.json").read_text())
  assert saved["test/grounding/count"] == 3
  logged = [json.loads(line) for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]
  mass = [m["box_attention_mass"] for m in logged
          if "box_attention_mass" in m]
  assert mass and all(0.0 < v < 1.0 for v in mass)


def test_the_grounding_recipe_arg():
  config = C.load_config(f"{testing.SHAPES_RECIPE}:size=tiny,grounding=1")
  sft = config.stages.sft
  assert (config.data.grounding_questions, config.data.max_len,
          config.data.loss_weighting, config.model.visual_positions) == (
              3, 320, "square", "sincos2d")
  assert (sft.box_attention_weight, sft.box_attention_target,
          sft.optimizer.lr, sft.steps) == (1.0, "edges", 2e-3, 4000)
  capped = C.load_config(f"{testing.SHAPES_RECIPE}:size=tiny,grounding=1,"
                         "steps=7")
  assert capped.stages.sft.steps == 7  # the cap wins
  assert "grounding" in config.stages.dpo.evals
  config_checks.validate_config(config)
  plain = C.load_config(f"{testing.SHAPES_RECIPE}:size=tiny")
  assert plain.data.grounding_questions == 0
  assert plain.stages.sft.box_attention_weight == 0
  with pytest.raises(C.ConfigError, match="grounding=1 needs fusion"):
    C.load_config(f"{testing.SHAPES_RECIPE}:size=tiny,grounding=1,"
                  "fusion=resampler")


def test_main_refuses_a_negative_grounding_questions(tmp_path):
  proc = run_cli("mmjax.main", "--config=configs/shapes.py:size=tiny",
                 f"--workdir={tmp_path / 'run'}",
                 "--config.data.grounding_questions=-1")
  assert one_error_line(proc) == (
      "error: config.data.grounding_questions=-1 must be an integer >= 0 "
      "(referring questions per shapes_chat image; 0 = off)")
  assert not (tmp_path / "run" / "checkpoints").exists()
