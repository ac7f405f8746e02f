"""FastV on a trained run: prefill FLOPs and shapes accuracy, with and without.

  python benchmarks/fastv.py --workdir=runs/shapes_tiny [--k=1] [--r=0.5] \\
      [--split=test] [--max_examples=200] [--out=fastv.json]

Loads the run's final parameters (`mmjax.inference.load`), then
  * prefill FLOPs: XLA's cost analysis of the compiled prefill program
    (vision tower + connector + LM over one batch of --batch_size prompts of
    the split, up to the first generated token), plain and pruned;
  * prefill wall time of those programs (median of --repeats; the machine's
    load shows in it);
  * greedy VQA accuracy by question type on the split, plain and pruned.
--k defaults to 2 (FastV's usual) when the LM has more than 2 layers, else 1.
Nothing is written into the workdir; --out writes the numbers as JSON.
"""
from __future__ import annotations

import json
import time

from absl import app, flags
import jax
import numpy as np

from mmjax.inference import run as run_lib
from mmjax.decoding import fastv
from mmjax.decoding import decode
from mmjax.evals import standalone
from mmjax.evals import vqa
from mmjax.data import datasets
from mmjax.data import builders

_WORKDIR = flags.DEFINE_string("workdir", None, "A shapes recipe run.")
_K = flags.DEFINE_integer("k", 0, "Prune after layer k-1 (0 = 2, or 1 for a "
                          "2-layer LM).")
_R = flags.DEFINE_float("r", 0.5, "Fraction of image tokens dropped.")
_SPLIT = flags.DEFINE_enum("split", "test", list(standalone.SPLITS), "Split.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 200, "VQA questions.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Prompts per program.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed prefill calls.")
_OUT = flags.DEFINE_string("out", None, "Write the results here as JSON.")


def _prefill_seconds(run, batch, fastv_cfg, repeats: int) -> float:
  """Median wall time of the compiled prefill on one batch."""
  batch = dict(batch)
  pruned_len = None
  if fastv_cfg is not None:
    batch["keep_image"], pruned_len = fastv.plan(batch, fastv_cfg.r)
  args = (run.model, run.params, batch, np.zeros(1, np.int32), np.int32(0),
          np.int32(0))
  kw = dict(max_new_tokens=4, sampling=decode.Sampling(), fastv=fastv_cfg,
            pruned_len=pruned_len)
  jax.block_until_ready(decode.prefill(*args, **kw))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(decode.prefill(*args, **kw))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  run = run_lib.load_run(_WORKDIR.value)
  cfg, tok = run.cfg, run.tokenizer
  k = _K.value or (2 if cfg.lm.n_layers > 2 else 1)
  pruning = fastv.FastVConfig(k, _R.value)
  pruning.check(cfg)
  source = builders.load_source(datasets.shapes_dataset(run.config),
                                _SPLIT.value)
  examples, prompts, pixels = vqa.shapes_examples(
      cfg, tok, source, "shapes", _BATCH.value, "square")
  del examples
  batch = decode.prepare_batch(
      cfg, prompts, pixels, range(len(prompts)), image_token_id=tok.image_id,
      pad_id=tok.pad_id, batch_size=_BATCH.value)
  results = {"workdir": run.workdir, "checkpoint": run.checkpoint,
             "fusion": cfg.fusion, "positions": cfg.positions,
             "lm_layers": cfg.lm.n_layers, "k": k, "r": _R.value,
             "split": _SPLIT.value, "batch_size": _BATCH.value,
             "device": jax.devices()[0].device_kind}
  for name, f in (("plain", None), ("fastv", pruning)):
    results[f"{name}/prefill_flops"] = decode.prefill_flops(
        run.model, run.params, batch, max_new_tokens=4, fastv=f)
    results[f"{name}/prefill_s"] = _prefill_seconds(run, batch, f,
                                                    _REPEATS.value)
    m = vqa.evaluate_shapes_vqa(
        run.model, run.params, cfg, tok, source,
        max_examples=_MAX_EXAMPLES.value, batch_size=_BATCH.value,
        max_new_tokens=run.config.eval.max_new_tokens, fastv=f)
    results.update({f"{name}/{key}": v for key, v in m.items()
                    if key.startswith("acc/") or key == "count/all"})
  saved = 1 - results["fastv/prefill_flops"] / results["plain/prefill_flops"]
  results["prefill_flops_saved"] = saved
  qtypes = [key[len("plain/acc/"):] for key in results
            if key.startswith("plain/acc/")]
  print(f"FastV k={k} r={_R.value} on {run.checkpoint} ({cfg.fusion}, "
        f"{cfg.positions}, {cfg.lm.n_layers}-layer LM), {_SPLIT.value} split, "
        f"{results['plain/count/all']} questions, {results['device']}")
  print("| | prefill GFLOP (batch) | prefill s | " +
        " | ".join(f"acc {q}" for q in qtypes) + " |")
  print("|---" * (3 + len(qtypes)) + "|")
  for name in ("plain", "fastv"):
    print(f"| {name} | {results[f'{name}/prefill_flops'] / 1e9:.3f} | "
          f"{results[f'{name}/prefill_s']:.4f} | " +
          " | ".join(f"{results[f'{name}/acc/{q}']:.3f}" for q in qtypes) +
          " |")
  print(f"prefill FLOPs saved: {100 * saved:.1f}%; accuracy change (all): "
        f"{results['fastv/acc/all'] - results['plain/acc/all']:+.3f}")
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
