"""Will it fit? Per-device memory and FLOPs of a recipe's train step.

  python -m mmjax.plan --config=configs/llava.py:llava15_7b --mesh=fsdp:64 \\
      --hbm_gib=95 [--batch=256] [--stage=sft] [--method=analytic] \\
      [--json=plan.json]

Builds each stage's sharded train step as the trainer does and prints, per
device: parameters, optimizer state, gradients, activations, batch and the
total against --hbm_gib; the parameter count; the step's model FLOPs
(mmjax/train/fit_plan.py). On a CPU host the mesh runs on that many
simulated devices, so a laptop plans for a pod slice. User mistakes exit
with status 2 and one line.
"""
from __future__ import annotations

import json
import math
import os

from absl import app, flags, logging
from ml_collections import config_flags

from mmjax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file and args, e.g. configs/llava.py:llava15_7b",
    lock_config=True)
_MESH = flags.DEFINE_string(
    "mesh", None, "Mesh axes AXIS:SIZE, comma-separated (data, fsdp, "
    "tensor), e.g. fsdp:64 or fsdp:8,tensor:2.")
_BATCH = flags.DEFINE_integer("batch", None,
                              "Global batch (default: each stage's own).")
_HBM = flags.DEFINE_float(
    "hbm_gib", None, "Device memory in GiB to check against (default: the "
    "accelerator's own; required on CPU).")
_STAGE = flags.DEFINE_string("stage", None,
                             "Plan this stage only (default: every stage).")
_METHOD = flags.DEFINE_string(
    "method", "auto", "compiled | analytic | both | auto (compile below "
    "2B parameters, estimate above).")
_JSON = flags.DEFINE_string("json", None, "Also write the plan to this file.")


def _use_cpu_devices(count: int) -> None:
  """Simulated CPU devices for the mesh; must run before JAX starts."""
  os.environ["XLA_FLAGS"] = " ".join(
      [f for f in os.environ.get("XLA_FLAGS", "").split()
       if "xla_force_host_platform_device_count" not in f] +
      [f"--xla_force_host_platform_device_count={count}"])


def _mesh_devices(text: str) -> int | None:
  """The device count of --mesh, None when it does not parse (the planner
  then says what is wrong)."""
  try:
    return math.prod(config_lib.parse_mesh_spec(text).values())
  except config_lib.ConfigError:
    return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing; a missing or broken --config file, a config arg it
  rejects or a bad flag value: one line, exit 2."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      try:
        config_lib.check_python_file(arg.split("=", 1)[1].split(":", 1)[0])
      except config_lib.ConfigError as e:
        config_lib.fail(f"{arg}: {e}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "ConfigError: " in text:  # get_config's own error, wrapped
      text = text.rsplit("ConfigError: ", 1)[1].strip()
    config_lib.fail(text.split("\n")[0])
  except (AttributeError, KeyError) as e:  # --config.KEY that does not exist
    config_lib.fail(f"bad --config override: {e}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # no backend-probing chatter
  if _CONFIG.value is None:
    config_lib.fail("--config is required, e.g. "
                    "--config=configs/llava.py:llava15_7b")
  if not _MESH.value:
    config_lib.fail("--mesh is required, e.g. --mesh=fsdp:64")
  # Before JAX starts: on a CPU host the mesh runs on simulated devices.
  count = _mesh_devices(_MESH.value)
  if count and os.environ.get("JAX_PLATFORMS", "cpu") in ("cpu", ""):
    _use_cpu_devices(count)
  import jax  # pylint: disable=g-import-not-at-top
  from mmjax.train import fit_plan  # pylint: disable=g-import-not-at-top
  try:
    sizes = fit_plan.parse_mesh(_MESH.value)
  except config_lib.ConfigError as e:
    config_lib.fail(str(e))
  needed = fit_plan.devices_needed(sizes)
  from mmjax import parallel  # pylint: disable=g-import-not-at-top
  from mmjax.train import config_checks  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  try:
    devices = jax.devices()
    if len(devices) < needed or len(devices) % needed:
      raise config_lib.ConfigError(
          f"--mesh={_MESH.value} needs {needed} devices, which do not divide "
          f"the {len(devices)} {devices[0].platform} devices here; use a "
          f"mesh whose size divides {len(devices)}, or plan on simulated "
          f"CPU devices with JAX_PLATFORMS=cpu")
    hbm = (_HBM.value * fit_plan.GIB if _HBM.value
           else fit_plan.device_memory_bytes(devices[0]))
    if hbm is None:
      raise config_lib.ConfigError(
          f"--hbm_gib is required on {devices[0].platform} devices (their "
          "memory says nothing about the target's): e.g. --hbm_gib=95 for "
          "TPU v5p, 16 for v5e, 80 for an H100")
    if _HBM.value is not None and _HBM.value <= 0:
      raise config_lib.ConfigError(f"--hbm_gib={_HBM.value} must be > 0")
    if _BATCH.value is not None and _BATCH.value < 1:
      raise config_lib.ConfigError(f"--batch={_BATCH.value} must be >= 1")
    config_checks.validate_config(config)
    names = config_lib.stage_names(config)
    if _STAGE.value:
      if _STAGE.value not in names:
        raise config_lib.ConfigError(
            f"--stage={_STAGE.value} is not a stage of this recipe; stages: "
            f"{', '.join(names)}")
      names = [_STAGE.value]
    mesh = parallel.make_mesh(sizes, devices[:needed])
    plans, skipped = [], []
    for name in names:
      try:
        plans.append(fit_plan.plan_stage(
            config, name, mesh, batch=_BATCH.value, method=_METHOD.value,
            hbm_bytes=hbm))
      except fit_plan.PlanError as e:
        if _STAGE.value or not fit_plan.is_layout_error(e):
          raise
        skipped.append(f"{name} (data={config.stages[name].data!r})")
    if not plans:
      raise config_lib.ConfigError(
          f"no stage of this recipe can be planned: {', '.join(skipped)}; "
          "the planner lays out the image-text chat and preference formats")
  except config_lib.ConfigError as e:
    config_lib.fail(str(e))
  print(fit_plan.format_table(plans), flush=True)
  if skipped:
    print(f"not planned (text-only or contrastive data): "
          f"{', '.join(skipped)}", flush=True)
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump([p.to_json() for p in plans], f, indent=2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
