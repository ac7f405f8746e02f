"""Per-object accuracy of a run's region head, held-out pairs apart.

  python experiments/region_probe.py --workdir=runs/shapes_tiny

Reads the last checkpoint of the run's `regions` stage (the ViT and its
linear region head) and names every object of the first --images images of
the test and heldout splits. Objects of a held-out colour x shape pair
(`shapes.HELDOUT_PAIRS`, never in training) are counted apart: a tower that
learnt "red objects are never stars" names them wrong although it names the
others right. Prints accuracy and count per group and split.

A head taught each box edge (`attributes` with left, top, right, bottom)
also boxes every object from its edge classes (bin centres): "pooled" reads
the box's token average (what the head was trained on when per_token is
off; the average itself is drawn from the gold box, so this is an upper
bound), "centre token" reads the one token under the box centre (what an
LM that attends to any one token of the object could copy). Prints the
share of objects boxed at IoU >= 0.5 both ways.
"""
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mmjax import config as config_lib
from mmjax.data import builders, datasets, formats, grounding, pipeline
from mmjax.data import shapes
from mmjax.models import build
from mmjax.train import stages

_WORKDIR = flags.DEFINE_string("workdir", None, "a run of configs/shapes.py")
_STAGE = flags.DEFINE_string("stage", "regions", "the region stage's name")
_IMAGES = flags.DEFINE_integer("images", 500, "images per split")


def _last_state(workdir: str, stage: str) -> str:
  root = os.path.join(workdir, "checkpoints", stage)
  if not os.path.isdir(root):
    raise app.UsageError(f"{root} does not exist: train the {stage!r} stage "
                         "first (or pass --stage)")
  steps = sorted(int(s) for s in os.listdir(root) if s.isdigit())
  if not steps:
    raise app.UsageError(f"{root} holds no checkpoint")
  return os.path.join(root, str(steps[-1]), "state")


def main(argv):
  del argv
  workdir = _WORKDIR.value
  config = config_lib.read_run_config(workdir)
  if config is None:
    raise app.UsageError(f"{workdir} holds no config.json: give the workdir "
                         "of a configs/shapes.py run")
  if _STAGE.value not in config.stages:
    raise app.UsageError(f"the run has no stage {_STAGE.value!r}")
  stage = config.stages[_STAGE.value]
  kind = stages.kinds()[stage.loss]
  model, _, _ = kind.make_model(config, _STAGE.value)
  state = ocp.PyTreeCheckpointer().restore(_last_state(workdir, _STAGE.value))
  params = jax.tree.map(jnp.asarray, state["params"])
  builder = datasets.shapes_builder(config)
  tok = datasets.tokenizer_for(builder, config)
  cfg = build.mllm_config(config)
  columns = list(shapes.SHAPES), list(shapes.COLOURS)
  edges = ("left", "top", "right", "bottom")
  boxes = all(e in stage.get("attributes", ()) for e in edges)
  # region_labels hold every REGION_ATTRIBUTES column, whatever is trained.
  edge_columns = [list(formats.REGION_ATTRIBUTES).index(e) for e in edges]
  batch_size = 50
  for split in ("test", "heldout"):
    source = builders.load_source(builder, split)
    batches = pipeline.make_iterator(
        source, fmt="regions", cfg=cfg, tokenizer=tok, batch_size=batch_size,
        seed=0, max_len=32, train=False)
    counts = {"held-out pair": [0, 0], "other": [0, 0], "colour": [0, 0]}
    boxed = {"pooled": [0, 0], "centre token": [0, 0]}
    for b, batch in enumerate(batches):
      if b * batch_size >= _IMAGES.value:
        break
      logits = model.apply({"params": params},
                           jnp.asarray(batch["images"][:, 0]),
                           jnp.asarray(batch["region_weights"]))
      if boxes:
        tokens = model.apply({"params": params},
                             jnp.asarray(batch["images"][:, 0]),
                             jnp.asarray(batch["region_weights"]),
                             per_token=True)
      shape = np.asarray(logits["shape"].argmax(-1))
      colour = np.asarray(logits["colour"].argmax(-1))
      labels = batch["region_labels"]
      valid = batch["region_valid"] * batch["valid"][:, None]
      for i, k in zip(*np.nonzero(valid)):
        pair = (columns[1][labels[i, k, 1]], columns[0][labels[i, k, 0]])
        group = "held-out pair" if pair in shapes.HELDOUT_PAIRS else "other"
        counts[group][0] += int(shape[i, k] == labels[i, k, 0])
        counts[group][1] += 1
        counts["colour"][0] += int(colour[i, k] == labels[i, k, 1])
        counts["colour"][1] += 1
        if boxes:
          _count_boxes(boxed, logits, tokens, batch, i, k, edges,
                       edge_columns)
    line = ", ".join(f"{name} {right / n:.3f} (n={n})" for name, (right, n)
                     in counts.items() if n)
    print(f"{split}: shape: {line.replace(', colour', '; colour:')}")
    if boxes:
      print(f"{split}: boxes at IoU >= 0.5: " + ", ".join(
          f"{name} {right / n:.3f} (n={n})" for name, (right, n)
          in boxed.items() if n))


def _count_boxes(boxed, pooled, tokens, batch, i, k, edges, edge_columns):
  """Adds object k of image i to both box counts: its gold box (edge bin
  centres, 1 / formats.EDGE_BINS of the side) against the head's edges from
  the box average and from the token under the box centre."""
  centre = lambda bins: tuple((b + 0.5) / formats.EDGE_BINS for b in bins)
  gold = centre(batch["region_labels"][i, k, c] for c in edge_columns)
  weights = np.asarray(batch["region_weights"][i, k])
  side = int(round(len(weights) ** 0.5))
  row, col = np.unravel_index(int(weights.argmax()), (side, side))
  for name, logits, j in (("pooled", pooled, k),
                          ("centre token", tokens, row * side + col)):
    guess = centre(int(np.asarray(logits[e][i, j]).argmax()) for e in edges)
    boxed[name][0] += int(grounding.iou(guess, gold) >= 0.5)
    boxed[name][1] += 1


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
