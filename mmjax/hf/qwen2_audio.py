"""Qwen2-Audio (`Qwen2AudioForConditionalGeneration`) -> mmjax `MLLM`.

An audio-only MLLM: no vision tower, `MLLMConfig.audio` = the Whisper-style
tower with `pool=2` (Qwen2-Audio pools pairs of outputs before its final
LayerNorm) and `audio_projector='qwen2_audio'` (its Linear), a Qwen2 LM
with plain RoPE. Hugging Face names (transformers 4.57.1):

  audio_tower.*                    audio/* (hf/whisper.py's encoder names;
                                   embed_positions checked to be Whisper's
                                   sinusoids, mmjax computes them)
  multi_modal_projector.linear     audio_connector/linear (kernel = W.T)
  language_model.model.*           llm/* (hf/llm.py)
  language_model.lm_head           llm/lm_head

`audio_token_index` (the `<|AUDIO|>` id) is recorded in `hf`. Masking, as
HF: padded frames reach the convs and are hidden only as attention keys
(`WhisperEncoderConfig.mask_convs=False`), so features must be padded as
HF's processor pads them (to 3000 frames, `data.audio.log_mel(pad=True)`)
for the outputs to be Qwen2-Audio's; the text holds
`layout.audio_tokens(cfg, frames)` placeholders per clip.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mmjax.hf import llm as llm_lib
from mmjax.hf import plan as P
from mmjax.hf import whisper as whisper_lib
from mmjax.hf.safetensors_io import Checkpoint, HFImportError

AUDIO_PREFIXES = ("audio_tower.", "model.audio_tower.")
PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")
LM_PREFIXES = ("language_model.model.", "model.language_model.")
LM_HEADS = ("language_model.lm_head.weight", "lm_head.weight")


def qwen2_audio_import(ckpt: Checkpoint, config: Mapping[str, Any],
                       notes: list[str]
                       ) -> tuple[dict[str, Any], P.Plan, list[str]]:
  """Qwen2AudioForConditionalGeneration -> MLLM config dict, plan, ignores."""
  ac = dict(config.get("audio_config") or {})
  tower = dataclasses.replace(
      whisper_lib.encoder_config(ac, "qwen2_audio_encoder"), mask_convs=False)
  tc = llm_lib.text_config_of(config)
  lm = llm_lib.decoder_config(tc, tc.get("model_type", "qwen2"), notes)
  ap = ckpt.resolve_prefix(AUDIO_PREFIXES, "conv1.weight",
                           "Qwen2-Audio audio tower")
  pp = ckpt.resolve_prefix(PROJECTOR_PREFIXES, "linear.weight",
                           "Qwen2-Audio projector")
  lp = ckpt.resolve_prefix(LM_PREFIXES, "embed_tokens.weight",
                           "Qwen2-Audio language model")
  whisper_lib.check_positions(ckpt, tower, ap, notes)
  head = next((k for k in LM_HEADS if k in ckpt), LM_HEADS[0])
  plan = whisper_lib.encoder_plan(tower, ap, "audio/")
  P.add_dense(plan, "audio_connector/linear", pp + "linear", tower.width,
              lm.d_model)
  plan.update(llm_lib.decoder_plan(lm, lp, head, "llm/"))
  ignore = list(llm_lib.DECODER_IGNORE) + [ap + "embed_positions.weight"]
  if lm.tie_embeddings:
    ignore += list(LM_HEADS)
  if config.get("audio_token_index") is None:
    raise HFImportError(f"{ckpt.path}: config.json has no audio_token_index "
                        f"(the <|AUDIO|> placeholder id).")
  notes.append("Qwen2-Audio: padded frames reach the convs as in HF "
               "(mask_convs=False); pad features to 3000 frames as its "
               "processor does.")
  model = dict(fusion="projection", positions="rope", projector="mlp",
               feature_layer=None, image_attention="causal", frames=1,
               lm=dataclasses.asdict(lm), vision=None, resampler=None,
               qformer=None, audio=dataclasses.asdict(tower),
               audio_projector="qwen2_audio")
  return model, plan, ignore
