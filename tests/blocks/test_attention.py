"""Grouped-query attention against GLM-4's GlmAttention (eager), with its partial rotary
embedding, for MHA, GQA and MQA; the SDPA path against the path that returns probabilities; and
decoding through a cache against one pass."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import GlmConfig
from transformers.models.glm import modeling_glm as glm

from archcomposer.blocks.attention import Attention
from archcomposer.blocks.position import Rotary
from archcomposer.blocks.projection import FusedProjection, SplitProjection
from archcomposer.cache import DynamicCache

D = 16


@st.composite
def head_layouts(draw):
    num_kv_heads = draw(st.integers(1, 3))
    return num_kv_heads * draw(st.integers(1, 3)), num_kv_heads, draw(st.sampled_from([4, 8]))


def causal_bias(B, S, K=None, start=0, *, window=None, first=0):
    """The mask of queries at slots ``start...`` over K keys at slots ``first...``, [B, 1, S, K]."""
    K = K or S
    query, key = (start + torch.arange(S))[:, None], (first + torch.arange(K))[None, :]
    visible = (key <= query) & (key > query - window if window else True)
    return torch.zeros(B, 1, S, K).masked_fill(~visible, torch.finfo(torch.float32).min)


def attention_like(reference, H, Hkv, Dh, fused):
    q, k, v, o = reference.q_proj, reference.k_proj, reference.v_proj, reference.o_proj
    if fused:
        proj = torch.nn.Linear(D, (H + 2 * Hkv) * Dh, bias=True)
        with torch.no_grad():
            proj.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            proj.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        qkv = FusedProjection(proj=proj, sizes=[H * Dh, Hkv * Dh, Hkv * Dh])
    else:
        qkv = SplitProjection(q=q, k=k, v=v)
    return Attention(num_heads=H, num_kv_heads=Hkv, head_dim=Dh, qkv=qkv, out=o)


@given(layout=head_layouts(), fused=st.booleans(), length=st.integers(1, 7), seed=st.integers(0, 100))
@torch.no_grad()
def test_attention_equals_glm(layout, fused, length, seed):
    H, Hkv, Dh = layout
    torch.manual_seed(seed)
    config = GlmConfig(hidden_size=D, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=Dh,
                       attention_bias=True)
    config._attn_implementation = "eager"
    reference = glm.GlmAttention(config, layer_idx=0).eval()
    for proj in (reference.q_proj, reference.k_proj, reference.v_proj):
        proj.bias.normal_()
    ours = attention_like(reference, H, Hkv, Dh, fused)
    x = torch.randn(2, length, D)
    pos = torch.arange(length)[None].expand(2, length)
    bias = causal_bias(2, length)
    expected, expected_weights = reference(x, glm.GlmRotaryEmbedding(config)(x, pos), bias)
    rotate = Rotary(head_dim=Dh, rotary_dim=Dh // 2, theta=config.rope_parameters["rope_theta"],
                    interleaved=True)(pos, pos).rotate
    y, weights = ours(x, rotate=rotate, scores_bias=bias, need_weights=True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    y_sdpa, no_weights = ours(x, rotate=rotate, scores_bias=bias)
    assert no_weights is None
    torch.testing.assert_close(y_sdpa, expected, rtol=1e-5, atol=1e-6)


@given(layout=head_layouts(), length=st.integers(2, 7), first=st.integers(1, 6), seed=st.integers(0, 100),
       window=st.one_of(st.none(), st.integers(1, 4)))
@torch.no_grad()
def test_decoding_through_a_cache_equals_one_pass(layout, length, first, seed, window):
    """With a sliding window the cache returns only the keys it kept and this step's, at the
    slots ``key_slots`` names."""
    H, Hkv, Dh = layout
    first = min(first, length - 1)
    torch.manual_seed(seed)
    ours = Attention(num_heads=H, num_kv_heads=Hkv, head_dim=Dh, out=torch.nn.Linear(H * Dh, D),
                     qkv=SplitProjection(q=torch.nn.Linear(D, H * Dh), k=torch.nn.Linear(D, Hkv * Dh),
                                         v=torch.nn.Linear(D, Hkv * Dh)), sliding_window=window)
    rotary = Rotary(head_dim=Dh, rotary_dim=Dh, theta=100.0, interleaved=False)
    x = torch.randn(1, length, D)

    def run(start, end, cache):
        pos = torch.arange(start, end)[None]
        slots = cache.key_slots(end, end - start, window) if cache is not None else range(end)
        return ours(x[:, start:end], rotate=rotary(pos, pos).rotate, cache=cache, start=start,
                    scores_bias=causal_bias(1, end - start, len(slots), start, window=window, first=slots.start))[0]

    whole = run(0, length, None)
    cache = DynamicCache()
    steps = torch.cat([run(0, first, cache)] + [run(t, t + 1, cache) for t in range(first, length)], dim=1)
    torch.testing.assert_close(steps, whole, rtol=1e-5, atol=1e-6)
