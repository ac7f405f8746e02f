"""A sweep's results: one row per variant -> results.csv, results.md, plots.

Per variant, from its workdir and config:
  test/..., heldout/...  accuracy by question type and the absent-object
                         yes-rate from eval/<stage>.json of the last stage
                         that evaluated (`eval_stage`)
  visual_tokens          visual embeddings the LM sees per image (in the
                         token stream, or through cross-attention; the mean
                         over the sizes the dataset draws, for a tower that
                         reads each picture at its own size or in tiles)
  seq_tokens             sequence positions one image takes
  params                 parameters of the model that answers (the MLLM; no
                         SigLIP text tower or Q-Former pretraining heads)
  step_s                 mean seconds per step of the timed stage (sft),
                         from metrics.jsonl, leaving out logging windows
                         that include a compilation
  wall_s, cpu_s          wall time and CPU time (user + system) of the
                         variant's runs, all attempts; CPU time depends less
                         on what else loads the machine
  seed_group             the variant's name without its `seed` (variants
                         that set one): rows that share it are one recipe
                         run with several seeds, summarised as mean +- sd
                         in results.md ("Across seeds")
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import statistics
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmjax import config as config_lib
from mmjax.evals import plots
from mmjax.sweeps import spec
from mmjax.train import metrics as metrics_lib

SPLITS = ("test", "heldout")
TIMED_STAGE = "sft"
# The override keys that name a run's seed (`grid(seed=[0, 1, 2])`).
SEED_KEYS = ("seed", "config.seed")


def seed_group(variant: Mapping[str, Any]) -> str | None:
  """The variant's name without its seed; None if it sets no seed."""
  if not any(k in SEED_KEYS for k in variant):
    return None
  return spec.variant_name({k: v for k, v in variant.items()
                            if k not in SEED_KEYS})


def eval_results(workdir: str, stage_order: Sequence[str]
                 ) -> tuple[str, dict[str, Any]]:
  """(stage, metrics) of the last stage in order with eval/<stage>.json."""
  for stage in reversed(list(stage_order)):
    path = os.path.join(workdir, "eval", f"{stage}.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        return stage, json.load(f)
  return "", {}


def mean_step_time(records: Sequence[Mapping[str, Any]], stage: str
                   ) -> float | None:
  """Mean `step_time_s` of a stage's logging windows without a compile.

  A compile record at step c (written before step c + 1 runs) taints the
  first window logged at a step > c. None when no clean window exists.
  """
  mine = [r for r in records if r.get("stage") == stage]
  compiles = [int(r["step"]) for r in mine if "compile_time_s" in r]
  windows = sorted((int(r["step"]), float(r["step_time_s"])) for r in mine
                   if isinstance(r.get("step_time_s"), (int, float)))
  tainted = {next((s for s, _ in windows if s > c), None) for c in compiles}
  clean = [t for s, t in windows if s not in tainted]
  return sum(clean) / len(clean) if clean else None


def model_facts(config) -> dict[str, Any]:
  """Visual tokens per image, sequence tokens per image, parameter count."""
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from mmjax.data.tokenizer import IMAGE_ID  # pylint: disable=g-import-not-at-top
  from mmjax.data import datasets, pipeline  # pylint: disable=g-import-not-at-top
  from mmjax.models import build, layout  # pylint: disable=g-import-not-at-top
  facts: dict[str, Any] = {}
  model = build.build_model(config)
  if config.get("family") == "mllm":
    cfg = model.cfg
    side = cfg.side
    # The mean over the pictures the dataset draws, as the model reads them
    # (a native tower or tiles: each picture its own count).
    sizes = datasets.drawn_sizes(config)
    visual = round(sum(pipeline.visual_tokens(cfg, h, w) for h, w in sizes)
                   / len(sizes))
    if cfg.fusion == "cross_attention":  # latents beside one marker token
      facts["visual_tokens"] = cfg.resampler.n_latents
      facts["seq_tokens"] = layout.placeholder_tokens(cfg, side, side)
    else:
      facts["visual_tokens"] = facts["seq_tokens"] = visual
    init = build.mllm_init(model, IMAGE_ID)
  else:
    init = build.decoder_init(model, config.data.seq_len)
  abstract = nn.unbox(jax.eval_shape(init, jax.random.key(0)))
  facts["params"] = sum(math.prod(a.shape) for a in jax.tree.leaves(abstract))
  return facts


def run_config(workdir: str, config):
  """The config a run used (WORKDIR/config.json, written by main), else
  `config`: the recipe file may have changed since the run."""
  ran = config_lib.read_run_config(workdir)
  return config if ran is None else ran


def variant_row(name: str, variant: Mapping[str, Any], config, workdir: str,
                status: Mapping[str, Any]) -> dict[str, Any]:
  """One results row (see the module docstring); `config` is the planned
  config, replaced by the one the run wrote if it exists."""
  config = run_config(workdir, config)
  row: dict[str, Any] = {"variant": name,
                         "status": status.get("status", "not run")}
  row.update({k.removeprefix("config."): _text(v)
              for k, v in variant.items()})
  group = seed_group(variant)
  if group is not None:
    row["seed_group"] = group
  stage, metrics = eval_results(workdir, config.get("stage_order", ()))
  row["eval_stage"] = stage
  for key, value in metrics.items():
    parts = key.split("/")
    counted = parts[1:2] == ["count"] or parts[-1] == "count"  # not acc/count
    if parts[0] in SPLITS and isinstance(value, (int, float)) and not (
        counted and parts[1] != "acc"):
      row[key] = value
  row.update(model_facts(config))
  stages = list(config.get("stage_order", ()))
  timed = TIMED_STAGE if TIMED_STAGE in stages else (stages or [""])[-1]
  row["step_s"] = mean_step_time(metrics_lib.read_metrics(workdir), timed)
  row["timed_stage"] = timed
  row["wall_s"] = status.get("wall_s")
  row["cpu_s"] = status.get("cpu_s")
  row["error"] = status.get("error", "")
  return row


def _text(value: Any) -> Any:
  return "+".join(map(str, value)) if isinstance(value, (list, tuple)) \
      else value


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> str:
  """Every column of every row (blank where a row lacks it)."""
  columns: list[str] = []
  for row in rows:
    columns += [k for k in row if k not in columns]
  with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()}
                     for row in rows)
  os.replace(path + ".tmp", path)
  return path


def _qtypes(rows: Sequence[Mapping[str, Any]], split: str) -> list[str]:
  from mmjax.data.shapes import QTYPES  # pylint: disable=g-import-not-at-top
  present = {k.split("/")[-1] for r in rows for k in r
             if k.startswith(f"{split}/acc/")} - {"all"}
  return [q for q in QTYPES if q in present] + sorted(present - set(QTYPES))


def _cell(value: Any, digits: int = 3) -> str:
  if value is None or value == "":
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value).replace("|", "\\|").replace("\n", " ")


def _tokens(visual: Any, seq: Any) -> str:
  """`16 (1)`: visual tokens, and the sequence positions when they differ
  (cross-attention reads its latents beside the sequence)."""
  if visual is None:
    return "-"
  return f"{visual}" + (f" ({seq} in sequence)" if seq not in (None, visual)
                        else "")


def _minutes(seconds: Any) -> str:
  if not isinstance(seconds, (int, float)):
    return "-"
  return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def results_markdown(rows: Sequence[Mapping[str, Any]], title: str,
                     notes: Sequence[str] = ()) -> str:
  """Accuracy by question type on test, held-out accuracy, the absent-object
  yes-rate, visual tokens, parameters, step time and wall time."""
  qtypes = _qtypes(rows, "test")
  timed = next((r["timed_stage"] for r in rows if r.get("timed_stage")), "")
  head = (["variant", "status", "after", "test all"] + qtypes +
          ["heldout all", "absent yes-rate (test)", "visual tokens / image",
           "params (M)", f"{timed} s/step", "wall", "CPU"])
  lines = [f"# {title}", "", *notes, "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["variant"], r["status"], r.get("eval_stage") or "-",
             _cell(r.get("test/acc/all"))]
    cells += [_cell(r.get(f"test/acc/{q}")) for q in qtypes]
    params = r.get("params")
    cells += [_cell(r.get("heldout/acc/all")),
              _cell(r.get("test/absent_yes_rate")),
              _tokens(r.get("visual_tokens"), r.get("seq_tokens")),
              _cell(params / 1e6 if params else None, 2),
              _cell(r.get("step_s"), 3), _minutes(r.get("wall_s")),
              _minutes(r.get("cpu_s"))]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  held = _qtypes(rows, "heldout")
  if held:
    lines += ["", "Held-out compositions (colour x shape pairs never seen in "
              "training), accuracy by question type:", "",
              "| variant | " + " | ".join(held + ["all"]) + " |",
              "|---|" + "---|" * (len(held) + 1)]
    lines += ["| " + " | ".join([r["variant"]] + [
        _cell(r.get(f"heldout/acc/{q}")) for q in held + ["all"]]) + " |"
              for r in rows]
  lines += seeds_markdown(rows)
  failed = [r for r in rows if r["status"] == "failed"]
  if failed:
    lines += ["", "Failed variants (the end of each log):", ""]
    lines += [f"- `{r['variant']}`: {_cell(r.get('error'))}" for r in failed]
  return "\n".join(lines) + "\n"


def seed_summary(rows: Sequence[Mapping[str, Any]]
                 ) -> dict[str, dict[str, tuple[float, float, int]]]:
  """{seed group: {metric: (mean, sample sd, runs)}} over the finished rows
  of each group with at least two; the metrics are the accuracies
  (`test/acc/...`, `heldout/acc/...`) every run of the group has."""
  groups: dict[str, list[Mapping[str, Any]]] = {}
  for r in rows:
    if r.get("seed_group") is not None and r["status"] == "ok":
      groups.setdefault(r["seed_group"], []).append(r)
  out = {}
  for group, runs in groups.items():
    if len(runs) < 2:
      continue
    keys = [k for k in runs[0] if k.split("/")[0] in SPLITS
            and "/acc/" in k and all(isinstance(r.get(k), (int, float))
                                     for r in runs)]
    summary = {}
    for key in keys:
      values = [float(r[key]) for r in runs]
      summary[key] = (statistics.mean(values), statistics.stdev(values),
                      len(values))
    out[group] = summary
  return out


def seeds_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """The "Across seeds" table: mean +- sd of each seed group (none: [])."""
  summary = seed_summary(rows)
  if not summary:
    return []
  qtypes = _qtypes(rows, "test")
  columns = (["test/acc/all"] + [f"test/acc/{q}" for q in qtypes]
             + ["heldout/acc/all"])
  lines = ["", "Across seeds (mean +- sample standard deviation over the "
           "finished runs of each variant; the spread between seeds, "
           "beside each run's own standard error in its report.md):", "",
           "| variant | runs | " + " | ".join(
               c.replace("/acc/", " ") for c in columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for group, stats in summary.items():
    runs = next(iter(stats.values()))[2] if stats else 0
    cells = [f"{stats[c][0]:.3f} +- {stats[c][1]:.3f}" if c in stats else "-"
             for c in columns]
    lines.append("| " + " | ".join([_cell(group), str(runs)] + cells) + " |")
  return lines


def _save(fig: Figure, path: str) -> str:
  FigureCanvasAgg(fig)
  fig.savefig(path + ".tmp.png", dpi=110, format="png")
  os.replace(path + ".tmp.png", path)
  return path


def plot_costs(rows: Sequence[Mapping[str, Any]], path: str,
               timed: str = TIMED_STAGE) -> str:
  """Bars per variant: visual tokens per image, parameters, step time."""
  panels = (("visual_tokens", "visual tokens / image", 1.0),
            ("params", "parameters (M)", 1e-6),
            ("step_s", f"{timed} s / step", 1.0))
  fig = Figure(figsize=(max(9.0, 0.9 * len(rows) * 3), 3.8),
               layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False).ravel()
  names = [r["variant"] for r in rows]
  for ax, (key, label, scale) in zip(axes, panels):
    values = [r.get(key) * scale if isinstance(r.get(key), (int, float))
              else 0.0 for r in rows]
    bars = ax.bar(range(len(rows)), values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values],
                 fontsize="x-small")
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right",
                  fontsize="small")
    ax.set_title(label)
    ax.grid(True, axis="y", alpha=0.3)
  return _save(fig, path)


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: str,
                  timed: str = TIMED_STAGE) -> str:
  """Test accuracy against step time, one labelled point per variant."""
  fig = Figure(figsize=(6.4, 4.4), layout="constrained")
  ax = fig.subplots()
  for r in rows:
    x, y = r.get("step_s"), r.get("test/acc/all")
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
      ax.plot([x], [y], "o", color="tab:blue")
      ax.annotate(r["variant"], (x, y), fontsize="x-small",
                  textcoords="offset points", xytext=(4, 4))
  ax.set_xlabel(f"{timed} seconds per step")
  ax.set_ylabel("test accuracy (all questions)")
  ax.set_title("Accuracy against training cost")
  ax.grid(True, alpha=0.3)
  return _save(fig, path)


def write_results(workdir: str, rows: Sequence[Mapping[str, Any]],
                  title: str, notes: Sequence[str] = ()) -> dict[str, str]:
  """results.csv, results.md and PNG plots in `workdir`; returns paths."""
  out = {"csv": write_csv(rows, os.path.join(workdir, "results.csv"))}
  ok = [r for r in rows if r["status"] == "ok"]
  timed = next((r["timed_stage"] for r in rows if r.get("timed_stage")),
               TIMED_STAGE)
  pngs = []
  for split in SPLITS:
    by_variant = {r["variant"]: {k[len(split) + 1:]: v for k, v in r.items()
                                 if k.startswith(f"{split}/acc/")}
                  for r in ok}
    by_variant = {k: v for k, v in by_variant.items() if v}
    if by_variant:
      out[f"accuracy_{split}"] = plots.plot_accuracy(
          by_variant, os.path.join(workdir, f"accuracy_{split}.png"),
          legend_title="variant",
          title=f"{split} accuracy by question type (after "
          f"{ok[0].get('eval_stage') or 'the last stage'})")
      pngs.append(f"accuracy_{split}.png")
  if ok:
    out["costs"] = plot_costs(ok, os.path.join(workdir, "costs.png"), timed)
    out["tradeoff"] = plot_tradeoff(ok, os.path.join(workdir,
                                                     "tradeoff.png"), timed)
    pngs += ["costs.png", "tradeoff.png"]
  text = results_markdown(rows, title, notes)
  text += "\n" + "\n".join(f"![{p[:-4]}]({p})" for p in pngs) + "\n"
  text += (f"\nWritten {datetime.datetime.now().isoformat(timespec='seconds')}"
           ".\n")
  path = os.path.join(workdir, "results.md")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  out["md"] = path
  return out
