"""Multimodal LM on the synthetic shapes benchmark, in any fusion paradigm.

  python -m mmjax.main --config=configs/shapes.py:size=tiny,fusion=resampler --workdir=W

Args (comma-separated key=value after the colon, big_vision style):
  size=tiny|small        model size (default small); a bare word means size
  fusion=projection|resampler|qformer|cross_attention|one_backbone
                         how vision enters the LM (default projection)
  positions=rope|mrope|v2pe
                         position scheme of the LM (default rope)
  steps=N                cap every stage at N steps (0 = the recipe's own)
  batch=N                global batch size (0 = the size's default)
  text_lm=1              put the text-only LM stage first (the LM on the
                         benchmark's captions and Q&A lines); 0 (default)
                         leaves it out: it teaches the LM the answers' priors
                         (a red object is never a star in training) and
                         measured, cost 0.15 of test accuracy
                         (docs/recipes.md "What makes the model see")
  grounding=1            the grounding recipe (projection fusion only):
                         three "where is the red circle?" -> box questions
                         per sft chat (max_len 320), each box coordinate's
                         digits taught to look at that edge of the box
                         (box attention, target edges), each visual
                         token's row and column (sincos2d), answers weighed
                         1 / sqrt(length), sft lr 2e-3 for 4,000 steps
                         (3,000 missed shape >= 0.90); grounding evaluated
                         after sft and dpo (docs/evaluation.md "Box
                         attention"); 0 (default) = none of these
  grpo=1                 append the optional `grpo` stage (RL with verifiable
                         rewards on the shapes questions, after dpo;
                         docs/rl.md); 0 (default) leaves it out of the order
Any key can also be overridden with --config.KEY=VALUE, e.g.
  --config.model.projector=pixel_shuffle --config.model.image_attention=bidirectional
"""
import ml_collections

from mmjax import config as config_lib
from mmjax.models import sizes
from mmjax.models.choices import FUSIONS, POSITIONS
from mmjax.models.decoder import DecoderConfig

# The model sizes live in mmjax/models/sizes.py (the benchmarks read them
# too); a run size adds its default global batch.
_BATCH = {"tiny": 16, "small": 32}
# The shapes tokenizer has 512 pieces at every model size.
_VOCAB = 512


def _mrope_sections(head_dim):
  """Qwen2-VL's 16:24:24 split of head_dim // 2 frequencies, scaled down."""
  half = head_dim // 2
  t = half // 4
  h = (half - t) // 2
  return (t, h, half - t - h)


def model_config(size: str, fusion: str, positions: str
                 ) -> ml_collections.ConfigDict:
  """The `config.model` block: an MLLMConfig as nested dicts."""
  vision_dims, conn = sizes.vision(size), sizes.connector(size)
  lm_dims = dict(sizes.lm(size), vocab_size=_VOCAB)
  lm = dict(rope_theta=10000.0, norm_eps=1e-6, qkv_bias=False,
            tie_embeddings=False, embed_scale=False, norm_offset_one=False,
            mlp_activation="silu", logit_softcap=0.0,
            dtype="float32", param_dtype="float32", xattn_media="last",
            xattn_every=1 if fusion == "cross_attention" else 0,
            mrope_sections=None, remat="none", scan_layers=False,
            attention="einsum",
            # Training scores the queries in 4 chunks, each against the
            # keys up to its end (the mask is causal): measured, the tiny
            # sft step 117-120 -> 97 ms on 2 cores (docs/performance.md).
            causal_chunks=4, **lm_dims)
  if positions == "mrope":
    lm["mrope_sections"] = _mrope_sections(lm["d_model"] // lm["n_heads"])
  # Every DecoderConfig field, so any can be set from the command line
  # (e.g. --config.model.lm.query_pre_attn_scalar=64.0).
  lm = config_lib.dataclass_block(DecoderConfig, lm)
  vision = dict(kind="siglip", channels=3, pool="none", dtype="float32",
                param_dtype="float32", remat="none", attention="einsum",
                **vision_dims)
  width, heads = vision_dims["width"], vision_dims["n_heads"]
  resampler = dict(
      style="flamingo", n_latents=conn["latents"],
      depth=conn["resampler_depth"], n_heads=heads,
      head_dim=conn["resampler_head_dim"], ff_mult=4, max_frames=4,
      max_media=4,
      # Early fusion needs latents in LM width; cross-attention reads them
      # in the vision width through its own key/value projections.
      out_dim=lm_dims["d_model"] if fusion == "resampler" else None)
  qformer = dict(n_queries=conn["latents"], width=width,
                 depth=conn["qformer_depth"], n_heads=heads,
                 mlp_dim=4 * width, cross_attention_freq=2,
                 vision_width=width, vocab_size=_VOCAB, max_text_len=32)
  return ml_collections.ConfigDict(dict(
      # The last ViT layer: these towers are 4 layers deep, not LLaVA's 24
      # (where -2 is the choice).
      fusion=fusion, positions=positions, projector="mlp", feature_layer=-1,
      # 'sincos2d': each visual token's (row, column) added after the
      # projector (models/visual_positions.py).
      visual_positions="none",
      image_attention="causal", patch_size=vision_dims["patch_size"],
      image_size=vision_dims["image_size"], channels=3,
      frames=1, lm=lm, vision=vision, resampler=resampler, qformer=qformer))


def get_config(arg=None):
  """Returns the shapes recipe; see the module docstring for the args."""
  args = config_lib.parse_arg(arg, size="small", fusion="projection",
                              positions="rope", steps=0, batch=0, grpo=0,
                              text_lm=0, grounding=0)
  for key, allowed in (("size", tuple(_BATCH)), ("fusion", FUSIONS),
                       ("positions", POSITIONS)):
    if args[key] not in allowed:
      raise config_lib.ConfigError(
          f"config arg {key}={args[key]!r} is not allowed; allowed values: "
          f"{', '.join(allowed)}")
  config = ml_collections.ConfigDict()
  config.family = "mllm"
  config.seed = 0
  config.model = model_config(args.size, args.fusion, args.positions)
  vision_dims = sizes.vision(args.size)
  config.model.text = ml_collections.ConfigDict(dict(
      vocab_size=_VOCAB, max_len=32, width=vision_dims["width"],
      depth=2, mlp_dim=4 * vision_dims["width"],
      n_heads=vision_dims["n_heads"], embed_dim=64,
      norm_eps=1e-6, activation="gelu_tanh", dtype="float32",
      param_dtype="float32"))
  config.batch_size = args.batch or _BATCH[args.size]
  config.data = ml_collections.ConfigDict(dict(
      dataset="shapes",
      data_dir="",           # '' = $MMJAX_DATA_DIR or ~/.cache/mmjax/data
      num_train=10000, num_validation=500, num_test=1000, num_heldout=1000,
      image_size=64, vocab_size=_VOCAB, seed=0,
      max_len=224,           # longest sequence (contrastive: text length 32)
      # Referring questions ("where is the red circle?" -> "[x0, y0, x1,
      # y1]", 0..1000) added to each shapes_chat chat, up to this many per
      # image; 0 = off (docs/evaluation.md "Grounding").
      grounding_questions=0,
      # True: each shapes_chat chat also asks "describe the image with
      # boxes." -> every object named and boxed ("a red circle [125, 250,
      # 391, 516] and a blue star [...]."); about 24 tokens per object.
      grounded_captions=False,
      # More questions of the five types per training chat, drawn from all
      # an image allows (`shapes.extra_questions`); 0 = the record's own.
      # Six: every image pass teaches about twice as many answers (measured
      # +0.11 test accuracy for about +30% sft time).
      extra_questions=6,
      # What each answer token weighs in the 'lm' stages' loss: "token"
      # (all alike), "square" (1 / sqrt(its answer's length), InternVL
      # 2.5: a 21-token box answer no longer outweighs ten one-word ones)
      # or "sample" (1 / length: every answer alike).
      loss_weighting="token",
      # False: no training question names a held-out colour x shape pair
      # (the records ask about them only as absent objects, answer "no");
      # each is swapped for another absent pair (shapes.without_heldout_names).
      # Named, the LM learns those words mean "no": it said "yes" to 1% of
      # present held-out pairs, 47% without (docs/recipes.md).
      name_heldout=False,
      # Several examples per row in training (segment ids, positions
      # restarting per example); docs/data.md "Packing".
      packing=False,
      # How packed rows are filled: 'fill' (each row as full as the waiting
      # examples allow) or 'first_fit' (stream order); mmjax/data/packing.py.
      pack_policy="fill",
      text_seq_len=64,       # window of the text-only LM stage
      num_workers=0,
      # Decoded training records kept in memory (per process), so epochs
      # after the first skip deserialising and PNG decoding: the 10,000
      # tiny-size records take ~125 MB (mmjax/data/record_cache.py); 0 = off.
      cache_mb=256,
      max_skipped_fraction=0.5,  # more bad folder records than this: an error
      # Your own data for stages with data='llava_conversations' (a
      # LLaVA-Instruct JSON) or 'image_caption' (a JSONL of image/caption):
      folder_json="", folder_images=""))
  # A Hugging Face tokenizer directory (tokenizer.json or tokenizer.model)
  # or a sentencepiece .model for every stage ('' = the shapes dataset's
  # own), and the chat template it writes (vicuna_v1 | chatml | gemma |
  # mmjax); docs/data.md "Tokenizers and chat templates".
  config.tokenizer = ""
  config.chat_template = "mmjax"
  config.stages, config.stage_order = _stages(args.fusion, args.steps,
                                              bool(args.text_lm))
  if args.grpo:
    config.stage_order = tuple(config.stage_order) + ("grpo",)
  if args.grounding:
    _ground(config, args.fusion, args.steps)
  config.log_every = 10
  config.eval_every = 0
  config.eval_batches = 2
  # VQA questions per split (1,000: a standard error near 0.015 on the
  # overall accuracy) and images ranked in retrieval (recall@k among 200).
  config.eval = ml_collections.ConfigDict(dict(
      max_examples=1000, retrieval_examples=200, batch_size=32,
      max_new_tokens=4))
  # Official benchmarks a stage's `evals` may name (docs/evaluation.md):
  # --config.eval.benchmarks.pope.data=DIR (and .split, .limit).
  config.eval.benchmarks = config_lib.benchmark_slots()
  config.progress_bar = True
  config.checkpoint = ml_collections.ConfigDict(dict(
      every=200, keep=2, async_save=True))
  # Start from external weights (mmjax/train/init_from.py): `all` = one
  # tree (`python -m mmjax.convert` output or an orbax tree with top-level
  # group names); a group key takes that group from its own checkpoint.
  config.init_from = config_lib.init_from_groups(
      "vision", "connector", "llm", "text")
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.matmul_precision = "default"
  return config


def _stage(loss, data, steps, trainable, lr, evals=(), warmup=20, **extra):
  return ml_collections.ConfigDict(dict(
      loss=loss, data=data, steps=steps, trainable=tuple(trainable),
      batch_size=0,  # 0 = config.batch_size
      # LoRA on the LM: rank > 0 adds low-rank factors (group 'lora') to the
      # kernels matching targets (() = the LM's attention and MLP kernels);
      # put 'lora' in trainable instead of 'llm' (mmjax/train/lora.py).
      lora=ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=())),
      evals=tuple(evals),
      optimizer=ml_collections.ConfigDict(dict(
          name="adamw", lr=lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01,
          grad_clip=1.0,
          # Per-group learning-rate factors (groups not trained are ignored).
          lr_mult=ml_collections.ConfigDict(
              {g: 1.0 for g in ("vision", "connector", "llm", "xattn",
                                "text", "siglip", "region_head")}))),
      schedule=ml_collections.ConfigDict(dict(
          name="warmup_cosine", warmup_steps=min(warmup, max(1, steps // 5)),
          end_lr_fraction=0.1)), **extra))


def _ground(config, fusion, cap):
  """The grounding recipe (config arg grounding=1), each change measured
  from one align checkpoint at sft 3,000 steps (docs/evaluation.md, box
  attention): Acc@0.5 0.018 without box attention -> 0.520 with it and
  sincos2d -> 0.729 with edges; square weights buy back the other answers
  (VQA 0.701 -> 0.822) and lr 2e-3 both (0.823 boxes, VQA 0.842). sft
  4,000 steps: at 3,000 shape missed 0.90 in three seeds of three (mean
  0.865), at 4,000 it passed with every other goal in both seeds run
  (docs/evaluation.md "Seeds"); `cap` > 0 caps it like every stage."""
  if fusion != "projection":
    raise config_lib.ConfigError(
        f"config arg grounding=1 needs fusion=projection (box attention and "
        f"sincos2d positions read the LM's image tokens as one grid); got "
        f"fusion={fusion!r}")
  config.model.visual_positions = "sincos2d"
  config.data.grounding_questions = 3
  config.data.max_len = 320  # three box questions: ~25 tokens each
  config.data.loss_weighting = "square"
  sft = config.stages.sft
  sft.steps = min(4000, cap) if cap else 4000
  sft.optimizer.lr = 2e-3
  sft.box_attention_weight = 1.0
  sft.box_attention_target = "edges"
  sft.evals = ("vqa", "grounding")
  config.stages.dpo.evals = ("vqa", "grounding")


def _stages(fusion, cap, text_lm):
  """The from-scratch recipe; `cap` > 0 caps every stage (smoke runs)."""
  n = lambda steps: min(steps, cap) if cap else steps
  # Flamingo-style models train their cross-attention blocks with the
  # connector; the LM itself joins in instruction tuning.
  connector = ("connector", "xattn") if fusion == "cross_attention" else (
      "connector",)
  stages = ml_collections.ConfigDict()  # (ConfigDict sorts its keys)
  order = ["text_lm"] if text_lm else []
  # loss_chunk > 0 (the 'lm', 'dpo', 'mpo' stages): the LM head and loss run
  # that many positions at a time and skip chunks without a loss token (image
  # tokens, prompts); same loss, 0 = full [B, L, V] logits.
  # Text-only LM pretraining on the benchmark's own text: not in the default
  # order (config arg text_lm=1 adds it): it teaches the answer priors of
  # the training pairs, and the LM then guesses instead of looking.
  stages.text_lm = _stage("lm", "text", n(300), ["llm"], 3e-3, loss_chunk=0)
  if fusion != "one_backbone":  # Fuyu has no vision tower to pretrain
    # chunked_loss=True: the ring-exchanged sigmoid loss (train/
    # sigmoid_ring.py), which never holds the global B x B logits.
    stages.siglip = _stage("sigmoid_contrastive", "contrastive", n(300),
                           ["vision", "text", "siglip"], 1e-3,
                           evals=["retrieval"], chunked_loss=False)
    # Contrastive learning wants many negatives; images are cheap here.
    stages.siglip.batch_size = 64
    order.append("siglip")
    # Region-level supervision: each object's tokens must say its shape and
    # colour (captions alone let SigLIP match images by colour and place,
    # never forcing shape); attributes may add 'place'. 1,500 steps: per-
    # object shape accuracy 0.76 at 600, 0.95 at 1,500. Half of the objects
    # painted a random colour (colour not asked): shape from the outline,
    # so held-out colour x shape pairs are named 0.86, not 0.34.
    stages.regions = _stage("region_classification", "regions", n(1500),
                            ["vision", "region_head"], 1e-3,
                            attributes=("shape", "colour"), per_token=False,
                            token_attributes=(), attribute_weights=(),
                            recolour=0.5)
    stages.regions.batch_size = 64
    order.append("regions")
  if fusion == "qformer":
    stages.qformer = _stage("qformer", "contrastive", n(200), ["connector"],
                            1e-3)
    order.append("qformer")
  stages.align = _stage("lm", "caption", n(200), connector, 1e-3,
                        evals=["vqa"], loss_chunk=0)
  # Instruction tuning: every question of an image in one chat. The ViT
  # stays frozen: trained here at lr 1e-3 it loses what region supervision
  # taught it (measured: docs/recipes.md "What makes the model see").
  # 3,000 steps: measured 0.77 -> 0.84 test accuracy from 1,000 to 2,000,
  # then held-out 0.685 -> 0.700 and count 0.73 -> 0.79 at 3,000 (same
  # earlier stages; docs/recipes.md).
  # box_attention_weight > 0 (with data.grounding_questions): one head of
  # the LM is taught to look at the named object while it writes a box
  # (train/box_attention_loss.py); 0 = off. box_attention_target "edges":
  # while it writes each coordinate, at that edge of the box.
  stages.sft = _stage("lm", "shapes_chat", n(3000), connector + ("llm",),
                      1e-3, evals=["vqa"], loss_chunk=0,
                      box_attention_weight=0.0, box_attention_layer=-1,
                      box_attention_head=0, box_attention_target="box")
  stages.dpo = _stage("dpo", "preference", n(100), connector + ("llm",),
                      1e-5, evals=["vqa"], beta=0.1, loss_chunk=0)
  # RL with verifiable rewards (docs/rl.md): not in the default order (add
  # it with the config arg grpo=1). G completions of each question are
  # sampled inside the step and scored against the gold answer. lr 1e-4:
  # the largest of 1e-5 / 1e-4 / 1e-3 that stayed near the reference at
  # tiny size (KL ~0.02 after 100 steps; 1e-3 collapsed to one answer).
  stages.grpo = _stage("grpo", "shapes", n(100), connector + ("llm",), 1e-4,
                       evals=["vqa"], group_size=8, max_new_tokens=4,
                       temperature=1.0, top_p=1.0, beta=0.04, clip_eps=0.2,
                       dr_grpo=False, dynamic_sampling=False,
                       # Its rows (prompt + answer, 80-90 tokens) fill 96
                       # slots, not the default bucket's 128: the rollout
                       # prefills a quarter fewer (docs/performance.md).
                       buckets=(64, 96, 128, 160, 192),
                       rewards=ml_collections.ConfigDict(dict(
                           exact=1.0, numeric=0.0, format=0.1,
                           length=0.0)))
  return stages, tuple(order + ["align", "sft", "dpo"])
