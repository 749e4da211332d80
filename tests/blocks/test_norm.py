"""Norms against the references, in fp32 and bf16: RMSNorm is GLM-4's GlmRMSNorm and CPM-Ant's
CpmAntLayerNorm, OffsetRMSNorm Gemma's GemmaRMSNorm, LayerNorm torch's nn.LayerNorm and
ParameterFreeLayerNorm OLMo's OlmoLayerNorm, bit for bit; HeadLayerNorm is Cohere's
CohereLayerNorm((H, Dh)) and StableLM's per-head LayerNorms. HeadNorm applies a norm per head (Qwen3's
q/k norm) or over the whole projection (OLMo 2's)."""

import pytest
import torch
from einops import rearrange
from hypothesis import given
from hypothesis import strategies as st
from transformers import CpmAntConfig
from transformers.models.cohere.modeling_cohere import CohereLayerNorm
from transformers.models.cpmant.modeling_cpmant import CpmAntLayerNorm
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.glm.modeling_glm import GlmRMSNorm
from transformers.models.olmo.modeling_olmo import OlmoLayerNorm
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
from transformers.models.stablelm.modeling_stablelm import StableLmLayerNormPerHead

from archcomposer.blocks.norm import (HeadLayerNorm, HeadNorm, LayerNorm, OffsetRMSNorm, ParameterFreeLayerNorm,
                                      ParameterFreeRMSNorm, RMSNorm)

DTYPES = st.sampled_from([torch.float32, torch.bfloat16])
EPS = st.sampled_from([1e-5, 1e-6, 1.5625e-7])
SCALES = st.sampled_from([1e-3, 1.0, 50.0])


def inputs(shape, dtype, seed, scale, weight_shape=None):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=generator) * scale).to(dtype)
    weight_shape = weight_shape or shape[-1:]
    weight = (1 + torch.randn(weight_shape, generator=generator)).to(dtype)
    bias = torch.randn(weight_shape, generator=generator).to(dtype)
    return x, weight, bias


def assign(norm, weight, bias=None):
    with torch.no_grad():
        norm.weight.copy_(weight)
        if bias is not None:
            norm.bias.copy_(bias)
    return norm


@given(dim=st.integers(1, 48), dtype=DTYPES, eps=EPS, seed=st.integers(0, 1000), scale=SCALES)
@torch.no_grad()
def test_rmsnorm_equals_glm_and_cpm_ant(dim, dtype, eps, seed, scale):
    x, weight, _ = inputs((2, 5, dim), dtype, seed, scale)
    ours = assign(RMSNorm(dim=dim, eps=eps).to(dtype), weight)
    glm = assign(GlmRMSNorm(dim, eps=eps).to(dtype), weight)
    cpm = assign(CpmAntLayerNorm(CpmAntConfig(hidden_size=dim, eps=eps)).to(dtype), weight)
    y = ours(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, glm(x), rtol=0, atol=0)
    torch.testing.assert_close(y, cpm(x), rtol=0, atol=0)


@given(dim=st.integers(1, 48), dtype=DTYPES, eps=EPS, seed=st.integers(0, 1000), scale=SCALES)
@torch.no_grad()
def test_offset_rmsnorm_equals_gemma(dim, dtype, eps, seed, scale):
    x, weight, _ = inputs((2, 5, dim), dtype, seed, scale)
    weight = weight - 1  # Gemma stores w for a scale of 1 + w
    ours = assign(OffsetRMSNorm(dim=dim, eps=eps).to(dtype), weight)
    y = ours(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, assign(GemmaRMSNorm(dim, eps=eps).to(dtype), weight)(x), rtol=0, atol=0)


@given(dtype=DTYPES, eps=EPS, seed=st.integers(0, 1000), scale=SCALES)
@torch.no_grad()
def test_parameter_free_rmsnorm_is_rmsnorm_with_unit_scale(dtype, eps, seed, scale):
    x, _, _ = inputs((2, 5, 12), dtype, seed, scale)
    ours = ParameterFreeRMSNorm(eps=eps)
    assert not list(ours.parameters())
    torch.testing.assert_close(ours(x), RMSNorm(dim=12, eps=eps).to(dtype)(x), rtol=0, atol=0)


@given(dim=st.integers(1, 48), dtype=DTYPES, bias=st.booleans(), eps=EPS, seed=st.integers(0, 1000), scale=SCALES)
@torch.no_grad()
def test_layernorm_equals_torch_layernorm(dim, dtype, bias, eps, seed, scale):
    x, weight, shift = inputs((2, 5, dim), dtype, seed, scale)
    ours = assign(LayerNorm(dim=dim, eps=eps, bias=bias).to(dtype), weight, shift if bias else None)
    assert (ours.bias is not None) == bias
    theirs = assign(torch.nn.LayerNorm(dim, eps=eps, bias=bias).to(dtype), weight, shift if bias else None)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@given(dim=st.integers(2, 48), dtype=DTYPES, seed=st.integers(0, 1000), scale=SCALES)
@torch.no_grad()
def test_parameter_free_layernorm_equals_olmo(dim, dtype, seed, scale):
    x, _, _ = inputs((2, 5, dim), dtype, seed, scale)
    ours = ParameterFreeLayerNorm(eps=1e-5)
    assert not list(ours.parameters())
    torch.testing.assert_close(ours(x), OlmoLayerNorm(dim)(x), rtol=0, atol=0)


@st.composite
def head_shapes(draw):
    return draw(st.integers(1, 4)), draw(st.integers(2, 16))


TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2}}


@given(shape=head_shapes(), dtype=DTYPES, eps=EPS, seed=st.integers(0, 1000), scale=SCALES)
@torch.no_grad()
def test_head_layernorm_equals_cohere(shape, dtype, eps, seed, scale):
    """Cohere's q/k norm: a weight per head, no bias, statistics in fp32 (torch's kernel here, the
    formula written out there: equal up to rounding)."""
    H, Dh = shape
    x, weight, _ = inputs((2, 5, H, Dh), dtype, seed, scale, weight_shape=(H, Dh))
    ours = assign(HeadLayerNorm(dim=(H, Dh), eps=eps, bias=False).to(dtype), weight)
    theirs = assign(CohereLayerNorm((H, Dh), eps=eps).to(dtype), weight)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    y = ours(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, theirs(x), **TOLERANCE[dtype])


@given(shape=head_shapes(), bias=st.booleans(), eps=EPS, seed=st.integers(0, 1000), scale=SCALES)
@torch.no_grad()
def test_head_layernorm_equals_stablelm_per_head_layernorms_stacked(shape, bias, eps, seed, scale):
    H, Dh = shape
    x, weight, shift = inputs((2, 5, H, Dh), torch.float32, seed, scale, weight_shape=(H, Dh))
    theirs = StableLmLayerNormPerHead(Dh, H, eps=eps, bias=bias)
    for h, norm in enumerate(theirs.norms):
        assign(norm, weight[h], shift[h] if bias else None)
    ours = assign(HeadLayerNorm(dim=(H, Dh), eps=eps, bias=bias), weight, shift if bias else None)
    expected = theirs(x.transpose(1, 2)).transpose(1, 2)  # theirs takes [B, H, S, Dh]
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


@given(shape=head_shapes(), seed=st.integers(0, 1000))
@torch.no_grad()
def test_rmsnorm_with_a_weight_per_head(shape, seed):
    H, Dh = shape
    x, weight, _ = inputs((2, 5, H, Dh), torch.float32, seed, 1.0, weight_shape=(H, Dh))
    y = assign(RMSNorm(dim=(H, Dh), eps=1e-6), weight)(x)
    for h in range(H):
        torch.testing.assert_close(y[:, :, h], assign(RMSNorm(dim=Dh, eps=1e-6), weight[h])(x[:, :, h]),
                                   rtol=0, atol=0)


@given(shape=head_shapes(), seed=st.integers(0, 1000))
@torch.no_grad()
def test_head_norm_normalises_each_head_like_qwen3(shape, seed):
    H, Dh = shape
    x, weight, _ = inputs((2, 5, H * Dh), torch.float32, seed, 3.0, weight_shape=(Dh,))
    ours = HeadNorm(norm=assign(RMSNorm(dim=Dh, eps=1e-6), weight), head_dim=Dh)
    theirs = assign(Qwen3RMSNorm(Dh, eps=1e-6), weight)
    expected = theirs(x.view(2, 5, H, Dh)).reshape(2, 5, H * Dh)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)
    assert list(ours.state_dict()) == ["norm.weight"]


@given(shape=head_shapes(), seed=st.integers(0, 1000))
@torch.no_grad()
def test_head_norm_over_the_whole_projection_is_olmo2(shape, seed):
    H, Dh = shape
    x, weight, _ = inputs((2, 5, H * Dh), torch.float32, seed, 3.0)
    ours = HeadNorm(norm=assign(RMSNorm(dim=H * Dh, eps=1e-6), weight), head_dim=H * Dh)
    torch.testing.assert_close(ours(x), assign(Olmo2RMSNorm(H * Dh, eps=1e-6), weight)(x), rtol=0, atol=0)


@torch.no_grad()
def test_head_norm_with_a_weight_per_head_scales_each_head_by_its_own():
    H, Dh = 3, 4
    weight = torch.arange(1.0, 1.0 + H)[:, None].expand(H, Dh)
    ours = HeadNorm(norm=assign(HeadLayerNorm(dim=(H, Dh), eps=1e-5, bias=False), weight), head_dim=Dh)
    x = torch.randn(2, 5, H * Dh)
    unit = ParameterFreeLayerNorm(eps=1e-5)(rearrange(x, "b s (h d) -> b s h d", d=Dh))
    torch.testing.assert_close(rearrange(ours(x), "b s (h d) -> b s h d", d=Dh), unit * weight, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("norm", "weight", "bias"), [
    (RMSNorm(dim=(2, 3), eps=1e-6), 1.0, None),
    (OffsetRMSNorm(dim=(2, 3), eps=1e-6), 0.0, None),
    (LayerNorm(dim=3, eps=1e-5, bias=True), 1.0, 0.0),
    (HeadLayerNorm(dim=(2, 3), eps=1e-5, bias=True), 1.0, 0.0),
    (HeadLayerNorm(dim=(2, 3), eps=1e-5, bias=False), 1.0, None),
], ids=lambda v: type(v).__name__ if isinstance(v, torch.nn.Module) else None)
@torch.no_grad()
def test_init_weights_gives_the_identity_scale(norm, weight, bias):
    for p in norm.parameters():
        p.fill_(7.0)
    norm.init_weights(0.02)
    assert torch.all(norm.weight == weight)
    assert getattr(norm, "bias", None) is None if bias is None else torch.all(norm.bias == bias)
