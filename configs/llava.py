"""Real-size multimodal recipes (LLaVA-1.5 and relatives) with tiny twins.

  python -m mmjax.main --config=configs/llava.py:llava15_7b --workdir=W \\
      --config.tokenizer=/ckpt/llava-1.5-7b-hf \\
      --config.init_from.vision=/ckpt/clip-l14-336-mmjax \\
      --config.init_from.llm=/ckpt/vicuna-7b-mmjax \\
      --config.stages.pretrain.folder_json=/data/blip_laion_cc_sbu_558k.json \\
      --config.stages.pretrain.folder_images=/data/llava_pretrain/images \\
      --config.stages.sft.folder_json=/data/llava_v1_5_mix665k.json \\
      --config.stages.sft.folder_images=/data/llava_sft
  python -m mmjax.main --config=configs/llava.py:llava15_7b_tiny,steps=3 \\
      --workdir=W --config.tokenizer=TINY_LLAMA_TOKENIZER_DIR \\
      --config.data.folder_json=D/llava.json \\
      --config.data.folder_images=D/images
  python -m mmjax.plan --config=configs/llava.py:llava15_7b --mesh=fsdp:64 \\
      --hbm_gib=95

Args (comma-separated after the colon, big_vision style): a variant name
first, then optional key=value pairs:
  VARIANT    one of VARIANTS below; VARIANT_tiny is its tiny twin (the same
             tower kind, connector, fusion, LM family, chat template and
             stages at tiny widths, in float32 without remat: trains on a
             CPU in seconds; CI runs these)
  steps=N    cap every stage at N steps (0 = the recipe's own: one epoch of
             the published data set)
  batch=N    global batch of every stage (0 = the recipe's: 256 / 128;
             tiny twins 8)

Variants (parameter counts: DESIGN.md section 5 "Real sizes", checked by
tests/configs/test_llava_configs.py):
  llava15_7b         CLIP ViT-L/14-336 (features of layer -2, CLS dropped) +
                     mlp2x_gelu + Vicuna-7B (LLaMA-2-7B), vocab 32064 (32000
                     + <image>, padded as llava-hf): 7,050,828,800 built
                     (llava-hf counts 7,063,427,072: it also holds CLIP's last
                     block and post-layernorm, which layer -2 never uses).
  siglip_qwen2_1_5b  SigLIP So400m/14-384 (layer -2, as LLaVA-OneVision's
                     26-block tower) + mlp2x_gelu + Qwen2-1.5B (chatml).
  qwen2vl_2b         Qwen2-VL-2B: its ViT (2-D RoPE, 32 x 1280) reading each
                     image at its own size (aspect kept, 56^2..1280 x 28^2
                     px) + 2x2 PatchMerger + Qwen2-1.5B with M-RoPE
                     [16, 24, 24] (chatml): 2,208,985,600, as published.
                     Its tiny twin: patch 8, 16^2 x 4..64 px per image.
  naflex_qwen2_1_5b  ours: SigLIP2 So400m/16 NaFlex (each image at its own
                     aspect ratio, <= 256 patches; final tokens, no MAP
                     head) + mlp2x_gelu + Qwen2-1.5B (chatml).
  paligemma_3b       SigLIP So400m/14-224 (final post-LN output, no MAP head)
                     + linear + Gemma-2B with vocab 257,152, prefix-LM:
                     2,923,335,408.
  resampler_7b       ours: SigLIP So400m/14-384 + Idefics2-style Perceiver
                     resampler (64 latents, 3 blocks, 16 x 96 heads, 4 KV
                     heads, SwiGLU modality projection) + Vicuna-7B.
  xattn_7b           ours: CLIP ViT-L/14-224 + Flamingo resampler (64 latents,
                     6 blocks, 8 x 64) read by tanh-gated cross-attention
                     blocks before every 4th layer of Vicuna-7B
                     (OpenFlamingo-9B's spacing).

Stages (LLaVA-1.5; both read the `llava_conversations` folder format):
  pretrain  the connector only (xattn_7b: + its cross-attention blocks),
            lr 1e-3, batch 256, 1 epoch of LLaVA-Pretrain (558,128 records)
  sft       connector + LLM, lr 2e-5, batch 128, 1 epoch of LLaVA-Instruct
            mix665k (665,298 records)
  AdamW (0.9, 0.999, no weight decay), cosine schedule to 0 with a 3% linear
  warmup, gradient clipping at 1.0; bfloat16 compute, float32 parameters,
  full remat per block.

Keys a user sets:
  config.stages.pretrain.folder_json / .folder_images
  config.stages.sft.folder_json / .folder_images
        each stage's LLaVA-format JSON and its image folder; a stage that
        leaves them '' reads config.data.folder_json / folder_images.
  config.model.tiling   'internvl': InternVL dynamic tiling of every image
        (config.model.min_tiles / max_tiles / thumbnail); 'none' (default)
  config.tokenizer      a Hugging Face tokenizer directory (the LLM's)
  config.chat_template  vicuna_v1 | chatml | gemma (set per variant)
  config.init_from.vision / .llm / .connector
        converted checkpoints (`python -m mmjax.convert`) per group;
        config.init_from.all one tree with every group.
Any key can also be overridden with --config.KEY=VALUE.
"""
import math

import ml_collections

from mmjax import config as config_lib
from mmjax.models import sizes
from mmjax.models.decoder import DecoderConfig

# ---------------------------------------------------------------- towers --
# Real towers; `feature_layer` is the ViT hidden state the connector reads
# (HF hidden_states index, -2 = second-to-last; None = final post-LN output).
_CLIP_L14 = dict(kind="clip", width=1024, depth=24, mlp_dim=4096, n_heads=16,
                 patch_size=14)
# Qwen2-VL's ViT (2-D RoPE, Conv3d patches over 2 frames; its 2x2 PatchMerger
# is the connector, projector 'patch_merger'); image_size is only the side of
# dummy inputs: images train and generate at their own sizes within
# min_pixels..max_pixels (data/native_resolution.py).
_QWEN2VL_VIT = dict(kind="qwen2vl", width=1280, depth=32, mlp_dim=5120,
                    n_heads=16, patch_size=14, temporal_patch_size=2,
                    spatial_merge=2, activation="quick_gelu", norm_eps=1e-6,
                    rope_theta=10000.0, min_pixels=56 * 56,
                    max_pixels=28 * 28 * 1280)
# SigLIP2 So400m/16 NaFlex: each image resized, aspect kept, to at most
# max_num_patches 16-px patches; the learned 16 x 16 position grid is
# resized to every image's own patch grid (models/naflex.py).
_SO400M_NAFLEX = dict(kind="naflex", width=1152, depth=27, mlp_dim=4304,
                      n_heads=16, patch_size=16, posemb_grid=16,
                      max_num_patches=256, norm_eps=1e-6,
                      activation="gelu_tanh")
_SO400M = dict(kind="siglip", width=1152, depth=27, mlp_dim=4304, n_heads=16,
               patch_size=14)
# Decoder LMs: LLaMA-2-7B / Vicuna-7B, Qwen2-1.5B, Gemma-2B.
_VICUNA_7B = dict(
    d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=None,
    mlp_dim=11008, vocab_size=32064, rope_theta=10000.0, norm_eps=1e-5,
    qkv_bias=False, tie_embeddings=False, embed_scale=False,
    norm_offset_one=False, mlp_activation="silu")
_QWEN2_1_5B = dict(
    d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=None,
    mlp_dim=8960, vocab_size=151936, rope_theta=1e6, norm_eps=1e-6,
    qkv_bias=True, tie_embeddings=True, embed_scale=False,
    norm_offset_one=False, mlp_activation="silu")
# Qwen2-VL-2B's LM: Qwen2-1.5B with M-RoPE over (t, h, w) in the rotary pairs.
_QWEN2VL_LM = dict(_QWEN2_1_5B, mrope_sections=(16, 24, 24))
_GEMMA_2B = dict(
    d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, head_dim=256,
    mlp_dim=16384, vocab_size=257152, rope_theta=10000.0, norm_eps=1e-6,
    qkv_bias=False, tie_embeddings=True, embed_scale=True,
    norm_offset_one=True, mlp_activation="gelu_tanh",
    # PaliGemma's prefix-LM: image + prompt attend both ways, the answer
    # causally (the prefix ends where the loss mask starts).
    prefix_lm=True)

# Idefics2's perceiver; the Flamingo one reads the tower's width.
_IDEFICS2_RESAMPLER = dict(style="idefics2", n_latents=64, depth=3,
                           n_heads=16, head_dim=96, n_kv_heads=4, ff_mult=4,
                           max_frames=None, max_media=None)
_FLAMINGO_RESAMPLER = dict(style="flamingo", n_latents=64, depth=6, n_heads=8,
                           head_dim=64, n_kv_heads=None, ff_mult=4,
                           max_frames=None, max_media=None)

# One entry per variant: tower (+ image side, feature layer), connector,
# LM, chat template, and the published data set sizes of its two stages.
_VARIANTS = {
    "llava15_7b": dict(
        vision=dict(_CLIP_L14, image_size=336), feature_layer=-2,
        fusion="projection", projector="mlp", lm=_VICUNA_7B,
        chat_template="vicuna_v1"),
    "siglip_qwen2_1_5b": dict(
        vision=dict(_SO400M, image_size=384), feature_layer=-2,
        fusion="projection", projector="mlp", lm=_QWEN2_1_5B,
        chat_template="chatml"),
    "qwen2vl_2b": dict(
        vision=dict(_QWEN2VL_VIT, image_size=448), feature_layer=None,
        fusion="projection", projector="patch_merger", lm=_QWEN2VL_LM,
        positions="mrope", chat_template="chatml"),
    "naflex_qwen2_1_5b": dict(
        vision=_SO400M_NAFLEX, feature_layer=None, fusion="projection",
        projector="mlp", lm=_QWEN2_1_5B, chat_template="chatml"),
    "paligemma_3b": dict(
        vision=dict(_SO400M, image_size=224), feature_layer=None,
        fusion="projection", projector="linear", lm=_GEMMA_2B,
        chat_template="gemma"),
    "resampler_7b": dict(
        vision=dict(_SO400M, image_size=384), feature_layer=None,
        fusion="resampler", resampler=_IDEFICS2_RESAMPLER, lm=_VICUNA_7B,
        chat_template="vicuna_v1"),
    "xattn_7b": dict(
        vision=dict(_CLIP_L14, image_size=224), feature_layer=-2,
        fusion="cross_attention", resampler=_FLAMINGO_RESAMPLER,
        lm=_VICUNA_7B, xattn_every=4,
        chat_template="vicuna_v1"),
}
VARIANTS = tuple(_VARIANTS)
TINY = "_tiny"

# LLaVA-1.5's data: LLaVA-Pretrain (BLIP-captioned LAION/CC/SBU) and the
# LLaVA-Instruct mix665k; one epoch each.
_PRETRAIN_RECORDS = 558_128
_SFT_RECORDS = 665_298
# Text around the 576 image tokens: LLaVA's model_max_length.
_MAX_LEN = 2048
# Tiny twins' vocabulary: the shapes tokenizer (data.vocab_size) and the
# tiny test tokenizers fit.
_TINY_VOCAB = 512


def _tiny_twin(spec):
  """The variant at tiny widths: every switch kept, every size shrunk."""
  t = sizes.get("tiny")
  v, lm = t["vision"], t["lm"]
  vision = dict(spec["vision"], width=v["width"], depth=2,
                mlp_dim=v["mlp_dim"], n_heads=v["n_heads"], patch_size=8,
                image_size=32)
  lm_block = dict(spec["lm"], d_model=lm["d_model"],
                  n_layers=lm["n_layers"], mlp_dim=lm["mlp_dim"],
                  vocab_size=_TINY_VOCAB)
  # Keep the head layout's ratio: MHA stays MHA, GQA stays GQA, MQA stays
  # MQA, an explicit head_dim stays explicit.
  real = spec["lm"]
  heads = 4
  kv = heads if real["n_kv_heads"] == real["n_heads"] else (
      1 if real["n_kv_heads"] == 1 else 2)
  lm_block.update(n_heads=heads, n_kv_heads=kv,
                  head_dim=None if real["head_dim"] is None else 32)
  if spec["vision"]["kind"] == "naflex":  # 4x4 position grid, <= 64 patches
    del vision["image_size"]
    vision.update(posemb_grid=4, max_num_patches=64)
  if spec["vision"]["kind"] == "qwen2vl":
    # Patch 8 x merge 2: sides are multiples of 16; 4..64 merged tokens an
    # image (a 64x64 shapes picture: 16).
    vision.update(min_pixels=16 * 16 * 4, max_pixels=16 * 16 * 64)
  if real.get("mrope_sections"):  # 16 rotary pairs at head_dim 32
    lm_block["mrope_sections"] = (4, 6, 6)
  out = dict(spec, vision=vision, lm=lm_block)
  if "resampler" in spec:
    out["resampler"] = dict(spec["resampler"], n_latents=8, depth=1,
                            n_heads=2, head_dim=16,
                            n_kv_heads=1 if spec["resampler"]["n_kv_heads"]
                            else None)
  if spec.get("xattn_every"):
    out["xattn_every"] = 2
  return out


def model_config(spec, dtype: str, remat: str) -> ml_collections.ConfigDict:
  """The `config.model` block (an MLLMConfig as nested dicts) of a variant."""
  common = dict(dtype=dtype, param_dtype="float32", remat=remat,
                attention="einsum")
  if spec["vision"]["kind"] == "qwen2vl":  # its config has no pool / remat
    vision = dict(spec["vision"], channels=3, dtype=dtype,
                  param_dtype="float32")
  elif spec["vision"]["kind"] == "naflex":  # its tokens, no MAP head
    vision = dict(spec["vision"], channels=3, pool="none", **common)
  else:
    vision = dict(spec["vision"], channels=3, pool="none", **common)
  # Every DecoderConfig field, so any can be set from the command line.
  lm = config_lib.dataclass_block(DecoderConfig, dict(
      spec["lm"], logit_softcap=0.0,
      mrope_sections=spec["lm"].get("mrope_sections"),
      xattn_every=spec.get("xattn_every", 0), xattn_media="last",
      scan_layers=False, **common))
  model = dict(
      fusion=spec["fusion"], positions=spec.get("positions", "rope"),
      projector=spec.get("projector", "mlp"),
      feature_layer=spec["feature_layer"], image_attention="causal",
      patch_size=vision["patch_size"],
      image_size=vision.get("image_size",
                            vision.get("posemb_grid", 0) * vision["patch_size"]),
      channels=3, frames=1, lm=lm, vision=vision,
      # InternVL dynamic tiling (--config.model.tiling=internvl): each
      # image -> min_tiles..max_tiles tiles of the tower's side (+ a
      # thumbnail), every tile its own placeholders (data/tiling.py).
      tiling="none", min_tiles=1, max_tiles=12, thumbnail=True)
  if "resampler" in spec:
    r = dict(spec["resampler"], dtype=dtype, param_dtype="float32")
    if r["style"] == "idefics2":
      # Idefics2 runs its perceiver at the LM width; its modality projection
      # (SwiGLU, hidden = the LM's MLP width) maps the tower there.
      r.update(width=lm["d_model"], projection_mlp_dim=lm["mlp_dim"])
    else:
      # Flamingo latents stay in the tower's width for cross-attention.
      r.update(width=None)
    r["out_dim"] = None
    model["resampler"] = r
  return ml_collections.ConfigDict(model)


def _stage(trainable, lr, records, batch, cap):
  steps = math.ceil(records / batch)
  steps = min(steps, cap) if cap else steps
  return ml_collections.ConfigDict(dict(
      loss="lm", data="llava_conversations", steps=steps,
      # This stage's LLaVA-format JSON and image folder ('' = config.data's).
      folder_json="", folder_images="",
      trainable=tuple(trainable), batch_size=batch, evals=(), loss_chunk=0,
      lora=ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=())),
      optimizer=ml_collections.ConfigDict(dict(
          name="adamw", lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
          grad_clip=1.0)),
      schedule=ml_collections.ConfigDict(dict(
          name="warmup_cosine", warmup_steps=max(1, round(0.03 * steps)),
          end_lr_fraction=0.0))))


def _parse(arg):
  """'VARIANT[,key=value...]' -> (variant, steps, batch)."""
  items = [s.strip() for s in (arg or "").split(",") if s.strip()]
  if not items or "=" in items[0]:
    raise config_lib.ConfigError(
        f"configs/llava.py needs a variant first (e.g. "
        f"configs/llava.py:llava15_7b); variants: {', '.join(VARIANTS)}, each "
        f"also as <variant>{TINY}")
  args = config_lib.parse_arg(",".join(items[1:]), steps=0, batch=0)
  name = items[0]
  base = name[:-len(TINY)] if name.endswith(TINY) else name
  if base not in _VARIANTS:
    raise config_lib.ConfigError(
        f"config variant {name!r} is not allowed; allowed values: "
        f"{', '.join(VARIANTS)}, each also as <variant>{TINY}")
  return base, name.endswith(TINY), args.steps, args.batch


def get_config(arg=None):
  """Returns the recipe of one variant; see the module docstring."""
  base, tiny, steps, batch = _parse(arg)
  spec = _VARIANTS[base]
  if tiny:
    spec = _tiny_twin(spec)
  config = ml_collections.ConfigDict()
  config.family = "mllm"
  config.variant = base + (TINY if tiny else "")
  config.seed = 0
  config.model = model_config(spec, "float32" if tiny else "bfloat16",
                              "none" if tiny else "full")
  config.tokenizer = ""            # a Hugging Face tokenizer directory
  config.chat_template = spec["chat_template"]
  config.batch_size = batch or (8 if tiny else 128)
  config.data = ml_collections.ConfigDict(dict(
      # LLaVA-format data of stages that do not name their own.
      folder_json="", folder_images="",
      max_len=320 if tiny else _MAX_LEN,  # vicuna_v1's system line is long
      num_workers=0 if tiny else 8,
      max_skipped_fraction=0.5 if tiny else 0.01,
      data_dir="",
      # A small shapes dataset: its sentencepiece model is the tokenizer
      # when config.tokenizer is empty (templates mmjax and vicuna_v1 only;
      # chatml and gemma need config.tokenizer).
      num_train=200, num_validation=20, num_test=20, num_heldout=20,
      image_size=64, vocab_size=_TINY_VOCAB, seed=0, text_seq_len=64))
  pre_batch, sft_batch = (batch or 8, batch or 8) if tiny else (
      batch or 256, batch or 128)
  connector = ("connector", "xattn") if spec["fusion"] == (
      "cross_attention") else ("connector",)
  config.stages = ml_collections.ConfigDict()
  config.stages.pretrain = _stage(connector, 1e-3, _PRETRAIN_RECORDS,
                                  pre_batch, steps)
  config.stages.sft = _stage(connector + ("llm",), 2e-5, _SFT_RECORDS,
                             sft_batch, steps)
  config.stage_order = ("pretrain", "sft")
  config.log_every = 1 if tiny else 10
  config.eval_every = 0
  config.eval_batches = 1 if tiny else 4
  config.eval = ml_collections.ConfigDict(dict(
      max_examples=200, batch_size=8, max_new_tokens=16))
  # Official benchmarks a stage's `evals` may name (docs/evaluation.md):
  # --config.eval.benchmarks.pope.data=DIR (and .split, .limit).
  config.eval.benchmarks = config_lib.benchmark_slots()
  config.progress_bar = not tiny
  config.checkpoint = ml_collections.ConfigDict(dict(
      every=500, keep=2, async_save=True))
  config.init_from = ml_collections.ConfigDict(
      {"all": "", "vision": "", "llm": "", "connector": ""})
  # Data parallel by default; a pod slice sets fsdp (python -m mmjax.plan
  # says which mesh fits).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.matmul_precision = "default"
  return config
