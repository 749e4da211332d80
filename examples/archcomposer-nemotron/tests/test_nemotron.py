"""The plugin's own tests, written with archcomposer's test kit (``archcomposer.testing``). They use
the installed plugin, found through its entry point: ``pip install -e . && python -m pytest``."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archcomposer
from archcomposer.testing import check_cache_equivalence, check_output_contract, spec_strategy


def test_found_through_its_entry_point():
    registry = archcomposer.get_registry()
    assert registry.plugins["nemotron"].distribution == "archcomposer-nemotron"
    assert "nemotron" in registry.families
    assert "layernorm1p" in registry.kinds["norm"] and "squared_relu" in registry.kinds["mlp"]


def test_shipped_tiny_spec_keeps_the_contracts():
    check_cache_equivalence("tiny-nemotron")
    check_output_contract("tiny-nemotron")


def test_nemotron_3_8b_has_the_published_size():
    assert archcomposer.build_model("nemotron-3-8b", device="meta").num_parameters() == 8_540_135_424


@settings(max_examples=8, deadline=None, derandomize=True)
@given(spec_strategy("tiny-nemotron", num_layers=st.integers(1, 3),
                     norm=st.sampled_from([{"kind": "layernorm1p"}, {"kind": "layernorm1p", "bias": False}]),
                     mlp={"kind": "squared_relu", "intermediate_size": st.integers(4, 32), "bias": st.booleans()}))
def test_the_blocks_cache_like_a_full_forward(spec):
    check_cache_equivalence(spec, prompt_length=5, new_tokens=4)
    check_output_contract(spec, seq_len=7)


def test_a_zero_initialised_norm_scale_is_the_identity_scale():
    model = archcomposer.build_model("tiny-nemotron", seed=0)
    norm = model.layers[0].attn_norm
    assert torch.equal(norm.weight, torch.zeros_like(norm.weight))
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(x, (64,), eps=norm.eps))


def test_squared_relu_squares_the_positive_part():
    model = archcomposer.build_model("tiny-nemotron", seed=0)
    mlp = model.layers[0].mlp
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(mlp(x), mlp.down(torch.relu(mlp.up(x)) ** 2))
