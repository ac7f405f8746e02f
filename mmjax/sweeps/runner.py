"""Running a sweep: `run_sweep(sweep, workdir)` validates every variant's
config, runs each as `python -m mmjax.main` in WORKDIR/<variant> (N at once,
output in its log.txt; finished variants skipped, unfinished ones resumed),
and writes the results table and plots (`results.py`). A failed variant is
marked and the others go on. `python -m mmjax.sweep` is the command line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

from mmjax import config as config_lib
from mmjax.sweeps import plan as sweep_plan
from mmjax.sweeps import results as sweep_results
from mmjax.sweeps import spec as sweep_spec

STATUS_FILE = "sweep_status.json"
LOG_FILE = "log.txt"

@dataclasses.dataclass
class Outcome:
  """What a sweep did: one results row per variant, the failed names."""
  rows: list[dict[str, Any]]
  failed: list[str]
  paths: dict[str, str]


def read_status(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, STATUS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_status(workdir: str, status: dict[str, Any]) -> None:
  path = os.path.join(workdir, STATUS_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(status, f, indent=2)
  os.replace(path + ".tmp", path)


def is_finished(plan: sweep_plan.VariantPlan) -> bool:
  """Finished with this very command (a changed sweep runs again: main
  resumes or continues from the checkpoints)."""
  status = read_status(plan.workdir)
  return status.get("status") == "ok" and status.get("command") == \
      plan.command()[1:]


def failure_reason(path: str, start: int = 0, lines: int = 6) -> str:
  """Why a run failed, from its log after byte `start`: main's one-line
  `error: ...` if there is one, else the last non-empty lines (a
  traceback's end; progress bars' \\r split too)."""
  if not os.path.exists(path):
    return ""
  with open(path, "rb") as f:
    f.seek(max(start, os.path.getsize(path) - 16384))
    text = f.read().decode("utf-8", "replace")
  rows = [r.strip() for r in text.replace("\r", "\n").split("\n")]
  rows = [r for r in rows if r]
  errors = [r for r in rows if r.startswith("error:")]
  return errors[-1] if errors else " | ".join(rows[-lines:])


def current_stage(plan: sweep_plan.VariantPlan) -> str:
  """`sft (4/5) 120/600` from the newest metrics record, or `starting`."""
  path = os.path.join(plan.workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return "starting"
  with open(path, "rb") as f:
    f.seek(max(0, os.path.getsize(path) - 4096))
    lines = f.read().decode("utf-8", "replace").strip().splitlines()
  try:
    record = json.loads(lines[-1])
  except (IndexError, json.JSONDecodeError):
    return "starting"
  stage, order = record.get("stage", "?"), list(plan.config.stage_order)
  index = order.index(stage) + 1 if stage in order else 0
  total = plan.config.stages[stage].steps if stage in order else "?"
  return f"{stage} ({index}/{len(order)}) {record.get('step', 0)}/{total}"


def _prepare_data(plans: Sequence[sweep_plan.VariantPlan]) -> None:
  """Builds each shapes dataset once, before variants race to build it."""
  from mmjax.data import datasets  # pylint: disable=g-import-not-at-top  (tfds: only sweeps of the shapes recipe)
  seen = set()
  for plan in plans:
    if plan.config.get("family") != "mllm":
      continue
    key = json.dumps(plan.config.data.to_dict(), sort_keys=True, default=str)
    if key not in seen:
      seen.add(key)
      datasets.shapes_dataset(plan.config)


def _reap(proc: subprocess.Popen, block: bool = False) -> float | None:
  """CPU seconds (user + system) of a finished run, None while it runs.

  os.wait4 instead of Popen.poll: it also returns the child's resource use.
  """
  pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
  if pid == 0:
    return None
  proc.returncode = os.waitstatus_to_exitcode(status)
  return usage.ru_utime + usage.ru_stime


class _Runner:
  """Launches variants (at most `parallel` at once) and watches them."""

  def __init__(self, plans, parallel: int, bar, say):
    self.queue = list(plans)
    self.parallel = max(1, parallel)
    self.bar, self.say = bar, say
    # name -> (plan, process, start time, log file, log offset)
    self.running: dict[str, tuple[Any, subprocess.Popen, float, Any, int]] = {}
    self.failed: list[str] = []

  def launch(self, plan: sweep_plan.VariantPlan) -> None:
    os.makedirs(plan.workdir, exist_ok=True)
    status = read_status(plan.workdir)
    command = plan.command()
    log = open(os.path.join(plan.workdir, LOG_FILE), "a", encoding="utf-8")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} "
              f"{shlex.join(command)}\n")
    log.flush()
    start = log.tell()  # this attempt's output begins here
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    _write_status(plan.workdir, {
        "status": "running", "command": command[1:],
        **{k: status.get(k, 0.0) if status.get("command") == command[1:]
           else 0.0 for k in ("wall_s", "cpu_s")},
        "attempts": status.get("attempts", 0) + 1})
    self.running[plan.name] = (plan, proc, time.time(), log, start)
    self.say(f"{plan.name}: started (log: "
             f"{os.path.join(plan.workdir, LOG_FILE)})")

  def finish(self, name: str, cpu: float) -> None:
    plan, proc, began, log, offset = self.running.pop(name)
    log.close()
    wall = time.time() - began
    status = read_status(plan.workdir)
    status["wall_s"] = status.get("wall_s", 0.0) + wall
    status["cpu_s"] = status.get("cpu_s", 0.0) + cpu
    status["returncode"] = proc.returncode
    if proc.returncode == 0:
      status["status"], status["error"] = "ok", ""
      self.say(f"{name}: done in {wall / 60:.1f} min")
    else:
      tail = failure_reason(os.path.join(plan.workdir, LOG_FILE), offset)
      status["status"] = "failed"
      status["error"] = f"exit {proc.returncode}: {tail}"
      self.failed.append(name)
      self.say(f"{name}: FAILED (exit {proc.returncode}); the end of "
               f"{os.path.join(plan.workdir, LOG_FILE)}:\n    {tail}")
    _write_status(plan.workdir, status)
    self.bar.update(1)

  def run(self) -> None:
    shown = ""
    try:
      while self.queue or self.running:
        while self.queue and len(self.running) < self.parallel:
          self.launch(self.queue.pop(0))
        for name in list(self.running):
          cpu = _reap(self.running[name][1])
          if cpu is not None:
            self.finish(name, cpu)
        text = "; ".join(f"{n}: {current_stage(run[0])}"
                         for n, run in self.running.items())
        if text != shown:
          self.bar.set_postfix_str(text)  # redraws only on a change
          shown = text
        time.sleep(0.5)
    finally:
      self.stop()

  def stop(self) -> None:
    """On an interrupt: SIGTERM makes each run checkpoint and exit, so the
    next sweep resumes it."""
    for run in self.running.values():
      # os.kill, not Popen.send_signal: that would reap a finished child
      # (a zombie until _reap) and lose its resource use.
      os.kill(run[1].pid, signal.SIGTERM)
    deadline = time.time() + 120
    for name in list(self.running):
      plan, proc, began, log, _ = self.running.pop(name)
      cpu = _reap(proc)
      while cpu is None and time.time() < deadline:
        time.sleep(0.2)
        cpu = _reap(proc)
      if cpu is None:
        os.kill(proc.pid, signal.SIGKILL)
        cpu = _reap(proc, block=True)
      log.close()
      status = read_status(plan.workdir)
      status["status"] = "interrupted"
      status["wall_s"] = status.get("wall_s", 0.0) + time.time() - began
      status["cpu_s"] = status.get("cpu_s", 0.0) + cpu
      _write_status(plan.workdir, status)


def run_sweep(sweep: sweep_spec.Sweep | str, workdir: str,
              size: str | None = None, parallel: int = 1, steps_cap: int = 0,
              only: list[str] | None = None, progress: bool = True,
              title: str | None = None) -> Outcome:
  """Validates, runs what is not finished, and writes the results.

  Args:
    sweep: a Sweep, or the path of a sweep file.
    workdir: DIR; each variant runs in DIR/<name>.
    size: replaces the config arg `size` (and picks the sweep's step table).
    parallel: variants run at once.
    steps_cap: caps every stage at this many steps (0: no cap).
    only: names of the variants to run (default all); the results still
      list every variant (those never run as "not run").
    progress: a progress bar over variants (else plain lines).
    title: the heading of results.md (default: the sweep file's name).

  Raises:
    SweepError: a variant's config is wrong (nothing has run).
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  path = sweep if isinstance(sweep, str) else None
  spec = sweep_plan.load_sweep(sweep) if path else sweep
  plans = sweep_plan.build_plans(spec, path, workdir, size=size,
                                 steps_cap=steps_cap)
  names = [p.name for p in plans]
  sweep_plan.check_only(names, only)
  chosen = set(only or names)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "sweep.json"), "w", encoding="utf-8") as f:
    json.dump({"sweep": path, "size": size, "steps_cap": steps_cap,
               "variants": {p.name: p.command()[1:] for p in plans}}, f,
              indent=2)
  todo = [p for p in plans if p.name in chosen and not is_finished(p)]
  say = tqdm.tqdm.write if progress else lambda s: print(s, flush=True)
  for plan in plans:
    if plan.name in chosen and plan.name not in {p.name for p in todo}:
      say(f"{plan.name}: finished before, skipped")
  if todo:
    _prepare_data(todo)
  bar = tqdm.tqdm(total=len(chosen), initial=len(chosen) - len(todo),
                  desc="variants", unit="variant", disable=not progress,
                  mininterval=1.0, dynamic_ncols=True)
  runner = _Runner(todo, parallel, bar, say)
  try:
    runner.run()
  finally:
    bar.close()
  rows = [sweep_results.variant_row(p.name, p.variant, p.config, p.workdir,
                                    read_status(p.workdir)) for p in plans]
  name = title or (os.path.basename(path)[:-3] if path else "sweep")
  notes = [spec.description] if spec.description else []
  notes.append(f"Size: {size or spec.args.get('size', 'default')}"
               + (f", every stage capped at {steps_cap} steps" if steps_cap
                  else "") + f"; {len(plans)} variants.")
  paths = sweep_results.write_results(workdir, rows, name, notes)
  failed = [r["variant"] for r in rows if r["status"] == "failed"]
  return Outcome(rows=rows, failed=failed, paths=paths)
