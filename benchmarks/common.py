"""Shared pieces of the benchmarks: sizes, synthetic batches, peaks, tables.

The LLaVA-style sizes of issue 10 (SigLIP tower + MLP projector +
LLaMA-style LM, batch 8, 64 image tokens + 64 text tokens) are the named
sizes of mmjax/models/sizes.py, the table the recipes read too: `tiny`,
`small` (configs/shapes.py's models), `bench`, and `1b`, a ~1B-parameter
config meant for a GPU run in bfloat16.

Scripts run as `python benchmarks/NAME.py`; they put the repository root on
sys.path so `from benchmarks import common` resolves.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import sizes
# The model-FLOP count lives in the package (the fit planner prints it too).
from mmjax.models.flops import analytic_train_flops  # pylint: disable=unused-import
# The scripts' --fusions choices (jax-free: the torch-only runs import this).
from mmjax.models.choices import FUSIONS  # pylint: disable=unused-import

BATCH = 8
TEXT_LEN = 64

# {size: {'vision': ..., 'lm': ..., 'connector': ...}}, a copy of the table.
SIZES: dict[str, dict[str, Any]] = {n: sizes.get(n) for n in sizes.names()}


class BenchmarkInputError(ValueError):
  """A bad command-line value (the CLI prints it and exits with status 2)."""


def parse_choices(values: Sequence[str], allowed: Sequence[str],
                  flag: str) -> list[str]:
  """Checks each comma-separated flag value against `allowed`."""
  bad = [v for v in values if v not in allowed]
  if bad or not values:
    raise BenchmarkInputError(
        f"--{flag}={','.join(values)}: allowed values are "
        f"{', '.join(allowed)}")
  return list(values)


def parse_sizes(values: Sequence[str], flag: str) -> list[int]:
  """Positive integer sizes from a comma-separated flag (at least one)."""
  try:
    sizes = [int(v) for v in values]
  except ValueError:
    sizes = []
  if not sizes or min(sizes) <= 0:
    raise BenchmarkInputError(
        f"--{flag}={','.join(values)}: give one or more positive integers, "
        f"e.g. --{flag}=1024,2048")
  return sizes


def model_config_dict(size: str, fusion: str = "projection", *,
                      dtype: str = "float32", image_size: int | None = None,
                      latents: int = 64, remat: str = "none",
                      scan_layers: bool = False,
                      attention: str = "einsum") -> dict[str, Any]:
  """The `config.model` block (nested dicts) of a benchmark model.

  Args:
    size: a key of SIZES (mmjax/models/sizes.py).
    fusion: one of FUSIONS (mmjax/models/mllm.py).
    dtype: compute dtype; parameters stay float32 (mixed precision).
    image_size: image side in pixels (default the size's own).
    latents: resampler latents / Q-Former queries (visual tokens in the
      stream for those fusions).
    remat: remat policy of the LM and the ViT blocks.
    scan_layers: run the LM blocks under nn.scan (stacked parameters).
    attention: self-attention kernel of the LM and ViT blocks
      (layers.ATTENTION_IMPLS; 'cudnn' needs an NVIDIA GPU and bfloat16).
  """
  s = sizes.get(size)
  v, lm, conn = s["vision"], s["lm"], s["connector"]
  side = image_size or v.pop("image_size")
  v.pop("image_size", None)
  common = dict(dtype=dtype, param_dtype="float32")
  lm_block = dict(
      rope_theta=10000.0, norm_eps=1e-6, qkv_bias=False, tie_embeddings=False,
      embed_scale=False, norm_offset_one=False, mlp_activation="silu",
      logit_softcap=0.0, xattn_media="last", mrope_sections=None,
      remat=remat, scan_layers=scan_layers, attention=attention,
      xattn_every=(max(1, lm["n_layers"] // 4)
                   if fusion == "cross_attention" else 0), **lm, **common)
  vision = dict(kind="siglip", image_size=side, channels=3, pool="none",
                remat=remat, attention=attention, **v, **common)
  width, heads = v["width"], v["n_heads"]
  resampler = dict(style="flamingo", n_latents=latents,
                   depth=conn["resampler_depth"], n_heads=heads,
                   head_dim=conn["resampler_head_dim"], ff_mult=4,
                   out_dim=lm["d_model"] if fusion == "resampler" else None,
                   **common)
  qformer = dict(n_queries=latents, width=width, depth=conn["qformer_depth"],
                 n_heads=heads, mlp_dim=4 * width, cross_attention_freq=2,
                 vision_width=width, vocab_size=0, **common)
  return dict(fusion=fusion, positions="rope", projector="mlp",
              feature_layer=-2, image_attention="causal",
              patch_size=v["patch_size"], image_size=side, channels=3,
              frames=1, lm=lm_block, vision=vision, resampler=resampler,
              qformer=qformer)


def synthetic_batch(cfg, batch: int = BATCH, text_len: int = TEXT_LEN,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Random tokens and images laid out as the data pipeline would.

  Each example is one image (its placeholders first, as LLaVA puts the image
  before the question) followed by `text_len` random text tokens; the loss
  covers the text positions.

  Returns:
    tokens/targets int32[B, L], loss_mask f32[B, L], positions [B, L],
    images f32[B, 1, H, W, C], image_mask bool[B, 1], image_token_mask and
    media_locations bool[B, L].
  """
  from mmjax.models import layout  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  vocab = cfg.lm.vocab_size
  rows = []
  for _ in range(batch):
    text = rng.integers(IMAGE_ID + 1, vocab, text_len).tolist()
    rows.append(layout.assemble(
        cfg, [layout.Media(cfg.side, cfg.side), text], IMAGE_ID))
  out = {k: np.stack([r[k] for r in rows]) for k in
         ("tokens", "positions", "image_token_mask", "media_locations")}
  tokens = out["tokens"]
  out["targets"] = np.concatenate(
      [tokens[:, 1:], rng.integers(0, vocab, (batch, 1))], 1).astype(np.int32)
  is_text = ~(out["image_token_mask"] | out["media_locations"])
  out["loss_mask"] = is_text.astype(np.float32)
  out["images"] = rng.uniform(-1, 1, (batch, 1, cfg.side, cfg.side,
                                      cfg.channels)).astype(np.float32)
  out["image_mask"] = np.ones((batch, 1), bool)
  return out


def time_steps(step: Callable[[], Any], steps: int, warmup: int = 1
               ) -> list[float]:
  """Seconds of each of `steps` calls after `warmup` untimed calls.

  `step` must block until its result is ready (one step per call, so a
  loaded machine shows as spread, not as a hidden average).
  """
  return time_steps_cpu(step, steps, warmup)[0]


def time_steps_cpu(step: Callable[[], Any], steps: int, warmup: int = 1
                   ) -> tuple[list[float], list[float]]:
  """(wall seconds, process CPU seconds) of each timed call.

  CPU seconds sum over all threads of this process; on a machine shared
  with other jobs they grow less than wall time does, so they compare
  variants better (a thread pool that spins while waiting inflates them).
  """
  for _ in range(warmup):
    step()
  wall, cpu = [], []
  for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return wall, cpu


def summarize_times(times: Sequence[float],
                    cpu: Sequence[float] = ()) -> dict[str, float]:
  """Median (the reported figure), min and max step seconds."""
  out = {"step_s": statistics.median(times), "step_s_min": min(times),
         "step_s_max": max(times), "steps_timed": len(times)}
  if cpu:
    out["cpu_s"] = statistics.median(cpu)
  return out


def xla_matmul_peak(sizes: Sequence[int] = (1024, 2048), reps: int = 5,
                    dtype: str = "float32") -> dict[str, float]:
  """Best jnp.dot FLOP/s over square sizes (2 n^3 FLOPs each).

  Returns `peak_summary`: {'gflops': best wall-clock, 'n': its size,
  'per_size': {n: gflops}, 'gflops_per_cpu_s': best per CPU second, ...}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  per_size, per_cpu = {}, {}
  matmul = jax.jit(jnp.dot)
  for n in sizes:
    key_a, key_b = jax.random.split(jax.random.key(n))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    wall, cpu = time_steps_cpu(lambda: matmul(a, b).block_until_ready(), reps,
                               2)
    per_size[n] = 2 * n ** 3 / min(wall) / 1e9
    per_cpu[n] = 2 * n ** 3 / min(cpu) / 1e9
  return peak_summary(per_size, per_cpu)


def memory_bandwidth(n_bytes: int = 1 << 29, reps: int = 5) -> dict[str, float]:
  """Best device-memory bandwidth of jitted passes over n_bytes, in GB/s.

  'read_gb_s': `jnp.sum` of an f32 array of n_bytes (default 512 MiB, far
  beyond any cache), n_bytes read. 'copy_gb_s': `x * 2` with x donated, so
  the output reuses x's buffer (a fresh 512 MiB output would be page-faulted
  in at every call: 3-4x slower on CPU), counted as 2 * n_bytes (read and
  write).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  holder = {"x": jnp.ones((n_bytes // 4,), jnp.float32)}
  total = jax.jit(jnp.sum)
  read, _ = time_steps_cpu(lambda: total(holder["x"]).block_until_ready(),
                           reps, 2)
  double = jax.jit(lambda a: a * 2, donate_argnums=0)

  def copy():
    holder["x"] = double(holder["x"])
    holder["x"].block_until_ready()
  wall, _ = time_steps_cpu(copy, reps, 2)
  return {"read_gb_s": n_bytes / min(read) / 1e9,
          "copy_gb_s": 2 * n_bytes / min(wall) / 1e9, "bytes": n_bytes}


def peak_summary(per_size: Mapping[int, float],
                 per_cpu: Mapping[int, float]) -> dict[str, Any]:
  """The best size's wall-clock GFLOP/s ('gflops') and its GFLOP per CPU
  second ('gflops_per_cpu_s': FLOPs over the CPU time of all threads)."""
  best = max(per_size, key=per_size.get)
  return {"gflops": per_size[best], "n": best, "per_size": dict(per_size),
          "gflops_per_cpu_s": max(per_cpu.values()),
          "per_size_per_cpu_s": dict(per_cpu)}


def _live_eqns(jaxpr) -> list[Any]:
  """The equations of a jaxpr that its outputs (or effects) depend on."""
  from jax.extend import core  # pylint: disable=g-import-not-at-top
  used = {v for v in jaxpr.outvars if isinstance(v, core.Var)}
  live = []
  for eqn in reversed(jaxpr.eqns):
    if eqn.effects or any(v in used for v in eqn.outvars):
      live.append(eqn)
      used.update(v for v in eqn.invars if isinstance(v, core.Var))
  return live[::-1]


def dot_generals(jaxpr) -> list[tuple[Any, int]]:
  """(dot_general equation, times it runs) for every matmul of a jaxpr.

  Walks sub-jaxprs (jit, remat, custom derivatives; of a cond's branches the
  one with the most matmul FLOPs); a scan's body runs `length` times.
  Equations whose results nothing uses are skipped, as XLA drops them: a
  custom_vjp's backward (models/linear.py) computes the input's gradient
  even where nothing reads it (the patch embedding's pixels).
  """
  from jax.extend import core  # pylint: disable=g-import-not-at-top
  found = []
  for eqn in _live_eqns(jaxpr):
    if eqn.primitive.name == "dot_general":
      found.append((eqn, 1))
      continue
    subs = []
    for value in eqn.params.values():
      for item in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(item, core.ClosedJaxpr):
          subs.append(item.jaxpr)
        elif isinstance(item, core.Jaxpr):
          subs.append(item)
    if not subs:
      continue
    per_sub = [dot_generals(s) for s in subs]
    if eqn.primitive.name == "cond":
      per_sub = [max(per_sub, key=lambda d: sum(
          dot_general_flops(e) * n for e, n in d))]
    times = eqn.params.get("length", 1)
    found += [(e, n * times) for d in per_sub for e, n in d]
  return found


def dot_general_flops(eqn) -> float:
  """2 * M * N * K of one dot_general equation (batch dims in M)."""
  (contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  k = float(np.prod([lhs[d] for d in contract])) if contract else 1.0
  return 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * k


def dot_flops(jaxpr) -> float:
  """Matmul FLOPs (2 * M * N * K summed over dot_generals) of a jaxpr,
  sub-jaxprs included (see dot_generals)."""
  return sum(dot_general_flops(e) * n for e, n in dot_generals(jaxpr))


def rss_bytes() -> dict[str, int]:
  """Current and peak resident memory of this process."""
  current = 0
  try:
    with open("/proc/self/statm", encoding="ascii") as f:
      current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"rss_bytes": current, "peak_rss_bytes": peak}


def load_average() -> str:
  """`uptime`-style 1/5/15-minute load and the core count."""
  one, five, fifteen = os.getloadavg()
  return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, Any]:
  """The CPU model and its vector extensions (from /proc/cpuinfo).

  Timings from one kind of CPU are not comparable with another's (the
  XLA:CPU matmul and elementwise kernels differ with AVX-512), so every
  results file records this and docs/performance.md keeps a table per kind.
  A VM may name its CPU only "AMD EPYC" for several generations (measured
  here: one without AVX-512 whose XLA f32 matmul peak is 69-71 GFLOP/s,
  another, family 25 model 1, at 132-151), so the x86 family and model
  numbers are kept too.
  Returns {'model', 'family', 'model_number' (None where not reported),
  'avx512' (bool), 'simd' (the AVX/AMX flags), 'cores'}.
  """
  fields: dict[str, str] = {}
  flags: set[str] = set()
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model"):
          fields.setdefault(key, value.strip())
        elif key == "flags" and not flags:
          flags = set(value.split())
  except OSError:  # not Linux: the model stays unknown
    pass
  simd = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
  return dict(model=fields.get("model name", "unknown"),
              family=_int_or_none(fields.get("cpu family")),
              model_number=_int_or_none(fields.get("model")),
              avx512="avx512f" in flags, simd=simd, cores=os.cpu_count())


def _int_or_none(text: str | None) -> int | None:
  return int(text) if text is not None and text.isdigit() else None


def cpu_line(path: str = "/proc/cpuinfo") -> str:
  """One line for a benchmark's header: model (with its x86 family and model
  numbers where known), AVX-512 or not, cores."""
  info = cpu_info(path)
  vector = "AVX-512" if info["avx512"] else "no AVX-512"
  numbers = ""
  if info["family"] is not None and info["model_number"] is not None:
    numbers = f" (family {info['family']} model {info['model_number']})"
  return f"CPU {info['model']}{numbers}, {vector}, {info['cores']} cores"


def mib(n: float) -> str:
  return f"{n / 2 ** 20:.0f}"


def child_argv(argv: Sequence[str], script: str, out: str) -> list[str]:
  """The command line of one of a benchmark's repeated runs: `script` with
  argv's flags, --runs=1 and --out=`out` (argv's own --runs and --out, given
  as `--flag=value` or `--flag value`, dropped)."""
  kept, skip = [], False
  for arg in argv[1:]:
    if skip:
      skip = False
      continue
    name = arg.split("=", 1)[0]
    if name in ("--runs", "--out"):
      skip = "=" not in arg
      continue
    kept.append(arg)
  return [sys.executable, script, *kept, "--runs=1", f"--out={out}"]


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
  """One row per (size, fusion) over whole train_throughput runs (their
  JSON): each run's step and HF step, their medians and the ratio of the
  medians (HF median / mmjax median)."""
  keyed: dict[tuple[str, str], list[dict]] = {}
  for run in runs:
    for row in run["rows"]:
      keyed.setdefault((row["size"], row["fusion"]), []).append(row)
  out = []
  for (size, fusion), rows in keyed.items():
    steps = [r["step_s"] for r in rows]
    summary = {"size": size, "fusion": fusion, "step_s": statistics.median(
        steps), "step_s_runs": " ".join(f"{t:.4f}" for t in steps)}
    hf = [r["hf"]["step_s"] for r in rows if "hf" in r]
    if hf:
      summary.update(
          hf_step_s=statistics.median(hf),
          hf_step_s_runs=" ".join(f"{t:.4f}" for t in hf),
          ratio_runs=" ".join(f"{r['ratio_vs_hf']:.2f}" for r in rows
                              if "hf" in r),
          ratio_vs_hf=statistics.median(hf) / summary["step_s"])
    out.append(summary)
  return out


def print_table(rows: Sequence[Mapping[str, Any]],
                columns: Sequence[tuple[str, str, str]]) -> None:
  """Prints rows as a fixed-width table.

  Args:
    rows: dicts of values.
    columns: (header, key, format spec); a missing value prints as '-'.
  """
  cells = [[h for h, _, _ in columns]]
  for row in rows:
    line = []
    for _, key, spec in columns:
      value = row.get(key)
      line.append("-" if value is None else format(value, spec))
    cells.append(line)
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  for i, line in enumerate(cells):
    print("  ".join(c.rjust(w) for c, w in zip(line, widths)), flush=True)
    if i == 0:
      print("  ".join("-" * w for w in widths))


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Writes `payload` (plus the machine load and CPU) as indented JSON."""
  if not path:
    return
  payload = dict(payload, load=load_average(), cpu=cpu_info(),
                 time=time.strftime("%Y-%m-%d %H:%M:%S"))
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=1, default=float)
  print(f"wrote {path}", flush=True)
