"""Does a short GRPO stage beat the same wall time of more SFT? (docs/rl.md)

  PYTHONPATH=. python experiments/grpo_vs_sft.py --workdir=/tmp/grpo_cmp

1. base: the tiny shapes recipe up to `sft` (steps shortened by flags), in
   WORKDIR/base;
2. arm `grpo`: WORKDIR/base copied, the `grpo` stage added after `sft`
   (--grpo_steps at --grpo_lr), its wall time measured;
3. arm `sft_more`: the same copy with a stage `sft_more` (the sft stage's
   data and groups at its final learning rate) for the same compute as the
   grpo arm: grpo steps x (grpo step FLOPs / sft step FLOPs), both from
   XLA's cost analysis of the compiled steps (logged at compile). On a
   shared CPU wall time is noise; the logged step times are printed too;
then greedy VQA exact match of all three on --eval_examples test questions
(format `shapes`, as the evaluator asks), printed as one JSON line.
"""
import json
import os
import shutil
import time

from absl import app, flags
import ml_collections

from mmjax import config as config_lib
from mmjax.data import builders, datasets
from mmjax.evals import vqa
from mmjax.train import metrics as metrics_lib
from mmjax.train import recipe, stages

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/grpo_vs_sft", "output dir")
_BASE = flags.DEFINE_string(
    "base_steps", "text_lm=150,siglip=150,regions=300,align=150,sft=500",
    "steps of the base stages")
_GRPO_STEPS = flags.DEFINE_integer("grpo_steps", 30, "grpo steps")
_GRPO_LR = flags.DEFINE_float("grpo_lr", 1e-4, "grpo learning rate")
_GROUP = flags.DEFINE_integer("group_size", 8, "grpo G")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 4000, "shapes train images")
_EVAL = flags.DEFINE_integer("eval_examples", 500, "test questions scored")
_ARMS = flags.DEFINE_list("arms", ["grpo", "sft_more"], "arms to run (the "
                          "sft_more arm reads the grpo arm's step FLOPs)")


def _config(order, arm=None):
  """The recipe with the base steps; an arm's own stage set up only in
  that arm's config (the base run's config.json must not depend on it)."""
  config = config_lib.load_config("configs/shapes.py:size=tiny")
  config.data.num_train = _NUM_TRAIN.value
  config.progress_bar = False
  config.log_every = 10
  for item in _BASE.value.split(","):
    name, steps = item.split("=")
    config.stages[name].steps = int(steps)
    config.stages[name].evals = ()
  config.stage_order = tuple(order)
  if arm is None:
    return config
  stage = config.stages.grpo
  stage.steps, stage.evals = _GRPO_STEPS.value, ()
  stage.group_size = _GROUP.value
  stage.optimizer.lr = _GRPO_LR.value
  stage.schedule.warmup_steps = max(1, _GRPO_STEPS.value // 10)
  more = ml_collections.ConfigDict(config.stages.sft.to_dict())
  more.optimizer.lr = config.stages.sft.optimizer.lr * (
      config.stages.sft.schedule.end_lr_fraction)
  more.schedule.warmup_steps = 1
  config.stages.sft_more = more
  return config


def _accuracy(config, workdir, stage, params, tok):
  model = stages.stage_model(config, stage).model
  source = builders.load_source(datasets.shapes_dataset(config), "test")
  m = vqa.evaluate_shapes_vqa(model, params, model.cfg, tok, source,
                              max_examples=_EVAL.value, batch_size=32)
  del workdir
  return {k: round(v, 4) for k, v in m.items()
          if k.startswith("acc/") or k == "se/all"}


def _median(workdir, stage, key):
  """Median of a logged metric of one stage (step times: the first log,
  which holds the compile, is outvoted)."""
  values = sorted(r[key] for r in metrics_lib.read_metrics(workdir)
                  if r.get("stage") == stage and key in r)
  return values[len(values) // 2]


def main(argv):
  del argv
  base_order = [n.split("=")[0] for n in _BASE.value.split(",")]
  root = _WORKDIR.value
  base = os.path.join(root, "base")
  config = _config(base_order)
  done = recipe.run_recipe(config, base, verbose=False)
  name, result, _ = done[-1]
  tok = datasets.tokenizer_for(datasets.shapes_dataset(config), config)
  out = {"base": _accuracy(config, base, name, result.params, tok)}
  sft_step = _median(base, "sft", "step_time_s")
  arms = {}
  for arm in _ARMS.value:
    workdir = os.path.join(root, arm)
    if not os.path.isdir(workdir):
      shutil.copytree(base, workdir)
      os.remove(os.path.join(workdir, config_lib.RUN_CONFIG_FILE))
    arm_config = _config(base_order + [arm], arm)
    if arm == "sft_more":
      ratio = (_median(os.path.join(root, "grpo"), "grpo", "step_flops") /
               _median(base, "sft", "step_flops"))
      arm_config.stages.sft_more.steps = max(1, round(_GRPO_STEPS.value *
                                                      ratio))
    t0 = time.perf_counter()
    _, result, _ = recipe.run_recipe(arm_config, workdir, verbose=False)[-1]
    wall = time.perf_counter() - t0
    last = [r for r in metrics_lib.read_metrics(workdir)
            if r.get("stage") == arm and "loss" in r]
    arms[arm] = {"steps": arm_config.stages[arm].steps,
                 "wall_s": round(wall, 1), "last_log": last[-1],
                 "step_time_s": round(_median(workdir, arm, "step_time_s"),
                                      3)}
    out[arm] = dict(_accuracy(arm_config, workdir, arm, result.params, tok),
                    **{k: v for k, v in arms[arm].items()
                       if k != "last_log"})
  if "grpo" in arms:
    out["grpo_last_log"] = arms["grpo"]["last_log"]
  out["base_sft_step_time_s"] = round(sft_step, 4)
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
