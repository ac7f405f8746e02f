"""The benchmark readers on tiny copies of the published layouts, their
one-line errors, and the resumable runner with a stand-in model."""
import json
import os
import shutil

import pytest

from mmjax.evals import benchmarks
from mmjax.evals.benchmarks import answers as answers_lib
from mmjax.evals.benchmarks import runner
from mmjax.evals.benchmarks.question import BenchmarkDataError
from tests.evals.benchmark_layouts import LAYOUT_WRITERS, QUESTION_ROWS


def test_every_benchmark_is_registered_and_in_the_config_slots():
  from mmjax import config as config_lib  # pylint: disable=g-import-not-at-top
  assert tuple(benchmarks.BENCHMARKS) == config_lib.BENCHMARK_NAMES
  assert set(LAYOUT_WRITERS) == set(benchmarks.BENCHMARKS)


@pytest.mark.parametrize("name", list(LAYOUT_WRITERS))
def test_reader_reads_the_layout(name, tmp_path):
  root = LAYOUT_WRITERS[name](tmp_path / name)
  bench = benchmarks.get(name)
  qs = runner.select_questions(bench, root, bench.splits[0])
  assert len(qs) == QUESTION_ROWS[name]
  assert len({q.qid for q in qs}) == len(qs)
  for q in qs:
    assert q.prompt.strip() and json.dumps(dict(q.truth))
    image = runner.image_input(q)
    assert isinstance(image, str) or image.size == (40, 40)


def test_vqav2_reads_ten_answers_and_coco_file_names(tmp_path):
  root = LAYOUT_WRITERS["vqav2"](tmp_path)
  qs = benchmarks.get("vqav2").read(root, "val")
  assert qs[2].image.endswith("val2014/COCO_val2014_000000000042.jpg")
  assert len(qs[0].truth["answers"]) == 10
  assert qs[1].truth["answer_type"] == "yes/no"
  assert qs[0].prompt.endswith("\n" + benchmarks.vqav2.SHORT_ANSWER)


def test_pope_splits(tmp_path):
  root = LAYOUT_WRITERS["pope"](tmp_path)
  pope = benchmarks.get("pope")
  assert len(pope.read(root, "adversarial")) == 4
  assert {q.qid.split("/")[0] for q in pope.read(root, "all")} == {
      "random", "popular", "adversarial"}
  os.makedirs(f"{root}/coco")  # LLaVA's layout: the question files in coco/
  os.rename(f"{root}/coco_pope_popular.json",
            f"{root}/coco/coco_pope_popular.json")
  assert len(pope.read(root, "popular")) == 4


def test_mme_both_folder_forms(tmp_path):
  root = LAYOUT_WRITERS["mme"](tmp_path)
  qs = benchmarks.get("mme").read(root, "test")
  art = [q for q in qs if q.truth["subtask"] == "artwork"]
  assert len(art) == 4 and art[0].image.endswith("artwork/images/10002.jpg")
  assert qs[0].prompt.endswith("Please answer yes or no.")
  assert qs[0].prompt.count("Please answer yes or no.") == 1


def test_limit_keeps_rotations_and_image_pairs_together(tmp_path):
  mmb = benchmarks.get("mmbench")
  qs = runner.select_questions(mmb, LAYOUT_WRITERS["mmbench"](tmp_path / "m"),
                               "dev_en", limit=1)
  assert [q.qid for q in qs] == ["0/0", "0/1", "0/2", "0/3"]
  mme = benchmarks.get("mme")
  qs = runner.select_questions(mme, LAYOUT_WRITERS["mme"](tmp_path / "e"),
                               "test", limit=2)
  assert len(qs) == 4 and len({q.truth["group"] for q in qs}) == 2


def _break(tmp_path, name, edit):
  root = LAYOUT_WRITERS[name](tmp_path / name)
  edit(root)
  bench = benchmarks.get(name)
  with pytest.raises(BenchmarkDataError) as e:
    runner.select_questions(bench, root, bench.splits[0])
  message = str(e.value)
  assert "\n" not in message
  return message


def _rewrite_json(path, change):
  data = json.load(open(path))
  change(data)
  json.dump(data, open(path, "w"))


def test_bad_layouts_say_what_is_expected(tmp_path):
  msg = _break(tmp_path, "vqav2", lambda r: os.remove(
      f"{r}/v2_mscoco_val2014_annotations.json"))
  assert "v2_mscoco_val2014_annotations.json not found" in msg
  assert "answers" in msg and "val2014/COCO_val2014_" in msg
  msg = _break(tmp_path, "textvqa", lambda r: _rewrite_json(
      f"{r}/TextVQA_0.5.1_val.json",
      lambda d: d["data"][0].update(answers=[])))
  assert "has no answers" in msg and "answers: [str x 10]" in msg
  msg = _break(tmp_path, "gqa", lambda r: os.remove(
      f"{r}/images/n161313.jpg"))
  assert "201640614" in msg and "images/n161313.jpg" in msg and "missing" in msg
  msg = _break(tmp_path, "pope", lambda r: _rewrite_json_lines(
      f"{r}/coco_pope_random.json", "label"))
  assert "lacks 'label'" in msg and "question_id, image, text, label" in msg
  msg = _break(tmp_path, "mmbench", lambda r: os.rename(
      f"{r}/MMBench_DEV_EN.tsv", f"{r}/mmbench.tsv"))
  assert "MMBench_DEV_EN.tsv not found" in msg and "base64" in msg
  msg = _break(tmp_path, "mme", lambda r: [
      shutil.rmtree(f"{r}/{s}") for s in ("existence", "artwork",
                                          "code_reasoning")])
  assert "no MME subtask folder" in msg and "questions_answers_YN" in msg


def _rewrite_json_lines(path, drop):
  rows = [json.loads(l) for l in open(path)]
  rows[1].pop(drop)
  open(path, "w").write("".join(json.dumps(r) + "\n" for r in rows))


def test_vqav2_annotation_without_answers(tmp_path):
  msg = _break(tmp_path, "vqav2", lambda r: _rewrite_json(
      f"{r}/v2_mscoco_val2014_annotations.json",
      lambda d: d["annotations"][1].pop("answers")))
  assert "lacks 'answers'" in msg


def test_unknown_benchmark_and_split():
  with pytest.raises(BenchmarkDataError, match="benchmarks: vqav2, textvqa"):
    benchmarks.get("mmmu")
  with pytest.raises(BenchmarkDataError, match="random, popular, adversarial"):
    benchmarks.get("pope").check_split("hard")


class _Model:
  """Stands in for a `Run`: answers "yes", counts the questions asked."""
  checkpoint = "ckpt/1"

  def __init__(self):
    self.asked = []

  def generate(self, prompts, images, **kwargs):
    del kwargs
    assert len(prompts) == len(images)
    self.asked += prompts

    class Out:
      texts = ["yes"] * len(prompts)
    return Out()


def test_runner_appends_answers_and_resumes(tmp_path):
  root = LAYOUT_WRITERS["pope"](tmp_path / "pope")
  pope = benchmarks.get("pope")
  out = str(tmp_path / "eval")
  model = _Model()
  m, md = runner.run_benchmark(model, pope, root, "all", out_dir=out,
                               name="pope_all", limit=5, batch_size=2)
  assert len(model.asked) == 5 and m["count"] == 5 and m["questions"] == 5
  assert m["benchmark"] == "pope" and m["checkpoint"] == "ckpt/1"
  lines = open(f"{out}/pope_all.answers.jsonl").read().splitlines()
  assert len(lines) == 5 and json.loads(lines[0])["prediction"] == "yes"
  assert json.load(open(f"{out}/pope_all.json"))["yes_ratio"] == 100.0
  assert "### pope (all)" in md and "| f1 |" in md
  # A rerun over more questions asks only the new ones; a cut-off last
  # line (a crash mid-write) is skipped and re-asked.
  with open(f"{out}/pope_all.answers.jsonl", "a") as f:
    f.write('{"qid": "random/')
  model = _Model()
  m, _ = runner.run_benchmark(model, pope, root, "all", out_dir=out,
                              name="pope_all", batch_size=4)
  assert len(model.asked) == 7 and m["count"] == 12
  # Another checkpoint's answers are not reused.
  other = _Model()
  other.checkpoint = "ckpt/2"
  runner.run_benchmark(other, pope, root, "random", out_dir=out,
                       name="pope_all", batch_size=4)
  assert len(other.asked) == 4


def test_answer_logs_of_several_processes_merge(tmp_path):
  logs = [answers_lib.AnswerLog(str(tmp_path), "gqa_testdev", i, 2)
          for i in range(2)]
  assert logs[0].path != logs[1].path and "p1-of-2" in logs[1].path
  for i, log in enumerate(logs):
    log.append([{"qid": f"q{i}", "prediction": str(i), "checkpoint": "c"}])
  assert logs[0].answered("c") == {"q0": "0"}
  assert logs[1].merged("c") == {"q0": "0", "q1": "1"}
