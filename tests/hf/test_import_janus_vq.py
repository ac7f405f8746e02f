"""JanusVQVAE (transformers 4.57.1, tiny random config, perturbed weights)
-> mmjax JanusVQ: identical codes, reconstructions within tolerance."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.janus import modeling_janus
from transformers.models.janus.configuration_janus import JanusVQVAEConfig

from mmjax.hf.janus_vq import (JanusVQImportError, janus_vq_config,
                               janus_vq_params)
from mmjax.models import vq_codebook
from mmjax.models.vq_janus import JanusVQ
from tests.hf.hf_testing import assert_parity, perturb


@pytest.fixture(scope="module")
def reference():
  hf_cfg = JanusVQVAEConfig(
      embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
      channel_multiplier=[1, 2], num_res_blocks=1, num_patches=8)
  model = perturb(modeling_janus.JanusVQVAE(hf_cfg), scale=1.5)
  images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
  return hf_cfg, model, images


def test_codes_and_reconstructions_match(reference):
  hf_cfg, model, images = reference
  cfg = janus_vq_config(hf_cfg.to_dict())
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params, codebook = janus_vq_params(state, cfg)
  ours = JanusVQ(cfg)
  x = jnp.asarray(images.permute(0, 2, 3, 1).numpy())
  # Every parameter the module declares is imported, with its shape.
  want = jax.eval_shape(lambda: ours.init(jax.random.key(0), x,
                                          jnp.asarray(codebook)))["params"]
  flat_want = flax.traverse_util.flatten_dict(want, sep="/")
  flat_got = flax.traverse_util.flatten_dict(params, sep="/")
  assert set(flat_got) == set(flat_want)
  for k, v in flat_want.items():
    assert flat_got[k].shape == v.shape, k

  quant, _, ref_codes = model.encode(images)
  z = ours.apply({"params": params}, x, method=JanusVQ.encode)
  codes = vq_codebook.nearest(z, jnp.asarray(codebook))
  ref_codes = ref_codes.view(codes.shape).numpy()
  np.testing.assert_array_equal(np.asarray(codes), ref_codes)
  assert len(np.unique(ref_codes)) > 4  # the codes say something
  ref_z = model.quant_conv(model.encoder(images)).permute(0, 2, 3, 1).numpy()
  assert_parity("janus_vq latents", z, ref_z)
  ref_recon = model.decode(torch.as_tensor(ref_codes).view(2, -1))
  recon = ours.apply({"params": params}, jnp.asarray(codebook),
                     codes, method=JanusVQ.decode)
  assert_parity("janus_vq reconstruction", recon,
                ref_recon.permute(0, 2, 3, 1).numpy())


def test_a_state_without_codebook_is_refused(reference):
  hf_cfg, model, _ = reference
  state = {k: v.numpy() for k, v in model.state_dict().items()
           if "embedding" not in k}
  with pytest.raises(JanusVQImportError, match="not a JanusVQVAE"):
    janus_vq_params(state, janus_vq_config(hf_cfg.to_dict()))
