"""Text-only decoder LM trained from scratch on the built-in synthetic corpus.

Run (seconds on a laptop CPU):
  python -m mmjax.main --config=configs/lm.py:tiny --workdir=runs/lm_tiny

Args (comma-separated key=value after the colon, big_vision style):
  size=tiny|small   model and run size (default small); a bare word means size
  steps=N           cap the stage at N steps (0 = the size's default)
  batch=N           global batch size (0 = the size's default)
Any key can also be overridden with --config.KEY=VALUE, e.g.
  --config.stages.lm.optimizer.lr=1e-3
"""
import ml_collections

from mmjax import config as config_lib
from mmjax.models import sizes
from mmjax.models.decoder import DecoderConfig

# Run sizes; the model of each is the LM of the same name in
# mmjax/models/sizes.py.
_RUNS = {
    "tiny": dict(seq_len=64, batch=16, steps=300),
    "small": dict(seq_len=128, batch=32, steps=2000),
}
# The corpus supports at most ~690 BPE pieces, hence 512 at every size.
_VOCAB = 512


def get_config(arg=None):
  """Returns the LM recipe; see the module docstring for the args."""
  args = config_lib.parse_arg(arg, size="small", steps=0, batch=0)
  if args.size not in _RUNS:
    raise config_lib.ConfigError(
        f"config arg size={args.size!r} is not allowed; allowed values: "
        f"{', '.join(_RUNS)}")
  size = dict(sizes.lm(args.size), vocab_size=_VOCAB, **_RUNS[args.size])

  config = ml_collections.ConfigDict()
  config.family = "lm"
  config.seed = 0
  # Every DecoderConfig field, so any can be set from the command line.
  config.model = config_lib.dataclass_block(DecoderConfig, dict(
      vocab_size=size["vocab_size"], d_model=size["d_model"],
      n_layers=size["n_layers"], n_heads=size["n_heads"],
      n_kv_heads=size["n_kv_heads"], mlp_dim=size["mlp_dim"],
      rope_theta=10000.0, norm_eps=1e-6, qkv_bias=False,
      tie_embeddings=False, embed_scale=False, norm_offset_one=False,
      mlp_activation="silu", logit_softcap=0.0, dtype="float32",
      param_dtype="float32",
      remat="none",          # none | full | dots | dots_all (per block)
      attention="einsum",    # einsum | xla | cudnn (NVIDIA GPU, bf16)
      scan_layers=False))    # nn.scan over blocks (stacked 'layers' tree)

  # Tokenizer: an empty path trains a sentencepiece model on the corpus and
  # saves it to WORKDIR/tokenizer.model (reused when the run resumes); a
  # path may also name a Hugging Face tokenizer directory. The text LM does
  # not chat: chat_template '' takes the template the tokenizer's markers
  # suggest (vicuna_v1 | chatml | gemma | mmjax name one).
  config.tokenizer = ml_collections.ConfigDict(dict(
      path="", vocab_size=size["vocab_size"]))
  config.chat_template = ""

  config.data = ml_collections.ConfigDict(dict(
      source="text_corpus",
      num_sentences=20000,   # corpus size (train); a 5% held-out split evals
      eval_fraction=0.05,
      seq_len=size["seq_len"],
      seed=0))

  config.batch_size = args.batch or size["batch"]
  config.stage_order = ("lm",)
  config.stages = ml_collections.ConfigDict()
  steps = args.steps or size["steps"]
  config.stages.lm = ml_collections.ConfigDict(dict(
      loss="lm",
      steps=steps,
      trainable=("all",),
      # rank > 0: LoRA factors (group 'lora'; set trainable=('lora',)).
      lora=ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=())),
      optimizer=ml_collections.ConfigDict(dict(
          name="adamw", lr=3e-3, b1=0.9, b2=0.95, eps=1e-8,
          weight_decay=0.01, grad_clip=1.0)),
      schedule=ml_collections.ConfigDict(dict(
          name="warmup_cosine", warmup_steps=min(50, max(1, steps // 10)),
          end_lr_fraction=0.1)),
  ))

  config.log_every = 10
  config.eval_every = 100      # held-out loss; 0 = only at the end
  config.eval_batches = 4
  config.progress_bar = True
  config.checkpoint = ml_collections.ConfigDict(dict(
      every=100, keep=3, async_save=True))
  # Mesh axis sizes; -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.matmul_precision = "default"
  # Start from external weights (mmjax/train/init_from.py): `all` = one
  # tree (`python -m mmjax.convert` output or an orbax tree with top-level
  # group names); a group key takes that group from its own checkpoint.
  config.init_from = config_lib.init_from_groups("llm")
  return config
