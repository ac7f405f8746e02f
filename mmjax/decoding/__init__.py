"""The KV-cache decode loop: prefill, the compiled decode loop, sampling, FastV.

  from mmjax.decoding import decode
  from mmjax.decoding.sampling import Sampling
  out = decode.generate(model, params, prompts, images,
                        image_token_id=tok.image_id, max_new_tokens=16,
                        sampling=Sampling(temperature=0.7, top_p=0.9))

Modules: decode (prepare_batch, prefill + compiled decode loop, generate),
sampling (greedy, temperature, top-k, top-p), fastv (pruning image tokens at
prefill), contrastive (visual contrastive decoding: answers contrasted with
those about a noised image).

Where it sits: below `train`. It depends only on `mmjax.models` and
`mmjax.data`; `train` (the grpo stage's rollouts), `inference` (loading a run,
the high-level API) and `evals` read it. It never imports `train`,
`inference` or `evals`.
"""
