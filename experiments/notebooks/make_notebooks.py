"""Writes the Colab notebooks of experiments/notebooks/ (edit here, rerun).

  python experiments/notebooks/make_notebooks.py

Every notebook starts with the same setup cell: in Colab it clones and
installs mmjax from REPO_URL (a placeholder the user sets to their fork);
elsewhere it finds the repository checkout above the working directory.
TINY mode (the default outside Colab, or MMJAX_NOTEBOOK_TINY=1) runs each
notebook in about a minute on a CPU. The notebooks call only public API:
mmjax.config, mmjax.evals, mmjax.inference, mmjax.sweeps.
"""
import os
import sys

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = r'''
# Setup. In Colab: clone and install mmjax (recipes and sweep files live
# in the repository, beside the package). Elsewhere: run from a checkout
# where `pip install -e .` was done.
REPO_URL = "https://github.com/YOUR_ORG/mmjax"  # set this to your fork

import os
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
  if not os.path.exists("/content/mmjax"):
    if "YOUR_ORG" in REPO_URL:
      raise ValueError("set REPO_URL (top of this cell) to the URL of your "
                       "mmjax repository, then run the cell again")
    !git clone --depth 1 $REPO_URL /content/mmjax
    !pip install -q -e /content/mmjax
  os.chdir("/content/mmjax")
else:  # the repository root: the first directory above with configs/shapes.py
  while not os.path.exists("configs/shapes.py") and os.getcwd() != "/":
    os.chdir("..")
sys.path.insert(0, os.getcwd())

# TINY: about a minute on a CPU (a small dataset, a few steps), to check
# that everything runs. The default outside Colab; MMJAX_NOTEBOOK_TINY=0 or
# 1 decides.
TINY = os.environ.get("MMJAX_NOTEBOOK_TINY", "0" if IN_COLAB else "1") == "1"
WORKDIR = os.environ.get("MMJAX_NOTEBOOK_WORKDIR", "runs/notebooks")
# What TINY changes in the shapes recipe (config keys, as --config.KEY=VALUE).
TINY_OVERRIDES = {
    "data.num_train": 48, "data.num_validation": 8, "data.num_test": 8,
    "data.num_heldout": 8, "data.data_dir": os.path.join(WORKDIR, "data"),
    "batch_size": 8, "eval.max_examples": 8, "eval.batch_size": 8,
    "eval_batches": 1, "log_every": 1, "stage_order": ("sft",)}

from absl import logging as absl_logging
import tensorflow_datasets as tfds
absl_logging.set_verbosity(absl_logging.ERROR)  # tfds and orbax are chatty
tfds.disable_progress_bar()
print(f"repository: {os.getcwd()}  TINY={TINY}  WORKDIR={WORKDIR}")'''.lstrip()

COLAB_NOTE = ("In Colab, first set `REPO_URL` in the setup cell below to the "
              "URL of your mmjax repository (a fork, or wherever your copy "
              "lives); the cell clones and installs it from there.")


def _notebook(cells):
  nb = v4.new_notebook()
  nb.metadata = {
      "kernelspec": {"name": "python3", "display_name": "Python 3",
                     "language": "python"},
      "language_info": {"name": "python"},
      "colab": {"provenance": []}}
  made = []
  for i, (kind, text) in enumerate(cells):
    cell = (v4.new_markdown_cell(text) if kind == "md"
            else v4.new_code_cell(text))
    cell["id"] = f"cell-{i}"  # fixed ids: regenerating changes nothing
    made.append(cell)
  nb.cells = made
  return nb


QUICKSTART = [
    ("md", "# mmjax quickstart\n\n"
     "Train the tiny multimodal recipe on the built-in shapes benchmark, "
     "then ask the trained model questions about an image. Open in Colab "
     "and run all cells; set `TINY = False` below (or "
     "`MMJAX_NOTEBOOK_TINY=0`) for the whole recipe (text LM, SigLIP, "
     "alignment, instruction tuning, DPO: about 15 minutes on 2 CPU "
     "cores).\n\n" + COLAB_NOTE),
    ("code", SETUP),
    ("md", "## The recipe\n\n`configs/shapes.py` builds the config; "
     "`size=tiny` is a 0.5M-parameter model (64-px images, a 2-layer ViT and "
     "a 2-layer LM). TINY mode runs only instruction tuning (`sft`) for 2 "
     "steps on 48 images: the answers will be wrong, the plumbing is what "
     "it shows. `train_and_evaluate` is what `python -m mmjax.main` runs: "
     "every stage, then the evaluations the stage lists."),
    ("code", '''from mmjax.config import load_config

config = load_config("configs/shapes.py:size=tiny,fusion=projection"
                     + (",steps=2" if TINY else ""))
if TINY:
  config.update_from_flattened_dict(TINY_OVERRIDES)
config.progress_bar = False
print("stages:", config.stage_order)'''),
    ("code", '''from mmjax.evals import train_and_evaluate

workdir = os.path.join(WORKDIR, "quickstart_tiny" if TINY else "quickstart")
done = train_and_evaluate(config, workdir)  # a second run finds it finished
stage, result, _ = done[-1]
print(f"trained {stage}: {result.step} steps; report: {workdir}/report.md")'''),
    ("code", '''import json
from IPython.display import Image, display

with open(os.path.join(workdir, "eval", f"{stage}.json")) as f:
  metrics = json.load(f)
print({k: round(v, 3) for k, v in metrics.items()
       if k.startswith(("test/acc/", "heldout/acc/")) or "yes_rate" in k})
if os.path.exists(os.path.join(workdir, "accuracy.png")):
  display(Image(os.path.join(workdir, "accuracy.png"), width=520))'''),
    ("md", "## Ask questions about an image\n\n`mmjax.inference.load(workdir)` "
     "reads the run's final parameters and its tokenizer. `run.ask(image, "
     "question)` answers one question (an image is a file path, a PIL image "
     "or a uint8 array); `run.generate(questions, images)` answers a batch "
     "in one compiled KV-cache decode loop. Both decode greedily unless "
     "given `sampling=inference.Sampling(temperature=..., top_p=...)`."),
    ("code", '''from PIL import Image as PILImage, ImageDraw
from mmjax import inference

run = inference.load(workdir)

# A picture like the benchmark's: a red circle and a blue square.
image = PILImage.new("RGB", (64, 64), "white")
draw = ImageDraw.Draw(image)
draw.ellipse([6, 6, 30, 30], fill="red")
draw.rectangle([36, 34, 58, 56], fill="blue")
question = "what colour is the circle?"
print(question, "->", repr(run.ask(image, question)))'''),
    ("code", '''%matplotlib inline
import matplotlib.pyplot as plt

questions = ["what colour is the circle?", "what shape is blue?",
             "how many shapes are there?", "is there a green triangle?"]
replies = run.generate(questions, [image] * len(questions),
                       max_new_tokens=8).texts

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.imshow(image)
ax.set_axis_off()
ax.text(1.05, 0.5, "\\n".join(f"Q: {q}\\nA: {a or '(nothing)'}"
                              for q, a in zip(questions, replies)),
        transform=ax.transAxes, va="center", fontsize=9)
plt.show()'''),
]


def _ablation(title: str, sweep_file: str, tiny_pick: tuple[int, int],
              intro: str, extra_plot: str):
  """An ablation notebook: run (or load) the sweep, show results, plot.

  TINY mode runs the variants at indices `tiny_pick` (the first is the
  quickstart's model, whose programs are then in the XLA cache).
  """
  name = os.path.basename(sweep_file)[:-3]
  return [
      ("md", f"# {title}\n\n{intro}\n\n{COLAB_NOTE}\n\n"
       "From a shell, the same sweep is\n\n"
       f"```\npython -m mmjax.sweep --sweep={sweep_file} "
       f"--workdir=runs/{name}_tiny --size=tiny\n```\n\n"
       "TINY mode runs two of the variants for 2 steps of instruction "
       "tuning on 48 images (numbers meaningless, machinery real). With "
       "`RUN = False` the notebook only loads `results.csv` from "
       "`SWEEP_DIR` (e.g. a sweep run from the shell)."),
      ("code", SETUP),
      ("code", f'''import dataclasses

from mmjax import sweeps

RUN = True
SWEEP_DIR = os.environ.get("MMJAX_SWEEP_DIR") or os.path.join(
    WORKDIR, "{name}" + ("_smoke" if TINY else "_tiny"))
spec = sweeps.load_sweep("{sweep_file}")
print("variants:", sweeps.variant_names(spec.variants))
if RUN and TINY:
  spec = dataclasses.replace(
      spec, variants=[spec.variants[i] for i in {tiny_pick!r}],
      common=dict(spec.common, **TINY_OVERRIDES))
  sweeps.run_sweep(spec, SWEEP_DIR, size="tiny", steps_cap=2, progress=False,
                   title="{name} (TINY smoke run)")
elif RUN:  # about 5 minutes per variant on 2 CPU cores
  sweeps.run_sweep("{sweep_file}", SWEEP_DIR, size="tiny")'''),
      ("code", '''import csv
from IPython.display import Image, Markdown, display

with open(os.path.join(SWEEP_DIR, "results.csv")) as f:
  rows = list(csv.DictReader(f))
number = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else 0.0
display(Markdown(open(os.path.join(SWEEP_DIR, "results.md")).read()
                 .split("![")[0]))
for png in ("accuracy_test.png", "costs.png"):
  if os.path.exists(os.path.join(SWEEP_DIR, png)):
    display(Image(os.path.join(SWEEP_DIR, png), width=640))'''),
      ("code", extra_plot),
  ]


FUSION_PLOT = '''%matplotlib inline
import matplotlib.pyplot as plt

ok = [r for r in rows if r["status"] == "ok"]
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
left.bar([r["variant"] for r in ok], [number(r, "test/acc/all") for r in ok])
left.set_ylabel("test accuracy")
left.set_ylim(0, 1)
right.scatter([number(r, "visual_tokens") for r in ok],
              [number(r, "step_s") for r in ok])
for r in ok:
  right.annotate(r["variant"], (number(r, "visual_tokens"),
                                number(r, "step_s")), fontsize=8)
right.set_xlabel("visual tokens per image")
right.set_ylabel(f"{ok[0]['timed_stage'] if ok else 'sft'} s / step")
for ax in (left, right):
  ax.tick_params(axis="x", labelrotation=20)
plt.tight_layout()
plt.show()'''

POSITION_PLOT = '''%matplotlib inline
import matplotlib.pyplot as plt

ok = [r for r in rows if r["status"] == "ok"]
xs = range(len(ok))
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.bar([x - 0.2 for x in xs], [number(r, "test/acc/all") for r in ok],
       width=0.4, label="test")
ax.bar([x + 0.2 for x in xs], [number(r, "heldout/acc/all") for r in ok],
       width=0.4, label="held-out compositions")
ax.set_xticks(list(xs), [r["variant"] for r in ok])
ax.set_ylabel("accuracy")
ax.set_ylim(0, 1)
ax.legend()
plt.show()'''

NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "fusion_ablation.ipynb": _ablation(
        "Fusion ablation", "experiments/fusion_ablation.py", (0, -1),
        "The five fusion paradigms (projection, resampler, Q-Former, "
        "gated cross-attention, one backbone) trained by the same recipe: "
        "accuracy by question type, visual tokens per image, step time and "
        "parameters.", FUSION_PLOT),
    "position_ablation.ipynb": _ablation(
        "Position ablation", "experiments/position_ablation.py", (0, 1),
        "1-D RoPE, M-RoPE and V2PE with projection fusion: accuracy on the "
        "test split and on held-out colour x shape compositions. The shapes "
        "benchmark has one image per question, so multi-image behaviour is "
        "not measured here.", POSITION_PLOT),
}


def main(out_dir: str = HERE) -> list[str]:
  paths = []
  for filename, cells in NOTEBOOKS.items():
    nb = _notebook(cells)
    nbformat.validate(nb)
    path = os.path.join(out_dir, filename)
    nbformat.write(nb, path)
    paths.append(path)
  return paths


if __name__ == "__main__":
  print("\n".join(main(*sys.argv[1:])))
