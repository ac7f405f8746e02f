"""configs/llava.py: real sizes equal the published counts; tiny twins train.

Counts come from `jax.eval_shape` of the model's init (no memory); the
published figures are DESIGN.md section 5 "Real sizes" (transformers 4.57.1).
"""
import json
import math
import os

import flax.linen as nn
import jax
import pytest
from PIL import Image

from mmjax.config import ConfigError, load_config
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import build
from mmjax.models import vision as vision_lib
from mmjax.train import groups
from mmjax.train.recipe import run_recipe
from tests.conftest import REPO
from tests.data import hf_tokenizers

RECIPE = os.path.join(REPO, "configs", "llava.py")
VARIANTS = ("llava15_7b", "siglip_qwen2_1_5b", "qwen2vl_2b",
            "naflex_qwen2_1_5b", "paligemma_3b", "resampler_7b", "xattn_7b")

# Published (DESIGN.md section 5).
LLAVA15_7B_HF = 7_063_427_072         # llava-hf, with CLIP's unused last block
CLIP_L14_LAST_BLOCK = 12_596_224      # ... and post-layernorm (2 x 1024)
SIGLIP_SO400M_384 = 428_225_600       # SiglipVisionModel, MAP head included
QWEN2_1_5B = 1_543_714_304
PALIGEMMA_3B_224 = 2_923_335_408
QWEN2VL_2B = 2_208_985_600
LLAMA2_7B_VOCAB_32064 = 6_738_939_904  # LLaMA-2-7B (6,738,415,616) + 64 rows


def _load(variant):
  return load_config(f"{RECIPE}:{variant}")


def _counts(config):
  """{group: parameters} and the total of a recipe's MLLM."""
  model = build.build_model(config)
  abstract = nn.unbox(jax.eval_shape(build.mllm_init(model, IMAGE_ID),
                                     jax.random.key(0)))
  by_group = {}
  for path, leaf in groups.flatten(abstract).items():
    group = path.split("/")[0]
    by_group[group] = by_group.get(group, 0) + math.prod(leaf.shape)
  return by_group, sum(by_group.values())


def _tree_size(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_llava15_7b_equals_llava_hf_less_the_unused_clip_block():
  # mmjax builds the ViT only up to the feature layer (-2): llava-hf's count
  # less CLIP's last block and post-layernorm.
  _, total = _counts(_load("llava15_7b"))
  assert total == LLAVA15_7B_HF - CLIP_L14_LAST_BLOCK - 2 * 1024
  assert total == 7_050_828_800


def test_paligemma_3b_equals_the_published_count():
  # SigLIP So400m/14-224 without MAP head (post-LN kept) + linear + Gemma-2B
  # with vocab 257,152: the whole published model.
  by_group, total = _counts(_load("paligemma_3b"))
  assert total == PALIGEMMA_3B_224
  assert by_group["connector"] == 1152 * 2048 + 2048


def test_siglip_qwen2_parts_equal_the_published_towers():
  by_group, total = _counts(_load("siglip_qwen2_1_5b"))
  assert by_group["llm"] == QWEN2_1_5B
  # The published tower count (with MAP head) is our full SigLIP tower ...
  full = vision_lib.VisionEncoder(vision_lib.vision_variant(
      "So400m/14", pool="map"))
  params = nn.unbox(jax.eval_shape(
      full.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, 384, 384, 3), "float32")))["params"]
  assert _tree_size(params) == SIGLIP_SO400M_384
  # ... less what layer -2 never runs: the last block, post-LN and head
  # (LLaVA-OneVision's 26-block tower).
  unused = (_tree_size(params["layers_26"]) +
            _tree_size(params["post_layernorm"]) + _tree_size(params["head"]))
  assert by_group["vision"] == SIGLIP_SO400M_384 - unused
  # mlp2x_gelu 1152 -> 1536 -> 1536.
  assert by_group["connector"] == 1152 * 1536 + 1536 + 1536 * 1536 + 1536
  assert total == sum(by_group.values()) == 1_945_591_584


def test_qwen2vl_2b_equals_the_published_count():
  # Qwen2-VL-2B: ViT 32 x 1280 + 2x2 PatchMerger + Qwen2-1.5B (M-RoPE).
  by_group, total = _counts(_load("qwen2vl_2b"))
  assert total == QWEN2VL_2B
  assert by_group["llm"] == QWEN2_1_5B
  wide = 1280 * 4  # merger: LN(1280) -> 2x2 -> MLP 5120 -> 5120 -> 1536
  assert by_group["connector"] == (2 * 1280 + wide * wide + wide +
                                   wide * 1536 + 1536)


@pytest.mark.parametrize("variant,expected", [
    # Ours (no published model): SigLIP-384 tower (post-LN, no head) +
    # Idefics2 connector at the LM width + Vicuna-7B.
    ("resampler_7b", 7_873_847_152),
    # CLIP-L/14-224 to layer -2 + Flamingo resampler + Vicuna-7B with gated
    # cross-attention before every 4th layer.
    ("xattn_7b", 8_510_280_720),
    # SigLIP2 So400m/16 NaFlex (no MAP head) + mlp2x_gelu + Qwen2-1.5B.
    ("naflex_qwen2_1_5b", 1_960_495_856)])
def test_our_variants_counts(variant, expected):
  by_group, total = _counts(_load(variant))
  assert total == expected
  llm = sum(n for g, n in by_group.items() if g == "llm")
  if variant == "naflex_qwen2_1_5b":
    assert llm == QWEN2_1_5B
  elif variant == "resampler_7b":
    assert llm == LLAMA2_7B_VOCAB_32064
  else:  # the same LM plus 8 gated blocks
    assert llm > LLAMA2_7B_VOCAB_32064


def _switches(config):
  """Everything but the sizes: what a tiny twin must share with its model."""
  m = config.model
  lm = {k: m.lm[k] for k in ("qkv_bias", "tie_embeddings", "embed_scale",
                             "norm_offset_one", "mlp_activation",
                             "rope_theta")}
  lm["gqa"] = m.lm.n_kv_heads < m.lm.n_heads
  lm["mqa"] = m.lm.n_kv_heads == 1
  lm["xattn"] = m.lm.xattn_every > 0
  lm["head_dim_set"] = m.lm.head_dim is not None
  lm["prefix_lm"] = m.lm.get("prefix_lm", False)
  stages = {n: (s.loss, s.data, s.trainable, s.optimizer.lr,
                s.schedule.name) for n, s in config.stages.items()}
  return dict(fusion=m.fusion, projector=m.projector,
              feature_layer=m.feature_layer, kind=m.vision.kind,
              resampler=m.get("resampler", {}).get("style"), lm=lm,
              template=config.chat_template, order=config.stage_order,
              stages=stages, init_from=tuple(config.init_from.keys()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_twin_has_the_same_code_path(variant):
  real, tiny = _load(variant), _load(variant + "_tiny")
  assert _switches(tiny) == _switches(real)
  assert _counts(tiny)[1] < 2e6


def test_recipe_values_and_bad_args():
  config = _load("llava15_7b")
  pre, sft = config.stages.pretrain, config.stages.sft
  assert (pre.batch_size, pre.optimizer.lr, pre.trainable) == (
      256, 1e-3, ("connector",))
  assert (sft.batch_size, sft.optimizer.lr, sft.trainable) == (
      128, 2e-5, ("connector", "llm"))
  assert pre.steps == math.ceil(558_128 / 256)  # one epoch
  assert pre.schedule.warmup_steps == round(0.03 * pre.steps)
  assert config.chat_template == "vicuna_v1"
  assert _load("llava15_7b,steps=5,batch=64").stages.sft.steps == 5
  with pytest.raises(ConfigError, match="allowed values: llava15_7b"):
    _load("llava16")
  with pytest.raises(ConfigError, match="needs a variant first"):
    _load("steps=3")
  with pytest.raises(ConfigError, match="unknown config arg 'step'"):
    _load("llava15_7b,step=3")


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
  """A tiny LLaVA-format folder (8 images, one conversation each) and tiny
  Hugging Face tokenizers of the three chat templates."""
  root = tmp_path_factory.mktemp("llava_folder")
  tokenizers = {
      "vicuna_v1": hf_tokenizers.llama_dir(root / "vicuna"),
      "chatml": hf_tokenizers.qwen_dir(root / "qwen"),
      "gemma": hf_tokenizers.gemma_dir(root / "gemma")}
  images = root / "images"
  images.mkdir()
  records = []
  for i in range(8):
    Image.new("RGB", (40 + 4 * i, 32), (30 * i, 90, 200)).save(
        images / f"{i}.png")
    records.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the box?"},
        {"from": "gpt", "value": f"A blue box, number {i}."}]})
  (root / "llava.json").write_text(json.dumps(records))
  # LLaVA-Pretrain style: one caption per image, read by `pretrain` only.
  captions = [{"id": f"c{i}", "image": f"{i}.png", "conversations": [
      {"from": "human", "value": "<image>\nDescribe the image briefly."},
      {"from": "gpt", "value": f"box {i}"}]} for i in range(8)]
  (root / "captions.json").write_text(json.dumps(captions))
  return dict(json=str(root / "llava.json"), images=str(images),
              captions=str(root / "captions.json"),
              data_dir=str(root / "data"), tokenizers=tokenizers)


@pytest.mark.slow
@pytest.mark.parametrize("variant,order", [
    ("llava15_7b", ("pretrain", "sft")),
    # The other twins run the stage that trains everything their step
    # touches (connector, LLM, gated blocks): half the compiles.
    ("siglip_qwen2_1_5b", ("sft",)), ("qwen2vl_2b", ("sft",)),
    ("paligemma_3b", ("sft",)),
    ("resampler_7b", ("sft",)), ("xattn_7b", ("sft",))])
def test_tiny_twin_trains(variant, order, llava_folder, tmp_path):
  config = _load(f"{variant}_tiny,steps=2")
  config.stage_order = order
  config.data.folder_json = llava_folder["json"]
  config.data.folder_images = llava_folder["images"]
  config.data.data_dir = llava_folder["data_dir"]
  config.tokenizer = llava_folder["tokenizers"][config.chat_template]
  config.checkpoint.async_save = False
  if "pretrain" in order:  # the stage's own folder replaces config.data's
    config.stages.pretrain.folder_json = llava_folder["captions"]
    config.stages.pretrain.folder_images = llava_folder["images"]
  done = run_recipe(config, str(tmp_path), verbose=False)
  assert tuple(name for name, _, _ in done) == order
  if "pretrain" in order:
    read = {name: info["dataset"] for name, _, info in done}
    assert "captions_json" in read["pretrain"], read
    assert "llava_json" in read["sft"], read
  for _, result, _ in done:
    assert result.step == 2 and math.isfinite(result.final_metrics["loss"])
