"""The docs' Python examples run: every ```python block of README.md and
docs/*.md, a page's blocks in order in one fresh process (so a page may build
on its earlier blocks), from the repository root, with data in a temp dir.
Blocks fenced ```py are illustrative (a finished run, a GPU, real
checkpoints) and are not run."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(page: pathlib.Path) -> list[str]:
  return _BLOCK.findall(page.read_text(encoding="utf-8"))


def test_the_docs_have_runnable_examples():
  pages = [p.name for p in PAGES if python_blocks(p)]
  assert len(pages) >= 6, pages


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)],
                         ids=lambda p: p.name)
def test_page_examples_run(page, tmp_path):
  blocks = python_blocks(page)
  source = "\n\n".join(f"# --- block {i + 1} of {page.name}\n{b}"
                       for i, b in enumerate(blocks))
  env = dict(os.environ, MMJAX_DATA_DIR=str(tmp_path / "data"),
             TMPDIR=str(tmp_path), MPLBACKEND="Agg")
  proc = subprocess.run([sys.executable, "-c", source], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, (
      f"{page.name}: a python block failed\n{proc.stderr[-3000:]}")
