"""Writes the Colab notebooks of experiments/notebooks/ (edit here, rerun).

  python experiments/notebooks/make_notebooks.py

Every notebook starts with the same setup cell: in Colab it clones and
installs mmjax from REPO_URL; elsewhere it finds the repository checkout
above the working directory. TINY mode (the default outside Colab, or
MMJAX_NOTEBOOK_TINY=1) runs each notebook in about a minute on a CPU.
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
# REPO_URL is a placeholder: put the URL of your mmjax repository here.
REPO_URL = "https://github.com/YOUR_ORG/mmjax.git"

import os
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
  if not os.path.exists("/content/mmjax"):
    !git clone --depth 1 {REPO_URL} /content/mmjax
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
     "then ask questions about an image. Open in Colab and run all cells; "
     "set `TINY = False` below (or `MMJAX_NOTEBOOK_TINY=0`) for the whole "
     "recipe (text LM, SigLIP, alignment, instruction tuning, DPO: about "
     "15 minutes on 2 CPU cores)."),
    ("code", SETUP),
    ("md", "## The recipe\n\n`configs/shapes.py` builds the config; "
     "`size=tiny` is a 0.5M-parameter model (64-px images, a 2-layer ViT and "
     "a 2-layer LM). TINY mode runs only instruction tuning (`sft`) for 2 "
     "steps on 48 images: the answers will be wrong, the plumbing is what "
     "it shows."),
    ("code", '''from mmjax.config import load_config
from mmjax.sweeps.plan import set_path

config = load_config("configs/shapes.py:size=tiny,fusion=projection"
                     + (",steps=2" if TINY else ""))
if TINY:
  for key, value in TINY_OVERRIDES.items():
    set_path(config, key, value)
config.progress_bar = False
print("stages:", config.stage_order)'''),
    ("code", '''from mmjax.train.recipe import run_recipe

workdir = os.path.join(WORKDIR, "quickstart_tiny" if TINY else "quickstart")
done = run_recipe(config, workdir)  # a second run finds it finished
stage, result, _ = done[-1]
params = result.params  # the model after the last stage
print(f"trained {stage}: {result.step} steps; report: {workdir}/report.md")'''),
    ("code", '''import json
from IPython.display import Image, display

with open(os.path.join(workdir, "eval", f"{stage}.json")) as f:
  metrics = json.load(f)
print({k: round(v, 3) for k, v in metrics.items()
       if k.startswith(("test/acc/", "heldout/acc/")) or "yes_rate" in k})
display(Image(os.path.join(workdir, "accuracy.png"), width=520))'''),
    ("md", "## Ask questions about an image\n\n`answer` is the one place "
     "that generates text: greedy decoding with `mmjax.evaluate`. Switch it "
     "to `mmjax.inference.generate` (KV cache) once that is available."),
    ("code", '''from mmjax import evaluate
from mmjax.data import builders, formats
from mmjax.data import images as images_lib
from mmjax.models.mllm import MLLM
from mmjax.models import build
from mmjax.data import datasets
from mmjax.sweeps import spec as sweep_spec
from mmjax.sweeps import plan as sweep_plan
from mmjax.sweeps import runner as sweep_runner

cfg = build.mllm_config(config)
model = MLLM(cfg)
builder = datasets.shapes_dataset(config)
tokenizer = datasets.tokenizer_for(builder)


def answer(image, questions, max_new_tokens=8):
  """Greedy answers to questions about one image (uint8[H, W, 3])."""
  pixels = images_lib.preprocess(
      image, cfg.side, kind=images_lib.normalization_kind(cfg))[None]
  prompts = [evaluate.prompt_pieces(cfg, tokenizer, [
      {"role": "user", "content": f"{formats.IMAGE_TOKEN}\\n{q}"}])
             for q in questions]
  out = evaluate.greedy_generate(
      model, params, prompts, [pixels] * len(prompts),
      image_token_id=tokenizer.image_id, max_new_tokens=max_new_tokens,
      stop_id=tokenizer.end_of_turn_id, tokenizer=tokenizer, batch_size=8,
      pad_id=tokenizer.pad_id)
  return out.texts'''),
    ("code", '''%matplotlib inline
import matplotlib.pyplot as plt

record = builders.load_source(builder, "test")[0]
questions = list(record["questions"][:4]) + [
    "what colour is the largest shape?"]
replies = answer(record["image"], questions)
truth = list(record["answers"][:4]) + ["?"]

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.imshow(record["image"])
ax.set_axis_off()
ax.text(1.05, 0.5, "\\n".join(f"Q: {q}\\nA: {a or '(nothing)'}  (truth: {t})"
                              for q, a, t in zip(questions, replies, truth)),
        transform=ax.transAxes, va="center", fontsize=8)
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
      ("md", f"# {title}\n\n{intro}\n\nFrom a shell, the same sweep is\n\n"
       f"```\npython -m mmjax.sweep --sweep={sweep_file} "
       f"--workdir=runs/{name}_tiny --size=tiny\n```\n\n"
       "TINY mode runs two of the variants for 2 steps of instruction "
       "tuning on 48 images (numbers meaningless, machinery real). With "
       "`RUN = False` the notebook only loads `results.csv` from "
       "`SWEEP_DIR` (e.g. a sweep run from the shell)."),
      ("code", SETUP),
      ("code", f'''import dataclasses

RUN = True
SWEEP_DIR = os.environ.get("MMJAX_SWEEP_DIR") or os.path.join(
    WORKDIR, "{name}" + ("_smoke" if TINY else "_tiny"))
spec = sweep_plan.load_sweep("{sweep_file}")
print("variants:", sweep_spec.variant_names(spec.variants))
if RUN and TINY:
  spec = dataclasses.replace(
      spec, variants=[spec.variants[i] for i in {tiny_pick!r}],
      common=dict(spec.common, **TINY_OVERRIDES))
  sweep_runner.run_sweep(spec, SWEEP_DIR, size="tiny", steps_cap=2, progress=False,
                  title="{name} (TINY smoke run)")
elif RUN:  # about 5 minutes per variant on 2 CPU cores
  sweep_runner.run_sweep("{sweep_file}", SWEEP_DIR, size="tiny")'''),
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
