"""The registry of stage kinds: what `config.stages.<name>.loss` names.

A stage kind says everything that differs between stages of the one training
loop (`trainer.run_stage`): which model it trains, its loss, the data formats
it reads, whether the loss needs the stage-start parameters as a frozen
reference or a small state carried between steps, the stage options it
takes, and its own config checks. `task.build_task` turns a stage's config
into the loop's `Task` through the kind its `loss` names.

Adding a loss is one new file in this folder that calls `register(...)`
(every module here is imported by the package), plus its test; see
docs/development.md.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import ml_collections

from mmjax import config as C
from mmjax.data import formats

# Every data format a stage may read (mmjax/data/formats.py, plus 'text': the
# benchmark's texts, or the corpus of a text-only recipe, as LM windows).
TEXT_FORMAT = "text"
# The chat formats: image-text, audio-text (tones) and image-audio-text
# (shapes_tones) conversations.
IMAGE_TEXT_FORMATS = formats.CHAT_FORMATS


class StageModel(NamedTuple):
  """What a stage trains: the module, rng -> boxed params, and the map of its
  parameter paths onto the recipe's global store (train/groups.py)."""
  model: Any
  init: Callable[[Any], Any]
  to_global: Callable[[str], str]


@dataclasses.dataclass(frozen=True)
class StageKind:
  """One kind of stage.

  Attributes:
    name: the `loss` value that selects it.
    families: the `config.family` values it serves ('lm', 'mllm').
    data_formats: the `data` values it reads.
    make_model: (config, stage_name) -> StageModel.
    make_loss: (model, stage config) -> loss_fn(params, batch, rng[, ref]
      [, loss_state]) -> (loss, metrics) (trainer.LossFn).
    needs_ref: loss_fn also gets the stage-start parameters (frozen).
    initial_loss_state: (config, stage_name) -> the initial value of a
      small pytree the loss reads and updates every step
      (trainer.Task.loss_state), or None; it sees the whole config because
      its shapes may come from the model (the VQ codebook).
    options: the optional stage keys this kind reads, with their neutral
      values (a stage of another kind may carry a key only at its neutral
      value).
    checks: (config, "stages.<name>", stage config) -> the config checks of
      this kind's options and constraints.
    loss_takes_tokenizer: make_loss also gets `tokenizer=` the stage's
      tokenizer (grpo: the ids that spell numbers); without one (fit
      planning) it must still build a loss of the same shapes.
  """
  name: str
  families: tuple[str, ...]
  data_formats: tuple[str, ...]
  make_model: Callable[[ml_collections.ConfigDict, str], StageModel]
  make_loss: Callable[[Any, ml_collections.ConfigDict], Callable[..., Any]]
  needs_ref: bool = False
  initial_loss_state: Callable[[ml_collections.ConfigDict, str], Any] = (
      lambda config, stage_name: None)
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  checks: Callable[[ml_collections.ConfigDict, str, ml_collections.ConfigDict],
                   list[C.Check]] = lambda config, path, stage: []
  loss_takes_tokenizer: bool = False


_KINDS: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
  """Adds a stage kind under its name; a name may be registered once."""
  if kind.name in _KINDS:
    raise ValueError(f"stage kind {kind.name!r} is registered twice")
  _KINDS[kind.name] = kind
  return kind


def kinds() -> dict[str, StageKind]:
  """Every registered stage kind by name."""
  return dict(_KINDS)


def names(family: str | None = None) -> tuple[str, ...]:
  """The registered loss names (of one family), in registration order."""
  return tuple(n for n, k in _KINDS.items()
               if family is None or family in k.families)


def get(name: str, family: str | None = None,
        where: str = "loss") -> StageKind:
  """The kind a stage's loss names; ConfigError listing the allowed ones."""
  if name not in _KINDS or (family is not None and
                            family not in _KINDS[name].families):
    raise C.ConfigError(f"config.{where}={name!r} is not allowed; allowed "
                        f"values: {', '.join(map(repr, names(family)))}")
  return _KINDS[name]


def option_owners() -> dict[str, tuple[str, ...]]:
  """Each stage option -> the kinds that read it."""
  owners: dict[str, tuple[str, ...]] = {}
  for kind in _KINDS.values():
    for option in kind.options:
      owners[option] = owners.get(option, ()) + (kind.name,)
  return owners
