"""WORKDIR/report.md: what a recipe produced, stage by stage."""
from __future__ import annotations

import datetime
import os
from typing import Any, Mapping, Sequence


def _fmt(v: Any) -> str:
  return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(workdir: str, title: str,
                 stages: Sequence[tuple[str, Any, Mapping[str, Any]]],
                 extra: str = "") -> str:
  """Writes report.md; `stages` holds (name, StageResult, info) triples;
  `extra` (markdown: evaluations, plots) follows the stage sections."""
  lines = [f"# {title}", "",
           f"Written {datetime.datetime.now().isoformat(timespec='seconds')}"
           f" from `{os.path.abspath(workdir)}`.", ""]
  for name, result, info in stages:
    lines += [f"## Stage `{name}`", "",
              f"- steps: {result.step}",
              f"- checkpoints: `{result.checkpoint_dir}`"]
    lines += [f"- {k}: {_fmt(v)}" for k, v in info.items()]
    if result.final_metrics:
      lines += ["", "| metric | final value |", "|---|---|"]
      lines += [f"| {k} | {_fmt(v)} |"
                for k, v in sorted(result.final_metrics.items())]
    lines.append("")
  if extra:
    lines += ["", extra]
  path = os.path.join(workdir, "report.md")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  os.replace(path + ".tmp", path)
  return path
