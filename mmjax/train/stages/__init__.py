"""Stage kinds, one file each, registered by the `loss` name a stage gives.

  from mmjax.train import stages
  built = stages.build_task(config, "sft", workdir)
  stages.kinds()        # {'lm': StageKind(...), 'dpo': ..., ...}

Every module in this folder is imported here, so a new kind is one new file
that calls `base.register` (docs/development.md shows one).
"""
import importlib
import pkgutil

from mmjax.train.stages import base
from mmjax.train.stages.base import StageKind, StageModel, get, kinds, names, register

for _module in pkgutil.iter_modules(__path__):
  if _module.name not in ("base", "task"):
    importlib.import_module(f"{__name__}.{_module.name}")

from mmjax.train.stages.task import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    BuiltTask, build_task, model_initializer, stage_checks, stage_kind,
    stage_model)
