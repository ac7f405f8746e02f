"""The Hugging Face side of the benchmarks: LLaVA train-step time in PyTorch.

  HF_HUB_OFFLINE=1 python benchmarks/hf_llava.py --size=tiny [--steps=5]

Builds `LlavaForConditionalGeneration` (SiglipVisionConfig + LlamaConfig,
random weights, nothing downloaded) with the dims of a benchmark size and
times one training step: forward with labels, backward, gradient clipping
to norm 1 and `torch.optim.AdamW`, the same work as mmjax's trainer step.
Also measures torch's f32 (or bf16) matmul peak in the same process.
Prints a table and, last, one line `RESULT {json}` that
benchmarks/train_throughput.py reads (it runs this file as a subprocess so
each framework's threads and resident memory are measured alone).

Work is matched to mmjax's: LLaVA reads the second-to-last ViT layer, and
mmjax never builds the last block, so the HF tower here gets depth - 1
layers and reads its last hidden state (vision_feature_layer=-1), and SigLIP's
pooling head (unused by LLaVA) is off. HF attention is `sdpa`.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top

_SIZE = flags.DEFINE_string("size", "tiny", "one of " + ",".join(common.SIZES))
_STEPS = flags.DEFINE_integer("steps", 5, "timed training steps")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps first")
_THREADS = flags.DEFINE_integer("threads", 2, "torch.set_num_threads")
_BATCH = flags.DEFINE_integer("batch", common.BATCH, "examples per step")
_TEXT_LEN = flags.DEFINE_integer("text_len", common.TEXT_LEN,
                                 "text tokens after the image tokens")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "model dtype (bfloat16: autocast, for a GPU)")
_PEAK_SIZES = flags.DEFINE_list("peak_sizes", ["1024", "2048"],
                                "square matmul sizes for the torch peak")
_DEVICE = flags.DEFINE_string("device", "cpu", "torch device (cpu, cuda)")


def build_llava(size: str, batch: int = common.BATCH,
                text_len: int = common.TEXT_LEN, seed: int = 0):
  """(model, inputs) of an HF LLaVA with the dims of `common.SIZES[size]`.

  Returns:
    LlavaForConditionalGeneration in train mode, and a dict of input_ids
    [B, N + text_len] (N image tokens first), pixel_values f32[B, 3, H, W],
    attention_mask, labels (-100 on image tokens).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  s = common.SIZES[size]
  v, lm = s["vision"], s["lm"]
  vision = transformers.SiglipVisionConfig(
      hidden_size=v["width"], intermediate_size=v["mlp_dim"],
      num_hidden_layers=v["depth"] - 1, num_attention_heads=v["n_heads"],
      image_size=v["image_size"], patch_size=v["patch_size"],
      num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
  vision.vision_use_head = False
  text = transformers.LlamaConfig(
      vocab_size=lm["vocab_size"], hidden_size=lm["d_model"],
      intermediate_size=lm["mlp_dim"], num_hidden_layers=lm["n_layers"],
      num_attention_heads=lm["n_heads"],
      num_key_value_heads=lm["n_kv_heads"], rms_norm_eps=1e-6,
      max_position_embeddings=4096, tie_word_embeddings=False,
      hidden_act="silu")
  n_image = (v["image_size"] // v["patch_size"]) ** 2
  config = transformers.LlavaConfig(
      vision_config=vision, text_config=text, image_token_index=common.IMAGE_ID,
      projector_hidden_act="gelu", vision_feature_layer=-1,
      vision_feature_select_strategy="full", image_seq_length=n_image)
  config._attn_implementation = "sdpa"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  model = transformers.LlavaForConditionalGeneration(config)
  model.train()
  gen = torch.Generator().manual_seed(seed)
  text_ids = torch.randint(common.IMAGE_ID + 1, lm["vocab_size"],
                           (batch, text_len), generator=gen)
  image_ids = torch.full((batch, n_image), common.IMAGE_ID)
  input_ids = torch.cat([image_ids, text_ids], dim=1)
  labels = input_ids.clone()
  labels[:, :n_image] = -100
  pixels = torch.rand((batch, 3, v["image_size"], v["image_size"]),
                      generator=gen) * 2 - 1
  return model, {"input_ids": input_ids, "pixel_values": pixels,
                 "attention_mask": torch.ones_like(input_ids),
                 "labels": labels}


def torch_matmul_peak(sizes=(1024, 2048), reps: int = 5,
                      dtype: str = "float32", device: str = "cpu"
                      ) -> dict[str, float]:
  """Best torch.mm FLOP/s over square sizes (2 n^3 FLOPs each)."""
  import torch  # pylint: disable=g-import-not-at-top
  per_size, per_cpu = {}, {}
  sync = torch.cuda.synchronize if device.startswith("cuda") else (
      lambda: None)
  for n in sizes:
    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    b = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)

    def mm(a=a, b=b):
      torch.mm(a, b)
      sync()
    wall, cpu = common.time_steps_cpu(mm, reps, 2)
    per_size[n] = 2 * n ** 3 / min(wall) / 1e9
    per_cpu[n] = 2 * n ** 3 / min(cpu) / 1e9
  return common.peak_summary(per_size, per_cpu)


def train_step_times(size: str, steps: int, warmup: int = 1,
                     batch: int = common.BATCH,
                     text_len: int = common.TEXT_LEN,
                     dtype: str = "float32", device: str = "cpu"
                     ) -> dict[str, float]:
  """Per-step seconds of forward + backward + clip + AdamW, and facts."""
  import torch  # pylint: disable=g-import-not-at-top
  model, inputs = build_llava(size, batch, text_len)
  model.to(device)
  inputs = {k: v.to(device) for k, v in inputs.items()}
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                          eps=1e-8, weight_decay=0.01)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (
      lambda: None)
  autocast = torch.autocast(device_type=device.split(":")[0],
                            dtype=torch.bfloat16,
                            enabled=dtype == "bfloat16")
  losses = []

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sync()
    losses.append(float(loss.detach()))  # one host read per step, as logged
  times, cpu = common.time_steps_cpu(step, steps, warmup)
  out = common.summarize_times(times, cpu)
  out.update(params=sum(p.numel() for p in model.parameters()),
             first_loss=losses[0], last_loss=losses[-1],
             attn_implementation="sdpa", threads=torch.get_num_threads(),
             **common.rss_bytes())
  return out


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  if _SIZE.value not in common.SIZES:
    print(f"--size={_SIZE.value}: allowed values are "
          f"{', '.join(common.SIZES)}", file=sys.stderr)
    sys.exit(2)
  try:
    peak_sizes = common.parse_sizes(_PEAK_SIZES.value, "peak_sizes")
  except common.BenchmarkInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  torch.set_num_threads(_THREADS.value)
  peak = torch_matmul_peak(tuple(peak_sizes),
                           dtype=_DTYPE.value, device=_DEVICE.value)
  result = train_step_times(_SIZE.value, _STEPS.value, _WARMUP.value,
                            _BATCH.value, _TEXT_LEN.value, _DTYPE.value,
                            _DEVICE.value)
  result.update(size=_SIZE.value, torch_peak_gflops=peak["gflops"],
                torch_peak_per_size=peak["per_size"],
                torch_peak_gflops_per_cpu_s=peak["gflops_per_cpu_s"],
                torch_version=torch.__version__, dtype=_DTYPE.value)
  print(f"HF LLaVA {_SIZE.value}: {result['step_s']:.4f} s/step (median of "
        f"{_STEPS.value}), {result['params'] / 1e6:.2f}M params, torch "
        f"{_DTYPE.value} matmul peak {peak['gflops']:.1f} GFLOP/s")
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
