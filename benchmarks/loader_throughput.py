"""Examples/s of the multimodal data pipeline on a small shapes build.

  python benchmarks/loader_throughput.py [--num_train=256] [--batch_size=32]

Builds the shapes benchmark (64-px images) in a temporary folder, then times
`pipeline.make_iterator(fmt="shapes")` (projection + RoPE, tiny SigLIP side
64) with 0 and 2 worker processes, after a warm-up that excludes worker
start-up. Target: >= 500 examples/s.
"""
from __future__ import annotations

import tempfile
import time

from absl import app, flags

from mmjax.data import builders, pipeline
from mmjax.data.tokenizer import Tokenizer
from mmjax.models.decoder import DecoderConfig
from mmjax.models.mllm import MLLMConfig
from mmjax.models.vision import VisionConfig

_NUM_TRAIN = flags.DEFINE_integer("num_train", 256, "shapes train records")
_BATCH = flags.DEFINE_integer("batch_size", 32, "global batch size")
_BATCHES = flags.DEFINE_integer("batches", 40, "timed batches per setting")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "worker counts to time")


def throughput(source, tok, cfg, num_workers: int) -> float:
  """Examples/s over _BATCHES batches after 3 warm-up batches."""
  with pipeline.make_iterator(source, fmt="shapes", cfg=cfg, tokenizer=tok,
                              batch_size=_BATCH.value, seed=0, max_len=256,
                              num_workers=num_workers) as it:
    for _ in range(3):  # Worker start-up and first-touch costs.
      next(it)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      next(it)
    return _BATCHES.value * _BATCH.value / (time.perf_counter() - start)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    builder = builders.build(builders.ShapesBuilder, tmp,
                             num_train=_NUM_TRAIN.value, num_validation=8,
                             num_test=8, num_heldout=8, image_size=64)
    tok = Tokenizer.load(f"{builder.data_dir}/{builders.TOKENIZER_FILE}")
    source = builders.load_source(builder, "train")
    cfg = MLLMConfig(fusion="projection", lm=DecoderConfig(),
                     vision=VisionConfig(image_size=64, patch_size=8))
    for workers in map(int, _WORKERS.value):
      rate = throughput(source, tok, cfg, workers)
      print(f"num_workers={workers}: {rate:7.0f} examples/s "
            f"(batch {_BATCH.value}, 64 px, projection + rope)", flush=True)


if __name__ == "__main__":
  app.run(main)
