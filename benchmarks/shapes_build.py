"""Times building the shapes dataset (10k train examples) with tfds.

Run: python benchmarks/shapes_build.py [--num_train=10000] [--num_workers=2]

Prints the wall time of `builders.build` (tokenizer training included) and
examples per second over all four splits, then the time of a second call,
which must reuse the build.
"""
import argparse
import tempfile
import time

import tensorflow_datasets as tfds

from mmjax.data import builders


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_train", type=int, default=10_000)
  parser.add_argument("--num_validation", type=int, default=500)
  parser.add_argument("--num_test", type=int, default=1_000)
  parser.add_argument("--num_heldout", type=int, default=1_000)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--num_workers", type=int, default=None,
                      help="worker processes; default: the builder's choice")
  args = parser.parse_args()
  tfds.disable_progress_bar()
  options = vars(args)
  total = sum(options[f"num_{split}"] for split in
              ("train", "validation", "test", "heldout"))
  with tempfile.TemporaryDirectory() as data_dir:
    start = time.perf_counter()
    builder = builders.build(builders.ShapesBuilder, data_dir, **options)
    wall = time.perf_counter() - start
    start = time.perf_counter()
    builders.build(builders.ShapesBuilder, data_dir, **options)
    again = time.perf_counter() - start
    print(f"built {total} examples ({args.num_train} train) at "
          f"{args.image_size}px with num_workers={args.num_workers} in "
          f"{wall:.1f} s: {total / wall:.0f} examples/s; second call "
          f"{again:.2f} s; {builder.data_dir}")


if __name__ == "__main__":
  main()
