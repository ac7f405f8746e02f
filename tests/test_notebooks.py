"""Every notebook in experiments/notebooks runs top to bottom in TINY mode.

The notebooks share one work directory (dataset, XLA programs: the sweeps'
projection / rope variant is the quickstart's model), so they run in order
in one test file.
"""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

NOTEBOOKS = os.path.join(REPO, "experiments", "notebooks")
ORDER = ("quickstart.ipynb", "fusion_ablation.ipynb",
         "position_ablation.ipynb")


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("notebooks"))


def test_every_notebook_is_listed_and_generated():
  """The .ipynb files are what make_notebooks.py writes (no drift)."""
  import nbformat  # pylint: disable=g-import-not-at-top
  assert sorted(ORDER) == sorted(
      f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
  out = subprocess.run(
      [sys.executable, os.path.join(NOTEBOOKS, "make_notebooks.py"),
       os.environ.get("PYTEST_TMP", "/tmp")], capture_output=True, text=True,
      check=True)
  for path in out.stdout.split():
    fresh = nbformat.read(path, as_version=4)
    shipped = nbformat.read(os.path.join(NOTEBOOKS, os.path.basename(path)),
                            as_version=4)
    nbformat.validate(shipped)
    assert fresh == shipped, f"{path}: rerun make_notebooks.py"
    assert "google.colab" in shipped.cells[1].source  # installs in Colab


@pytest.mark.parametrize("name", ORDER)
def test_notebook_runs_in_tiny_mode(name, shared_workdir, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("MMJAX_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("MMJAX_NOTEBOOK_WORKDIR", shared_workdir)
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebooks draw inline
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": NOTEBOOKS}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code"
             for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "TINY=True" in text
  last = [o for o in nb.cells[-1].outputs if "image/png" in o.get("data", {})]
  assert last, f"{name}: its last cell (a matplotlib figure) drew nothing"
  if name == "quickstart.ipynb":
    assert "trained sft: 2 steps" in text
  else:
    stem = name[:-len(".ipynb")]
    results = os.path.join(shared_workdir, f"{stem}_smoke", "results.csv")
    with open(results, encoding="utf-8") as f:
      lines = f.read().splitlines()
    assert len(lines) == 3 and all(",ok," in l for l in lines[1:]), lines
