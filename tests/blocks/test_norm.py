"""Norms against the references: RMSNorm is GLM-4's GlmRMSNorm and CPM-Ant's CpmAntLayerNorm,
bit for bit, in fp32 and bf16 (statistics in fp32, scale applied in the input dtype)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import CpmAntConfig
from transformers.models.cpmant.modeling_cpmant import CpmAntLayerNorm
from transformers.models.glm.modeling_glm import GlmRMSNorm

from archcomposer.blocks.norm import LayerNorm, RMSNorm


def inputs(dim, dtype, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, 5, dim, generator=generator) * scale).to(dtype)
    weight = (1 + torch.randn(dim, generator=generator)).to(dtype)
    return x, weight


@given(dim=st.integers(1, 48), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       eps=st.sampled_from([1e-5, 1e-6, 1.5625e-7]), seed=st.integers(0, 1000),
       scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_rmsnorm_equals_glm_and_cpm_ant(dim, dtype, eps, seed, scale):
    x, weight = inputs(dim, dtype, seed, scale)
    ours = RMSNorm(dim=dim, eps=eps).to(dtype)
    glm = GlmRMSNorm(dim, eps=eps).to(dtype)
    cpm = CpmAntLayerNorm(CpmAntConfig(hidden_size=dim, eps=eps)).to(dtype)
    with torch.no_grad():
        for norm in (ours, glm, cpm):
            norm.weight.copy_(weight)
        y = ours(x)
        assert y.dtype == dtype
        torch.testing.assert_close(y, glm(x), rtol=0, atol=0)
        torch.testing.assert_close(y, cpm(x), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_is_torch_layernorm_with_the_bias_flag(bias):
    norm = LayerNorm(dim=6, eps=1e-5, bias=bias)
    assert isinstance(norm, torch.nn.LayerNorm) and norm.eps == 1e-5
    assert (norm.bias is not None) == bias
    x = torch.randn(3, 6)
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
