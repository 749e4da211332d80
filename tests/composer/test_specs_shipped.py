"""Every spec in specs/ loads; the full-size ones build on the meta device with the parameter
counts their publishers give; the tiny ones build and run on CPU, reproducibly."""

import importlib.resources

import pytest
import torch

from archcomposer import build_model, get_registry, load_spec

SPEC_DIR = importlib.resources.files("archcomposer.specs")
SPEC_FILES = sorted(p.name for p in SPEC_DIR.iterdir() if p.name.endswith(".yaml"))
TINY = [name[: -len(".yaml")] for name in SPEC_FILES if name.startswith("tiny-")]

# Published parameter counts (model cards / the reference implementations' num_parameters()).
PUBLISHED = {
    "bloom-560m": 559_214_592,
    "bloom-176b": 176_247_271_424,
    "glm-4-9b": 9_399_951_360,
    "seed-oss-36b": 36_151_104_512,
    "cpm-ant-10b": 9_517_453_312,
    "mixtral-8x7b": 46_702_792_704,
    "qwen3-30b-a3b": 30_532_122_624,
    "qwen1.5-moe-a2.7b": 14_315_784_192,
    "olmoe-1b-7b": 6_919_161_856,
    "deepseek-v3": 671_026_404_352,
}


def test_every_file_is_a_shipped_spec():
    assert len(SPEC_FILES) >= len(PUBLISHED) + 4
    shipped = get_registry().specs
    for file in SPEC_FILES:
        assert file[: -len(".yaml")] in shipped


@pytest.mark.parametrize("file", SPEC_FILES)
def test_every_file_loads_and_is_named_after_its_file(file):
    spec = load_spec(SPEC_DIR / file)
    assert spec.name == file[: -len(".yaml")]
    assert load_spec(spec.name) == spec


@pytest.mark.parametrize(("name", "count"), PUBLISHED.items())
def test_full_size_spec_has_the_published_parameter_count(name, count):
    model = build_model(name, device="meta")
    assert model.num_parameters() == count
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_tiny_spec_builds_and_runs_on_cpu(name):
    model = build_model(name, seed=0)
    spec = model.spec
    ids = torch.tensor([[5, 17, 42, 8], [9, 10, 11, 12]])
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (2, 4, spec.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert len(out.hidden_states) == spec.num_layers + 1
    generated = model.generate(ids, max_new_tokens=3)
    assert generated.shape[0] == 2 and 4 < generated.shape[1] <= 7 and torch.equal(generated[:, :4], ids)


@pytest.mark.parametrize("name", TINY)
def test_same_seed_same_weights(name):
    a, b, c = build_model(name, seed=3), build_model(name, seed=3), build_model(name, seed=4)
    a_state, b_state, c_state = a.state_dict(), b.state_dict(), c.state_dict()
    assert a_state.keys() == b_state.keys()
    assert all(torch.equal(a_state[k], b_state[k]) for k in a_state)
    assert any(not torch.equal(a_state[k], c_state[k]) for k in a_state)


@pytest.mark.parametrize("name", TINY)
def test_bfloat16_build_runs(name):
    model = build_model(name, seed=0, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7]])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
