"""The lmms-eval adapter: its request methods on Instance-like stand-ins
(always), and a local lmms-eval task run through it in-process (when
lmms-eval is installed: pip install -e '.[lmms]')."""
import json
import textwrap

import numpy as np
import pytest

from mmjax import inference
from mmjax.evals import lmms_requests
from tests.helpers import draw_png, make_workdir


class _Request:
  """What the adapter reads of lmms-eval's Instance: `args`."""

  def __init__(self, *args):
    self.args = args


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("lmms")
  run = inference.load(make_workdir(root / "run", root / "data"))
  image = draw_png(root / "shapes.png")
  docs = [{"question": "is there a red square?", "answer": "yes",
           "image": image},
          {"question": "what colour is the circle?", "answer": "blue",
           "image": image},
          {"question": "what shape is red?", "answer": "square",
           "image": image}]
  return run, docs, root


def _visual(doc):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return [Image.open(doc["image"]).convert("RGB")]


def test_cut_at_stops():
  assert lmms_requests.cut_at("red.\nblue", ["\n", "."]) == "red"
  assert lmms_requests.cut_at("red", ["", "x"]) == "red"


def test_generate_until_matches_run_generate(tiny):
  run, docs, _ = tiny
  answerer = lmms_requests.LmmsRequests(run, batch_size=4)
  answerer.task_dict = {"t": {"test": docs}}
  long, short = {"max_new_tokens": 4, "until": ["\n"]}, {"max_new_tokens": 2}
  requests = [_Request(d["question"], kw, _visual, i, "t", "test")
              for i, (d, kw) in enumerate(zip(docs, (long, short, long)))]
  got = answerer.generate_until(requests)
  want4 = run.generate([docs[0]["question"], docs[2]["question"]],
                       [d["image"] for d in (docs[0], docs[2])],
                       max_new_tokens=4, batch_size=4).texts
  want2 = run.generate([docs[1]["question"]], [docs[1]["image"]],
                       max_new_tokens=2, batch_size=4).texts
  assert got == [want4[0].split("\n")[0], want2[0], want4[1].split("\n")[0]]


def test_multi_round_feeds_previous_answers(tiny):
  run, docs, _ = tiny
  answerer = lmms_requests.LmmsRequests(run)
  answerer.task_dict = {"t": {"test": docs}}
  seen = []

  def doc_to_text(doc, previous_output, round_idx, previous_round_info):
    seen.append((round_idx, list(previous_output), previous_round_info))
    return (_visual(doc), "and the circle?", round_idx == 2,
            previous_output, round_idx)
  out = answerer.generate_until_multi_round([_Request(
      docs[0]["question"], {"max_new_tokens": 3}, _visual, doc_to_text, 0,
      "t", "test")])
  assert len(out) == 1 and len(out[0]) == 2
  assert seen[0] == (1, out[0][:1], None) and seen[1][0] == 2
  assert seen[1][2] == 1


def test_loglikelihood_of_the_greedy_answer(tiny):
  run, docs, _ = tiny
  answerer = lmms_requests.LmmsRequests(run)
  answerer.task_dict = {"t": {"test": docs}}
  gen = run.generate([docs[0]["question"]], [docs[0]["image"]],
                     max_new_tokens=3, stop_ids=())
  ids = [int(t) for t in gen.tokens[0]]
  logp, greedy = answerer.score_ids(docs[0]["question"], ids,
                                    _visual(docs[0]))
  assert greedy and logp <= 0 and np.isfinite(logp)
  # Another last token: the same prefix, a token below the argmax.
  other = ids[:-1] + [(ids[-1] + 1) % run.cfg.lm.vocab_size]
  logp_other, greedy_other = answerer.score_ids(docs[0]["question"], other,
                                                _visual(docs[0]))
  assert not greedy_other and logp_other < logp
  (logp_text, _), = answerer.loglikelihood([_Request(
      docs[0]["question"], lambda d: d["answer"], _visual, 0, "t", "test")])
  assert logp_text < 0


def _write_task(root, docs):
  tasks = root / "tasks"
  tasks.mkdir(exist_ok=True)
  data = root / "docs.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in docs))
  (tasks / "utils.py").write_text(textwrap.dedent("""
      from PIL import Image

      def doc_to_visual(doc):
        return [Image.open(doc["image"]).convert("RGB")]

      def doc_to_text(doc):
        return doc["question"]
      """))
  common = textwrap.dedent(f"""
      dataset_path: json
      dataset_kwargs:
        data_files:
          test: {data}
        cache_dir: {root / "hf_cache"}
      test_split: test
      doc_to_visual: !function utils.doc_to_visual
      doc_to_text: !function utils.doc_to_text
      """)
  (tasks / "mmjax_tiny_qa.yaml").write_text(
      "task: mmjax_tiny_qa\n" + common + textwrap.dedent("""
      output_type: generate_until
      doc_to_target: answer
      generation_kwargs:
        max_new_tokens: 3
        until: ["\\n"]
      metric_list:
        - metric: exact_match
          aggregation: mean
          higher_is_better: true
      """))
  # No multiple_choice task: lmms-eval 0.7.3's evaluator turns every
  # model output that is not a string into str(output) (evaluator.py,
  # unwrap_generation_output), so (logprob, is_greedy) pairs reach the
  # metric as text whatever the model; loglikelihood is tested above.
  return str(tasks)


@pytest.mark.slow
def test_a_local_lmms_eval_task_runs_through_the_adapter(tiny):
  pytest.importorskip("lmms_eval")
  from lmms_eval import evaluator  # pylint: disable=g-import-not-at-top
  from lmms_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  from mmjax.evals import lmms_model  # pylint: disable=g-import-not-at-top
  from lmms_eval import models  # pylint: disable=g-import-not-at-top
  # What the `lmms_eval.models` entry point of setup.py hands lmms-eval.
  models.MODEL_REGISTRY_V2.register_manifest(lmms_model.manifest(),
                                             overwrite=True)
  assert models.get_model("mmjax") is lmms_model.MMJax
  run, docs, root = tiny
  model = lmms_model.MMJax(workdir=run.workdir, batch_size="4")
  out = evaluator.simple_evaluate(
      model=model, tasks=["mmjax_tiny_qa"],
      task_manager=TaskManager(include_path=_write_task(root, docs)),
      bootstrap_iters=0, log_samples=True)
  qa = out["results"]["mmjax_tiny_qa"]
  assert 0.0 <= qa["exact_match,none"] <= 1.0
  answers = [s["resps"][0][0] for s in out["samples"]["mmjax_tiny_qa"]]
  want = run.generate([d["question"] for d in docs],
                      [d["image"] for d in docs], max_new_tokens=3,
                      batch_size=4).texts
  assert sorted(answers) == sorted(w.split("\n")[0] for w in want)
