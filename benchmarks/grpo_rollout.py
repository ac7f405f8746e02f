"""GRPO rollout speed against plain generation, and the GRPO step (issue 25).

  python benchmarks/grpo_rollout.py [--sizes=tiny,small] [--batch=16] \\
      [--group_size=8] [--max_new_tokens=4] [--temperature=1.0] \\
      [--repeats=5] [--out=grpo_rollout.json]

One run, one device, per size of the shapes recipe (configs/shapes.py:
size=..., its `grpo` stage with the flags' options): random weights, real
shapes prompts (a small shapes dataset built in --data_dir, a temporary
folder by default; one batch of --batch prompts from the grpo stage's own
pipeline, right-padded to the pipeline's length bucket), R = batch *
group_size rows of max_new_tokens tokens at the stage's sampling. Timed:

  rollout         `train.rollout.sample` jitted alone, as the step calls it
                  (prompts left-padded in the program to the batch length,
                  images encoded once per prompt, G copies, prefill + decode
                  loop).
  generate        `decoding.decode.generate`, the call `python -m
                  mmjax.generate` (`inference.Run.generate`) makes, on the
                  same R rows (prompt i // G of the batch as token ids, its
                  preprocessed image; batch_size R, one program; stop ids
                  <|end|> and EOS): host layout, prefill, decode loop,
                  tokens to the host.
  prefill+decode  the two compiled programs of `generate` alone, on the
                  batch `decode.prepare_batch` laid out (no host layout).
  p+d@L           the same, the prompts left-padded to the step's prompt
                  slots L (`prepare_batch(bucket=L)`): what the rollout's
                  longer prompts alone cost.
  step            the grpo stage's whole jitted train step
                  (`trainer.build_train_step`: rollout, rewards, policy and
                  reference passes, loss, gradient, AdamW), state donated.
  update          the same step with the completions given: traced with
                  `rollout.sample` replaced by the completions of one
                  rollout, carried in the batch, so everything but the
                  sampling runs (rewards included). `step - rollout` is
                  printed beside it as a cross-check.

Generated tokens/s = R * max_new_tokens / median seconds (the loop runs
max_new_tokens steps unless every row stopped). The stage's target: rollout
tokens/s >= 0.8 x generate's, and (generate + update) / step >= 0.8 (the
step no slower than 1 / 0.8 of plain generation plus the update).

Medians of --repeats calls after a warm-up call (compilation excluded),
each blocked until its result is ready. Rollout and generate differ in
prompt slots: the step's prompts fill the pipeline's bucket (e.g. 128), the
generate batch is rounded up to a multiple of 8 of the longest prompt; the
JSON records both (`rollout_prompt_slots`, `generate_prompt_slots`).
Timings on a shared machine move with its load (the JSON records it): say
so when quoting them.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import train_step  # pylint: disable=g-import-not-at-top
from mmjax import config as config_lib  # pylint: disable=g-import-not-at-top
from mmjax import parallel, testing  # pylint: disable=g-import-not-at-top
from mmjax.decoding import decode as decode_lib  # pylint: disable=g-import-not-at-top
from mmjax.decoding.sampling import Sampling  # pylint: disable=g-import-not-at-top
from mmjax.inference import prompts as prompts_lib  # pylint: disable=g-import-not-at-top
from mmjax.train import config_checks, rollout, stages, trainer  # pylint: disable=g-import-not-at-top
from mmjax.train.stages import grpo  # pylint: disable=g-import-not-at-top

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"],
                           "sizes of configs/shapes.py (size=...)")
_BATCH = flags.DEFINE_integer("batch", 16, "prompts per step (the tiny "
                              "recipe's batch)")
_GROUP = flags.DEFINE_integer("group_size", grpo.OPTIONS["group_size"],
                              "completions per prompt (G)")
_NEW = flags.DEFINE_integer("max_new_tokens", grpo.OPTIONS["max_new_tokens"],
                            "tokens sampled per completion")
_TEMPERATURE = flags.DEFINE_float("temperature", grpo.OPTIONS["temperature"],
                                  "sampling temperature (> 0)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls (median)")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "where the small shapes dataset is built ('' = a "
    "temporary folder, removed at the end)")
_OUT = flags.DEFINE_string("out", "", "JSON results file")

STAGE = "grpo"
# Completions fields carried in the batch of the update-only step.
_GIVEN = tuple(f"given_{name}" for name in rollout.Completions._fields)

COLUMNS = (
    ("size", "size", ""), ("R", "rows", "d"),
    ("rollout tok/s", "rollout_tok_s", ".0f"),
    ("generate tok/s", "generate_tok_s", ".0f"),
    ("rollout/generate", "rollout_vs_generate", ".2f"),
    ("p+d tok/s", "prefill_decode_tok_s", ".0f"),
    ("rollout/p+d", "rollout_vs_prefill_decode", ".2f"),
    ("p+d@L tok/s", "prefill_decode_at_l_tok_s", ".0f"),
    ("rollout/p+d@L", "rollout_vs_prefill_decode_at_l", ".2f"),
    ("step s", "step_s", ".4f"), ("update s", "update_s", ".4f"),
    ("step-rollout s", "step_minus_rollout_s", ".4f"),
    ("gen+update s", "generate_plus_update_s", ".4f"),
    ("(gen+update)/step", "step_vs_generate_plus_update", ".2f"))


def recipe(size: str, data_dir: str):
  """configs/shapes.py at `size` with only the grpo stage, the flags'
  options, and a small shapes dataset in data_dir."""
  config = config_lib.load_config(
      f"{testing.SHAPES_RECIPE}:size={size},grpo=1,batch={_BATCH.value}")
  config.data.update(dict(data_dir=data_dir, num_train=max(64, _BATCH.value),
                          num_validation=4, num_test=4, num_heldout=4))
  config.stage_order = (STAGE,)
  config.stages[STAGE].update(dict(
      group_size=_GROUP.value, max_new_tokens=_NEW.value,
      temperature=_TEMPERATURE.value, evals=()))
  config_checks.validate_config(config)
  return config


def generate_prompts(batch, group_size: int):
  """The rollout's R rows as `decode.generate` takes them.

  Args:
    batch: a pipeline batch (numpy): tokens int32[B, L], loss_mask f32[B, L],
      image_token_mask bool[B, L], images f32[B, 1, S, S, C].
    group_size: G copies of each prompt.

  Returns:
    (ids, images): per row r (prompt r // G) the prompt's ids with its
    image placeholders folded back to one <image> id (a token-id prompt,
    which `Run.generate` splits with `inference.prompts.split_at_images`),
    and f32[1, S, S, C], its preprocessed image.
  """
  n = np.asarray(rollout.prompt_lengths(jnp.asarray(batch["loss_mask"])))
  return [r for r in batch_prompts(batch, n) for _ in range(group_size)], [
      im for im in batch["images"] for _ in range(group_size)]


def batch_prompts(batch, lengths):
  """Per row of `batch`, its first lengths[b] ids with each run of image
  placeholders folded back to one <image> id."""
  out = []
  for tokens, mask, n in zip(batch["tokens"], batch["image_token_mask"],
                             lengths):
    ids = [int(t) if not m else common.IMAGE_ID
           for i, (t, m) in enumerate(zip(tokens[:n], mask[:n]))
           if not (m and i and mask[i - 1])]
    out.append(ids)
  return out


def check_same_prompts(cfg, batch, pieces, images, group_size, pad_id):
  """`decode.prepare_batch`'s layout of the R rows (what `generate` runs);
  raises unless each row holds its pipeline prompt (tokens, positions,
  placeholders), left-padded."""
  laid = decode_lib.prepare_batch(cfg, pieces, images, range(len(pieces)),
                                  image_token_id=common.IMAGE_ID,
                                  pad_id=pad_id)
  for r, n in enumerate(laid["lengths"]):
    b = r // group_size
    for key in ("tokens", "positions", "image_token_mask"):
      if not np.array_equal(laid[key][r, -n:], batch[key][b, :n]):
        raise AssertionError(f"row {r}: generate's {key} differ from the "
                             "pipeline's prompt")
  return laid


def timed(fn, repeats: int):
  """summarize_times of `repeats` calls of fn after one warm-up call."""
  wall, cpu = common.time_steps_cpu(fn, repeats, warmup=1)
  return common.summarize_times(wall, cpu)


def while_loops(compiled) -> int:
  """While loops in a compiled program's HLO (the decode loop is one)."""
  return sum(" while(" in line for line in compiled.as_text().splitlines())


def given_sample(model, params, batch, rng, **kwargs):
  """`rollout.sample`'s stand-in in the update-only step: the completions
  the batch carries (keys _GIVEN)."""
  del model, params, rng, kwargs
  return rollout.Completions(*(batch[k] for k in _GIVEN))


def measure(size: str, data_dir: str, repeats: int) -> dict:
  """Times rollout, generate, prefill+decode, step and update at one size."""
  config = recipe(size, data_dir)
  stage = config.stages[STAGE]
  g, n_new = int(grpo.option(stage, "group_size")), int(
      grpo.option(stage, "max_new_tokens"))
  sampling = Sampling(temperature=float(grpo.option(stage, "temperature")),
                      top_p=float(grpo.option(stage, "top_p")))
  built = stages.build_task(config, STAGE, data_dir)
  tok = built.tokenizer
  model, _, _ = stages.stage_model(config, STAGE)
  batch_np = next(built.task.train_iterator)
  b, length = batch_np["tokens"].shape
  rows = b * g
  mesh, rules = parallel.make_mesh(config.mesh.to_dict()), (
      parallel.logical_rules())
  ts = trainer.build_train_step(config, STAGE, built.task, mesh, rules)
  host = train_step.random_state(ts.abstract)
  host["ref"] = host["params"]  # the stage starts at its reference
  holder = {"state": jax.device_put(host, ts.shardings)}
  batch = parallel.shard_batch(batch_np, mesh, rules)
  params = holder["state"]["params"]
  row = dict(size=size, batch=b, group_size=g, rows=rows,
             max_new_tokens=n_new, temperature=sampling.temperature,
             rollout_prompt_slots=length, generated_tokens=rows * n_new,
             params=sum(x.size for x in jax.tree.leaves(params)))

  with parallel.sharding_context(mesh, rules):
    # 1. The rollout alone.
    sample = jax.jit(lambda p, bt, rng: rollout.sample(
        model, p, bt, rng, group_size=g, max_new_tokens=n_new,
        sampling=sampling))
    key = jax.random.key(0)
    comp = sample(params, batch, key)
    row["rollout"] = timed(
        lambda: sample(params, batch, key).tokens.block_until_ready(),
        repeats)

    # 2. Plain generation on the same rows.
    ids, images = generate_prompts(batch_np, g)
    pieces = [prompts_lib.split_at_images(model.cfg, p, common.IMAGE_ID)
              for p in ids]
    laid = check_same_prompts(model.cfg, batch_np, pieces, images, g,
                              tok.pad_id)
    row["generate_prompt_slots"] = laid["tokens"].shape[1]
    stops = (tok.end_of_turn_id, tok.eos_id)
    row["generate"] = timed(lambda: decode_lib.generate(
        model, params, pieces, images, image_token_id=common.IMAGE_ID,
        max_new_tokens=n_new, stop_ids=stops, sampling=sampling,
        batch_size=rows, pad_id=tok.pad_id), repeats)
    stop_arr = np.full(8, -1, np.int32)
    stop_arr[:len(stops)] = stops

    def prefill_decode(inputs):
      state, ctx = decode_lib.prefill(
          model, params, inputs, stop_arr, np.int32(tok.pad_id), np.int32(0),
          max_new_tokens=n_new, sampling=sampling)
      if n_new > 1:
        state = decode_lib.decode(model, params, ctx, state, np.int32(n_new),
                                  sampling=sampling)
      state.tokens.block_until_ready()
    row["prefill_decode"] = timed(lambda: prefill_decode(laid), repeats)
    # The same programs with the prompts left-padded to the step's length:
    # what the rollout's longer prompt slots alone cost.
    padded = decode_lib.prepare_batch(
        model.cfg, pieces, images, range(rows),
        image_token_id=common.IMAGE_ID, pad_id=tok.pad_id, bucket=length)
    row["prefill_decode_at_l"] = timed(lambda: prefill_decode(padded),
                                       repeats)

    # 3. The stage's whole step, then the step with the completions given.
    t0 = time.perf_counter()
    step = ts.make_step(parallel.batch_shardings(batch, mesh, rules)).lower(
        holder["state"], batch).compile()
    row["step_compile_s"] = time.perf_counter() - t0
    with_comp = dict(batch, **{k: jax.device_put(v, batch["tokens"].sharding)
                               for k, v in zip(_GIVEN, comp)})
    with mock.patch.object(rollout, "sample", given_sample):
      update = ts.make_step(parallel.batch_shardings(
          with_comp, mesh, rules)).lower(holder["state"], with_comp).compile()
    # The decode loop is a while loop; the update must run none.
    row["step_while_loops"] = while_loops(step)
    row["update_while_loops"] = while_loops(update)

    def run(fn, inputs):
      holder["state"], metrics = fn(holder["state"], inputs)
      float(metrics["loss"])  # blocks, as the trainer's logger does
    row["step"] = timed(lambda: run(step, batch), repeats)
    row["update"] = timed(lambda: run(update, with_comp), repeats)

  seconds = {k: row[k]["step_s"] for k in (
      "rollout", "generate", "prefill_decode", "prefill_decode_at_l", "step",
      "update")}
  for k in ("rollout", "generate", "prefill_decode", "prefill_decode_at_l"):
    row[f"{k}_tok_s"] = row["generated_tokens"] / seconds[k]
  row["rollout_vs_generate"] = row["rollout_tok_s"] / row["generate_tok_s"]
  row["rollout_vs_prefill_decode"] = (row["rollout_tok_s"] /
                                      row["prefill_decode_tok_s"])
  row["rollout_vs_prefill_decode_at_l"] = (
      row["rollout_tok_s"] / row["prefill_decode_at_l_tok_s"])
  row["step_s"], row["update_s"] = seconds["step"], seconds["update"]
  row["step_minus_rollout_s"] = seconds["step"] - seconds["rollout"]
  row["generate_plus_update_s"] = seconds["generate"] + seconds["update"]
  row["step_vs_generate_plus_update"] = (row["generate_plus_update_s"] /
                                         seconds["step"])
  return row


def main(argv):
  del argv
  try:
    # The shapes recipe's sizes (configs/shapes.py).
    sizes = common.parse_choices(_SIZES.value, ("tiny", "small"), "sizes")
    if _REPEATS.value < 1:
      raise common.BenchmarkInputError(
          f"--repeats={_REPEATS.value} must be >= 1")
    for size in sizes:  # bad stage options fail here, before any build
      recipe(size, "")
  except (common.BenchmarkInputError, config_lib.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  device = (f"{jax.devices()[0].device_kind} "
            f"({platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores)")
  print(f"device: {device}; {common.load_average()}; batch {_BATCH.value} "
        f"prompts x G {_GROUP.value}, {_NEW.value} new tokens, temperature "
        f"{_TEMPERATURE.value}, float32, random weights; median of "
        f"{_REPEATS.value}", flush=True)
  results = {"benchmark": "grpo_rollout", "device": device,
             "jax": jax.__version__, "batch": _BATCH.value,
             "group_size": _GROUP.value, "max_new_tokens": _NEW.value,
             "temperature": _TEMPERATURE.value, "repeats": _REPEATS.value,
             "rows": []}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = _DATA_DIR.value or tmp
    for size in sizes:
      row = measure(size, data_dir, _REPEATS.value)
      results["rows"].append(row)
      print(f"[{size}] rollout {row['rollout']['step_s']:.4f} s, generate "
            f"{row['generate']['step_s']:.4f} s, prefill+decode "
            f"{row['prefill_decode']['step_s']:.4f} s (at L "
            f"{row['prefill_decode_at_l']['step_s']:.4f} s), step "
            f"{row['step_s']:.4f} s, update {row['update_s']:.4f} s "
            f"(prompt slots: rollout {row['rollout_prompt_slots']}, generate "
            f"{row['generate_prompt_slots']}); {common.load_average()}",
            flush=True)
  print()
  common.print_table(results["rows"], COLUMNS)
  print("\ntargets: rollout/generate >= 0.8; (gen+update)/step >= 0.8 "
        "(update: the step with the completions given)")
  common.write_json(_OUT.value, results)


if __name__ == "__main__":
  app.run(main)
