"""torch.compile(fullgraph=True) and torch.export trace every shipped family whole and give what the
eager model gives; a static-cache decoding step compiles once and never recompiles; the output
classes are pytree nodes. Graph-cleanliness is checked with dynamo's "eager" backend (tracing is
the point, and it is quick); the generate test runs inductor once, the real compile."""

import pytest
import torch
import torch.utils._pytree as pytree
from torch._dynamo.utils import counters

from archcomposer import DynamicCache, InputError, StaticCache, load_spec, outputs
from archcomposer.testing import _as_model, _input_ids
from tests.composer.test_specs_shipped import TINY

MOE = {"tiny-deepseek-v3", "tiny-mixtral", "tiny-olmoe", "tiny-qwen2-moe", "tiny-qwen3-moe"}  # router logits


def tiny_model(name: str):
    """The shipped tiny spec, with one layer where all its layers are alike: tracing one traces the
    same code in a fraction of the time."""
    spec = load_spec(name)
    if not spec.layers and not spec.layer_types:
        spec = load_spec(name, num_layers=1)
    return _as_model(spec, 0).eval()


def close(actual, expected):
    # Traced code may take paths equal to eager's up to rounding: the experts' every-expert path
    # (matmuls of other row counts), rotary's real form where eager multiplies complex numbers.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def same_output(actual, expected):
    assert type(actual) is type(expected)
    assert list(actual.keys()) == list(expected.keys())
    for key in expected.keys():
        if isinstance(expected[key], torch.Tensor):
            close(actual[key], expected[key])
        elif isinstance(expected[key], tuple):
            for a, e in zip(actual[key], expected[key], strict=True):
                close(a, e)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_every_family_compiles_whole_and_exports(name):
    model = tiny_model(name)
    ids = _input_ids(model, 2, 5, 0)  # [2, 5]
    expected = model(ids, use_cache=False)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    same_output(compiled(ids, use_cache=False), expected)
    exported = torch.export.export(model, (ids,), {"use_cache": False})
    same_output(exported.module()(ids, use_cache=False), expected)


@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-cpm-ant"])
def test_padding_labels_and_a_cached_decoding_step_compile_whole(name):
    """Left padding and labels (the loss, and for MoE the load-balancing loss), then a decoding
    step on a filled static cache: all in fullgraph compiles, each equal to eager."""
    model = tiny_model(name)
    ids = _input_ids(model, 2, 5, 0)  # [2, 5]
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    kwargs = {"attention_mask": mask, "labels": ids, "use_cache": False, "output_router_logits": name in MOE}
    expected = model(ids, **kwargs)
    same_output(compiled(ids, **kwargs), expected)
    assert expected.loss is not None

    with torch.no_grad():
        caches = [StaticCache(max_length=model.num_prepended + 8) for _ in range(2)]
        for cache in caches:
            model(ids, attention_mask=mask, past_key_values=cache)
        step, step_mask = ids[:, :1], torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], dim=1)  # every slot
        expected = model(step, attention_mask=step_mask, past_key_values=caches[0])
        actual = compiled(step, attention_mask=step_mask, past_key_values=caches[1])
    close(actual.logits, expected.logits)
    assert actual.past_key_values is caches[1] and caches[1].get_seq_length() == caches[0].get_seq_length()
    for mine, theirs in zip(caches[1].keys + caches[1].values, caches[0].keys + caches[0].values):
        close(mine, theirs)


@torch.no_grad()
def test_static_cache_decoding_compiles_once_and_never_recompiles():
    model = tiny_model("tiny-glm-4")
    ids = _input_ids(model, 2, 5, 0)  # [2, 5]
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, :3] = 0
    kwargs = {"attention_mask": mask, "max_new_tokens": 6, "eos_token_id": []}
    expected = model.generate(ids, cache="dynamic", **kwargs)
    assert torch.equal(model.generate(ids, cache="static", compile=True, **kwargs), expected)
    assert counters["stats"]["unique_graphs"] == 1  # five decoding steps, one compile
    with torch.compiler.set_stance("fail_on_recompile"):
        assert torch.equal(model.generate(ids, cache="static", compile=True, **kwargs), expected)
    assert counters["stats"]["unique_graphs"] == 1


def test_generate_compile_needs_a_static_cache():
    model = _as_model("tiny-glm-4", 0)
    ids = torch.tensor([[5, 6]])
    with pytest.raises(InputError, match=r"compile=True needs cache='static'"):
        model.generate(ids, compile=True)
    with pytest.raises(InputError, match=r"compile must be True or False, got 'yes'"):
        model.generate(ids, cache="static", compile="yes")


def test_output_classes_are_pytree_nodes():
    classes = [outputs.BaseModelOutputWithPast, outputs.CausalLMOutputWithPast,
               outputs.SequenceClassifierOutputWithPast, outputs.TokenClassifierOutput,
               outputs.QuestionAnsweringModelOutput, outputs.MoeModelOutputWithPast, outputs.MoeCausalLMOutputWithPast]
    assert {c for c in vars(outputs).values() if isinstance(c, type) and issubclass(c, outputs.ModelOutput)} \
        == {outputs.ModelOutput, *classes}
    for cls in classes:
        first, second = [name for name in cls.__dataclass_fields__ if name != "past_key_values"][:2]
        out = cls(**{first: torch.ones(2), second: (torch.zeros(1), torch.zeros(3))})
        leaves, spec = pytree.tree_flatten(out)
        assert [leaf.shape for leaf in leaves] == [(2,), (1,), (3,)]
        again = pytree.tree_unflatten([leaf + 1 for leaf in leaves], spec)
        assert type(again) is cls and list(again.keys()) == [first, second]
        torch.testing.assert_close(again[first], torch.full((2,), 2.0))
        assert pytree.tree_map(lambda t: t.shape, out)[second] == (torch.Size([1]), torch.Size([3]))


@torch.no_grad()
def test_caches_are_pytree_nodes_so_an_exported_model_returns_its_cache():
    model = tiny_model("tiny-glm-4")
    ids = _input_ids(model, 2, 4, 0)  # [2, 4]
    expected = model(ids)
    actual = torch.export.export(model, (ids,)).module()(ids)
    assert isinstance(actual.past_key_values, DynamicCache) and actual.past_key_values.get_seq_length() == 4
    same_output(actual, expected)
    for mine, theirs in zip(actual.past_key_values.keys, expected.past_key_values.keys, strict=True):
        close(mine, theirs)
    static = StaticCache(max_length=6)
    model(ids, past_key_values=static)
    leaves, spec = pytree.tree_flatten(static)
    assert len(leaves) == 4  # keys, values, the position record, the write position
    again = pytree.tree_unflatten(leaves, spec)
    assert type(again) is StaticCache and again.get_seq_length() == 4 and again.keys[0] is static.keys[0]


@torch.no_grad()
def test_dynamic_cache_holds_only_the_keys_and_values():
    """A fused QKV projection's k and v are views of its whole output; the cache keeps copies, so
    its storage is the KV bytes and not the projection's."""
    model = _as_model("tiny-phi3", 0).eval()
    assert model.spec.attention.fused_qkv
    cache = model(_input_ids(model, 2, 6, 0)).past_key_values
    assert isinstance(cache, DynamicCache)
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.keys + cache.values}
    kv_bytes = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert sum(held.values()) == kv_bytes
