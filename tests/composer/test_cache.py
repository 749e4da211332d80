"""KV caches: decoding with a cache computes what one forward over the whole sequence computes.

The property runs over specs drawn across every block kind (tests/strategies.py). For a causal
model the reference is one forward without a cache. For a prefix_lm model (CPM-Ant's contract)
the context must be the first forward; the reference is one forward over context + continuation
with ``prefix_mask`` marking the context, and decoding may feed one or several tokens per step.

The contract is stated in fp32 (max abs difference 1e-5 per unit of the largest logit, which is
rounding: a cached step runs other matmul shapes, and fp32 rounding is relative, 1.7e-5 on logits
of 4.8 in one drawn model); the same property in fp64 with a tolerance of 1e-10 shows that what is
left is rounding, not logic.

Sliding windows (drawn by the strategies too) have their own section: left-padded prompts longer
than the window, windowed and global layers mixed, with bias schemes; the memory a windowed layer
keeps; and Mistral and Qwen2 (alternating layer types) from transformers on the same weights."""

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

from archcomposer import CacheError, DynamicCache, InputError, StaticCache, build_model, load_spec
from archcomposer.plugins.mistral import TABLE as MISTRAL
from tests.plugins.parity import Inputs, build_reference
from tests.strategies import POSITIONS, spec_dicts

TOLERANCES = {torch.float32: 1e-5, torch.float64: 1e-10}  # max abs difference per unit of the largest logit
OBSERVED = {dtype: {"max_abs_diff": 0.0, "examples": 0} for dtype in TOLERANCES}


@pytest.fixture(scope="module", autouse=True)
def report_largest_difference():
    """Prints the largest difference seen (visible with ``pytest -s``)."""
    yield
    for dtype, seen in OBSERVED.items():
        if seen["examples"]:
            print(f"\ncache equivalence ({dtype}): largest max-abs-diff per unit of the largest logit "
                  f"{seen['max_abs_diff']:.3g} over {seen['examples']} examples")


def stepwise_logits(model, ids, cuts, cache):
    """Logits of feeding ``ids`` [B, S] to ``model`` in chunks ending at ``cuts``, with ``cache``."""
    pieces, start = [], 0
    for end in cuts:
        out = model(ids[:, start:end], past_key_values=cache, use_cache=True)
        assert out.past_key_values is cache
        pieces.append(out.logits)
        start = end
    assert cache.get_seq_length() == model.num_prepended + ids.shape[1]
    return torch.cat(pieces, dim=1)  # [B, S, V]


@st.composite
def chunk_ends(draw, length: int, first: int) -> list[int]:
    """Increasing chunk ends after a first chunk of ``first`` tokens, the last one ``length``."""
    inner = draw(st.sets(st.integers(first + 1, length - 1))) if length - first > 1 else set()
    return [first, *sorted(inner), length]


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("position", POSITIONS)
@given(data=st.data())
@torch.no_grad()
def test_cached_decoding_equals_one_full_forward(position, dtype, data):
    spec = data.draw(spec_dicts(positions=(position,)), label="spec")
    model = build_model(spec, seed=data.draw(st.integers(0, 2**16), label="seed"), dtype=dtype)
    length = data.draw(st.integers(2, 9), label="length")
    first = data.draw(st.integers(1, length - 1), label="first chunk (prefill or context)")
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="ids seed"))
    ids = torch.randint(0, spec["vocab_size"], (2, length), generator=generator)

    if model.prefix_lm:
        prefix_mask = (torch.arange(length) < first).long().expand(2, length)
        reference = model(ids, prefix_mask=prefix_mask, use_cache=False).logits
    else:
        reference = model(ids, use_cache=False).logits

    one_token_steps = list(range(first, length + 1))
    chunked = data.draw(chunk_ends(length, first), label="chunk ends")
    static_room = model.num_prepended + length + data.draw(st.integers(0, 3), label="unused static slots")
    for cuts in (one_token_steps, chunked):
        for cache in (DynamicCache(), StaticCache(max_length=static_room)):
            logits = stepwise_logits(model, ids, cuts, cache)
            diff = (logits - reference).abs().max().item() / max(1.0, reference.abs().max().item())
            OBSERVED[dtype]["max_abs_diff"] = max(OBSERVED[dtype]["max_abs_diff"], diff)
            assert diff <= TOLERANCES[dtype], f"{type(cache).__name__}, chunks ending at {cuts}: max abs diff {diff} " \
                                              f"per unit of the largest logit"
    OBSERVED[dtype]["examples"] += 1


@torch.no_grad()
def test_prefix_lm_context_is_bidirectional_and_continuation_causal():
    """The context (first forward) sees later context tokens; a continuation token is not seen by
    anything before it. Guards the property above against a prefix_lm that is silently causal."""
    model = build_model("tiny-cpm-ant", seed=0)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    changed = ids.clone()
    changed[0, 2] = 40
    prefix = torch.tensor([[1, 1, 1, 0, 0]])
    a = model(ids, prefix_mask=prefix).logits
    b = model(changed, prefix_mask=prefix).logits
    assert not torch.allclose(a[:, :2], b[:, :2])  # earlier context sees a later context token
    changed = ids.clone()
    changed[0, 3] = 40
    c = model(changed, prefix_mask=prefix).logits
    torch.testing.assert_close(a[:, :3], c[:, :3], rtol=0, atol=0)  # the context does not see the continuation
    assert not torch.allclose(a[:, 3:], c[:, 3:])


@torch.no_grad()
def test_causal_model_does_not_see_the_future():
    model = build_model("tiny-glm-4", seed=0)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    changed = ids.clone()
    changed[0, 3] = 40
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=0, atol=0)
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_prefix_mask_is_refused_by_a_causal_model():
    from archcomposer import InputError

    model = build_model("tiny-glm-4", seed=0)
    with pytest.raises(InputError, match="prefix_mask marks prefix-LM context"):
        model(torch.tensor([[5, 6]]), prefix_mask=torch.tensor([[1, 0]]))


# ---------------------------------------------------------------------------------------------
# the caches on their own


def kv(batch=2, heads=3, length=4, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, length, dim, generator=generator),
            torch.randn(batch, heads, length, dim, generator=generator))


def test_dynamic_cache_concatenates_per_layer():
    cache = DynamicCache()
    (k0, v0), (k1, v1), (k2, v2) = kv(seed=0), kv(seed=1), kv(length=1, seed=2)
    cache.update(0, k0, v0, 0)
    cache.update(1, k1, v1, 0)
    k, v = cache.update(0, k2, v2, 4)
    torch.testing.assert_close(k, torch.cat([k0, k2], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(v, torch.cat([v0, v2], dim=2), rtol=0, atol=0)
    assert len(cache) == 2
    assert cache.get_seq_length() == 5  # layer 0 decides


def test_static_cache_writes_in_place_and_keeps_its_shape():
    cache = StaticCache(max_length=6)
    (k0, v0), (k1, v1) = kv(length=4, seed=0), kv(length=1, seed=1)
    k, v = cache.update(0, k0, v0, 0)
    assert k.shape == (2, 3, 6, 5)
    k, v = cache.update(0, k1, v1, 4)
    assert k.shape == (2, 3, 6, 5) and cache.get_seq_length() == 5
    torch.testing.assert_close(k[:, :, :5], torch.cat([k0, k1], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(v[:, :, :5], torch.cat([v0, v1], dim=2), rtol=0, atol=0)
    assert not k[:, :, 5:].any()


@pytest.mark.parametrize("cache", [DynamicCache(), StaticCache(max_length=4)], ids=type)
def test_reorder_keeps_the_chosen_rows(cache):
    k0, v0 = kv(batch=3, length=2)
    cache.update(0, k0, v0, 0)
    cache.reorder(torch.tensor([2, 0]))
    torch.testing.assert_close(cache.keys[0][:, :, :2], k0[[2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(cache.values[0][:, :, :2], v0[[2, 0]], rtol=0, atol=0)


def test_static_cache_refuses_a_step_past_its_capacity():
    with pytest.raises(CacheError, match="at least 1"):
        StaticCache(max_length=0)
    model = build_model("tiny-seed-oss", seed=0)
    cache = StaticCache(max_length=4)
    model(torch.tensor([[5, 6, 7]]), past_key_values=cache)
    with pytest.raises(CacheError, match=r"holds 4 tokens but this step needs 5"):
        model(torch.tensor([[8, 9]]), past_key_values=cache)


def test_static_cache_counts_the_prompt_tokens():
    model = build_model("tiny-cpm-ant", seed=0)  # 3 prompt tokens
    with pytest.raises(CacheError, match=r"holds 4 tokens but this step needs 5"):
        model(torch.tensor([[5, 6]]), past_key_values=StaticCache(max_length=4))


def test_a_cache_belongs_to_the_model_that_filled_it():
    glm, bloom = build_model("tiny-glm-4", seed=0), build_model("tiny-bloom", seed=0)
    spec = load_spec("tiny-glm-4").to_dict()
    deeper = build_model({**spec, "num_layers": 3}, seed=0)
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(CacheError, match=r"past_key_values holds 3 layers but this model has 2"):
        glm(ids, past_key_values=deeper(ids).past_key_values)
    with pytest.raises(CacheError, match=r"past_key_values holds keys of batch 1, 5 heads of size 8, torch.float32 "
                                         r"on cpu at layer 0, but this model gives batch 1, 2 heads of size 16"):
        glm(ids, past_key_values=bloom(ids).past_key_values)
    with pytest.raises(CacheError, match=r"past_key_values holds 1 batch rows but the input has 2"):
        glm(ids.repeat(2, 1), past_key_values=glm(ids).past_key_values)
    with pytest.raises(CacheError, match=r"past_key_values holds 3 tokens but no segment for them"):
        build_model("tiny-cpm-ant", seed=0)(ids, past_key_values=glm(ids).past_key_values)
    legacy = tuple((torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16)) for _ in range(2))
    with pytest.raises(CacheError, match=r"past_key_values must be an archcomposer cache, DynamicCache\(\) or "
                                         r"StaticCache\(max_length=...\), got tuple; transformers' caches and legacy"):
        glm(ids, past_key_values=legacy)
    with pytest.raises(InputError, match=r"attention_mask has shape \(1, 2\); expected \(1, 4\): one entry per "
                                         r"token, the 3 in past_key_values and the 1 of this step"):
        glm(torch.tensor([[8]]), attention_mask=torch.ones(1, 2), past_key_values=glm(ids).past_key_values)


# ---------------------------------------------------------------------------------------------
# position_ids given with a cache


@pytest.mark.parametrize("name", ["tiny-bloom", "tiny-cpm-ant", "tiny-glm-4", "tiny-seed-oss"])
@pytest.mark.parametrize("make_cache", [DynamicCache, lambda: StaticCache(max_length=16)], ids=["dynamic", "static"])
@torch.no_grad()
def test_explicit_position_ids_survive_in_the_cache(name, make_cache):
    """Bias schemes (ALiBi, buckets) read the positions of past keys at every step: they must be
    the ones given when those keys were written, not rebuilt from the mask (2.4e-3 off on
    tiny-bloom with position_ids = arange + 5 before the cache kept them)."""
    model = build_model(name, seed=0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    position_ids = torch.arange(6).expand(2, 6) + torch.tensor([[5], [2]])
    prefix = torch.tensor([[1, 1, 1, 1, 0, 0]]).expand(2, 6) if model.prefix_lm else None
    full = model(ids, position_ids=position_ids, prefix_mask=prefix, use_cache=False).logits
    cache, pieces = make_cache(), []
    for start, end in [(0, 4), (4, 5), (5, 6)]:
        pieces.append(model(ids[:, start:end], position_ids=position_ids[:, start:end], past_key_values=cache,
                            attention_mask=torch.ones(2, end)).logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("name", ["tiny-bloom", "tiny-cpm-ant", "tiny-glm-4"])
def test_training_mode_keeps_no_cache_so_activation_checkpointing_recomputes(name):
    """In training mode the cache is off by default (as in transformers): a checkpointed layer
    recomputed in backward would otherwise append its keys to the cache a second time and fail
    with a shape mismatch."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    plain = build_model(name, seed=0).train()
    wrapped = build_model(name, seed=0).train()
    for i, layer in enumerate(wrapped.layers):
        wrapped.layers[i] = checkpoint_wrapper(layer)
    for model in (plain, wrapped):
        model.layers.apply(lambda m: setattr(m, "dropout", 0.0) if hasattr(m, "dropout") and
                           isinstance(m.dropout, float) else None)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    out = wrapped(ids, labels=ids)
    assert out.past_key_values is None
    out.loss.backward()
    reference = plain(ids, labels=ids)
    reference.loss.backward()
    torch.testing.assert_close(out.loss, reference.loss, rtol=0, atol=0)
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in wrapped.named_parameters()}
    for name_, p in plain.named_parameters():
        torch.testing.assert_close(grads[name_], p.grad, rtol=1e-5, atol=1e-7)
    assert plain.eval()(ids).past_key_values is not None  # eval mode caches by default


# ---------------------------------------------------------------------------------------------
# layers that differ


LAYERED = {
    # Gemma 3: sandwich norms, sqrt(width) embedding scale, RoPE theta per layer type
    "gemma-3-like": {"embedding": {"kind": "tokens", "scale": "sqrt_hidden_size"}, "wiring": {"kind": "sandwich"},
                     "layer_types": ["local", "local", "global", "local"],
                     "layers": [{"type": "global", "position": {"theta": 1000000.0}}]},
    # SmolLM3: no position signal on every 4th layer
    "smollm3-like": {"layers": [{"every": 4, "offset": 3, "position": {"kind": "none"}}]},
    # DeepSeek-style first-k-dense, here as a wider MLP on the first layer, and a parallel layer
    "first-k-different": {"layers": [{"range": [0, 1], "mlp": {"intermediate_size": 96}},
                                     {"indices": [2], "wiring": {"kind": "parallel", "shared_norm": False},
                                      "attention": {"num_kv_heads": 1}}]},
    # another head count on one layer (the output contract reads each layer's)
    "heads-per-layer": {"layers": [{"indices": [1], "attention": {"num_heads": 2, "num_kv_heads": 2}}]},
    # Gemma 2: local (sliding window) and global layers alternate, sharing one RoPE
    "gemma-2-like": {"embedding": {"kind": "tokens", "scale": "sqrt_hidden_size"}, "wiring": {"kind": "sandwich"},
                     "layer_types": ["sliding_attention", "full_attention"] * 2,
                     "layers": [{"type": "sliding_attention", "attention": {"sliding_window": 2}}]},
    # ALiBi and bucket biases mixed with rotary layers
    "bias-and-rotary": {"layers": [{"indices": [1], "position": {"kind": "alibi"}},
                                   {"indices": [3], "position": {"kind": "bucket_bias", "num_buckets": 8,
                                                                 "max_distance": 16}}]},
}


@pytest.mark.parametrize("name", LAYERED)
def test_layers_that_differ_keep_the_cache_equivalent(name):
    from archcomposer.testing import check_cache_equivalence, check_output_contract

    spec = {**load_spec("tiny-seed-oss").to_dict(), "num_layers": 4, **LAYERED[name]}
    schemes = {"gemma-3-like": 2, "smollm3-like": 2, "first-k-different": 2, "heads-per-layer": 2,
               "gemma-2-like": 1, "bias-and-rotary": 3}[name]
    assert len(build_model(spec, device="meta").positions) == schemes  # one module per distinct scheme
    check_cache_equivalence(spec, prompt_length=5, new_tokens=4)
    check_output_contract(spec)


# ---------------------------------------------------------------------------------------------
# sliding windows


def windowed(window: int | None = 3, layers: list | None = None, **changes) -> dict:
    """tiny-seed-oss with four layers and ``attention.sliding_window`` (the base), ``layers`` entries
    and other fields changed."""
    spec = {**load_spec("tiny-seed-oss").to_dict(), "num_layers": 4, **changes}
    spec["attention"] = {**spec["attention"], "sliding_window": window}
    return {**spec, "layers": layers or []}


GEMMA_2_LIKE = {"layer_types": ["sliding_attention", "full_attention"] * 2,
                "layers": [{"type": "sliding_attention", "attention": {"sliding_window": 3}}]}
WINDOWED = {
    "window-1": windowed(1),
    "window-3": windowed(3),
    "window-past-the-sequence": windowed(64),
    "gemma-2-like": windowed(None, wiring={"kind": "sandwich"}, **GEMMA_2_LIKE),
    "alibi-two-windows": windowed(2, [{"indices": [1, 3], "attention": {"sliding_window": 4}},
                                     {"indices": [2], "attention": {"sliding_window": None}}],
                                  position={"kind": "alibi"}),
    "bucket-bias-mixed": windowed(None, [{"every": 2, "attention": {"sliding_window": 3}}],
                                  position={"kind": "bucket_bias", "num_buckets": 8, "max_distance": 16,
                                            "bidirectional": False}),
    "prefix-lm": {**load_spec("tiny-cpm-ant").to_dict(),
                  "layers": [{"indices": [0], "attention": {"sliding_window": 2}}]},
}


def left_padded(vocab_size: int, length: int = 9, pad: int = 3, seed: int = 1):
    """ids [2, length] whose second row has ``pad`` pad tokens (id 0) in front, and their mask."""
    ids = torch.randint(4, vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :pad] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("make_cache", [DynamicCache, lambda: StaticCache(max_length=16)], ids=["dynamic", "static"])
@pytest.mark.parametrize("cuts", [[4, 5, 6, 7, 8, 9], [2, 6, 7, 9]], ids=["token-by-token", "chunks"])
@torch.no_grad()
def test_windowed_decoding_with_left_padding_equals_one_full_forward(name, make_cache, cuts):
    """Prompts longer than the window, a left-padded row, windowed and global layers mixed, bias
    schemes whose bias must follow the key slots a window keeps."""
    spec = WINDOWED[name]
    model = build_model(spec, seed=0)
    ids, mask = left_padded(spec["vocab_size"])
    prefix = (torch.arange(9) < cuts[0]).long().expand(2, 9) if model.prefix_lm else None
    full = model(ids, attention_mask=mask, prefix_mask=prefix, use_cache=False).logits
    cache, pieces, start = make_cache(), [], 0
    for end in cuts:
        pieces.append(model(ids[:, start:end], attention_mask=mask[:, :end], past_key_values=cache).logits)
        start = end
    assert cache.get_seq_length() == model.num_prepended + 9
    real = mask.bool()  # a pad position sees no key: what it gets depends on how many keys there are
    torch.testing.assert_close(torch.cat(pieces, dim=1)[real], full[real], rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_token_is_seen_by_itself_and_the_window_minus_one_tokens_after_it():
    """One layer, window 4: changing token 0 changes the outputs at 0..3 and nothing after
    (transformers: kv_idx > q_idx - sliding_window)."""
    model = build_model(windowed(4, num_layers=1), seed=0)
    ids = torch.randint(4, 100, (1, 9), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 0] = 3
    diff = (model(ids).logits - model(changed).logits).abs().amax(-1)[0]  # [S]
    assert (diff[:4] > 0).all() and (diff[4:] == 0).all(), diff


def test_a_window_does_not_split_the_position_scheme():
    """Layers that differ only in their window share one position module (a bucket bias keeps one
    table), each (scheme, window) gets its own mask."""
    model = build_model(WINDOWED["bucket-bias-mixed"], device="meta")
    assert len(model.positions) == 1 and model.window_of == [3, None, 3, None]
    assert model.bias_groups == [(0, 3), (0, None)]
    model = build_model(WINDOWED["alibi-two-windows"], device="meta")
    assert len(model.positions) == 1 and model.window_of == [2, 4, None, 4]


@pytest.mark.parametrize("window", [1, 2, 4])
@torch.no_grad()
def test_the_dynamic_cache_keeps_window_minus_one_tokens_of_a_windowed_layer(window):
    model = build_model(windowed(None, [{"indices": [0, 2], "attention": {"sliding_window": window}}]), seed=0)
    ids = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    model(ids[:, :9], past_key_values=cache)
    for t in range(9, 12):
        model(ids[:, t:t + 1], past_key_values=cache)
        assert cache.get_seq_length() == t + 1
        for layer in (0, 2):
            k = cache.keys[layer]
            assert k.shape[-2] == cache.values[layer].shape[-2] == window - 1
            token_bytes = k.shape[0] * k.shape[1] * k.shape[3] * k.element_size()
            assert k.untyped_storage().nbytes() <= window * token_bytes  # a view does not hold the prompt
        assert cache.keys[1].shape[-2] == cache.keys[3].shape[-2] == t + 1


def test_dynamic_cache_update_with_a_window_returns_the_kept_keys_then_the_new_ones():
    cache = DynamicCache()
    (k0, v0), (k1, v1), (k2, v2) = kv(length=5, seed=0), kv(length=1, seed=1), kv(length=2, seed=2)
    assert cache.key_slots(5, 5, window=3) == range(0, 5)
    k, v = cache.update(0, k0, v0, 0, window=3)
    torch.testing.assert_close(k, k0, rtol=0, atol=0)
    torch.testing.assert_close(cache.keys[0], k0[:, :, 3:], rtol=0, atol=0)  # the 2 a next token still sees
    assert cache.key_slots(6, 1, window=3) == range(3, 6) and cache.key_slots(6, 1) == range(0, 6)
    k, v = cache.update(0, k1, v1, 5, window=3)
    torch.testing.assert_close(k, torch.cat([k0[:, :, 3:], k1], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(v, torch.cat([v0[:, :, 3:], v1], dim=2), rtol=0, atol=0)
    assert cache.key_slots(8, 2, window=3) == range(4, 8)
    k, v = cache.update(0, k2, v2, 6, window=3)
    torch.testing.assert_close(k, torch.cat([k0[:, :, 4:], k1, k2], dim=2), rtol=0, atol=0)
    assert cache.keys[0].shape[-2] == 2 and cache.get_seq_length() == 8
    cache.reorder(torch.tensor([1]))
    torch.testing.assert_close(cache.keys[0], torch.cat([k1, k2], dim=2)[[1], :, 1:], rtol=0, atol=0)


def test_dynamic_cache_with_window_1_keeps_nothing():
    cache = DynamicCache()
    (k0, v0), (k1, v1) = kv(length=3, seed=0), kv(length=1, seed=1)
    cache.update(0, k0, v0, 0, window=1)
    assert cache.keys[0].shape[-2] == 0 and cache.key_slots(4, 1, window=1) == range(3, 4)
    k, _ = cache.update(0, k1, v1, 3, window=1)
    torch.testing.assert_close(k, k1, rtol=0, atol=0)
    assert cache.get_seq_length() == 4


def test_static_cache_keeps_every_slot_whatever_the_window():
    cache = StaticCache(max_length=6)
    k0, v0 = kv(length=5)
    k, _ = cache.update(0, k0, v0, 0, window=2)
    assert k.shape[-2] == 6 and cache.key_slots(5, 5, window=2) == range(0, 6)
    torch.testing.assert_close(k[:, :, :5], k0, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# sliding windows against transformers


HF_FIELDS = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                 pad_token_id=0, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-6)


def llama_layout_spec(num_layers: int, **changes) -> dict:
    """Our spec of a transformers model in the Llama layout with ``HF_FIELDS``."""
    return {"name": "llama-layout", "vocab_size": 160, "hidden_size": 48, "num_layers": num_layers,
            "max_positions": 256, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
            "position": {"kind": "rope", "theta": 500.0},
            "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2},
            "norm": {"kind": "rmsnorm", "eps": 1e-6}, "mlp": {"kind": "gated", "intermediate_size": 96},
            "heads": [{"kind": "causal_lm"}], **changes}


def with_weights_of(reference, spec: dict):
    """Our model of ``spec`` holding the weights of a transformers Llama-layout causal LM."""
    model = build_model(spec)
    theirs = reference.state_dict()
    model.load_state_dict({m.ours: theirs[m.theirs[0]] for m in MISTRAL.hf_tensors(model.spec, "MistralForCausalLM")})
    return model.eval()


def check_against(reference, ours, *, cached_generation: bool = True):
    """Logits for one sequence and a left-padded batch, and 20 greedy tokens with either cache,
    equal transformers'."""
    inputs = Inputs(vocab_size=160, pad_token_id=0)  # seq 9, second row padded by 3
    with torch.no_grad():
        theirs = reference(inputs.single).logits
        torch.testing.assert_close(ours(inputs.single).logits, theirs, rtol=0, atol=1e-4)
        theirs = reference(inputs.batch, attention_mask=inputs.mask, position_ids=inputs.position_ids).logits
        mine = ours(inputs.batch, attention_mask=inputs.mask).logits
        real = inputs.mask.bool()
        torch.testing.assert_close(mine[real], theirs[real], rtol=0, atol=1e-4)
        for ids, mask in ((inputs.single, torch.ones_like(inputs.single)), (inputs.batch, inputs.mask)):
            theirs = reference.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                        use_cache=cached_generation)
            for cache in ("dynamic", "static"):
                assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=20, cache=cache), theirs)


def window_matters(ours, spec: dict) -> bool:
    """Whether ``ours`` and the same weights without any window differ on 9 tokens."""
    unwindowed = build_model({**spec, "attention": {**spec["attention"], "sliding_window": None}, "layers": []})
    unwindowed.load_state_dict(ours.state_dict())
    ids = torch.randint(4, 160, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (unwindowed(ids).logits - ours(ids).logits).abs().max() > 1e-2


@pytest.mark.parametrize("window", [1, 2, 4, 64])
def test_sliding_window_matches_mistral(window):
    """MistralForCausalLM (eager) on the same weights. With window 1, transformers' cached
    generation differs from its own forward (its sliding cache layer keeps ``[-0:]``, every
    token), so its uncached generation is the reference there."""
    config = transformers.MistralConfig(num_hidden_layers=2, sliding_window=window, **HF_FIELDS)
    reference = build_reference("MistralForCausalLM", config)
    spec = llama_layout_spec(2, attention={"kind": "gqa", "num_heads": 4, "num_kv_heads": 2,
                                           "sliding_window": window})
    ours = with_weights_of(reference, spec)
    check_against(reference, ours, cached_generation=window > 1)
    assert window_matters(ours, spec) == (window < 9)


def test_alternating_windowed_and_global_layers_match_qwen2():
    """Qwen2 with ``layer_types`` (Gemma 2's alternation, in a family without its other changes):
    our ``layers`` entry selecting the sliding type, on the same weights."""
    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    config = transformers.Qwen2Config(num_hidden_layers=4, use_sliding_window=True, sliding_window=3,
                                      layer_types=layer_types, **HF_FIELDS)
    reference = build_reference("Qwen2ForCausalLM", config)
    spec = llama_layout_spec(4, attention={"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "qkv_bias": True},
                             layer_types=layer_types,
                             layers=[{"type": "sliding_attention", "attention": {"sliding_window": 3}}])
    ours = with_weights_of(reference, spec)
    check_against(reference, ours)
    assert window_matters(ours, spec)


@given(data=st.data())
@torch.no_grad()
def test_kv_bytes_per_token_is_what_a_latent_attention_cache_holds(data):
    """Multi-head latent attention caches its latent and its shared rotary key: per token and
    layer, exactly the bytes its spec reports (the summary's count)."""
    spec = data.draw(spec_dicts(attentions=("mla",)), label="spec")
    model = build_model(spec, seed=0)
    length = data.draw(st.integers(1, 5), label="length")
    cache = model(torch.ones(2, length, dtype=torch.long), use_cache=True).past_key_values
    held = [(k.numel() + v.numel()) * k.element_size() for k, v in zip(cache.keys, cache.values)]
    tokens = 2 * (model.num_prepended + length)
    assert held == [layer.attention.kv_bytes_per_token(4) * tokens for layer in model.spec.layer_specs]
