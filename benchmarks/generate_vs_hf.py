"""Decode tokens/s and time to first token: mmjax vs Hugging Face LLaVA.

  python benchmarks/generate_vs_hf.py [--sizes=tiny,small] [--batch=8] \\
      [--new_tokens=64] [--repeats=3] [--out=generate_vs_hf.json]

Same shapes on both sides, random weights, float32 (--dtype=bfloat16 and
--hf_device=cuda for a GPU run: weights and compute in bf16 on both sides),
greedy, no stop token:
the projection model of each benchmark size (`benchmarks/common.py`: the
configs/shapes.py tiny / small dims; SigLIP tower on 64-px images, 8-px
patches -> 64 image tokens, mlp2x_gelu projector, LLaMA-style LM) against
`transformers.LlavaForConditionalGeneration` of the same dims
(work-matched vision tower as in benchmarks/hf_llava.py, sdpa attention),
PyTorch with torch.set_num_threads(2). Each prompt is one image (64
placeholders) then --text_tokens text tokens; --batch prompts per call.

  time to first token  mmjax: host layout + the compiled prefill (images
                       encoded, prompt into the KV cache, first token
                       sampled), to the token on the host. HF:
                       generate(max_new_tokens=1).
  decode tokens/s      mmjax: batch * (N - 1) / the compiled decode loop's
                       time for the remaining N - 1 steps. HF: batch * (N - 1)
                       / (time of generate(N) - time of generate(1)).

Medians of --repeats runs after a warm-up (compilation excluded). Timings on
a shared machine move with its load (the JSON records it): say so when
quoting them.
"""
from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top
import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from mmjax.decoding import decode as decode_lib
from mmjax.models import layout  # pylint: disable=g-import-not-at-top
from mmjax.models.mllm import MLLM, mllm_config_from_dict  # pylint: disable=g-import-not-at-top

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"], "Benchmark sizes "
                           "(benchmarks/common.py).")
_BATCH = flags.DEFINE_integer("batch", common.BATCH, "Prompts per call.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per prompt.")
_TEXT = flags.DEFINE_integer("text_tokens", common.TEXT_LEN,
                             "Text tokens per prompt.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs (median).")
_OUT = flags.DEFINE_string("out", "generate_vs_hf.json", "JSON results.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16"],
    "weights and compute on both sides (bfloat16: for a GPU run)")
_BW_MIB = flags.DEFINE_integer("bandwidth_mib", 512, "Array size of the "
                               "memory-bandwidth measurement (beyond caches).")
_HF_DEVICE = flags.DEFINE_string("hf_device", "cpu", "torch device (cpu, "
                                 "cuda); JAX uses its default device")

IMAGE_ID = common.IMAGE_ID


def _median_time(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, allocations
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def mmjax_model(size: str, dtype: str = "float32"):
  """The projection model of a benchmark size and random weights in dtype."""
  cfg = mllm_config_from_dict(common.model_config_dict(size, dtype=dtype))
  model = MLLM(cfg)
  seq = layout.assemble(cfg, [layout.Media(cfg.side, cfg.side), [5]],
                        IMAGE_ID)
  abstract = nn.unbox(jax.eval_shape(lambda r: model.init(
      r, jnp.asarray(seq["tokens"][None]),
      images=jnp.zeros((1, 1, cfg.side, cfg.side, 3)),
      image_token_mask=jnp.asarray(seq["image_token_mask"][None])),
      jax.random.key(0)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(
      0, 0.02, a.shape).astype(np.float32)).astype(dtype), abstract)
  return model, params


def time_mmjax(size: str, tokens: np.ndarray, images: np.ndarray,
               new_tokens: int, repeats: int, dtype: str = "float32"
               ) -> dict[str, float]:
  """tokens int32[B, T] text after each image; images f32[B, S, S, 3]."""
  model, params = mmjax_model(size, dtype)
  side = model.cfg.side
  prompts = [[layout.Media(side, side), list(t)] for t in tokens]
  pixels = [im[None] for im in images]
  kw = dict(max_new_tokens=new_tokens, sampling=decode_lib.Sampling())
  stop, pad, seed = np.asarray([-1], np.int32), np.int32(0), np.int32(0)

  prompt_len = []

  def first_token():
    batch = decode_lib.prepare_batch(model.cfg, prompts, pixels,
                                    range(len(prompts)),
                                    image_token_id=IMAGE_ID)
    prompt_len.append(batch["tokens"].shape[1])
    state, ctx = decode_lib.prefill(model, params, batch, stop, pad, seed,
                                   **kw)
    np.asarray(state.tokens[:, 0])  # on the host
    return state, ctx

  ttft = _median_time(first_token, repeats)
  decode_times = []
  for i in range(repeats + 1):
    state, ctx = first_token()
    start = time.perf_counter()
    state = decode_lib.decode(model, params, ctx, state, np.int32(new_tokens),
                             sampling=kw["sampling"])
    np.asarray(state.tokens)
    if i:  # the first call compiles
      decode_times.append(time.perf_counter() - start)
    assert int(state.step) == new_tokens
  decode = float(np.median(decode_times))
  return {"ttft_s": ttft, "decode_s": decode,
          "decode_tok_s": len(tokens) * (new_tokens - 1) / decode,
          **decode_bytes(model.cfg.lm, params["llm"], len(tokens),
                         prompt_len[-1] + new_tokens)}


def decode_bytes(lm_cfg, llm_params, batch: int, cache_len: int
                 ) -> dict[str, int]:
  """Bytes one decode step must read: the LM's weights (only `batch` rows of
  the embedding table) and the whole KV cache buffer, which the masked
  attention reads at every step (cache_len = prompt + new tokens slots)."""
  leaves = jax.tree_util.tree_leaves_with_path(llm_params)
  weights = sum(x.size * x.dtype.itemsize for path, x in leaves
                if "embed" not in jax.tree_util.keystr(path))
  itemsize = jnp.dtype(lm_cfg.dtype).itemsize
  weights += batch * lm_cfg.d_model * itemsize
  cache = (2 * lm_cfg.n_layers * batch * cache_len * lm_cfg.n_kv_heads *
           lm_cfg.resolved_head_dim * itemsize)
  return {"weight_bytes": int(weights), "cache_bytes": int(cache),
          "step_bytes": int(weights + cache), "cache_len": cache_len}


def hf_llava(size: str):
  """LlavaForConditionalGeneration of a benchmark size, random weights.

  Work-matched as benchmarks/hf_llava.py does (that module defines its own
  command-line flags, so it is not imported here): mmjax stops its ViT
  after the layer LLaVA reads (feature_layer -2), so the HF tower has
  depth - 1 layers, is read at its last layer, and has no pooling head.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  v, lm = common.SIZES[size]["vision"], common.SIZES[size]["lm"]
  vision = transformers.SiglipVisionConfig(
      hidden_size=v["width"], intermediate_size=v["mlp_dim"],
      num_hidden_layers=v["depth"] - 1, num_attention_heads=v["n_heads"],
      image_size=v["image_size"], patch_size=v["patch_size"],
      hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
  vision.vision_use_head = False
  text = transformers.LlamaConfig(
      vocab_size=lm["vocab_size"], hidden_size=lm["d_model"],
      intermediate_size=lm["mlp_dim"], num_hidden_layers=lm["n_layers"],
      num_attention_heads=lm["n_heads"], num_key_value_heads=lm["n_kv_heads"],
      rms_norm_eps=1e-6, max_position_embeddings=4096,
      tie_word_embeddings=False)
  config = transformers.LlavaConfig(
      vision_config=vision, text_config=text, image_token_index=IMAGE_ID,
      projector_hidden_act="gelu", vision_feature_layer=-1,
      vision_feature_select_strategy="full",
      image_seq_length=(v["image_size"] // v["patch_size"]) ** 2)
  config._attn_implementation = "sdpa"  # pylint: disable=protected-access
  torch.manual_seed(0)
  return transformers.LlavaForConditionalGeneration(config).eval()


def time_hf(size: str, tokens: np.ndarray, images: np.ndarray,
            new_tokens: int, repeats: int, dtype: str = "float32",
            device: str = "cpu") -> dict[str, float]:
  """The same prompts through HF `generate` (PyTorch on 2 threads on CPU)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  model = hf_llava(size).to(device, getattr(torch, dtype))
  n_image = model.config.image_seq_length
  ids = np.concatenate([np.full((len(tokens), n_image), IMAGE_ID), tokens], 1)
  inputs = dict(input_ids=torch.as_tensor(ids, device=device),
                attention_mask=torch.ones(ids.shape, dtype=torch.long,
                                          device=device),
                pixel_values=torch.as_tensor(
                    images.transpose(0, 3, 1, 2), device=device).to(
                        getattr(torch, dtype)))

  def run(n):
    with torch.inference_mode():
      out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
    out = out.cpu()  # waits for the device, as mmjax's tokens on the host do
    assert out.shape[1] == ids.shape[1] + n
  # A busy machine (another process on the same cores) can make the short
  # call look slower than the long one; measure again before giving up.
  for _ in range(3):
    ttft = _median_time(lambda: run(1), repeats)
    full = _median_time(lambda: run(new_tokens), repeats)
    if full > ttft:
      break
  else:  # timing noise larger than the decode itself, three times
    raise RuntimeError(
        f"HF decode not measurable: generate({new_tokens}) took {full:.4f} s, "
        f"generate(1) {ttft:.4f} s; raise --new_tokens or --repeats")
  return {"ttft_s": ttft, "generate_s": full,
          "decode_tok_s": len(tokens) * (new_tokens - 1) / (full - ttft)}


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  sizes = common.parse_choices(_SIZES.value, list(common.SIZES), "sizes")
  rng = np.random.default_rng(0)
  b, n = _BATCH.value, _NEW.value
  results = {"device": f"{jax.devices()[0].device_kind} "
                       f"({platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores)",
             "jax": jax.__version__, "torch": torch.__version__,
             "transformers": transformers.__version__, "torch_threads": 2,
             "batch": b, "text_tokens": _TEXT.value, "new_tokens": n,
             "dtype": _DTYPE.value, "hf_device": _HF_DEVICE.value,
             "sizes": {}}
  print(f"device: {results['device']}; {common.load_average()}; batch {b}, "
        f"1 image + {_TEXT.value} text tokens, {n} new tokens, "
        f"{_DTYPE.value}, greedy; HF on {_HF_DEVICE.value}")
  bandwidth = common.memory_bandwidth(_BW_MIB.value << 20)
  results["memory_bandwidth"] = bandwidth
  print(f"measured memory bandwidth (jitted passes over "
        f"{bandwidth['bytes'] >> 20} MiB): read "
        f"{bandwidth['read_gb_s']:.1f} GB/s, in-place x * 2 (read + write) "
        f"{bandwidth['copy_gb_s']:.1f} GB/s")
  print("| size | mmjax TTFT ms | HF TTFT ms | mmjax decode tok/s | "
        "HF decode tok/s | decode speed-up |")
  print("|---|---|---|---|---|---|")
  for size in sizes:
    side = common.SIZES[size]["vision"]["image_size"]
    vocab = common.SIZES[size]["lm"]["vocab_size"]
    tokens = rng.integers(IMAGE_ID + 1, vocab, (b, _TEXT.value))
    images = rng.uniform(-1, 1, (b, side, side, 3)).astype(np.float32)
    ours = time_mmjax(size, tokens.astype(np.int32), images, n,
                      _REPEATS.value, _DTYPE.value)
    hf = time_hf(size, tokens, images, n, _REPEATS.value, _DTYPE.value,
                 _HF_DEVICE.value)
    speedup = ours["decode_tok_s"] / hf["decode_tok_s"]
    results["sizes"][size] = {"mmjax": ours, "hf": hf,
                              "decode_speedup": speedup}
    print(f"| {size} | {1e3 * ours['ttft_s']:.1f} | {1e3 * hf['ttft_s']:.1f} "
          f"| {ours['decode_tok_s']:.0f} | {hf['decode_tok_s']:.0f} | "
          f"{speedup:.1f}x |", flush=True)
  print("\nBytes a decode step must read (LM weights + the KV cache buffer) "
        "against the measured read bandwidth:")
  print("| size | weights MB | KV cache MB | MB per token | mmjax GB/s (% of "
        "measured) | HF GB/s (%) |")
  print("|---|---|---|---|---|---|")
  for size, r in results["sizes"].items():
    ours, hf = r["mmjax"], r["hf"]
    per_step = ours["step_bytes"]
    rates = {}
    for name, tok_s in (("mmjax", ours["decode_tok_s"]),
                        ("hf", hf["decode_tok_s"])):
      rates[name] = per_step * tok_s / b / 1e9  # steps/s = tok_s / batch
      r[f"{name}_gb_s"] = rates[name]
      # Decoding reads weights and caches: the read bandwidth is the bound.
      r[f"{name}_bandwidth_share"] = rates[name] / bandwidth["read_gb_s"]
    r["bytes_per_token"] = per_step / b
    print(f"| {size} | {ours['weight_bytes'] / 1e6:.1f} | "
          f"{ours['cache_bytes'] / 1e6:.1f} | {per_step / b / 1e6:.2f} | "
          f"{rates['mmjax']:.1f} ({r['mmjax_bandwidth_share']:.0%}) | "
          f"{rates['hf']:.1f} ({r['hf_bandwidth_share']:.0%}) |")
  common.write_json(_OUT.value, results)


if __name__ == "__main__":
  app.run(main)
