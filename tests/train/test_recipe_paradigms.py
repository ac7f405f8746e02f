"""The shapes recipe end to end: projection, resampler, qformer."""
import pytest

from tests.train.recipe_runner import run_main, run_recipe_and_check_report
from tests.train.recipe_runner import TOWER_FREE_ORDER

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("fusion", ("projection", "resampler", "qformer"))
def test_every_paradigm_runs_the_recipe(fusion, data_dir, tmp_path):
  # The projection run puts the optional text-only stage first, so its
  # hand-over to the multimodal stages stays covered.
  text_lm = int(fusion == "projection")
  args = [f"--config=configs/shapes.py:size=tiny,steps=3,fusion={fusion},"
          f"text_lm={text_lm}"]
  if fusion != "projection":
    # The tower's stages (siglip, regions) are the same for every paradigm:
    # the projection run covers them and their hand-over to align.
    args.append(TOWER_FREE_ORDER[fusion])
  run_recipe_and_check_report(args, tmp_path, data_dir)
  if fusion != "projection":
    return
  # Rerunning a finished recipe does no work and says where results are.
  again = run_main(args, tmp_path, data_dir)
  out, _ = again.communicate(timeout=900)
  assert again.returncode == 0, out[-3000:]
  assert "[dpo] already finished (3 steps)" in out
