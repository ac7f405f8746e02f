"""Benchmark evaluation throughput: questions per second, mmjax vs Hugging
Face `generate`, on the same questions.

  python benchmarks/eval_throughput.py [--eval_sizes=tiny,small] \\
      [--questions=256] [--eval_batch=16] [--answer_tokens=8] \\
      [--eval_out=eval_throughput.json]

A synthetic benchmark stands in for VQAv2 / POPE: each question is one
image (uniform noise at the size's image side) and a prompt of 16 to 48
random text tokens (lengths vary as real questions do, so prompts are
padded per batch), answered greedily with --answer_tokens new tokens and no
stop token (both sides generate exactly that many). Random weights,
float32, the projection model of each benchmark size
(`benchmarks/common.py`) and the work-matched
`transformers.LlavaForConditionalGeneration` of benchmarks/generate_vs_hf.py
(PyTorch on 2 threads).

  mmjax  `decode.generate`, what `Run.generate` and the benchmark runner
         (mmjax/evals/benchmarks/runner.py) call: host layout, the compiled
         prefill and decode loop, --eval_batch rows per program (the last
         batch padded), prompts bucketed to multiples of 8 tokens.
  HF     `generate(max_new_tokens=min_new_tokens=N)` on left-padded
         batches of --eval_batch with their attention masks.

questions/s = questions / wall time of the whole pass, after a warm-up pass
over the same questions (compilation excluded). Reading and resizing image
files, the same for both, is not included. Timings on a shared machine move
with its load (the JSON records it): say so when quoting them.
"""
from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
# Its models (it also defines its own flags; ours are named apart).
from benchmarks import generate_vs_hf  # pylint: disable=g-import-not-at-top
from mmjax.decoding import decode as decode_lib  # pylint: disable=g-import-not-at-top
from mmjax.models import layout  # pylint: disable=g-import-not-at-top

_SIZES = flags.DEFINE_list("eval_sizes", ["tiny", "small"], "Benchmark "
                           "sizes (benchmarks/common.py).")
_QUESTIONS = flags.DEFINE_integer("questions", 256, "Questions per pass.")
_BATCH = flags.DEFINE_integer("eval_batch", 16, "Questions per program / "
                              "per HF generate call.")
_ANSWER = flags.DEFINE_integer("answer_tokens", 8, "New tokens per answer.")
_PROMPT = flags.DEFINE_list("prompt_tokens", ["16", "48"], "Min, max text "
                            "tokens per question.")
_OUT = flags.DEFINE_string("eval_out", "eval_throughput.json",
                           "JSON results.")

IMAGE_ID = common.IMAGE_ID


def questions(size: str, n: int, lo: int, hi: int, seed: int = 0
              ) -> tuple[list[np.ndarray], np.ndarray]:
  """(per question int32[T_i] text ids, f32[n, S, S, 3] images)."""
  rng = np.random.default_rng(seed)
  side = common.SIZES[size]["vision"]["image_size"]
  vocab = common.SIZES[size]["lm"]["vocab_size"]
  texts = [rng.integers(IMAGE_ID + 1, vocab, rng.integers(lo, hi + 1))
           .astype(np.int32) for _ in range(n)]
  images = rng.uniform(-1, 1, (n, side, side, 3)).astype(np.float32)
  return texts, images


def mmjax_pass(model, params, texts, images, batch: int, answer: int
               ) -> float:
  """Seconds to answer every question (one `decode.generate` call)."""
  side = model.cfg.side
  prompts = [[layout.Media(side, side), list(t)] for t in texts]
  start = time.perf_counter()
  out = decode_lib.generate(model, params, prompts, [im[None] for im in images],
                            image_token_id=IMAGE_ID, max_new_tokens=answer,
                            stop_ids=(), batch_size=batch)
  seconds = time.perf_counter() - start
  assert all(len(t) == answer for t in out.tokens)
  return seconds


def hf_pass(model, texts, images, batch: int, answer: int) -> float:
  """Seconds to answer every question with HF generate, left padding."""
  import torch  # pylint: disable=g-import-not-at-top
  n_image = model.config.image_seq_length
  start = time.perf_counter()
  for i in range(0, len(texts), batch):
    rows = [np.concatenate([np.full(n_image, IMAGE_ID), t])
            for t in texts[i:i + batch]]
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for j, r in enumerate(rows):
      ids[j, width - len(r):], mask[j, width - len(r):] = r, 1
    with torch.inference_mode():
      out = model.generate(
          input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
          pixel_values=torch.as_tensor(
              images[i:i + batch].transpose(0, 3, 1, 2)),
          max_new_tokens=answer, min_new_tokens=answer, do_sample=False,
          pad_token_id=0)
    assert out.shape[1] == width + answer
  return time.perf_counter() - start


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  sizes = common.parse_choices(_SIZES.value, list(common.SIZES), "eval_sizes")
  lo, hi = (int(v) for v in _PROMPT.value)
  n, b, answer = _QUESTIONS.value, _BATCH.value, _ANSWER.value
  results = {"device": f"{jax.devices()[0].device_kind} "
                       f"({platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores)",
             "load": common.load_average(), "jax": jax.__version__,
             "torch": torch.__version__,
             "transformers": transformers.__version__, "torch_threads": 2,
             "questions": n, "batch": b, "answer_tokens": answer,
             "prompt_tokens": [lo, hi], "sizes": {}}
  print(f"device: {results['device']}; {results['load']}; {n} questions, "
        f"1 image + {lo}..{hi} text tokens, {answer} answer tokens, batch "
        f"{b}, greedy, float32")
  print("| size | mmjax questions/s | HF questions/s | speed-up |")
  print("|---|---|---|---|")
  for size in sizes:
    texts, images = questions(size, n, lo, hi)
    model, params = generate_vs_hf.mmjax_model(size)
    mmjax_pass(model, params, texts, images, b, answer)  # compiles
    ours = n / mmjax_pass(model, params, texts, images, b, answer)
    hf_model = generate_vs_hf.hf_llava(size)
    hf_pass(hf_model, texts[:b], images[:b], b, answer)  # warm-up
    hf = n / hf_pass(hf_model, texts, images, b, answer)
    results["sizes"][size] = {"mmjax_questions_s": ours,
                              "hf_questions_s": hf, "speedup": ours / hf}
    print(f"| {size} | {ours:.2f} | {hf:.2f} | {ours / hf:.1f}x |",
          flush=True)
  common.write_json(_OUT.value, results)


if __name__ == "__main__":
  app.run(main)
