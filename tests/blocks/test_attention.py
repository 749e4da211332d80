"""Grouped-query attention against GLM-4's GlmAttention (eager), with its partial rotary
embedding, for MHA, GQA and MQA; multi-head latent attention against DeepSeek-V3's; the SDPA
path against the path that returns probabilities; and decoding through a cache against one pass.
Each option against the eager attention of a model that uses it: score scale and soft-capping
(Gemma 2, Granite), q/k norms per head with a shared weight (Qwen3; Gemma 3 with 1 + w), with a
weight per head (Cohere, StableLM) and over the projection (OLMo 2), and clipped q, k, v (OLMo). Last, what a composed model hands SDPA: no mask where its
causal path or no mask suffices, one float mask per forward elsewhere, and the same outputs as the
explicit path for every position scheme, padding, window and cache."""

from contextlib import nullcontext
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers import (CohereConfig, Gemma2Config, Gemma3TextConfig, GlmConfig, GraniteConfig, Olmo2Config,
                          OlmoConfig, Qwen3Config, StableLmConfig)
from transformers.models.cohere.modeling_cohere import CohereAttention
from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention
from transformers.models.gemma3.modeling_gemma3 import Gemma3Attention
from transformers.models.glm import modeling_glm as glm
from transformers.models.granite.modeling_granite import GraniteAttention
from transformers.models.olmo.modeling_olmo import OlmoAttention
from transformers.models.olmo2.modeling_olmo2 import Olmo2Attention
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention
from transformers.models.stablelm.modeling_stablelm import StableLmAttention

from archcomposer import build_model
from archcomposer.blocks.attention import Attention, SoftCap
from archcomposer.blocks.norm import HeadLayerNorm, HeadNorm, OffsetRMSNorm, RMSNorm
from archcomposer.blocks.position import Rotary, YarnScaling, yarn_attention_factor
from archcomposer.blocks.projection import FusedProjection, SplitProjection
from archcomposer.cache import DynamicCache, StaticCache
from tests.strategies import ATTENTIONS, POSITIONS, spec_dicts

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


# ---------------------------------------------------------------------------------------------
# options, each against the transformers attention of a model that uses it (eager)


def rope_tables(pos, rotary_dim, theta, interleaved):
    """transformers' (cos, sin) [B, S, R] for ``pos`` [B, S]: halves (Llama) or pairs (Cohere)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim)
    freqs = pos[..., None].float() * inv_freq  # [B, S, R/2]
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def randomised(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return module.eval()


def gemma2(H, Hkv, Dh):
    config = Gemma2Config(hidden_size=H * Dh, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=Dh,
                          query_pre_attn_scalar=3 * Dh, attn_logit_softcapping=2.0, num_hidden_layers=1,
                          layer_types=["full_attention"])
    return Gemma2Attention(config, layer_idx=0), {"scale": (3 * Dh) ** -0.5, "softcap": 2.0}, None


def gemma3(H, Hkv, Dh):
    config = Gemma3TextConfig(hidden_size=H * Dh, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=Dh,
                              query_pre_attn_scalar=2 * Dh, num_hidden_layers=1, layer_types=["full_attention"])
    norm = (OffsetRMSNorm, {"eps": config.rms_norm_eps}, "head")
    return Gemma3Attention(config, layer_idx=0), {"scale": (2 * Dh) ** -0.5}, norm


def qwen3(H, Hkv, Dh):
    config = Qwen3Config(hidden_size=H * Dh, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=Dh)
    return Qwen3Attention(config, layer_idx=0), {}, (RMSNorm, {"eps": config.rms_norm_eps}, "head")


def olmo2(H, Hkv, Dh):
    config = Olmo2Config(hidden_size=H * Dh, num_attention_heads=H, num_key_value_heads=Hkv)
    norm = (RMSNorm, {"eps": config.rms_norm_eps}, "projection")
    return Olmo2Attention(config, layer_idx=0), {}, norm


def cohere(H, Hkv, Dh):
    config = CohereConfig(hidden_size=H * Dh, num_attention_heads=H, num_key_value_heads=Hkv, use_qk_norm=True)
    norm = (HeadLayerNorm, {"eps": config.layer_norm_eps, "bias": False}, "per_head")
    return CohereAttention(config, layer_idx=0), {}, norm


def stablelm(H, Hkv, Dh):
    config = StableLmConfig(hidden_size=H * Dh, num_attention_heads=H, num_key_value_heads=Hkv, qk_layernorm=True,
                            use_qkv_bias=True, partial_rotary_factor=0.5)
    norm = (HeadLayerNorm, {"eps": config.layer_norm_eps, "bias": False}, "per_head")
    return StableLmAttention(config, layer_idx=0), {}, norm


def olmo(H, Hkv, Dh):
    config = OlmoConfig(hidden_size=H * Dh, num_attention_heads=H, num_key_value_heads=Hkv, clip_qkv=0.3)
    return OlmoAttention(config, layer_idx=0), {"clip_qkv": 0.3}, None


def granite(H, Hkv, Dh):
    config = GraniteConfig(hidden_size=H * Dh, num_attention_heads=H, num_key_value_heads=Hkv,
                           attention_multiplier=0.7)
    return GraniteAttention(config, layer_idx=0), {"scale": 0.7}, None


#: name -> (reference, our options, our q/k norm (class, arguments, scope)) for a head layout, with
#: hidden_size H * Dh.
REFERENCES = {"gemma2": gemma2, "gemma3": gemma3, "qwen3": qwen3, "olmo2": olmo2, "cohere": cohere,
              "stablelm": stablelm, "olmo": olmo, "granite": granite}
ROTARY = {"cohere": {"interleaved": True}, "stablelm": {"fraction": 0.5}}


def qk_norms(reference, norm, H, Hkv, Dh):
    """Our q and k norms holding the reference's weights (StableLM's per-head norms stacked)."""
    if norm is None:
        return None, None
    cls, kwargs, scope = norm
    built = []
    for heads, theirs in ((H, "q"), (Hkv, "k")):
        if scope == "projection":
            module = HeadNorm(norm=cls(dim=heads * Dh, **kwargs), head_dim=heads * Dh)
        elif scope == "per_head":
            module = HeadNorm(norm=cls(dim=(heads, Dh), **kwargs), head_dim=Dh)
        else:
            module = HeadNorm(norm=cls(dim=Dh, **kwargs), head_dim=Dh)
        source = getattr(reference, f"{theirs}_norm", None) or getattr(reference, f"{theirs}_layernorm")
        weight = torch.stack([n.weight for n in source.norms]) if hasattr(source, "norms") else source.weight
        with torch.no_grad():
            module.norm.weight.copy_(weight)
        built.append(module)
    return built


@pytest.mark.parametrize("name", REFERENCES)
@given(layout=head_layouts(), length=st.integers(1, 7), seed=st.integers(0, 100))
@torch.no_grad()
def test_options_equal_the_models_that_use_them(name, layout, length, seed):
    H, Hkv, Dh = layout  # the width is H * Dh: some references derive head_dim from it
    torch.manual_seed(seed)
    reference, options, norm = REFERENCES[name](H, Hkv, Dh)
    reference.config._attn_implementation = "eager"
    randomised(reference)
    q_norm, k_norm = qk_norms(reference, norm, H, Hkv, Dh)
    r = reference
    hidden = r.q_proj.in_features
    ours = Attention(num_heads=H, num_kv_heads=Hkv, head_dim=Dh,
                     qkv=SplitProjection(q=r.q_proj, k=r.k_proj, v=r.v_proj), out=r.o_proj, q_norm=q_norm,
                     k_norm=k_norm, **options)
    x = torch.randn(2, length, hidden) * 2  # [B, S, H*Dh]
    pos = torch.arange(length)[None].expand(2, length)
    rotary = ROTARY.get(name, {})
    rotary_dim = int(Dh * rotary.get("fraction", 1.0))
    tables = rope_tables(pos, rotary_dim, 10000.0, rotary.get("interleaved", False))
    rotate = Rotary(head_dim=Dh, rotary_dim=rotary_dim, theta=10000.0,
                    interleaved=rotary.get("interleaved", False))(pos, pos).rotate
    bias = causal_bias(2, length)
    expected, expected_weights = reference(hidden_states=x, position_embeddings=tables, attention_mask=bias)[:2]
    y, weights = ours(x, rotate=rotate, scores_bias=bias, need_weights=True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    y_fast, no_weights = ours(x, rotate=rotate, scores_bias=bias)
    assert no_weights is None
    torch.testing.assert_close(y_fast, expected, rtol=1e-5, atol=1e-5)


def test_softcap_chooses_the_explicit_path_and_caps_the_scores():
    H, Dh, cap = 2, 4, 0.5
    capped = Attention(num_heads=H, num_kv_heads=H, head_dim=Dh, qkv=FusedProjection(
        proj=torch.nn.Linear(D, 3 * H * Dh), sizes=[H * Dh] * 3), out=torch.nn.Linear(H * Dh, D), softcap=cap)
    assert not capped.sdpa and isinstance(capped.cap, SoftCap)
    bias = causal_bias(1, 5)
    with torch.no_grad():
        capped.qkv.proj.weight.mul_(50)  # scores far beyond the cap
        _, weights = capped(torch.randn(1, 5, D), rotate=lambda t: t, scores_bias=bias, need_weights=True)
    logs = weights.log().masked_select(bias.expand_as(weights) == 0).view(-1)  # visible keys
    spread = (weights.amax(-1, keepdim=True).log() - weights.log()).masked_select(bias.expand_as(weights) == 0)
    assert torch.isfinite(logs).all() and spread.max() <= 2 * cap + 1e-5  # scores within (-cap, cap)


# ---------------------------------------------------------------------------------------------
# multi-head latent attention (DeepSeek-V2/V3)


def deepseek_attention(*, q_lora_rank, rope_parameters, interleave, H=3, seed=0):
    """transformers' DeepseekV3Attention (eager) with random weights, and ours with the same."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention

    from archcomposer.blocks.attention import LatentAttention, LowRank

    torch.manual_seed(seed)
    config = DeepseekV3Config(hidden_size=D, num_attention_heads=H, num_key_value_heads=H, q_lora_rank=q_lora_rank,
                              kv_lora_rank=6, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=5,
                              attention_bias=True, rope_interleave=interleave, rope_parameters=rope_parameters,
                              max_position_embeddings=64)
    config._attn_implementation = "eager"
    reference = randomised(DeepseekV3Attention(config, layer_idx=0))
    if q_lora_rank is None:
        q = reference.q_proj
    else:
        q = LowRank(down=reference.q_a_proj, norm=RMSNorm(dim=q_lora_rank, eps=1e-6), up=reference.q_b_proj)
        q.norm.weight = reference.q_a_layernorm.weight
    kv_norm = RMSNorm(dim=6, eps=1e-6)
    kv_norm.weight = reference.kv_a_layernorm.weight
    ours = LatentAttention(num_heads=H, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=5, kv_lora_rank=6, q=q,
                           kv_down=reference.kv_a_proj_with_mqa, kv_norm=kv_norm, kv_up=reference.kv_b_proj,
                           out=reference.o_proj, scale=reference.scaling)
    return config, reference, ours


YARN = {"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "original_max_position_embeddings": 8,
        "mscale": 0.707, "mscale_all_dim": 0.707}


@pytest.mark.parametrize("q_lora_rank", [None, 7])
@pytest.mark.parametrize("rope_parameters", [{"rope_type": "default", "rope_theta": 100.0}, YARN],
                         ids=["rope", "yarn"])
@pytest.mark.parametrize("interleave", [True, False])
@torch.no_grad()
def test_latent_attention_equals_deepseek_v3(q_lora_rank, rope_parameters, interleave):
    """Queries with and without the low-rank bottleneck, RoPE in pairs (``rope_interleave``) or
    halves, and YaRN with DeepSeek's mscale on the score scale, through the spec's own build."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding

    from archcomposer.spec import YarnScalingSpec, deepseek_yarn_mscale

    config, reference, ours = deepseek_attention(q_lora_rank=q_lora_rank, rope_parameters=rope_parameters,
                                                 interleave=interleave)
    yarn = rope_parameters["rope_type"] == "yarn"
    scaling = YarnScalingSpec(type="yarn", factor=4.0, original_max_positions=8, mscale=0.707,
                              mscale_all_dim=0.707) if yarn else None
    mscale = deepseek_yarn_mscale(scaling)
    assert ours.scale == reference.scaling == pytest.approx(8**-0.5 * (mscale if yarn else 1.0) ** 2)
    assert (mscale > 1.0) == yarn
    S = 12  # past the original 8 positions
    x, pos = torch.randn(2, S, D), torch.arange(S)[None].expand(2, S)
    bias = causal_bias(2, S)
    expected, expected_weights = reference(x, DeepseekV3RotaryEmbedding(config)(x, pos), bias)
    yarn_scaling = YarnScaling(factor=4.0, original_max_positions=8,
                               attention_factor=yarn_attention_factor(4.0, 0.707, 0.707)) if yarn else None
    rotate = Rotary(head_dim=4, rotary_dim=4, theta=100.0, interleaved=interleave, scaling=yarn_scaling)(pos, pos)
    y, weights = ours(x, rotate=rotate.rotate, scores_bias=bias, need_weights=True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x, rotate=rotate.rotate, scores_bias=bias)[0], expected, rtol=1e-5, atol=1e-6)


@given(q_lora_rank=st.sampled_from([None, 5]), length=st.integers(2, 7), first=st.integers(1, 6),
       seed=st.integers(0, 100))
@torch.no_grad()
def test_latent_attention_caches_the_latent_and_decodes_as_one_pass(q_lora_rank, length, first, seed):
    """The cache holds the normalised latent and the rotated shared key (what transformers caches),
    kv_lora_rank + qk_rope_head_dim values per token; decoding through it equals one pass."""
    first = min(first, length - 1)
    _, reference, ours = deepseek_attention(q_lora_rank=q_lora_rank, rope_parameters=None, interleave=True,
                                            seed=seed)
    rotary = Rotary(head_dim=4, rotary_dim=4, theta=100.0, interleaved=True)
    x = torch.randn(1, length, D)

    def run(start, end, cache):
        pos = torch.arange(start, end)[None]
        keys = len(cache.key_slots(end, end - start)) if cache is not None else end  # static: every slot
        return ours(x[:, start:end], rotate=rotary(pos, pos).rotate, cache=cache, start=start,
                    scores_bias=causal_bias(1, end - start, keys, start))[0]

    whole = run(0, length, None)
    for cache in (DynamicCache(), StaticCache(max_length=length + 2)):
        steps = torch.cat([run(0, first, cache)] + [run(t, t + 1, cache) for t in range(first, length)], dim=1)
        torch.testing.assert_close(steps, whole, rtol=1e-5, atol=1e-6)
    assert cache.keys[0].shape == (1, 1, length + 2, 6) and cache.values[0].shape == (1, 1, length + 2, 4)
    cache = DynamicCache()
    run(0, length, cache)
    assert cache.keys[0].shape == (1, 1, length, 6) and cache.values[0].shape == (1, 1, length, 4)
    latent = ours.kv_norm(ours.kv_down(x)[..., :6])  # [1, S, R]
    torch.testing.assert_close(cache.keys[0][:, 0], latent)


# ---------------------------------------------------------------------------------------------
# the masks the model hands to attention, and what SDPA receives


def sdpa_calls(model, *args, **kwargs) -> list[dict]:
    """The keyword arguments of every SDPA call of ``model(*args, **kwargs)``."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **options):
        calls.append({"q": q, "k": k, **options})
        return sdpa(q, k, v, **options)

    with patch("archcomposer.blocks.attention.F.scaled_dot_product_attention", spy):
        model(*args, **kwargs)
    return calls


@pytest.fixture(scope="module")
def tiny_glm():
    return build_model("tiny-glm-4", seed=0).eval()


@pytest.mark.parametrize("mask", [None, "ones"])
@torch.no_grad()
def test_an_unpadded_prompt_takes_sdpas_causal_path_and_a_decoding_step_no_mask(tiny_glm, mask):
    """No mask tensor at all: SDPA's own causal mask for the prompt, every cached key for one
    query; a mask of ones is read as no padding (outside torch.compile)."""
    ids = torch.randint(1, 256, (2, 6))
    extra = {"attention_mask": torch.ones(2, 6, dtype=torch.long)} if mask else {}
    prompt = sdpa_calls(tiny_glm, ids, **extra)
    assert prompt and all(c["attn_mask"] is None and c["is_causal"] for c in prompt)
    out = tiny_glm(ids, **extra)
    extra = {"attention_mask": torch.ones(2, 7, dtype=torch.long)} if mask else {}
    step = sdpa_calls(tiny_glm, ids[:, :1], past_key_values=out.past_key_values, **extra)
    assert step and all(c["attn_mask"] is None and not c["is_causal"] and c["k"].shape[-2] == 7 for c in step)


@torch.no_grad()
def test_padding_a_window_and_a_static_cache_pass_one_float_mask_over_batch_rows_only_where_needed(tiny_glm):
    """SDPA turns a boolean mask into a float one in every call; the model makes it once per
    forward, with one row for the batch unless padding differs between rows."""
    ids = torch.randint(1, 256, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    padded = sdpa_calls(tiny_glm, ids, attention_mask=mask)
    assert all(c["attn_mask"].dtype == torch.float32 and c["attn_mask"].shape == (2, 1, 6, 6)
               and not c["is_causal"] for c in padded)
    assert padded[0]["attn_mask"].data_ptr() == padded[-1]["attn_mask"].data_ptr()  # one per forward
    static = sdpa_calls(tiny_glm, ids, past_key_values=StaticCache(max_length=10))  # the prompt: causal still
    assert all(c["attn_mask"] is None and c["is_causal"] for c in static)
    cache = StaticCache(max_length=10)
    tiny_glm(ids, past_key_values=cache)
    step = sdpa_calls(tiny_glm, ids[:, :1], past_key_values=cache)  # unwritten slots hidden
    assert all(c["attn_mask"].shape == (1, 1, 1, 10) for c in step)
    gemma = build_model("tiny-gemma-3", seed=0).eval()  # sliding window of 8 on most layers
    windows = {c["attn_mask"].shape if c["attn_mask"] is not None else None
               for c in sdpa_calls(gemma, torch.randint(1, 256, (2, 12)))}
    assert windows == {None, (1, 1, 12, 12)}


@pytest.mark.parametrize("position", POSITIONS)
@given(data=st.data())
@torch.no_grad()
def test_sdpa_paths_equal_the_explicit_computation(position, data):
    """Whatever reaches SDPA (its causal path, a mask, a position bias: ALiBi, buckets with
    CPM-Ant's prompt and segments), with or without padding, windows and caches, it computes what
    the explicit path does (which returns the probabilities) over a mask made in full."""
    spec = data.draw(spec_dicts(positions=[position], attentions=ATTENTIONS), label="spec")
    model = build_model(spec, seed=data.draw(st.integers(0, 2**16), label="seed")).eval()
    B, S = data.draw(st.integers(1, 3), label="batch"), data.draw(st.integers(2, 9), label="length")
    ids = torch.randint(1, spec["vocab_size"], (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    if data.draw(st.booleans(), label="padded"):
        mask[1:, :data.draw(st.integers(1, S - 1), label="pads")] = 0
    first = data.draw(st.integers(1, S), label="prompt length")
    for make_cache in (lambda: None, DynamicCache, lambda: StaticCache(max_length=model.num_prepended + S + 2)):
        logits = {}
        for explicit in (False, True):
            cache = make_cache()
            steps = [(0, first)] + ([(first, S)] if cache is not None and first < S else [])
            with patch("archcomposer.model._causal_suffices", lambda *_: False) if explicit else nullcontext():
                parts = [model(ids[:, a:b], attention_mask=mask[:, :b], past_key_values=cache,
                               output_attentions=explicit, use_cache=cache is not None).logits for a, b in steps]
            logits[explicit] = torch.cat(parts, dim=1)
        real = mask[:, :logits[True].shape[1]].bool()
        torch.testing.assert_close(logits[False][real], logits[True][real], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_a_position_bias_without_padding_is_made_for_one_batch_row():
    """ALiBi over an unpadded batch: the rows' positions are the same, so is their bias; with
    padding each row gets its own."""
    bloom = build_model("tiny-bloom", seed=0).eval()
    ids = torch.randint(1, 256, (3, 6))
    assert {c["attn_mask"].shape for c in sdpa_calls(bloom, ids)} == {(1, 5, 6, 6)}
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[2, :3] = 0
    assert {c["attn_mask"].shape for c in sdpa_calls(bloom, ids, attention_mask=mask)} == {(3, 5, 6, 6)}
