"""The official benchmark metrics against hand-computed cases."""
import pytest

from mmjax.evals.benchmarks import gqa, mmbench, mme, pope, vqav2
from mmjax.evals.benchmarks.normalize import normalize_answer
from mmjax.evals.benchmarks.question import Question


@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"), ("none", "0"), ("ten dogs", "10 dogs"),      # number words
    ("a tree", "tree"), ("The Cat", "cat"), ("an apple", "apple"),  # articles
    ("dog's", "dog's"),                         # the apostrophe stays
    ("dont", "don't"), ("isnt", "isn't"), ("couldnt've", "couldn't've"),
    ("yes.", "yes"), ("2.5", "2.5"), ("3.", "3"),    # a period before a digit stays
    ("1,000", "1000"),                          # comma between digits: deleted
    ("hi, there", "hi there"),                  # a mark touching a space: deleted
    ("black-white", "black white"),             # else: a space
    ("red/blue!", "red blue"), ("  Yes\n", "yes"),
])
def test_normalize_answer_as_vqaeval(raw, normal):
  assert normalize_answer(raw) == normal


def test_soft_accuracy_averages_the_ten_leave_one_out_subsets():
  answers = ["red"] * 3 + ["blue"] * 7
  # Leaving out one of the 3 "red": 2 of 9 left -> 2/3 (3 such subsets);
  # leaving out a "blue": 3 of 9 -> 1 (7 subsets): (3 * 2/3 + 7) / 10.
  assert vqav2.soft_accuracy("red", answers) == pytest.approx(0.9)
  assert vqav2.soft_accuracy("Blue.", answers) == 1.0
  assert vqav2.soft_accuracy("green", answers) == 0.0
  one = ["cat"] + ["dog"] * 9     # one human: 9 subsets hold it (1/3 each)
  assert vqav2.soft_accuracy("cat", one) == pytest.approx(9 / 10 / 3)
  two = ["two"] * 2 + ["3"] * 8   # normalised on both sides: "two" == "2"
  assert vqav2.soft_accuracy("2", two) == pytest.approx(
      (2 * (1 / 3) + 8 * (2 / 3)) / 10)


def test_vqav2_metrics_by_answer_type():
  qs = [Question("1", "", "x", {"answers": ["yes"] * 10, "answer_type": "yes/no"}),
        Question("2", "", "x", {"answers": ["2"] * 3 + ["3"] * 7,
                                "answer_type": "number"})]
  m = vqav2.score_vqav2(qs, ["Yes", "two"])
  assert m["accuracy"] == pytest.approx(100 * (1 + 0.9) / 2)
  assert m["accuracy/yes/no"] == 100.0 and m["count/number"] == 1
  assert m["accuracy/number"] == pytest.approx(90.0)


def test_gqa_exact_match_after_normalisation():
  qs = [Question(str(i), "", "x", {"answer": a, "structural": s})
        for i, (a, s) in enumerate([("yes", "verify"), ("left", "query"),
                                    ("2", "query")])]
  m = gqa.score_gqa(qs, ["Yes.", "right", "two"])
  assert m["accuracy"] == pytest.approx(200 / 3)
  assert m["accuracy/verify"] == 100.0 and m["accuracy/query"] == 50.0


@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("No", "no"), ("No, there is not.", "no"),
    ("There is no dog.", "no"), ("It is not there", "no"),
    ("Yes. There is no cat behind it.", "yes"),   # first sentence only
    ("Nope", "yes"), ("", "yes")])                # POPE: not "no" -> "yes"
def test_pope_parses_as_its_evaluate_py(text, parsed):
  assert pope.parse_yes_no(text) == parsed


def test_pope_precision_recall_f1_yes_ratio():
  labels = ["yes", "yes", "yes", "no", "no", "no"]
  preds = ["yes", "yes", "no", "yes", "no", "no"]
  m = pope.yes_no_metrics(preds, labels)
  # tp 2, fn 1, fp 1, tn 2.
  assert m["accuracy"] == pytest.approx(400 / 6)
  assert m["precision"] == pytest.approx(200 / 3)
  assert m["recall"] == pytest.approx(200 / 3)
  assert m["f1"] == pytest.approx(200 / 3)
  assert m["yes_ratio"] == 50.0 and m["count"] == 6
  never = pope.yes_no_metrics(["no", "no"], ["yes", "no"])
  assert never["precision"] == 0.0 and never["f1"] == 0.0


def test_pope_score_per_sampling_and_mean():
  qs = [Question(f"{s}/{i}", "", "x", {"label": l, "sampling": s})
        for s in ("random", "adversarial") for i, l in enumerate(["yes", "no"])]
  m = pope.score_pope(qs, ["yes", "no", "yes", "yes"])
  assert m["random/accuracy"] == 100.0 and m["adversarial/accuracy"] == 50.0
  assert m["adversarial/yes_ratio"] == 100.0
  assert m["accuracy"] == 75.0 and "popular/accuracy" not in m


OPTIONS = {"A": "red", "B": "green", "C": "blue", "D": "white"}


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("B.", "B"), ("(C)", "C"), ("D. white", "D"),
    ("The answer is B", "B"), ("green", "B"), ("It is Blue.", "C"),
    ("A or B", None), ("purple", None), ("", None)])
def test_mmbench_option_parsing(text, letter):
  assert mmbench.parse_option(text, OPTIONS) == letter


def _rotations(answer="A", category="c1"):
  row = {"index": "7", "question": "What colour?", "hint": "nan",
         "A": "red", "B": "green", "C": "blue", "D": "white", "E": "",
         "answer": answer, "category": category, "l2-category": "l2"}
  return mmbench.circular_questions(row, b"")


def test_mmbench_rotations_move_the_answer():
  qs = _rotations("A")
  assert [q.qid for q in qs] == ["7/0", "7/1", "7/2", "7/3"]
  # options[k:] + options[:k]: "red" sits at A, D, C, B.
  assert [q.truth["answer"] for q in qs] == ["A", "D", "C", "B"]
  assert qs[1].truth["options"] == {"A": "green", "B": "blue", "C": "white",
                                    "D": "red"}
  assert qs[1].prompt.splitlines() == [
      "What colour?", "A. green", "B. blue", "C. white", "D. red",
      mmbench.LETTER_ONLY]


def test_mmbench_circular_eval_one_wrong_rotation_fails_the_question():
  qs = _rotations("A", "c1") + [
      Question(q.qid.replace("7/", "8/"), q.prompt, q.image,
               {**q.truth, "group": 8, "category": "c2"})
      for q in _rotations("A")]
  right = [q.truth["answer"] for q in qs]
  m = mmbench.score_mmbench(qs, right)
  assert m["accuracy"] == 100.0 and m["count"] == 2
  one_wrong = right[:2] + ["A"] + right[3:]  # rotation 2 of question 7
  m = mmbench.score_mmbench(qs, one_wrong)
  assert m["accuracy"] == 50.0 and m["accuracy_single"] == 100.0
  assert m["category/c1"] == 0.0 and m["category/c2"] == 100.0
  assert m["l2/l2"] == 50.0 and m["count/category/c1"] == 1


@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("No.", "no"),
    ("I think yes", "other"), ("nope", "no")])
def test_mme_parses_as_its_calculation_py(text, parsed):
  assert mme.parse_yes_no(text) == parsed


def test_mme_acc_plus_and_scores():
  def image(subtask, name):
    return [Question(f"{subtask}/{name}/{k}", "", "x",
                     {"group": f"{subtask}/{name}", "subtask": subtask,
                      "answer": a}) for k, a in enumerate(("yes", "no"))]
  qs = image("count", "1") + image("count", "2") + image("OCR", "3") + image(
      "code_reasoning", "4")
  preds = ["yes", "no",     # count/1: both right
           "yes", "yes",    # count/2: one right
           "no", "no",      # OCR/3: one right
           "Yes", "No"]     # code_reasoning/4: both right
  m = mme.score_mme(qs, preds)
  assert m["count/acc"] == 75.0 and m["count/acc_plus"] == 50.0
  assert m["count/score"] == 125.0
  assert m["OCR/acc"] == 50.0 and m["OCR/acc_plus"] == 0.0
  assert m["perception"] == 175.0 and m["cognition"] == 200.0
  assert "existence/score" not in m
