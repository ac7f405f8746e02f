"""Will a stage fit? Per-device memory and model FLOPs of its sharded step.

  mesh = parallel.make_mesh({"fsdp": 8})
  plan = fit_plan.plan_stage(config, "sft", mesh, method="analytic")
  print(fit_plan.format_table([plan]))

The stage's train state and step are built exactly as the trainer builds
them (`trainer.build_train_step`: the same trainable split, optimizer, logical
shardings and jit), on abstract inputs: nothing is allocated. Two methods:

  compiled  `jit(step).lower(state, batch).compile().memory_analysis()`: XLA's
            own per-device figures for arguments (state and batch), outputs
            (aliased to the donated state) and temporaries (gradients,
            activations, workspace). Works on simulated CPU devices
            (`python -m mmjax.plan` sets their count), so a laptop can plan
            for a pod slice, but compiling a 7B model takes minutes there.
  analytic  parameters, optimizer state and gradients from the shardings
            (exact per-device shard sizes), activations from a per-token
            formula (`activation_bytes`). Seconds at any size.

Parameters, optimizer state and batch are the shard sizes either way;
`method='both'` also reports how far the analytic total is from the
compiled one.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from mmjax import config as C
from mmjax import parallel
from mmjax.data import batching
from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib
from mmjax.models import build, flops
from mmjax.train import groups, lora, stages, trainer
from mmjax.train.stages import base

METHODS = ("auto", "compiled", "analytic", "both")
# Parameters above which 'auto' does not compile on CPU (minutes, GBs of RAM).
AUTO_COMPILE_MAX_PARAMS = 2e9
GIB = 1024 ** 3
# The memory rows of a plan, in table order.
MEMORY_ROWS = ("params", "opt_state", "grads", "activations", "batch",
               "total")


class PlanError(C.ConfigError):
  """A plan that cannot be made as asked (a stage or format it cannot
  plan); the message says what to change."""


class LayoutError(PlanError):
  """The stage reads a data format the planner does not lay out."""


def is_layout_error(error: Exception) -> bool:
  return isinstance(error, LayoutError)


@dataclasses.dataclass
class StagePlan:
  """What one stage's train step needs per device.

  Attributes:
    stage: the stage name.
    method: 'compiled' or 'analytic' (which `memory` holds).
    mesh: {'data', 'fsdp', 'tensor'} sizes.
    batch: global batch; seq_len: L of the LM (the longest bucket).
    params / trained_params: parameter counts (whole model / trained).
    memory: per-device bytes: params, opt_state, grads, activations (with
      XLA's workspace when compiled), batch, total.
    analytic: the analytic estimate of the same rows.
    compiled: XLA's memory_analysis figures (bytes) when compiled, else {}.
    flops: model FLOPs of the whole step by component ('total').
    hbm_bytes: the device memory compared against (None: unknown).
  """
  stage: str
  method: str
  mesh: dict[str, int]
  batch: int
  seq_len: int
  params: int
  trained_params: int
  memory: dict[str, float]
  analytic: dict[str, float]
  compiled: dict[str, float]
  flops: dict[str, float]
  hbm_bytes: float | None = None

  @property
  def fits(self) -> bool | None:
    return None if self.hbm_bytes is None else (
        self.memory["total"] <= self.hbm_bytes)

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())

  @property
  def analytic_over_compiled(self) -> float | None:
    """analytic total / compiled total (None without a compiled figure)."""
    if not self.compiled:
      return None
    return self.analytic["total"] / self.compiled["total"]

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(fits=self.fits, devices=self.devices,
               flops_per_device=self.flops["total"] / self.devices,
               analytic_over_compiled=self.analytic_over_compiled)
    return out


# ------------------------------------------------------------------ mesh --
def parse_mesh(text: str) -> dict[str, int]:
  """'fsdp:8,tensor:2' -> {'data': 1, 'fsdp': 8, 'tensor': 2}.

  Raises:
    ConfigError: an unknown axis, a repeated axis or a size that is not a
      positive integer (`config.parse_mesh_spec`).
  """
  return {**{a: 1 for a in parallel.MESH_AXES}, **C.parse_mesh_spec(text)}


def check_batch(mesh_sizes: Mapping[str, int], batch: int, stage: str
                ) -> None:
  """ConfigError unless data x fsdp divides the global batch."""
  shards = mesh_sizes["data"] * mesh_sizes["fsdp"]
  if batch < 1 or batch % shards:
    raise C.ConfigError(
        f"stage {stage}: batch {batch} is not divisible by the mesh's "
        f"data x fsdp = {shards} (the batch is split over both); use a "
        f"batch that is a multiple of {shards} (--batch) or another mesh")


# ----------------------------------------------------------------- inputs --
def stage_task(config: ml_collections.ConfigDict, stage_name: str
               ) -> trainer.Task:
  """The stage's Task without data: model, loss and LoRA as build_task
  makes them (`stages.build_task` also reads the data)."""
  stage = config.stages[stage_name]
  kind = stages.stage_kind(config, stage_name)
  model, init, to_global = kind.make_model(config, stage_name)
  task = trainer.Task(
      init_params=init, loss_fn=kind.make_loss(model, stage),
      train_iterator=None, eval_batches=None, to_global=to_global,
      needs_ref=kind.needs_ref,
      loss_state=kind.initial_loss_state(config, stage_name))
  return lora.wrap(task, stage)


def abstract_batch(config: ml_collections.ConfigDict, stage_name: str,
                   batch: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Global shapes of the batches the stage's pipeline yields (longest
  bucket), as the collate function lays them out (data/batching.py).

  Raises:
    PlanError: the stage reads a format the planner does not lay out.
  """
  fmt = config.stages[stage_name].get("data", "")
  if config.family != "mllm" or fmt not in base.IMAGE_TEXT_FORMATS + (
      "preference",):
    raise LayoutError(
        f"stage {stage_name} reads data={fmt!r} (family "
        f"{config.family!r}); the planner lays out the image-text chat "
        f"formats ({', '.join(base.IMAGE_TEXT_FORMATS)}) and 'preference': "
        "pick such a stage with --stage")
  cfg = build.mllm_config(config)
  s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
  out = {"images": s((batch, 1, cfg.side, cfg.side, cfg.channels), "float32"),
         "image_mask": s((batch, 1), bool), "valid": s((batch,), bool)}
  if native_lib.takes_native(cfg):  # one side x side image packed per row
    v = cfg.vision
    n = native_lib.row_length(native_lib.still_patches(
        v, [(cfg.side, cfg.side)]), v.spatial_merge)
    width = v.channels * v.temporal_patch_size * v.patch_size ** 2
    del out["images"]
    out.update(native_patches=s((batch, n, width), "float32"),
               native_rope_ids=s((batch, n, 2), "int32"),
               native_segment_ids=s((batch, n), "int32"),
               native_row_index=s((batch, n // v.spatial_merge ** 2),
                                  "int32"))
  if naflex_lib.takes_naflex(cfg):  # one padded patch row per row
    v = cfg.vision
    n = v.max_num_patches
    del out["images"]
    out.update(naflex_patches=s((batch, 1, n, v.patch_dim), "float32"),
               naflex_mask=s((batch, 1, n), "int32"),
               naflex_spatial_shapes=s((batch, 1, 2), "int32"))
  pos = {"mrope": s((3, batch, seq_len), "int32"),
         "v2pe": s((batch, seq_len), "float32")}.get(
             cfg.positions, s((batch, seq_len), "int32"))
  seq = {"tokens": s((batch, seq_len), "int32"),
         "targets": s((batch, seq_len), "int32"),
         "loss_mask": s((batch, seq_len), "float32"), "positions": pos,
         "image_token_mask": s((batch, seq_len), bool),
         "media_locations": s((batch, seq_len), bool)}
  assert set(seq) == set(batching.SEQUENCE_KEYS)
  prefixes = ("chosen_", "rejected_") if fmt == "preference" else ("",)
  for prefix in prefixes:
    out.update({prefix + k: v for k, v in seq.items()})
  return out


# ----------------------------------------------------------------- memory --
def shard_bytes(abstract: Any, shardings: Any) -> float:
  """Bytes one device holds of a tree of arrays with these shardings
  (the largest shard per leaf: uneven splits round up)."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract),
                            jax.tree.leaves(shardings)):
    shape = sharding.shard_shape(leaf.shape) if leaf.shape else ()
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return float(total)


def _group_trains(train_paths: Sequence[str], prefix: str) -> bool:
  return any(p.startswith(prefix) for p in train_paths)


def _score_bytes(attention: str, width: int) -> int:
  """Bytes per attention score kept: float32 scores and softmax plus the
  probabilities in the compute dtype; none for cuDNN's fused kernel."""
  return 0 if attention == "cudnn" else 8 + width


def activation_bytes(cfg: Any, train_paths: Sequence[str], batch: int,
                     seq_len: int, mesh_sizes: Mapping[str, int]) -> float:
  """Per-device bytes of the activations a training step keeps alive.

  Per token of a block without remat it keeps about (w = bytes of the
  compute dtype; heads and MLP split over `tensor`):

    decoder  w * (6*d + (2*H*Dh + 2*Kh*Dh + 4*F) / tensor)
             + (8 + w) * H*L / tensor
    ViT      w * (6*Dv + (4*Dv + 2*Fv) / tensor) + (8 + w) * Hv*N / tensor

  (residuals and norms; q, k, v, attention output; MLP gate, up, product;
  float32 attention scores and softmax, and the probabilities in the
  compute dtype; cuDNN's fused attention stores none). With remat 'full'
  a block keeps only its input (w * d) and one block's working set is alive
  while it is recomputed; other remat policies are counted as none (an
  upper bound). The loss adds float32
  logits, log-probabilities and their gradient (12 * V / tensor bytes per
  token). A part keeps its activations only when a gradient flows through
  it: the ViT when it trains, the LM when anything trains (its input
  gradient reaches the connector); a frozen ViT holds one block's working
  set at a time.
  """
  t = mesh_sizes["tensor"]
  b = batch / (mesh_sizes["data"] * mesh_sizes["fsdp"])

  def stack(per_token, layers, remat, tokens, kept, keep):
    block = tokens * per_token
    if not keep:
      return block  # forward only: one block alive at a time
    if remat == "full":  # block inputs, and one block recomputed
      return tokens * kept * layers + block
    return block * layers

  lm = cfg.lm
  w = jnp.dtype(lm.dtype).itemsize
  d, h, kh, dh = lm.d_model, lm.n_heads, lm.n_kv_heads, lm.resolved_head_dim
  per_tok = (w * (6 * d + (2 * h * dh + 2 * kh * dh + 4 * lm.mlp_dim) / t)
             + _score_bytes(lm.attention, w) * h * seq_len / t)
  total = stack(per_tok, lm.n_layers, lm.remat, b * seq_len, w * d,
                bool(train_paths))
  total += b * seq_len * 12 * lm.vocab_size / t
  if cfg.vision is not None:
    v = cfg.vision
    n, wv = v.num_patches, jnp.dtype(v.dtype).itemsize
    # Qwen2-VL's tower has no attention / remat switches: einsum, no remat.
    per_tok_v = (wv * (6 * v.width + (4 * v.width + 2 * v.mlp_dim) / t)
                 + _score_bytes(getattr(v, "attention", "einsum"), wv)
                 * v.n_heads * n / t)
    total += stack(per_tok_v, flops.vit_blocks_run(cfg),
                   getattr(v, "remat", "none"), b * n,
                   wv * v.width, _group_trains(train_paths, "vision/"))
  return float(total)


def _compiled_memory(lowered) -> dict[str, float]:
  """XLA's per-device figures of a lowered step, and their peak total."""
  mem = lowered.compile().memory_analysis()
  if mem is None:
    raise PlanError("this backend gives no memory analysis of a compiled "
                    "step; use --method=analytic")
  out = {k: float(getattr(mem, f"{k}_size_in_bytes", 0.0)) for k in (
      "argument", "output", "alias", "temp", "generated_code")}
  # Donated state: outputs reuse the arguments' buffers (alias).
  out["total"] = (out["argument"] + out["output"] - out["alias"]
                  + out["temp"])
  return out


def _cpu_equivalent(config: ml_collections.ConfigDict
                    ) -> ml_collections.ConfigDict | None:
  """The config with the decoder's blocks scanned, when compiling on CPU
  would otherwise misreport remat: XLA:CPU drops the remat barriers of
  unrolled blocks (mmjax/models/remat.py), GPU and TPU keep them. The same
  parameters and shards, stacked; None when nothing needs changing."""
  lm = config.model.get("lm")
  if (jax.devices()[0].platform != "cpu" or lm is None
      or lm.remat == "none" or lm.scan_layers or lm.xattn_every):
    return None
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.lm.scan_layers = True
  return config


def _buildable_here(config: ml_collections.ConfigDict
                    ) -> tuple[ml_collections.ConfigDict, bool]:
  """(config to build the step from, whether it is the config itself).

  cuDNN attention traces only on an NVIDIA GPU; elsewhere the step is built
  with einsum attention (the same parameters and shards), and only the
  analytic estimate, which knows the kernel stores no scores, is right.
  """
  towers = [config.model.get(k) for k in ("lm", "vision")]
  cudnn = [t for t in towers if t is not None and t.get("attention") == (
      "cudnn")]
  if not cudnn or jax.devices()[0].platform == "gpu":
    return config, True
  config = ml_collections.ConfigDict(config.to_dict())
  for key in ("lm", "vision"):
    if config.model.get(key) is not None:
      config.model[key].attention = "einsum"
  return config, False


def _compile_step(config, stage_name, mesh, rules, step, batch_in
                  ) -> dict[str, float]:
  """XLA's memory figures of the stage's step (see `_cpu_equivalent`)."""
  scanned = _cpu_equivalent(config)
  if scanned is not None:
    step = trainer.build_train_step(scanned, stage_name,
                                    stage_task(scanned, stage_name), mesh,
                                    rules)
  state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      step.abstract, step.shardings)
  with parallel.sharding_context(mesh, rules):
    shardings = {k: v.sharding for k, v in batch_in.items()}
    lowered = step.make_step(shardings).lower(state, batch_in)
  return _compiled_memory(lowered)


# ------------------------------------------------------------------- plan --
def plan_stage(config: ml_collections.ConfigDict, stage_name: str,
               mesh: Mesh, rules=None, *, batch: int | None = None,
               method: str = "auto", hbm_bytes: float | None = None
               ) -> StagePlan:
  """Memory per device and model FLOPs of one stage's train step.

  Args:
    config: a validated multimodal recipe.
    stage_name: a stage of config.stages.
    mesh: the mesh to plan for (simulated CPU devices are fine).
    rules: logical axis rules (default: the config's).
    batch: global batch (default: the stage's).
    method: one of METHODS; 'auto' compiles below AUTO_COMPILE_MAX_PARAMS
      parameters and estimates above.
    hbm_bytes: device memory to compare the total with (None: unknown).

  Raises:
    ConfigError / PlanError: a batch the mesh does not divide, a stage the
      planner cannot lay out, an unknown method.
  """
  if method not in METHODS:
    raise PlanError(f"method={method!r}; allowed: {', '.join(METHODS)}")
  if rules is None:
    rules = parallel.logical_rules(config.mesh.get("rules", None))
  if stage_name not in config.stages:
    raise PlanError(f"stage {stage_name!r} is not in config.stages; stages: "
                    f"{', '.join(config.stages.keys())}")
  sizes = dict(mesh.shape)
  batch = batch or C.stage_batch_size(config, stage_name)
  check_batch(sizes, batch, stage_name)
  seq_len = int(config.data.max_len)
  inputs = abstract_batch(config, stage_name, batch, seq_len)
  built, same = _buildable_here(config)
  task = stage_task(built, stage_name)
  step = trainer.build_train_step(built, stage_name, task, mesh, rules)
  batch_shardings = parallel.batch_shardings(inputs, mesh, rules)
  batch_in = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                      sharding=batch_shardings[k])
              for k, v in inputs.items()}

  params = step.abstract["params"]
  n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(params))
  n_train = sum(math.prod(step.model_flat[p].shape) for p in step.train)
  flat_params = groups.flatten(params)
  flat_shard = groups.flatten(step.shardings["params"])
  grads = shard_bytes([flat_params[p] for p in step.train],
                      [flat_shard[p] for p in step.train])
  state_bytes = {k: shard_bytes(step.abstract[k], step.shardings[k])
                 for k in step.abstract}
  cfg = build.mllm_config(config)
  sequences = 2 if config.stages[stage_name].data == "preference" else 1
  analytic = {
      "params": state_bytes.pop("params"),
      "opt_state": state_bytes.pop("opt_state"),
      "grads": grads,
      # Preference stages run chosen and rejected: two sequences a row.
      "activations": activation_bytes(cfg, step.train, batch * sequences,
                                       seq_len, sizes),
      "batch": sum(shard_bytes(v, batch_shardings[k])
                   for k, v in batch_in.items()),
  }
  # Small leftovers (step counters, carried leaves, DPO's reference copy).
  analytic["params"] += sum(state_bytes.values())
  analytic["total"] = sum(analytic.values())

  if method == "auto":
    method = "compiled" if (n_params <= AUTO_COMPILE_MAX_PARAMS and same
                            ) else "analytic"
  if method in ("compiled", "both") and not same:
    raise PlanError(
        f"attention='cudnn' compiles only on an NVIDIA GPU, this host has "
        f"{jax.devices()[0].platform} devices: use --method=analytic (it "
        "counts no stored attention scores for cuDNN)")
  compiled: dict[str, float] = {}
  if method in ("compiled", "both"):
    compiled = _compile_step(built, stage_name, mesh, rules, step, batch_in)
  memory = dict(analytic)
  if compiled:
    # XLA's temporaries hold the gradients, the activations and its
    # workspace; the other rows are the shards themselves.
    memory["activations"] = max(compiled["temp"] - grads, 0.0)
    memory["total"] = compiled["total"]
  group_params = {
      "connector": sum(math.prod(a.shape) for p, a in flat_params.items()
                       if p.startswith("connector/")),
      "xattn": sum(math.prod(a.shape) for p, a in flat_params.items()
                   if groups.matches(p, "xattn"))}
  return StagePlan(
      stage=stage_name, method="compiled" if compiled else "analytic",
      mesh=sizes, batch=batch, seq_len=seq_len, params=int(n_params),
      trained_params=int(n_train), memory=memory, analytic=analytic,
      compiled=compiled,
      flops=flops.train_flops(cfg, batch * sequences, seq_len, group_params),
      hbm_bytes=hbm_bytes)


# ----------------------------------------------------------------- output --
def format_table(plans: Sequence[StagePlan]) -> str:
  """A plain-text table, one column per stage; memory per device in GiB
  (MiB when every total is under 1 GiB)."""
  unit, scale = ("GiB", GIB) if max(
      p.memory["total"] for p in plans) >= GIB else ("MiB", 1024 ** 2)
  size = lambda x: f"{x / scale:.2f}"
  head = ["per device", *(p.stage for p in plans)]
  rows = [[f"{k} {unit}", *(size(p.memory[k]) for p in plans)]
          for k in MEMORY_ROWS]
  rows.append(["method", *(p.method for p in plans)])
  if any(p.compiled for p in plans):
    rows.append([f"analytic total {unit}", *(size(p.analytic["total"])
                                             for p in plans)])
    rows.append(["analytic / compiled", *(
        f"{p.analytic_over_compiled:.2f}" if p.compiled else "-"
        for p in plans)])
  rows.append([f"HBM {unit}", *(size(p.hbm_bytes) if p.hbm_bytes else "?"
                                for p in plans)])
  rows.append(["fits", *({True: "yes", False: "NO", None: "?"}[p.fits]
                         for p in plans)])
  rows.append(["params", *(f"{p.params:,}" for p in plans)])
  rows.append(["trained params", *(f"{p.trained_params:,}" for p in plans)])
  rows.append(["batch x seq_len", *(f"{p.batch} x {p.seq_len}"
                                    for p in plans)])
  rows.append(["model FLOP/step", *(f"{p.flops['total']:.3e}"
                                    for p in plans)])
  rows.append(["FLOP/step/device", *(
      f"{p.flops['total'] / p.devices:.3e}" for p in plans)])
  widths = [max(len(str(r[i])) for r in [head] + rows)
            for i in range(len(head))]
  line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
  mesh = " ".join(f"{k}={v}" for k, v in plans[0].mesh.items())
  notes = [f"mesh {mesh} ({plans[0].devices} devices); memory per device; "
           "FLOPs: 6 x params x tokens + attention (mmjax/models/flops.py)"]
  return "\n".join(notes + [line(head), *map(line, rows)])


def device_memory_bytes(device: Any) -> float | None:
  """The device's memory limit when the backend reports one (GPU / TPU)."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (CPU: unsupported)
    return None
  limit = stats.get("bytes_limit")
  return float(limit) if limit else None


def devices_needed(mesh_sizes: Mapping[str, int]) -> int:
  """The device count of a mesh."""
  return math.prod(mesh_sizes.values())

