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
  said = []
  for j in range(0, len(examples), _BATCH.value):
    chunk = examples[j:j + _BATCH.value]
    said += run.generate([q for _, q, _, _ in chunk],
                         [np.asarray(r["image"]) for r, *_ in chunk],
                         max_new_tokens=grounding_eval.answer_tokens(
                             run.tokenizer)).texts
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


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
