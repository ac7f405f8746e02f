"""Q-Former and cross-attention paradigms train alike on 1 device and on
(data, fsdp, tensor) meshes (8,1,1), (2,4,1), (2,2,2).

The work runs in one subprocess with 8 simulated devices
(tests/parallel/mesh_parity.py); test_mesh_parity_early_fusion.py has the
other paradigms, so the two CI workers share the load.
"""
import pytest

from tests.parallel import mesh_parity

pytestmark = pytest.mark.slow
JOBS = ("qformer", "cross_attention")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  return mesh_parity.run(JOBS, tmp_path_factory.mktemp("data"),
                         tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("job", JOBS)
def test_losses_match_one_device(result, job):
  mesh_parity.check(result, job)
