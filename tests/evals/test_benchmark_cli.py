"""`python -m mmjax.evaluate --benchmark=...` end to end on a tiny random
model and tiny copies of each benchmark's layout: the plumbing (files,
counts, metrics recomputed from the stored answers), and bad input."""
import json
import os

import pytest

from mmjax.evals import benchmarks
from tests.evals.benchmark_layouts import LAYOUT_WRITERS, QUESTION_ROWS
from tests.helpers import make_workdir, one_error_line, run_cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench")
  run = make_workdir(root / "run", root / "data")
  data = {name: write(root / name) for name, write in LAYOUT_WRITERS.items()}
  return run, data


def _numbers(metrics):
  return {k: v for k, v in metrics.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUT_WRITERS))
def test_evaluate_benchmark_cli(setup, name):
  run, data = setup
  bench = benchmarks.get(name)
  split = bench.splits[0]
  proc = run_cli("mmjax.evaluate", f"--workdir={run}", f"--benchmark={name}",
                 f"--data={data[name]}", "--batch_size=16",
                 "--max_new_tokens=3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"### {name} ({split})" in proc.stdout
  assert f"[{name}_{split}] {QUESTION_ROWS[name]}/{QUESTION_ROWS[name]}" in (
      proc.stderr)
  out = os.path.join(run, "eval", f"{name}_{split}")
  saved = json.load(open(out + ".json"))
  assert saved["benchmark"] == name and saved["split"] == split
  assert saved["questions"] == QUESTION_ROWS[name]
  assert saved["checkpoint"].endswith(os.path.join("dpo", "2"))
  assert open(out + ".md").read().startswith(f"### {name} ({split})")
  rows = [json.loads(l) for l in open(out + ".answers.jsonl")]
  assert len(rows) == QUESTION_ROWS[name]
  # The metrics are the benchmark's score of the stored answers.
  questions = bench.read(data[name], split)
  answers = {r["qid"]: r["prediction"] for r in rows}
  expected = bench.score(questions, [answers[q.qid] for q in questions])
  assert _numbers(saved).items() >= _numbers(expected).items()


def test_benchmark_bad_input_exits_2_with_one_line(tmp_path):
  pope = LAYOUT_WRITERS["pope"](tmp_path / "pope")
  os.remove(f"{pope}/val2014/COCO_val2014_000000210789.jpg")
  workdir = str(tmp_path / "none")  # never reached: the data is checked first
  cases = [
      (["--benchmark=mmmu", f"--data={pope}"], "unknown benchmark 'mmmu'"),
      (["--benchmark=pope", f"--data={pope}"],
       "COCO_val2014_000000210789.jpg, is missing"),
      (["--benchmark=pope", f"--data={pope}", "--split=hard"],
       "its splits: all, random, popular, adversarial"),
      (["--benchmark=gqa", f"--data={pope}"],
       "testdev_balanced_questions.json not found"),
      (["--benchmark=pope"], "needs --data=DIR"),
      (["--split=adversarial"], "a benchmark's splits"),
      (["--data=/x"], "--data goes with --benchmark"),
      (["--benchmark=pope", f"--data={pope}", "--captions=4"],
       "--captions is for the shapes benchmark"),
  ]
  for args, expected in cases:
    line = one_error_line(run_cli("mmjax.evaluate", f"--workdir={workdir}",
                                  *args))
    assert expected in line, (args, line)


def test_a_stage_names_a_benchmark(setup, tmp_path):
  from mmjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mmjax import inference, testing  # pylint: disable=g-import-not-at-top
  from mmjax.evals import registry  # pylint: disable=g-import-not-at-top
  run_dir, data = setup
  config = testing.tiny_recipe()
  config.stages[config.stage_order[-1]].evals = ("vqa,pope",)
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.eval.benchmarks.pope.data must be"):
    config_lib.validate(config, registry.checks(config))
  config.eval.benchmarks.pope.update(data=data["pope"], split="random",
                                     limit=3)
  config_lib.validate(config, registry.checks(config))
  run = inference.load(run_dir)
  ctx = registry.EvalContext(config=run.config, stage="dpo", model=run.model,
                             params=run.params, tokenizer=run.tokenizer,
                             dataset=None, workdir=str(tmp_path))
  ctx.config.eval.benchmarks = config.eval.benchmarks
  metrics = registry.EVALUATORS["pope"](ctx)
  assert metrics["pope/count"] == 3 and metrics["pope/split"] == "random"
  assert 0 <= metrics["pope/f1"] <= 100
  rows = open(tmp_path / "eval" / "dpo_pope_random.answers.jsonl").readlines()
  assert len(rows) == 3
