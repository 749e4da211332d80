"""The plugin's own tests, written with archcomposer's test kit (``archcomposer.testing``). They use
the installed plugin, found through its entry point: ``pip install -e . && python -m pytest``."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archcomposer
from archcomposer.testing import check_cache_equivalence, check_output_contract, spec_strategy


def test_found_through_its_entry_point():
    registry = archcomposer.get_registry()
    assert registry.plugins["llama"].distribution == "archcomposer-llama"
    assert "llama" in registry.families
    assert "sliding_window" in registry.kinds["attention"] and "llama3_rope" in registry.kinds["position"]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-swa"])
def test_shipped_tiny_specs_keep_the_contracts(name):
    check_cache_equivalence(name)
    check_output_contract(name)


def test_llama_3_2_1b_has_the_published_size():
    assert archcomposer.build_model("llama-3.2-1b", device="meta").num_parameters() == 1_235_814_400


@settings(max_examples=8, deadline=None, derandomize=True)
@given(spec_strategy("tiny-llama", num_layers=st.integers(1, 3),
                     attention={"kind": "sliding_window", "window": st.integers(1, 6)},
                     position=st.sampled_from([{"kind": "rope"},
                                               {"kind": "llama3_rope", "original_max_positions": 8}])))
def test_sliding_window_caches_like_a_full_forward(spec):
    check_cache_equivalence(spec, prompt_length=5, new_tokens=4)
    check_output_contract(spec, seq_len=7)


@torch.no_grad()
def test_a_token_reaches_window_minus_one_positions_per_layer():
    model = archcomposer.build_model("tiny-llama-swa", seed=0)  # 2 layers, window 4: reach 2 * 3 = 6
    ids = torch.randint(3, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 0] = 3 if ids[0, 0] != 3 else 4
    diff = (model(ids).logits - model(changed).logits).abs().amax(-1)[0]  # [S]
    assert (diff[:7] > 0).all() and (diff[7:] == 0).all(), diff


def test_factors_are_checked():
    with pytest.raises(archcomposer.SpecError, match=r"high_freq_factor \(1.0\) must exceed position.low_freq_factor"):
        archcomposer.load_spec({**archcomposer.load_spec("tiny-llama").to_dict(),
                            "position": {"kind": "llama3_rope", "low_freq_factor": 2.0, "high_freq_factor": 1.0}})
