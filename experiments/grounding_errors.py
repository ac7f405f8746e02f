"""Where a grounding run's boxes land: on the object named, on another
object, or on none.

  python experiments/grounding_errors.py --workdir=runs/grounding

Asks the `grounding` evaluator's question of each of the first --images
images of the test split ("where is the red circle?", an object whose colour
x shape pair occurs once) and sorts the greedy box by the object it covers
best: the one named (IoU >= 0.5), another object of the same colour, of the
same shape, of neither, no object at all, or no box
(`mmjax.evals.grounding.where_box_lands`). A model that reads the
question's words picks the named object among those it boxes; one that has
only learnt where objects are picks any (about one in 3.5 on these images).

Then it asks about every such object of the first --per_object_images test
images that have two or more, and prints whether the boxes follow the
question (`grounding_eval.question_sensitivity`): the share of images
answered with one and the same box whatever is asked, and the mean IoU
between the boxes given for two different objects of one image against the
same mean over their true boxes (a model that reads the question scores
near the latter, one that boxes some default object near 1).
(docs/evaluation.md "Grounding".)
"""
import collections

from absl import app
from absl import flags
import numpy as np

from mmjax import config as config_lib
from mmjax import inference
from mmjax.data import builders, datasets, grounding
from mmjax.evals import grounding as grounding_eval

_WORKDIR = flags.DEFINE_string("workdir", None, "a run trained with "
                               "config.data.grounding_questions > 0")
_IMAGES = flags.DEFINE_integer("images", 600, "test images")
_BATCH = flags.DEFINE_integer("batch", 64, "questions per generate call")
_PER_OBJECT = flags.DEFINE_integer(
    "per_object_images", 100, "test images (with two or more objects that "
    "can be asked about) asked about each such object; 0: skip")


def _boxes(run, questions, images):
  """Greedy answers of (question, image) pairs, --batch at a time."""
  said = []
  for j in range(0, len(questions), _BATCH.value):
    said += run.generate(questions[j:j + _BATCH.value],
                         images[j:j + _BATCH.value],
                         max_new_tokens=grounding_eval.answer_tokens(
                             run.tokenizer)).texts
  return said


def main(argv):
  del argv
  config = config_lib.read_run_config(_WORKDIR.value)
  if config is None:
    raise app.UsageError(f"{_WORKDIR.value} holds no config.json: give the "
                         "workdir of a configs/shapes.py run")
  run = inference.load(_WORKDIR.value)
  source = builders.load_source(datasets.shapes_builder(config), "test")
  examples = grounding_eval.grounding_examples(
      [source[i] for i in range(min(_IMAGES.value, len(source)))], None)
  said = _boxes(run, [q for _, q, _, _ in examples],
                [np.asarray(r["image"]) for r, *_ in examples])
  counts = collections.Counter()
  for (record, question, _, _), answer in zip(examples, said):
    colour, shape = question[len("where is the "):-1].split(" ")
    counts[grounding_eval.where_box_lands(
        answer.strip(), colour, shape,
        grounding.record_boxes(record))] += 1
  n = max(sum(counts.values()), 1)
  print(f"test: {sum(counts.values())} questions: " + ", ".join(
      f"{g} {counts[g] / n:.3f}" for g in grounding_eval.LANDINGS))
  on = sum(counts[g] for g in grounding_eval.LANDINGS[:4])
  print(f"of the boxes on an object, the named one: "
        f"{counts[grounding_eval.LANDINGS[0]] / max(on, 1):.3f} (n={on})")
  if _PER_OBJECT.value <= 0:
    return
  asked = []  # per image: (question, image, named box) of each object
  for i in range(len(source)):
    if len(asked) >= _PER_OBJECT.value:
      break
    record = source[i]
    objects = grounding.record_boxes(record)
    eligible = grounding.eligible(grounding.record_objects(record))
    if len(eligible) >= 2:
      asked.append([(grounding.QUESTION.format(colour=objects[k][0],
                                               shape=objects[k][1]),
                     np.asarray(record["image"]), objects[k][2])
                    for k in eligible])
  flat = [x for image in asked for x in image]
  answers = iter(_boxes(run, [q for q, _, _ in flat],
                        [im for _, im, _ in flat]))
  m = grounding_eval.question_sensitivity(
      [[(next(answers), box) for _, _, box in image] for image in asked])
  print(f"every object asked: {m['images']} images, {m['answers']} "
        f"questions: one box for all {m['identical']:.3f}, IoU between the "
        f"boxes of two objects {m['answer_iou']:.3f} (true boxes "
        f"{m['gold_iou']:.3f}), acc@0.5 {m['acc@0.5']:.3f}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
