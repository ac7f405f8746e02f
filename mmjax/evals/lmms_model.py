"""The `mmjax` model of lmms-eval 0.7.x (pip install -e '.[lmms]').

  python -m lmms_eval --model mmjax --model_args workdir=runs/llava,batch_size=8 \\
      --tasks pope --include_path MY_TASKS/

lmms-eval finds the class through the entry point this package declares
(setup.py: group `lmms_eval.models`, `manifest` below); in Python,
`lmms_eval.evaluator.simple_evaluate(model=MMJax(workdir=...), ...)` takes
an instance. What the requests do is `mmjax.evals.lmms_requests`. Importing
this module needs lmms-eval (and torch, which it imports).
"""
from __future__ import annotations

from typing import Any

from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model

from mmjax import inference
from mmjax.evals.lmms_requests import LmmsRequests

MODEL_NAME = "mmjax"


@register_model(MODEL_NAME)
class MMJax(LmmsRequests, lmms):
  """An mmjax run (`mmjax.inference.load`) as an lmms-eval model.

  model_args: workdir=DIR or checkpoint=STEP_DIR, tokenizer=PATH (optional),
  batch_size=N (rows per compiled program, default 8).
  """

  def __init__(self, workdir: str | None = None,
               checkpoint: str | None = None, tokenizer: str | None = None,
               batch_size: int | str = 8, **unused: Any) -> None:
    lmms.__init__(self)
    del unused  # lmms-eval passes device, etc.: JAX places the model itself
    LmmsRequests.__init__(
        self, inference.load(workdir, checkpoint=checkpoint,
                             tokenizer=tokenizer), batch_size=int(batch_size))


def manifest() -> Any:
  """The entry point lmms-eval's model registry loads."""
  from lmms_eval.models.registry_v2 import ModelManifest  # pylint: disable=g-import-not-at-top
  return ModelManifest(model_id=MODEL_NAME,
                       simple_class_path=f"{__name__}.MMJax")
