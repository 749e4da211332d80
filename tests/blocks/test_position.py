"""Position schemes against the reference implementations in transformers: BLOOM's ALiBi slopes
and tensor, MPT's (any alibi_bias_max) and Falcon's (scaled by the attention's scale), T5's and
CPM-Ant's relative-position buckets and biases, GLM-4's interleaved partial rotary embedding and
Seed-OSS's rotate-half one, and each RoPE frequency scaling (linear, dynamic NTK, YaRN, LongRoPE,
Llama 3) against transformers' ``ROPE_INIT_FUNCTIONS`` as its rotary embeddings use them (Llama's
for rotated halves, GLM's for interleaved pairs)."""

import math
from unittest.mock import patch

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import CpmAntConfig, GlmConfig, LlamaConfig, SeedOssConfig, T5Config
from transformers.models.bloom.modeling_bloom import _get_alibi_slopes, build_alibi_tensor
from transformers.models.cpmant.modeling_cpmant import CpmAntSegmentPositionEmbedding
from transformers.models.falcon import modeling_falcon as falcon
from transformers.models.glm import modeling_glm as glm
from transformers.models.llama import modeling_llama as llama
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor
from transformers.models.seed_oss import modeling_seed_oss as seed_oss
from transformers.models.t5.modeling_t5 import T5Attention

from archcomposer.blocks import position
from archcomposer.blocks.position import (ALiBi, BucketBias, DynamicNTKScaling, LinearScaling, Llama3Scaling,
                                          LongRopeScaling, NoPosition, Rotary, YarnScaling, alibi_slopes,
                                          longrope_attention_factor, relative_position_bucket, yarn_attention_factor)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---------------------------------------------------------------------------------------------
# ALiBi


@pytest.mark.parametrize("num_heads", range(1, 41))
def test_alibi_slopes_equal_bloom(num_heads):
    torch.testing.assert_close(alibi_slopes(num_heads), _get_alibi_slopes(num_heads, torch.device("cpu")),
                               rtol=0, atol=0)


@given(num_heads=st.integers(1, 12), lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3))
def test_alibi_bias_equals_bloom_at_real_tokens(num_heads, lengths):
    S = max(lengths)
    mask = torch.stack([(torch.arange(S) >= S - n).long() for n in lengths])  # left padding, [B, S]
    key_pos = (mask.cumsum(-1) - 1).clamp(min=0)  # what the model passes
    bias = ALiBi(num_heads=num_heads)(key_pos[:, -1:], key_pos).bias  # [B, H, 1, S]
    reference = build_alibi_tensor(mask, num_heads, torch.float32).view(len(lengths), num_heads, 1, S)
    real = mask.bool()[:, None, None, :].expand_as(bias)
    torch.testing.assert_close(bias[real], reference[real], rtol=0, atol=0)


MAX_BIASES = st.sampled_from([8.0, 4.0, 16.0, 12.5, 1.0])


@given(num_heads=st.integers(1, 40), max_bias=MAX_BIASES)
def test_alibi_slopes_equal_mpt(num_heads, max_bias):
    """MPT builds the slopes for the next power of two and interleaves them; BLOOM's construction,
    generalised to any max_bias, gives the same slopes (equal up to rounding: 1 / 2**x there)."""
    mpt = build_mpt_alibi_tensor(num_heads, 2, alibi_bias_max=max_bias)  # [H, 1, 2]: positions -1, 0
    torch.testing.assert_close(alibi_slopes(num_heads, max_bias), -mpt[:, 0, 0], rtol=1e-6, atol=0)


@given(num_heads=st.integers(1, 12), max_bias=MAX_BIASES, length=st.integers(1, 9))
def test_alibi_bias_equals_mpt_up_to_a_constant_per_query(num_heads, max_bias, length):
    """MPT's bias is slope * (key position - last position): ours less the constant softmax ignores."""
    pos = torch.arange(length)[None]
    bias = ALiBi(num_heads=num_heads, max_bias=max_bias)(pos[:, -1:], pos).bias[0]  # [H, 1, S]
    torch.testing.assert_close(bias - bias[..., -1:], build_mpt_alibi_tensor(num_heads, length, max_bias),
                               rtol=1e-6, atol=1e-6)


@given(num_heads=st.integers(1, 8), head_dim=st.integers(1, 64), lengths=st.lists(st.integers(1, 9), min_size=1,
                                                                                    max_size=3))
def test_scaled_alibi_equals_falcon(num_heads, head_dim, lengths):
    """Falcon adds its ALiBi before scaling the scores, so its model puts alibi / sqrt(head_dim)
    into the SDPA mask, as ``scale`` does here. (Falcon rounds the bias to bf16, exact for up to 8
    heads at these positions; transformers' eager Falcon path adds the bias a second time.)"""
    S = max(lengths)
    mask = torch.stack([(torch.arange(S) >= S - n).long() for n in lengths])  # left padding, [B, S]
    key_pos = (mask.cumsum(-1) - 1).clamp(min=0)
    bias = ALiBi(num_heads=num_heads, scale=head_dim**-0.5)(key_pos[:, -1:], key_pos).bias  # [B, H, 1, S]
    alibi = falcon.build_alibi_tensor(mask, num_heads, torch.float32).view(len(lengths), num_heads, 1, S)
    reference = alibi / math.sqrt(head_dim)  # as FalconModel.forward builds its mask
    real = mask.bool()[:, None, None, :].expand_as(bias)
    torch.testing.assert_close(bias[real], reference[real], rtol=1e-6, atol=1e-7)


@given(num_heads=st.integers(1, 40), head_dim=st.integers(1, 128),
       lengths=st.lists(st.integers(1, 700), min_size=1, max_size=3))
def test_bfloat16_scaled_alibi_equals_falcon_for_any_heads_and_positions(num_heads, head_dim, lengths):
    """With ``bias_dtype`` bfloat16 the bias is Falcon's for any head count (falcon-rw-1b's 32 have
    slopes bfloat16 does not hold) and position (past 256 they round)."""
    S = max(lengths)
    mask = torch.stack([(torch.arange(S) >= S - n).long() for n in lengths])  # left padding, [B, S]
    key_pos = (mask.cumsum(-1) - 1).clamp(min=0)
    alibi = ALiBi(num_heads=num_heads, scale=head_dim**-0.5, bias_dtype=torch.bfloat16)
    bias = alibi(key_pos[:, -1:], key_pos).bias  # [B, H, 1, S]
    reference = falcon.build_alibi_tensor(mask, num_heads, torch.float32).view(len(lengths), num_heads, 1, S)
    real = mask.bool()[:, None, None, :].expand_as(bias)
    torch.testing.assert_close(bias[real], (reference / math.sqrt(head_dim))[real], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# relative-position buckets


@st.composite
def bucket_settings(draw, bidirectional=None):
    bidirectional = draw(st.booleans()) if bidirectional is None else bidirectional
    exact = draw(st.integers(1, 16))
    num_buckets = exact * (4 if bidirectional else 2) + draw(st.integers(0, 3 if bidirectional else 1))
    return {"num_buckets": num_buckets, "max_distance": exact + draw(st.integers(1, 300)),
            "bidirectional": bidirectional}


@given(settings=bucket_settings())
def test_relative_position_bucket_equals_t5(settings):
    relative = torch.arange(-3 * settings["max_distance"], 3 * settings["max_distance"] + 1)[None, :]
    ours = relative_position_bucket(relative, **settings)
    theirs = T5Attention._relative_position_bucket(relative, **settings)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@given(settings=bucket_settings(bidirectional=True))
def test_relative_position_bucket_equals_cpm_ant(settings):
    relative = torch.arange(-3 * settings["max_distance"], 3 * settings["max_distance"] + 1, dtype=torch.int32)
    ours = relative_position_bucket(relative, **settings)
    theirs = CpmAntSegmentPositionEmbedding._position_bucket(None, relative, num_buckets=settings["num_buckets"],
                                                              max_distance=settings["max_distance"])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@given(settings=bucket_settings(), heads=st.integers(1, 4), q=st.integers(1, 6), past=st.integers(0, 40))
def test_bucket_bias_equals_t5_compute_bias(settings, heads, q, past):
    config = T5Config(num_heads=heads, relative_attention_num_buckets=settings["num_buckets"],
                      relative_attention_max_distance=settings["max_distance"],
                      is_decoder=not settings["bidirectional"], d_model=8, d_kv=2)
    reference = T5Attention(config, has_relative_attention_bias=True, layer_idx=0)
    ours = BucketBias(num_heads=heads, **settings)
    with torch.no_grad():
        ours.weight.copy_(randn(settings["num_buckets"], heads))
        reference.relative_attention_bias.weight.copy_(ours.weight)
    K = past + q
    query_pos = (torch.arange(q) + past)[None]  # decoding q tokens after `past` cached ones
    bias = ours(query_pos, torch.arange(K)[None]).bias  # [1, H, q, K]
    torch.testing.assert_close(bias, reference.compute_bias(q, K, past_seen_tokens=past), rtol=0, atol=0)


@given(settings=bucket_settings(bidirectional=True), heads=st.integers(1, 4), segments=st.integers(1, 4),
       data=st.data())
def test_bucket_bias_with_segments_equals_cpm_ant(settings, heads, segments, data):
    config = CpmAntConfig(num_attention_heads=heads, position_bias_num_buckets=settings["num_buckets"],
                          position_bias_max_distance=settings["max_distance"], segment_types=segments)
    reference = CpmAntSegmentPositionEmbedding(config)
    ours = BucketBias(num_heads=heads, num_segments=segments, **settings)
    with torch.no_grad():
        ours.weight.copy_(randn(segments * segments + settings["num_buckets"], heads))
        reference.relative_attention_bias.copy_(ours.weight)
    B, S = 2, data.draw(st.integers(1, 8), label="length")
    seg = torch.tensor(data.draw(st.lists(st.integers(0, segments - 1), min_size=B * S, max_size=B * S))).view(B, S)
    pos = torch.arange(S).expand(B, S)
    bias = ours(pos, pos, seg, seg).bias  # [B, H, S, S]
    torch.testing.assert_close(bias, reference(pos.int(), pos.int(), seg.int(), seg.int()), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# rotary embeddings


@st.composite
def rotary_settings(draw):
    head_dim = draw(st.sampled_from([4, 8, 16, 24, 32]))
    fraction = draw(st.sampled_from([k / 8 for k in range(1, 9) if head_dim * k % 16 == 0]))
    return head_dim, fraction, draw(st.sampled_from([100.0, 10000.0, 1e6]))


def positions(draw_list):
    return torch.tensor(draw_list)[None]  # [1, S]


@given(settings=rotary_settings(), pos=st.lists(st.integers(0, 4000), min_size=1, max_size=6),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_interleaved_partial_rotary_equals_glm(settings, pos, dtype):
    head_dim, fraction, theta = settings
    config = GlmConfig(hidden_size=64, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=8192,
                       rope_parameters={"rope_type": "default", "rope_theta": theta,
                                        "partial_rotary_factor": fraction})
    q, k = randn(1, 3, len(pos), head_dim, seed=1, dtype=dtype), randn(1, 2, len(pos), head_dim, seed=2, dtype=dtype)
    cos, sin = glm.GlmRotaryEmbedding(config)(q, positions(pos))
    q_ref, k_ref = glm.apply_rotary_pos_emb(q, k, cos, sin)
    rotate = Rotary(head_dim=head_dim, rotary_dim=int(head_dim * fraction), theta=theta,
                    interleaved=True)(positions(pos), positions(pos)).rotate
    torch.testing.assert_close(rotate(q), q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rotate(k), k_ref, rtol=1e-6, atol=1e-6)


@given(settings=rotary_settings(), pos=st.lists(st.integers(0, 4000), min_size=1, max_size=6),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_rotate_half_rotary_equals_seed_oss_on_the_rotated_channels(settings, pos, dtype):
    """Full width (fraction 1) is Seed-OSS; a partial width applies the same rotation to the
    first channels and passes the others through (GPT-NeoX, Phi)."""
    head_dim, fraction, theta = settings
    width = int(head_dim * fraction)
    config = SeedOssConfig(hidden_size=64, num_attention_heads=4, head_dim=width, max_position_embeddings=8192,
                           rope_parameters={"rope_type": "default", "rope_theta": theta})
    q, k = randn(1, 3, len(pos), head_dim, seed=1, dtype=dtype), randn(1, 2, len(pos), head_dim, seed=2, dtype=dtype)
    cos, sin = seed_oss.SeedOssRotaryEmbedding(config)(q, positions(pos))
    q_rot, k_rot = seed_oss.apply_rotary_pos_emb(q[..., :width], k[..., :width], cos, sin)
    rotate = Rotary(head_dim=head_dim, rotary_dim=width, theta=theta,
                    interleaved=False)(positions(pos), positions(pos)).rotate
    torch.testing.assert_close(rotate(q), torch.cat([q_rot, q[..., width:]], -1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rotate(k), torch.cat([k_rot, k[..., width:]], -1), rtol=1e-6, atol=1e-6)


@given(interleaved=st.booleans(), shift=st.integers(0, 100))
def test_rotary_scores_depend_only_on_relative_position(interleaved, shift):
    rotary = Rotary(head_dim=8, rotary_dim=8, theta=100.0, interleaved=interleaved)
    q, k = randn(1, 1, 1, 8, seed=1), randn(1, 1, 1, 8, seed=2)

    def score(q_pos, k_pos):
        return (rotary(torch.tensor([[q_pos]]), None).rotate(q) * rotary(torch.tensor([[k_pos]]), None).rotate(k)).sum()

    torch.testing.assert_close(score(7 + shift, 3 + shift), score(7, 3), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 5), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# rotary frequency scalings


@st.composite
def scaled_rope(draw, rope_type: str, *, rotary_dim: int, max_positions: int, original: int | None = None):
    """A transformers ``rope_parameters`` entry of ``rope_type`` (without ``rope_theta``) and our
    scaling with the same meaning, its defaults resolved by our own functions. ``original``: the
    original_max_position_embeddings (drawn if None)."""
    factor = draw(st.sampled_from([1.0, 2.0, 2.5, 4.0, 8.0, 16.0]))
    if original is None:
        original = draw(st.sampled_from([max_positions // 4, max_positions // 2, max_positions]))
    if rope_type == "linear":
        return {"factor": factor}, LinearScaling(factor=factor)
    if rope_type == "dynamic":
        return {"factor": factor}, DynamicNTKScaling(factor=factor, original_max_positions=max_positions)
    if rope_type == "yarn":
        hf = {"factor": factor, "original_max_position_embeddings": original,
              "beta_fast": draw(st.sampled_from([32.0, 16.0, 4.0])), "beta_slow": draw(st.sampled_from([1.0, 2.0])),
              "truncate": draw(st.booleans())}
        mscales = draw(st.sampled_from([None, (1.0, 1.0), (0.707, 1.0), (1.0, 0.0)]))
        if mscales:
            hf["mscale"], hf["mscale_all_dim"] = mscales
        if draw(st.booleans()):
            hf["attention_factor"] = draw(st.sampled_from([0.9, 1.2]))
        attention_factor = hf.get("attention_factor") or yarn_attention_factor(factor, *(mscales or ()))
        return hf, YarnScaling(factor=factor, original_max_positions=original, attention_factor=attention_factor,
                               beta_fast=hf["beta_fast"], beta_slow=hf["beta_slow"], truncate=hf["truncate"])
    if rope_type == "longrope":
        factors = st.lists(st.floats(1.0, 8.0, width=32), min_size=rotary_dim // 2, max_size=rotary_dim // 2)
        hf = {"short_factor": draw(factors), "long_factor": draw(factors), "original_max_position_embeddings": original}
        if draw(st.booleans()):
            hf["factor"] = factor
        if draw(st.booleans()):
            hf["attention_factor"] = draw(st.sampled_from([0.9, 1.2]))
        attention_factor = hf.get("attention_factor") or longrope_attention_factor(
            hf.get("factor", max_positions / original), original)
        return hf, LongRopeScaling(short_factor=tuple(hf["short_factor"]), long_factor=tuple(hf["long_factor"]),
                                   original_max_positions=original, attention_factor=attention_factor)
    low = draw(st.sampled_from([1.0, 2.0]))
    hf = {"factor": factor, "low_freq_factor": low, "high_freq_factor": low + draw(st.sampled_from([1.0, 3.0])),
          "original_max_position_embeddings": original}
    return hf, Llama3Scaling(factor=factor, low_freq_factor=low, high_freq_factor=hf["high_freq_factor"],
                             original_max_positions=original)


SCALED_ROPE_TYPES = ["linear", "dynamic", "yarn", "longrope", "llama3"]


def reference_rotary(rope: dict, *, head_dim: int, fraction: float, interleaved: bool, max_positions: int):
    """transformers' rotary embedding for ``rope`` and a function rotating q and k with it (only the
    first ``fraction`` of each head: the rest passes through)."""
    kwargs = dict(hidden_size=64, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=max_positions,
                  rope_parameters={**rope, "partial_rotary_factor": fraction})
    if interleaved:
        embedding, apply = glm.GlmRotaryEmbedding(GlmConfig(**kwargs)), glm.apply_rotary_pos_emb
    else:
        embedding, apply = llama.LlamaRotaryEmbedding(LlamaConfig(**kwargs)), llama.apply_rotary_pos_emb
    width = int(head_dim * fraction)

    def rotate(q, k, position_ids):
        cos, sin = embedding(q, position_ids)
        if interleaved:  # GLM's apply rotates the width of cos itself
            return apply(q, k, cos, sin)
        q_rot, k_rot = apply(q[..., :width], k[..., :width], cos, sin)
        return torch.cat([q_rot, q[..., width:]], -1), torch.cat([k_rot, k[..., width:]], -1)

    return rotate


@pytest.mark.parametrize("rope_type", SCALED_ROPE_TYPES)
@given(settings=rotary_settings(), interleaved=st.booleans(), max_positions=st.sampled_from([64, 512, 4096]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), data=st.data())
def test_scaled_rotary_equals_transformers(rope_type, settings, interleaved, max_positions, dtype, data):
    """Positions within and well past the original length (dynamic NTK and LongRoPE change their
    frequencies there), over a whole head or part of it, rotating halves or pairs."""
    head_dim, fraction, theta = settings
    width = int(head_dim * fraction)
    if rope_type == "dynamic" and width < 4:
        width, fraction = head_dim, 1.0  # its exponent R / (R - 2) needs R >= 4
    hf, scaling = data.draw(scaled_rope(rope_type, rotary_dim=width, max_positions=max_positions), label="scaling")
    reach = data.draw(st.sampled_from([max_positions // 2, max_positions, 4 * max_positions]), label="reach")
    pos = data.draw(st.lists(st.integers(0, reach - 1), min_size=1, max_size=6), label="positions")
    rotate_ref = reference_rotary({"rope_type": rope_type, "rope_theta": theta, **hf}, head_dim=head_dim,
                                  fraction=fraction, interleaved=interleaved, max_positions=max_positions)
    q, k = randn(1, 3, len(pos), head_dim, seed=1, dtype=dtype), randn(1, 2, len(pos), head_dim, seed=2, dtype=dtype)
    q_ref, k_ref = rotate_ref(q, k, positions(pos))
    rotate = Rotary(head_dim=head_dim, rotary_dim=width, theta=theta, interleaved=interleaved,
                    scaling=scaling)(positions(pos), positions(pos)).rotate
    torch.testing.assert_close(rotate(q), q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rotate(k), k_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
@given(settings=rotary_settings(), interleaved=st.booleans(), data=st.data())
def test_length_dependent_scalings_follow_transformers_through_generation(rope_type, settings, interleaved, data):
    """One transformers module kept across a prefill and one-token steps past the original length
    (dynamic NTK caches its grown frequencies there), then a short forward again (where it goes back
    to the original ones): each step equals our stateless scheme on the same positions."""
    head_dim, fraction, theta = settings
    if int(head_dim * fraction) < 4:
        fraction = 1.0
    width, max_positions = int(head_dim * fraction), 16
    hf, scaling = data.draw(scaled_rope(rope_type, rotary_dim=width, max_positions=max_positions,
                                        original=max_positions), label="scaling")
    rotate_ref = reference_rotary({"rope_type": rope_type, "rope_theta": theta, **hf}, head_dim=head_dim,
                                  fraction=fraction, interleaved=interleaved, max_positions=max_positions)
    rotary = Rotary(head_dim=head_dim, rotary_dim=width, theta=theta, interleaved=interleaved, scaling=scaling)
    prefill = data.draw(st.integers(1, max_positions + 4), label="prefill")
    steps = [list(range(prefill))] + [[p] for p in range(prefill, 2 * max_positions + 3)] + [list(range(5))]
    for pos in steps:
        q, k = randn(2, 2, len(pos), head_dim, seed=len(pos)), randn(2, 1, len(pos), head_dim, seed=pos[-1])
        q_ref, k_ref = rotate_ref(q, k, positions(pos).expand(2, -1))
        rotate = rotary(positions(pos).expand(2, -1), None).rotate
        torch.testing.assert_close(rotate(q), q_ref, rtol=1e-6, atol=1e-6, msg=f"positions {pos}")
        torch.testing.assert_close(rotate(k), k_ref, rtol=1e-6, atol=1e-6, msg=f"positions {pos}")


@pytest.mark.parametrize("rope_type", SCALED_ROPE_TYPES)
def test_each_scaling_changes_the_rotation_past_the_original_length(rope_type):
    """Guards the parity above against a scaling that is silently RoPE's."""
    hf, scaling = {
        "linear": ({}, LinearScaling(factor=4.0)),
        "dynamic": ({}, DynamicNTKScaling(factor=4.0, original_max_positions=16)),
        "yarn": ({}, YarnScaling(factor=4.0, original_max_positions=16, attention_factor=1.0)),
        "longrope": ({}, LongRopeScaling(short_factor=(1.0,) * 4, long_factor=(4.0,) * 4, original_max_positions=16,
                                         attention_factor=1.0)),
        "llama3": ({}, Llama3Scaling(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_positions=16)),
    }[rope_type]
    q, pos = randn(1, 1, 1, 8), torch.tensor([[40]])
    plain = Rotary(head_dim=8, rotary_dim=8, theta=100.0, interleaved=False)(pos, pos).rotate(q)
    scaled = Rotary(head_dim=8, rotary_dim=8, theta=100.0, interleaved=False, scaling=scaling)(pos, pos).rotate(q)
    assert not torch.allclose(plain, scaled, rtol=1e-3, atol=1e-3)


def test_a_subclass_overriding_inv_freq_with_the_device_alone_still_rotates():
    """Plugins written before the scalings override ``inv_freq(device)`` (the example Llama 3 one)."""

    class Halved(Rotary):
        def inv_freq(self, device):
            return super().inv_freq(device) / 2

    pos, q = torch.arange(5)[None], randn(1, 1, 5, 8)
    halved = Halved(head_dim=8, rotary_dim=8, theta=100.0, interleaved=False)(pos, pos).rotate(q)
    linear = Rotary(head_dim=8, rotary_dim=8, theta=100.0, interleaved=False,
                    scaling=LinearScaling(factor=2.0))(pos, pos).rotate(q)
    torch.testing.assert_close(halved, linear, rtol=0, atol=0)


def test_no_position_is_the_identity_without_bias():
    x = randn(1, 2, 3, 4)
    encoding = NoPosition()(torch.arange(3)[None], torch.arange(3)[None])
    assert encoding.bias is None and encoding.rotate(x) is x


@given(settings=rotary_settings(), interleaved=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       offset=st.integers(0, 1), length=st.integers(1, 9))
def test_rotation_as_complex_numbers_equals_the_real_form(settings, interleaved, dtype, offset, length):
    """fp32 and fp64 rotate each channel pair as one complex product; the real form (bfloat16,
    torch.compile, pairs that do not sit as complex numbers in memory) gives the same numbers but
    for the rounding of a fused multiply-add. Keys sliced at an odd offset of a fused projection
    take the real form."""
    head_dim, fraction, theta = settings
    fused = randn(2, length, offset + 3 * head_dim, seed=3, dtype=dtype)  # [B, S, offset + H*Dh]
    x = fused[..., offset:].unflatten(-1, (3, head_dim)).transpose(1, 2)  # [B, H, S, Dh], a view
    pos = torch.arange(length)[None].expand(2, length) * 37
    width = int(head_dim * fraction)
    rotate = Rotary(head_dim=head_dim, rotary_dim=width, theta=theta, interleaved=interleaved)(pos, pos).rotate
    assert position._turns_as_complex(x[..., :width], interleaved) == (not interleaved or offset % 2 == 0)
    with patch.object(position, "_turns_as_complex", lambda *_: False):
        real = rotate(x)
    tolerance = {"rtol": 0, "atol": 1e-6 if dtype == torch.float32 else 1e-14}
    torch.testing.assert_close(rotate(x), real, **tolerance)
    torch.testing.assert_close(rotate(x.contiguous()), real, **tolerance)
