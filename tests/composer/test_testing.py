"""The plugin test kit, ``archcomposer.testing``: its checks pass on every shipped tiny spec and
every head, catch a block that breaks the cache or a head that breaks the output contract, and
``spec_strategy`` varies a base spec as documented."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import archcomposer
from archcomposer import SpecError, hookimpl
from archcomposer.blocks.heads import CausalLMHead
from archcomposer.spec import CausalLMHeadSpec, RopeSpec
from archcomposer.testing import check_cache_equivalence, check_output_contract, registered, spec_strategy

TINY = ["tiny-bloom", "tiny-cpm-ant", "tiny-glm-4", "tiny-seed-oss"]
ALL_HEADS = [{"kind": "causal_lm"}, {"kind": "sequence_classification", "num_labels": 3},
             {"kind": "token_classification"}, {"kind": "question_answering"}]



def with_heads(name: str, heads: list[dict]) -> dict:
    return {**archcomposer.load_spec(name).to_dict(), "heads": heads}


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_spec_passes_both_checks(name):
    check_cache_equivalence(name)
    check_output_contract(name)


@pytest.mark.parametrize("heads", [ALL_HEADS, []], ids=["every-head", "no-head"])
def test_the_checks_cover_every_head_and_the_bare_model(heads):
    spec = with_heads("tiny-glm-4", heads)
    check_cache_equivalence(spec, caches=("static",))
    check_output_contract(spec)


def test_the_checks_take_a_built_model_and_leave_its_mode_alone():
    model = archcomposer.build_model("tiny-seed-oss", seed=1).train()
    check_cache_equivalence(model, batch_size=1, prompt_length=1, new_tokens=1)
    check_output_contract(model, batch_size=1, seq_len=3)
    assert model.training


def test_sequence_classification_without_pad_token_checks_one_row():
    spec = {**with_heads("tiny-glm-4", [{"kind": "sequence_classification", "num_labels": 1}]), "pad_token_id": None}
    check_output_contract(spec)


# ---------------------------------------------------------------------------------------------
# the checks catch broken plugin blocks


class StepRotary(nn.Module):
    """A broken rotary scheme: positions restart at 0 on every forward, so decoding with a cache
    rotates new queries as if they were first."""

    def __init__(self, *, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, query_pos, key_pos, *segments):
        return self.inner(query_pos - query_pos[:, :1], key_pos, *segments)


class StepRopeSpec(RopeSpec):
    kind: Literal["step_rope"]

    def build(self, ctx):
        return StepRotary(inner=super().build(ctx))


class LosslessHead(CausalLMHead):
    """A broken LM head: it ignores the labels."""

    def forward(self, hidden, **kwargs):
        return {**super().forward(hidden, **kwargs), "loss": None}


class LosslessHeadSpec(CausalLMHeadSpec):
    kind: Literal["lossless_lm"]

    def build(self, ctx):
        head = super().build(ctx)
        return LosslessHead(proj=head.proj, shift_labels=head.shift_labels)


class BrokenBlocks:
    @hookimpl
    def register_blocks(self, register):
        register("position", StepRopeSpec)
        register("head", LosslessHeadSpec)


def test_cache_equivalence_catches_a_block_that_breaks_decoding():
    with registered(BrokenBlocks()):
        spec = {**archcomposer.load_spec("tiny-seed-oss").to_dict(), "position": {"kind": "step_rope"}}
        check_output_contract(spec)  # one forward is fine
        with pytest.raises(AssertionError, match=r"tiny-seed-oss: dynamic cache, tokens 4:5 \(prefill 4\): final "
                                                 r"hidden states differ from one forward over all tokens"):
            check_cache_equivalence(spec)


def test_output_contract_catches_a_head_that_drops_the_loss():
    with registered(BrokenBlocks()):
        spec = with_heads("tiny-glm-4", [{"kind": "lossless_lm"}])
        check_cache_equivalence(spec)
        with pytest.raises(AssertionError, match="head lossless_lm: with labels, loss must be a finite scalar; "
                                                 "got None"):
            check_output_contract(spec)


def test_output_contract_catches_a_return_dict_false_that_is_not_to_tuple(monkeypatch):
    model = archcomposer.build_model("tiny-glm-4", seed=0)
    forward = type(model).forward

    def forward_dropping_the_last_field(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        return out[:-1] if isinstance(out, tuple) else out

    monkeypatch.setattr(type(model), "forward", forward_dropping_the_last_field)
    with pytest.raises(AssertionError, match="return_dict=False gave tuple of 4 items; expected a tuple like "
                                             "to_tuple\\(\\), of 5"):
        check_output_contract(model)


def test_unknown_cache_name_is_an_error():
    with pytest.raises(ValueError, match="caches: 'paged' is not a cache; expected 'dynamic' or 'static'"):
        check_cache_equivalence("tiny-glm-4", caches=("paged",))


# ---------------------------------------------------------------------------------------------
# spec_strategy


@settings(max_examples=6, deadline=None, derandomize=True)
@given(spec_strategy("tiny-glm-4", num_layers=st.integers(1, 2),
                     attention={"num_kv_heads": st.sampled_from([1, 2, 4])},
                     position=st.sampled_from([{"kind": "rope"}, {"kind": "alibi"}])))
def test_spec_strategy_varies_the_base(spec):
    assert spec.name == "tiny-glm-4" and spec.num_layers in (1, 2) and spec.attention.num_kv_heads in (1, 2, 4)
    assert spec.attention.head_dim == 16 and spec.attention.qkv_bias  # the base's other fields are kept
    if spec.position.kind == "rope":
        assert spec.position.theta == 10000.0  # partial_rope's theta carries over; its fraction is dropped
    check_cache_equivalence(spec, batch_size=1, caches=("dynamic",))


def test_spec_strategy_draws_that_do_not_validate_say_why():
    @settings(max_examples=1, deadline=None, database=None)
    @given(spec_strategy("tiny-glm-4", attention={"num_heads": 3}))
    def draw(spec):
        pass

    with pytest.raises(SpecError, match=r"num_heads \(3\) must be divisible by num_kv_heads \(2\)"):
        draw()


def test_spec_strategy_fails_at_once_for_a_bad_base():
    with pytest.raises(archcomposer.RegistryError, match="no shipped spec named 'tiny-glm-5'"):
        spec_strategy("tiny-glm-5")
    with pytest.raises(SpecError, match="vocab_size"):
        spec_strategy({**archcomposer.load_spec("tiny-glm-4").to_dict(), "vocab_size": 0})


def test_registered_unregisters_when_the_block_raises():
    registry = archcomposer.get_registry()
    with pytest.raises(RuntimeError, match="boom"), registered(BrokenBlocks(), "broken"):
        assert "step_rope" in registry.kinds["position"]
        raise RuntimeError("boom")
    assert "step_rope" not in registry.kinds["position"] and "broken" not in registry.plugins
