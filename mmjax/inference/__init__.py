"""Generation: loading a run and the high-level API over the decode loop.

  from mmjax import inference
  run = inference.load("runs/shapes_tiny")        # a finished recipe
  run.ask("photo.png", "what colour is the circle?")
  run.generate(["what shape?", "how many?"], ["a.png", "b.png"]).texts
  lm = inference.load("runs/lm_tiny")             # a text LM recipe
  lm.ask(None, "the red circle")                  # continues the text
  conv = inference.load("converted/qwen2")        # python -m mmjax.convert
  conv.generate([[151643, 3838, 374]], max_new_tokens=8).tokens
  out = inference.generate(run.model, run.params, prompts, images,
                           image_token_id=run.tokenizer.image_id,
                           max_new_tokens=8)       # batched, low level

Modules: prompts (chat turns -> token pieces), image_markers (how a family
writes an image in a prompt), media (image files and video frames), run
(`Run`: ask / generate), workdir (reading a run or a conversion). The decode
loop itself (prefill + compiled decode loop, sampling, FastV) lives in
`mmjax.decoding`, below `train`; its public names are re-exported here.
"""
from mmjax.decoding.decode import (Generation, PromptTooLongError, generate,
                                   greedy_generate, prepare_batch)
from mmjax.decoding.contrastive import Contrast
from mmjax.decoding.fastv import FastVConfig
from mmjax.decoding.sampling import Sampling
from mmjax.inference.prompts import InputError, prompt_pieces, user_turn
from mmjax.inference.run import Run, WorkdirError, load_run

load = load_run
