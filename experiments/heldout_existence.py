"""Existence answers of a trained run, split by whether they name a held-out pair.

  python experiments/heldout_existence.py --workdir=runs/shapes_tiny

Asks every existence question ("is there a red star?") of the first --images
images of the test and heldout splits (the run's own dataset) and reports
accuracy in four groups: yes / no answers, and whether the question names a
held-out colour x shape pair (`shapes.HELDOUT_PAIRS`). A model that learnt
from its training text that those words always answer "no" says "no" to the
held-out pairs that are there (heldout split, "yes" group) and is perfect on
test questions naming them (always absent there); one that looks is not.
(docs/recipes.md "What makes the model see", `config.data.name_heldout`.)

It also asks the colour and shape questions of the same heldout images
("what colour is the circle?", "what shape is the yellow object?") and
splits them by whether the object asked about is of a held-out pair: the
LM that reads the picture names a yellow circle's colour as well as a red
one's (docs/evaluation.md "Contrastive decoding"). --contrast_alpha > 0
answers with visual contrastive decoding.
"""
import collections
import re

from absl import app
from absl import flags
import numpy as np

from mmjax import config as config_lib
from mmjax import inference
from mmjax.data import builders, datasets, shapes
from mmjax.decoding.contrastive import Contrast

_WORKDIR = flags.DEFINE_string("workdir", None, "a run of configs/shapes.py")
_IMAGES = flags.DEFINE_integer("images", 600, "images per split")
_BATCH = flags.DEFINE_integer("batch", 64, "questions per generate call")
_CONTRAST = flags.DEFINE_float("contrast_alpha", 0.0, "visual contrastive "
                               "decoding's alpha (0 = plain greedy answers)")

_HELDOUT_QUESTIONS = frozenset(
    f"is there {shapes._article(c)} {s}?" for c, s in shapes.HELDOUT_PAIRS)


def _questions(source, n: int, qtypes) -> tuple[list, list, list]:
  """(questions, images, answers) of the first n records' questions of the
  given types."""
  questions, images, answers = [], [], []
  for i in range(min(n, len(source))):
    record = source[i]
    for q, a, t in zip(record["questions"], record["answers"],
                       record["qtypes"]):
      if t in qtypes:
        questions.append(q)
        images.append(np.asarray(record["image"]))
        answers.append(a)
  return questions, images, answers


def main(argv):
  del argv
  config = config_lib.read_run_config(_WORKDIR.value)
  if config is None:
    raise app.UsageError(f"{_WORKDIR.value} holds no config.json: give the "
                         "workdir of a configs/shapes.py run")
  run = inference.load(_WORKDIR.value)
  contrast = Contrast(alpha=_CONTRAST.value) if _CONTRAST.value else None
  builder = datasets.shapes_builder(config)

  def answer(questions, images):
    said = []
    for j in range(0, len(questions), _BATCH.value):
      said += run.generate(questions[j:j + _BATCH.value],
                           images[j:j + _BATCH.value], max_new_tokens=3,
                           contrast=contrast).texts
    return said

  for split in ("test", "heldout"):
    questions, images, answers = _questions(
        builders.load_source(builder, split), _IMAGES.value, ("existence",))
    said = answer(questions, images)
    groups = collections.defaultdict(lambda: [0, 0])
    for q, a, s in zip(questions, answers, said):
      named = "names a held-out pair" if q in _HELDOUT_QUESTIONS else "other"
      group = groups[f'"{a}", {named}']
      group[0] += int(s.strip() == a)
      group[1] += 1
    print(f"{split}: " + "; ".join(
        f"{name} {right / n:.3f} (n={n})"
        for name, (right, n) in sorted(groups.items())))
  questions, images, answers = _questions(
      builders.load_source(builder, "heldout"), _IMAGES.value,
      ("colour", "shape"))
  said = answer(questions, images)
  groups = collections.defaultdict(lambda: [0, 0])
  for q, a, s in zip(questions, answers, said):
    pair = _asked_pair(q, a)
    kind = "colour" if q.startswith("what colour") else "shape"
    about = ("a held-out-pair object" if pair in shapes.HELDOUT_PAIRS
             else "other objects")
    group = groups[f"{kind} of {about}"]
    group[0] += int(s.strip() == a)
    group[1] += 1
  print("heldout colour / shape: " + "; ".join(
      f"{name} {right / n:.3f} (n={n})"
      for name, (right, n) in sorted(groups.items())))


def _asked_pair(question: str, answer: str) -> tuple[str, str]:
  """(colour, shape) of the object a colour or shape question is about."""
  pattern = lambda template: re.escape(template).replace(r"\{\}", r"(\w+)")
  colour_q = re.fullmatch(pattern(shapes.COLOUR_QUESTION), str(question))
  if colour_q:
    return answer, colour_q.group(1)
  shape_q = re.fullmatch(pattern(shapes.SHAPE_QUESTION), str(question))
  return (shape_q.group(1) if shape_q else ""), answer


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
