"""Where an XLA:CPU program's time goes, kernel by kernel (jax.profiler).

`profile_kernels(run, steps, hlo_text)` traces `steps` calls of `run` with
`jax.profiler`, reads the trace back (`jax.profiler.ProfileData`) and, for
every kernel XLA:CPU's thunk executor ran (one event per fusion, matmul or
copy, named after its HLO instruction), adds up its time and count per step. The
optimized HLO (`compiled.as_text()`) gives each kernel's op_name, from which
`component` names the part of the model it belongs to, and its shape.

Kernel times are thread times: on 2 cores the executor runs independent
kernels side by side and a matmul borrows the other thread, so they do not
add up to the wall time, which is reported beside them with the time during
which 0, 1 or 2 kernels ran.
"""
from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
from typing import Any, Callable

# Kernel-name prefixes of XLA:CPU's matmul kernels (YNNPACK / XNNPACK /
# oneDNN fusions and plain dots), for a kernel whose HLO is not at hand.
MATMUL_PREFIXES = ("ynn_fusion", "xnn_fusion", "onednn", "dot", "convolution")
# Events of the executor itself, not kernels.
_NOT_KERNELS = ("ThunkExecutor", "ThreadpoolListener", "end:",
                "SlinkyThreadPool")
_COMPONENTS = ("vision", "projector", "attn", "mlp", "norm", "embed",
               "lm_head")
_INSTRUCTION = re.compile(r"\s+(?:ROOT )?%(\S+) = (\S+) ")
_OP_NAME = re.compile(r"metadata=\{op_name=\"([^\"]+)\"")
_COMPUTATION = re.compile(r"(?:ENTRY )?%(\S+) ")
_REFERENCE = re.compile(r"%([\w.\-]+)")
_MATMUL_OP = re.compile(r"\s(?:dot|convolution)\(")


def kernel_class(name: str, matmuls: set[str] | None = None) -> str:
  """'matmul', 'layout copy' (a copy or transpose, often with elementwise
  work fused into it) or 'elementwise/reduce'.

  `matmuls` (from `matmul_kernels`) decides what is a matmul where given:
  a library fusion's name does not say, YNNPACK also runs reductions (the
  gradient's global norm is one per parameter, `ynn_fusion.N` all the same).
  """
  if matmuls is not None:
    if name in matmuls:
      return "matmul"
  elif name.startswith(MATMUL_PREFIXES):
    return "matmul"
  if "copy" in name or "transpose" in name:
    return "layout copy"
  return "elementwise/reduce"


def matmul_kernels(hlo_text: str) -> set[str]:
  """Names of an optimized HLO module's instructions that run a matmul: a
  dot or convolution, or a fusion whose computation (or one it calls) holds
  one."""
  calls: dict[str, list[str]] = collections.defaultdict(list)
  direct: set[str] = set()  # instructions and computations with a dot
  computations: set[str] = set()  # printed before the ones that call them
  current = None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace():
      m = _COMPUTATION.match(line)
      current = m.group(1) if m and line.rstrip().endswith("{") else None
      if current:
        computations.add(current)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name = m.group(1)
    # calls=, to_apply=, body=, branch_computations={...}: any computation
    # the instruction names.
    called = [c for c in _REFERENCE.findall(line[m.end():])
              if c in computations]
    calls[name] += called
    if current is not None:
      calls[current] += called
    if _MATMUL_OP.search(line):
      direct.add(name)
      if current is not None:
        direct.add(current)

  memo: dict[str, bool] = {}

  def holds_matmul(node: str) -> bool:  # HLO call graphs have no cycles
    if node not in memo:
      memo[node] = node in direct or any(
          holds_matmul(c) for c in calls.get(node, ()))
    return memo[node]
  return {name for name in list(calls) if holds_matmul(name)}


def hlo_metadata(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (shape, op_name or '')} of an optimized HLO module
  (every instruction: the kernels are the entry computation's)."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m and m.group(1) not in out:
      op = _OP_NAME.search(line)
      out[m.group(1)] = (m.group(2), op.group(1) if op else "")
  return out


def component(op_name: str) -> str:
  """The part of the train step an op belongs to, from its op_name.

  'loss' is inside the differentiated function but outside the model,
  'optimizer' outside both (clipping, AdamW, the non-finite guard); '?'
  when XLA gave the kernel no op_name (copies it inserted itself).
  """
  if not op_name:
    return "?"
  for part in _COMPONENTS:
    if f"/{part}" in op_name or f"{part}/" in op_name:
      return part
  if "MLLM" in op_name or "DecoderLM" in op_name:
    return "model (other)"
  return "loss" if "jvp(" in op_name else "optimizer"


def _trace_file(directory: str) -> str:
  files = sorted(glob.glob(os.path.join(directory, "**", "*.xplane.pb"),
                           recursive=True))
  if not files:
    raise RuntimeError(f"jax.profiler wrote no trace under {directory}")
  return files[-1]


def _union_length(intervals: list[tuple[int, int]]) -> int:
  """Total length covered by [start, end) intervals (nested ones once)."""
  total, reach = 0, None
  for start, end in sorted(intervals):
    if reach is None or start >= reach:
      total += end - start
      reach = end
    elif end > reach:
      total += end - reach
      reach = end
  return total


def profile_kernels(run: Callable[[], Any], steps: int,
                    hlo_text: str) -> dict[str, Any]:
  """Traces `steps` calls of `run` (each blocking until done) and tallies
  the kernels.

  Returns:
    {'steps', 'wall_ms' (per step, inside the executor), 'kernels_per_step',
     'kernel_ms' (thread time per step), 'concurrency_ms' ({0, 1, 2...:
     ms per step with that many kernels running}), 'by_class',
     'by_component' ({name: {'ms', 'count', 'matmul_ms'}}), 'kernels' (one
     row per kernel: name, class, component, shape, op_name, ms, count;
     slowest first)}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  meta = hlo_metadata(hlo_text)
  matmuls = matmul_kernels(hlo_text)
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory)
    try:
      for _ in range(steps):
        run()
    finally:
      jax.profiler.stop_trace()
    data = ProfileData.from_file(_trace_file(directory))
  cpu = [p for p in data.planes if p.name == "/host:CPU"]
  if not cpu:
    raise RuntimeError("the trace has no /host:CPU plane (not an XLA:CPU "
                       "run?)")
  times, counts = collections.Counter(), collections.Counter()
  edges, executing, inline = [], [], []
  for line in cpu[0].lines:
    if "PjRtCpuClient" in line.name:  # the caller's side of each execution
      executing += [(e.start_ns, e.start_ns + e.duration_ns)
                    for e in line.events
                    if e.name.startswith("ThunkExecutor::Execute")]
    # Run inline (mmjax/host_memory.py), the calling thread executes it.
    inline += [(e.start_ns, e.start_ns + e.duration_ns) for e in line.events
               if e.name == "CommonPjRtLoadedExecutable::"
               "ExecuteHelperOnSingleDevice"]
    for e in line.events:
      # Kernels run on the executor's threads and, for small programs, on
      # the client's; an event is a kernel when an HLO instruction has its
      # name.
      if e.name.startswith(_NOT_KERNELS) or e.name not in meta:
        continue
      times[e.name] += e.duration_ns
      counts[e.name] += 1
      edges += [(e.start_ns, 1), (e.start_ns + e.duration_ns, -1)]
  per_step = lambda ns: ns / 1e6 / steps
  wall = _union_length(executing or inline)
  concurrency, running, last = collections.Counter(), 0, None
  for t, step in sorted(edges):
    if last is not None and running:
      concurrency[running] += t - last
    running += step
    last = t
  rows = []
  for name, ns in times.most_common():
    shape, op_name = meta.get(name, ("?", ""))
    rows.append(dict(name=name, kernel_class=kernel_class(name, matmuls),
                     component=component(op_name), shape=shape,
                     op_name=op_name.replace("jit(step_fn)/", ""),
                     ms=per_step(ns), count=counts[name] / steps))
  by_class, by_component = {}, {}
  for row in rows:
    for table, key in ((by_class, row["kernel_class"]),
                       (by_component, row["component"])):
      entry = table.setdefault(key, dict(ms=0.0, count=0.0, matmul_ms=0.0))
      entry["ms"] += row["ms"]
      entry["count"] += row["count"]
      if row["kernel_class"] == "matmul":
        entry["matmul_ms"] += row["ms"]
  busy = per_step(sum(concurrency.values()))
  return dict(steps=steps, wall_ms=per_step(wall),
              kernels_per_step=sum(counts.values()) / steps,
              kernel_ms=per_step(sum(times.values())),
              concurrency_ms={0: max(per_step(wall) - busy, 0.0),
                              **{k: per_step(v)
                                 for k, v in sorted(concurrency.items())}},
              by_class=by_class, by_component=by_component, kernels=rows)
