"""Installs mmjax. `pip install -e .[test]` adds what the tests need."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


setuptools.setup(
    name="mmjax",
    version="0.1.0",
    description="Multimodal LLMs in JAX/Flax: vision towers, connectors, "
    "fusion paradigms, sharded multi-stage training.",
    long_description=(_HERE / "README.md").read_text()
    if (_HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["mmjax", "mmjax.*"]),
    python_requires=">=3.10",
    install_requires=_requirements(),
    extras_require={
        # torch and transformers only run the Hugging Face parity tests
        # (tests/hf); pin torch: an unpinned one pulls GBs of CUDA wheels.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0",
                 "transformers==4.57.1", "safetensors>=0.4",
                 # tests/test_notebooks.py runs the notebooks headless.
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
        # The lmms-eval adapter (mmjax/evals/lmms_model.py): about 1 GB of
        # dependencies besides torch, so not in `test`; torch pinned, as
        # above.
        "lmms": ["lmms-eval==0.7.*", "torch==2.13.0"],
        # FLAC / OGG for mmjax.data.audio (WAV is read without it).
        "audio": ["soundfile>=0.12"],
    },
    # `python -m lmms_eval --model mmjax` finds the model class here.
    entry_points={"lmms_eval.models": [
        "mmjax = mmjax.evals.lmms_model:manifest"]},
)
