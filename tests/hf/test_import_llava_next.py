"""LLaVA-NeXT (AnyRes tiles, unpad, image_newline) imported vs transformers."""
import numpy as np
import pytest
import torch
import transformers

import hf_testing
from mmjax import hf
from mmjax.data import tiling as host_tiling
from mmjax.decoding import decode as decode_lib
from mmjax.decoding.sampling import Sampling
from mmjax.models import tiling as tiling_lib

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, image_size=32, patch_size=8)
_TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
_IMAGE_ID = 95
_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
# Two aspects (wide -> 1x2 tiles, tall -> 3x1) whose canvases need unpadding.
_SIZES = [(12, 45), (70, 15)]


@pytest.fixture(scope="module")
def llava_next(tmp_path_factory):
  config = transformers.LlavaNextConfig(
      vision_config=transformers.CLIPVisionConfig(**_VISION),
      text_config=transformers.LlamaConfig(**_TEXT),
      image_token_index=_IMAGE_ID, image_grid_pinpoints=_PINPOINTS,
      vision_feature_layer=-2)
  model = hf_testing.perturb(
      transformers.LlavaNextForConditionalGeneration(config), seed=6)
  model.model.image_newline.mul_(3.0)  # a vector: perturb only jitters it
  conv = hf.import_checkpoint(hf_testing.save(
      model, tmp_path_factory.mktemp("llava_next")))
  proc = transformers.LlavaNextImageProcessor(
      size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
      image_grid_pinpoints=_PINPOINTS)
  rng = np.random.default_rng(7)
  examples = []
  for i, size in enumerate(_SIZES):
    image = rng.integers(0, 256, size + (3,), np.uint8)
    ref = proc(images=[image], return_tensors="np")
    layout = tiling_lib.Layout.of(host_tiling.anyres_tiles(image, _PINPOINTS,
                                                           32))
    k = host_tiling.anyres_token_count(size, _PINPOINTS, 32, 8)
    text = rng.integers(1, 90, 9)
    ids = np.concatenate([text[:3 + i], np.full(k, _IMAGE_ID), text[3 + i:]])
    examples.append(dict(pixels=ref["pixel_values"][0], layout=layout,
                         ids=ids, size=size))
  return model, conv, examples


def _visual(conv, examples):
  """[B, 1, K_max, D]: each example's tiled image encoded by mmjax."""
  tiles = np.concatenate([e["pixels"] for e in examples]).transpose(
      0, 2, 3, 1)
  per_image = conv.module().apply(
      {"params": conv.params}, tiles, [e["layout"] for e in examples],
      method=tiling_lib.encode_tiled)
  return tiling_lib.visual_rows([[v] for v in per_image])


def _ours(conv, examples, ids_list):
  """mmjax logits per example (one padded batch)."""
  module, variables = conv.module(), {"params": conv.params}
  visual = _visual(conv, examples)
  length = max(len(i) for i in ids_list)
  tokens = np.stack([np.pad(i, (0, length - len(i))) for i in ids_list])
  logits, _ = module.apply(variables, tokens, visual=visual,
                           image_token_mask=tokens == _IMAGE_ID)
  return [np.asarray(logits[b, :len(i)]) for b, i in enumerate(ids_list)]


def _ref(model, example, ids):
  return model(input_ids=torch.tensor(ids[None]),
               pixel_values=torch.tensor(example["pixels"][None]),
               image_sizes=torch.tensor([example["size"]])).logits[0].numpy()


def test_config_and_newline(llava_next):
  _, conv, examples = llava_next
  assert conv.model["tiling"] == "anyres"
  assert conv.model["grid_pinpoints"] == _PINPOINTS
  assert [e["layout"].grid for e in examples] == [(1, 2), (3, 1)]
  # Unpadding cuts rows of the wide image and columns of the tall one.
  # 12x45 in a 4x8 feature canvas keeps int(12 * 8/45) = 2 rows, 70x15 in
  # 12x4 keeps int(15 * 12/70) = 2 columns.
  assert host_tiling.anyres_unpadded((12, 45), (1, 2), 4) == (1, 3, 0, 8)
  assert host_tiling.anyres_unpadded((70, 15), (3, 1), 4) == (0, 12, 1, 3)
  assert [len(e["ids"]) - 9 for e in examples] == [16 + 2 * 9, 16 + 12 * 3]
  assert conv.params["image_newline"].shape == (32,)


def test_llava_next_logits(llava_next):
  model, conv, examples = llava_next
  ids_list = [e["ids"] for e in examples]
  ours = _ours(conv, examples, ids_list)
  for e, got in zip(examples, ours):
    hf_testing.assert_parity(f"llava-next logits {e['size']}", got,
                             _ref(model, e, e["ids"]))


@pytest.mark.slow
def test_llava_next_greedy_tokens(llava_next):
  """mmjax's KV-cache decode loop (prefill + decode) with the tiled images'
  tokens passed as `visual` generates what transformers' generate does."""
  model, conv, examples = llava_next
  steps = 4
  module = conv.module()
  batch = decode_lib.prepare_batch(
      module.cfg, [[list(e["ids"])] for e in examples], None, [0, 1],
      image_token_id=_IMAGE_ID)
  batch["image_token_mask"] = batch["tokens"] == _IMAGE_ID
  batch["visual"] = _visual(conv, examples)
  greedy = Sampling()
  state, ctx = decode_lib.prefill(
      module, conv.params, batch, np.asarray([-1], np.int32), np.int32(0),
      np.int32(0), max_new_tokens=steps, sampling=greedy)
  state = decode_lib.decode(module, conv.params, ctx, state,
                            np.int32(steps), sampling=greedy)
  ours = np.asarray(state.tokens)
  print("[greedy] mmjax decode loop:", ours.tolist())
  # The decode loop here runs all `steps` (no stop token); so must HF's,
  # which otherwise stops at the config's eos when a row samples it.
  model.generation_config.eos_token_id = None
  for b, e in enumerate(examples):
    ref = model.generate(
        input_ids=torch.tensor(e["ids"][None]),
        pixel_values=torch.tensor(e["pixels"][None]),
        image_sizes=torch.tensor([e["size"]]), max_new_tokens=steps,
        do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(ours[b], ref[0, len(e["ids"]):].numpy())
