"""Reading a model to generate with from disk: a training workdir (either
family) or a `python -m mmjax.convert` output directory.

  config = read_config("runs/shapes")              # WORKDIR/config.json
  step_dir, store = read_final_store("runs/shapes", config)
  # store: {global path: array}; a given step: read_store(step_dir, config)
  model, params = text_lm_params(decoder_cfg, store, step_dir)

The final parameters are the newest finished stage checkpoint that can be
read: one whose files are truncated or corrupt is skipped with a one-line
warning on stderr (the previous finished one is used).

Every stage checkpoints the whole global parameter store (its model's
parameters plus the carried ones), so any stage's checkpoint holds every
group the final model needs once the stages that train them have run. Only
`params` and `carry` are read, not the optimizer state. A text LM's
parameters are the store's `llm` group (`groups.LM_PATHS`), which is
exactly `TextLM`'s tree.

The tokenizer is looked up at, in order: an explicit path, the run's
config.tokenizer (a Hugging Face tokenizer, with the run's
config.chat_template), WORKDIR/tokenizer.model (the LM recipe writes it
there), and the shapes dataset folder the recipe trained on
(`builders.TOKENIZER_FILE`; nothing is built here). A converted directory
has none: pass one, or prompt with token ids.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable

import jax
import ml_collections

from flax import linen as nn

from mmjax import hf
from mmjax import config as config_lib
from mmjax import parallel
from mmjax.data import builders, datasets, hf_tokenizer
from mmjax.data.tokenizer import Tokenizer
from mmjax.models import build, remat
from mmjax.models.decoder import DecoderConfig
from mmjax.models.mllm import MLLM, mllm_config_from_dict
from mmjax.models.text_lm import TextLM, TextLMConfig, text_lm_init
from mmjax.train import checkpoint as checkpoint_lib
from mmjax.train import groups, stages


class WorkdirError(ValueError):
  """A workdir, checkpoint or tokenizer that cannot be used; says why."""


def is_converted(path: str) -> bool:
  """Whether `path` is a `python -m mmjax.convert` output directory."""
  meta = _read_json(os.path.join(path, "config.json"))
  return (isinstance(meta, dict) and "hf" in meta and "model" in meta and
          os.path.isdir(os.path.join(path, "params")))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json (written by `python -m mmjax.main`)."""
  config = config_lib.read_run_config(workdir)
  if config is None:
    raise WorkdirError(f"{workdir} has no config.json: pass the --workdir "
                       "that `python -m mmjax.main` trained into, or the "
                       "--out of `python -m mmjax.convert`")
  if config.get("family") not in build.FAMILIES:
    raise WorkdirError(f"{workdir} holds a {config.get('family')!r} run; "
                       "generation needs a multimodal ('mllm') or text LM "
                       "('lm') recipe")
  return config


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _read_meta(step_dir: str) -> dict[str, Any] | None:
  return checkpoint_lib.read_meta(step_dir)


class UnreadableCheckpointError(WorkdirError):
  """A stage checkpoint whose files cannot be read (truncated, corrupt)."""


def warn(message: str) -> None:
  """One `warning: ...` line on stderr."""
  print(f"warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _reason(e: Exception, limit: int = 160) -> str:
  """The first line of an exception (orbax's run to hundreds of lines)."""
  first = (str(e).strip().splitlines() or [""])[0]
  text = f"{type(e).__name__}: {first}" if first else type(e).__name__
  return text if len(text) <= limit else text[:limit] + "..."


def finished_checkpoints(workdir: str, config: ml_collections.ConfigDict,
                         on_warning: Callable[[str], None] = warn
                         ) -> list[str]:
  """Finished step directories, newest first: the last stage's first.

  A stage counts from its newest step with readable metadata back to its
  first unfinished one (a stage still running has none). A step whose
  metadata cannot be read is skipped with a warning.
  """
  return [step_dir for stage in reversed(list(config.stage_order))
          for step_dir in checkpoint_lib.finished_steps(workdir, stage,
                                                         on_warning)]


def _no_finished_checkpoint(workdir: str) -> WorkdirError:
  return WorkdirError(f"{workdir} has no finished stage checkpoint: run the "
                      "recipe (python -m mmjax.main) to the end of a stage "
                      "first")


def final_checkpoint(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Step directory of the last stage whose newest checkpoint is finished."""
  found = finished_checkpoints(workdir, config)
  if not found:
    raise _no_finished_checkpoint(workdir)
  return found[0]


def read_final_store(workdir: str, config: ml_collections.ConfigDict,
                     on_warning: Callable[[str], None] = warn
                     ) -> tuple[str, dict[str, Any]]:
  """(step directory, `read_store`) of the newest finished checkpoint that
  can be read.

  A finished checkpoint whose files cannot be read (a truncated copy, a
  disk that filled up) is skipped with a one-line warning, and the next
  older finished one is used: an earlier step of the same stage, else the
  previous stage's.

  Raises:
    WorkdirError: no finished checkpoint, or none that can be read.
  """
  found = finished_checkpoints(workdir, config, on_warning)
  if not found:
    raise _no_finished_checkpoint(workdir)
  for step_dir, older in zip(found, found[1:] + [None]):
    try:
      return step_dir, read_store(step_dir, config)
    except UnreadableCheckpointError as e:
      if older is None:
        raise WorkdirError(
            f"{workdir}: none of its {len(found)} finished checkpoint(s) can "
            f"be read (the oldest: {e}); rerun the recipe (python -m "
            "mmjax.main) to write them again") from None
      on_warning(f"{e}; using the older finished checkpoint {older}")


def read_store(step_dir: str, config: ml_collections.ConfigDict
               ) -> dict[str, Any]:
  """Flat {global path: array} held by one stage checkpoint.

  `config` names the stage's model, which maps its parameter paths to the
  global ones (contrastive and Q-Former stages rename theirs, a text LM's
  go under `llm`).

  Raises:
    WorkdirError: `step_dir` is no stage checkpoint.
    UnreadableCheckpointError: its files cannot be read.
  """
  path = os.path.join(os.path.abspath(step_dir), "state")
  meta = _read_meta(step_dir)
  if meta is None or not os.path.isdir(path):
    raise WorkdirError(f"{step_dir} is not a readable stage checkpoint "
                       "(WORKDIR/checkpoints/<stage>/<step>)")
  # orbax and tensorstore raise many kinds of errors for damaged files.
  try:
    state = parallel.restore_on_one_device(path, keys=("params", "carry"))
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableCheckpointError(
        f"checkpoint {step_dir} cannot be read ({_reason(e)}): it is "
        "truncated or corrupt") from None
  store = groups.flatten(state.get("carry") or {})
  stage = meta.get("stage", "")
  to_global = lambda p: p
  if stage in config.stages:
    to_global = stages.stage_model(config, stage).to_global
  store.update({to_global(p): v for p, v in
                groups.flatten(state.get("params") or {}).items()})
  return store


def model_params(init: Callable[[jax.Array], Any], store: dict[str, Any],
                 where: str) -> dict[str, Any]:
  """The tree `init` (rng -> boxed params) builds, picked from a global
  store and shape-checked."""
  abstract = groups.flatten(nn.unbox(jax.eval_shape(init,
                                                    jax.random.key(0))))
  problems = []
  for path, leaf in sorted(abstract.items()):
    have = store.get(path)
    if have is None:
      problems.append(f"{path}: missing")
    elif tuple(have.shape) != tuple(leaf.shape):
      problems.append(f"{path}: checkpoint {list(have.shape)}, config "
                      f"{list(leaf.shape)}")
  if problems:
    raise WorkdirError(
        f"{where} does not hold this config's model ({len(problems)} "
        f"parameters differ, e.g. {problems[0]}); use the config.json of "
        "the run that wrote the checkpoint, or finish its stages first")
  return groups.unflatten({p: store[p] for p in abstract})


def text_lm_params(lm: DecoderConfig, store: dict[str, Any], where: str
                   ) -> tuple[TextLM, dict[str, Any]]:
  """A TextLM of decoder config `lm` and its params from the store.

  A decoder trained with scan_layers=True (one stacked `layers` entry) is
  unstacked: the KV cache needs one module per layer.
  """
  params = model_params(text_lm_init(TextLM(TextLMConfig(lm))), store, where)
  if lm.scan_layers:
    lm = dataclasses.replace(lm, scan_layers=False)
    params = {"llm": remat.unstack_layer_params(params["llm"])}
  return TextLM(TextLMConfig(lm)), params


def read_converted(path: str) -> tuple[ml_collections.ConfigDict, TextLM,
                                       dict[str, Any]]:
  """(config, model, params) of a converted decoder LM (family 'lm') or
  multimodal LM (family 'mllm', prompted with token ids).

  config holds what OUT/config.json records: family, model, hf.
  """
  conv = hf.load_converted(path)
  config = ml_collections.ConfigDict(
      {"family": conv.family, "model": conv.model, "hf": conv.hf})
  if conv.family == "mllm":
    return config, MLLM(mllm_config_from_dict(conv.model)), conv.params
  if conv.family != "lm":
    raise WorkdirError(
        f"{path} holds a converted {conv.family!r} model; only decoder LMs "
        "(family 'lm': LLaMA, Mistral, Qwen2, Gemma) generate from a "
        "conversion. Train a recipe from it (config.init_from) instead")
  store = groups.flatten({"llm": conv.params})
  model, params = text_lm_params(DecoderConfig.from_dict(conv.model), store,
                                 path)
  return config, model, params


def find_tokenizer(workdir: str, config: ml_collections.ConfigDict,
                   path: str | None = None
                   ) -> Tokenizer | hf_tokenizer.HFTokenizer:
  """The run's tokenizer (module docstring for where it is looked up)."""
  if not path and datasets.tokenizer_path(config):
    # The run trained with this tokenizer and chat template.
    try:
      return datasets.configured_tokenizer(config)
    except config_lib.ConfigError as e:
      raise WorkdirError(f"{workdir}: the run's tokenizer cannot be loaded: "
                         f"{e}") from None
  candidates = [path] if path else []
  candidates.append(os.path.join(workdir, builders.TOKENIZER_FILE))
  if config.family == "mllm":
    try:
      builder = datasets.shapes_builder(config)
      candidates.append(os.path.join(builder.data_dir,
                                     builders.TOKENIZER_FILE))
    except Exception:  # pylint: disable=broad-except
      pass  # an unusual data config: only the explicit paths then
  for candidate in candidates:
    if os.path.exists(candidate):
      # A Hugging Face tokenizer passed explicitly writes the run's template.
      return load_tokenizer(candidate, config.get("chat_template") or None)
  raise WorkdirError(f"no tokenizer at {' or '.join(candidates)}: pass "
                     "--tokenizer=PATH (the tokenizer.model of the dataset "
                     "the run trained on)")


def load_tokenizer(path: str, chat_template: str | None = None
                   ) -> Tokenizer | hf_tokenizer.HFTokenizer:
  """An mmjax tokenizer.model, or a Hugging Face tokenizer (directory or
  .model; None: the chat template its markers suggest); WorkdirError for
  anything else."""
  try:
    return hf_tokenizer.load_any(path, chat_template)
  except (OSError, ValueError) as e:  # ConfigError is a ValueError
    raise WorkdirError(f"{e}; pass a tokenizer.model written by mmjax, a "
                       "Hugging Face tokenizer directory, an object with "
                       "encode/decode/bos_id/eos_id, or prompt with token "
                       "ids") from None
