"""Early-fusion paradigms train alike on 1 device and on (data, fsdp, tensor)
meshes (8,1,1), (2,4,1), (2,2,2): projection, resampler, one_backbone; and
the siglip stage with the ring-chunked sigmoid loss on a (2,2,2) mesh matches
the plain loss on one device; M-RoPE positions ([3, B, L]) shard on their
second axis over 8 devices.

The work runs in one subprocess with 8 simulated devices
(tests/parallel/mesh_parity.py); test_mesh_parity_late_fusion.py has the
other paradigms, so the two CI workers share the load.
"""
import pytest

from tests.parallel import mesh_parity

pytestmark = pytest.mark.slow
JOBS = ("projection", "resampler", "one_backbone", "siglip_chunked", "mrope")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  return mesh_parity.run(JOBS, tmp_path_factory.mktemp("data"),
                         tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("job", JOBS)
def test_losses_match_one_device(result, job):
  mesh_parity.check(result, job)
