"""The spec schema: what validates, what is refused and how the error names the field (and, for a
file, the line)."""

import copy
import json
import typing
from pathlib import Path

import hypothesis
import pydantic
import pytest
import yaml
from hypothesis import given

from archcomposer import RegistryError, SpecError, build_model, get_registry, load_spec
from archcomposer.spec import BUILTIN_KINDS
from tests.strategies import HEADS, KINDS, spec_dicts

BASE = {
    "name": "t", "vocab_size": 32, "hidden_size": 16, "num_layers": 1, "max_positions": 32,
    "position": {"kind": "rope"},
    "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2},
    "norm": {"kind": "rmsnorm"},
    "mlp": {"kind": "gated", "intermediate_size": 32},
    "heads": [{"kind": "causal_lm"}],
}


def changed(**sections) -> dict:
    """BASE with top-level keys replaced and section fields merged (None deletes a key)."""
    spec = copy.deepcopy(BASE)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


def test_every_builtin_kind_is_drawn_by_the_strategies():
    builtin = {section: {typing.get_args(cls.model_fields["kind"].annotation)[0] for cls in classes}
               for section, classes in BUILTIN_KINDS.items()}
    assert builtin == {section: set(kinds) for section, kinds in KINDS.items()}
    assert all(set(kinds) <= set(get_registry().kinds[section]) for section, kinds in KINDS.items())


COVERAGE = {
    **{f"position {kind}": (lambda kind: lambda s: s["position"]["kind"] == kind)(kind) for kind in KINDS["position"]},
    **{f"norm {kind}": (lambda kind: lambda s: s["norm"]["kind"] == kind)(kind) for kind in KINDS["norm"]},
    **{f"mlp {kind}": (lambda kind: lambda s: s["mlp"]["kind"] == kind)(kind) for kind in KINDS["mlp"]},
    "partial rope, fraction not 1/2, not interleaved": lambda s: s["position"]["kind"] == "partial_rope"
    and s["position"]["fraction"] not in (0.5, 1.0) and not s["position"]["interleaved"],
    "alibi, heads not a power of two": lambda s: s["position"]["kind"] == "alibi"
    and s["attention"]["num_heads"] in (3, 6, 9),
    "unidirectional buckets": lambda s: s["position"]["kind"] == "bucket_bias" and not s["position"]["bidirectional"],
    "segment buckets": lambda s: s["position"]["kind"] == "bucket_bias" and s["position"]["segments"],
    "MQA": lambda s: s["attention"].get("num_kv_heads") == 1 and s["attention"]["num_heads"] > 1,
    "GQA": lambda s: 1 < s["attention"].get("num_kv_heads", 1) < s["attention"]["num_heads"],
    "MHA by default": lambda s: "num_kv_heads" not in s["attention"] and s["attention"]["num_heads"] > 1,
    "fused qkv with bias": lambda s: s["attention"]["fused_qkv"] and s["attention"]["qkv_bias"],
    "fused gated mlp": lambda s: s["mlp"].get("fused") is True,
    "tied": lambda s: s["embedding"]["tied"],
    "embedding norm": lambda s: s["embedding"]["norm"],
    "residual from norm": lambda s: s["residual"]["from_norm"],
    "CPM-Ant style": lambda s: "prompt" in s["embedding"] and "segments" in s["embedding"]
    and s["attention"]["mask"] == "prefix_lm",
    "prefix_lm without prompt": lambda s: s["attention"]["mask"] == "prefix_lm" and "prompt" not in s["embedding"],
    "odd head_dim": lambda s: s["attention"].get("head_dim", 2) % 2 == 1,
}


@pytest.mark.parametrize("case", COVERAGE)
def test_the_strategies_reach(case):
    no_shrinking = hypothesis.settings(max_examples=2000, database=None, phases=[hypothesis.Phase.generate])
    hypothesis.find(spec_dicts(), COVERAGE[case], settings=no_shrinking)


@given(spec=spec_dicts(heads=HEADS))
def test_drawn_specs_validate_and_round_trip(spec):
    loaded = load_spec(spec)
    assert load_spec(loaded.to_dict()) == loaded
    assert load_spec(json.loads(json.dumps(loaded.to_dict()))) == loaded
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        loaded.hidden_size = 1


def test_defaults_are_filled_in():
    spec = load_spec(changed(attention={"num_kv_heads": None}))
    assert (spec.attention.num_kv_heads, spec.attention.head_dim) == (4, 4)
    assert spec.position.theta == 10000.0 and spec.attention.mask == "causal"


def test_a_yaml_file_round_trips(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert load_spec(path) == load_spec(BASE) == load_spec(str(path))


# ---------------------------------------------------------------------------------------------
# invalid specs: the error names the field path and the values


@pytest.mark.parametrize(("spec", "message"), [
    (changed(position={"kind": "rpoe"}),
     r"\n  position.kind: Input tag 'rpoe' found using 'kind' does not match any of the expected tags: "
     r"'none', 'rope', 'partial_rope', 'alibi', 'bucket_bias'"),
    (changed(heads=[{"kind": "causal_lmm"}]), r"heads\[0\].kind: Input tag 'causal_lmm' found using 'kind'"),
    (changed(attention={"num_head": 4}), r"attention\.num_head: Extra inputs are not permitted \(got 4\)"),
    (changed(position={"thetaa": 2.0}), r"position\.thetaa: Extra inputs are not permitted"),
    (changed(layers=2), r"\n  layers: Extra inputs are not permitted"),
    (changed(attention={"num_heads": 12, "num_kv_heads": 5}),
     r"attention: num_heads \(12\) must be divisible by num_kv_heads \(5\)"),
    (changed(attention={"head_dim": 5}), r"position\.kind 'rope' needs an even attention\.head_dim, got 5"),
    (changed(position={"kind": "partial_rope", "fraction": 0.3}, attention={"head_dim": 16}),
     r"position\.fraction \(0\.3\) \* attention\.head_dim \(16\) = 4\.8 must be an even whole number"),
    (changed(position={"kind": "partial_rope", "fraction": 0.25}, attention={"head_dim": 12}),
     r"position\.fraction \(0\.25\) \* attention\.head_dim \(12\) = 3\.0 must be an even whole number"),
    (changed(embedding={"tied": True, "prompt": {"num_types": 2, "length": 3, "type": 1}}),
     r"embedding\.tied cannot be true with embedding\.prompt"),
    (changed(position={"kind": "bucket_bias", "segments": True}),
     r"position\.segments is true but embedding\.segments is not set"),
    (changed(position={"kind": "bucket_bias", "num_buckets": 3}), r"position\.num_buckets \(3\) is too small"),
    (changed(position={"kind": "bucket_bias", "num_buckets": 32, "max_distance": 8}),
     r"position\.max_distance \(8\) must exceed the 8 exact buckets"),
    (changed(attention={"num_heads": 3, "num_kv_heads": None}),
     r"hidden_size \(16\) is not divisible by attention\.num_heads \(3\); set attention\.head_dim"),
    (changed(embedding={"segments": {"num_types": 2, "token_segment": 2}}),
     r"embedding\.segments: Value error, token_segment \(2\) must be < num_types \(2\)|"
     r"embedding\.segments: token_segment \(2\) must be < num_types \(2\)"),
    (changed(mlp={"activation": "swish"}), r"mlp\.activation: Input should be 'silu', 'gelu', 'gelu_tanh' or "
                                             r"'relu' \(got 'swish'\)"),
    (changed(heads=[{"kind": "causal_lm"}, {"kind": "causal_lm"}]), r"heads lists a kind more than once"),
    (changed(pad_token_id=32), r"pad_token_id \(32\) must be in \[0, vocab_size=32\)"),
    (changed(hidden_size=0), r"hidden_size: Input should be greater than 0 \(got 0\)"),
    (changed(family="no-such-family"), r"family: unknown family 'no-such-family'; registered families: .*glm-4"),
    ({k: v for k, v in BASE.items() if k != "norm"}, r"\n  norm: Field required"),
])
def test_invalid_spec_names_the_field(spec, message):
    with pytest.raises(SpecError, match=message):
        load_spec(spec)
    with pytest.raises(SpecError, match=message):
        build_model(spec, device="meta")


def test_unknown_names_are_registry_errors():
    with pytest.raises(RegistryError, match=r"no shipped spec named 'tiny-glm4' and no such file; shipped specs: .*"
                                            r"tiny-glm-4"):
        load_spec("tiny-glm4")


def test_a_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")


YAML_WITH_ERRORS = """\
# a comment
name: bad
vocab_size: 32
hidden_size: 16
num_layers: 1
max_positions: 32
position:
  kind: rpoe
attention: {kind: gqa, num_heads: 4, num_kv_heads: 2, heads_dim: 4}
norm: {kind: rmsnorm}
mlp:
  kind: gated
  intermediate_size: -3
heads:
  - {kind: causal_lm}
"""


def test_a_file_error_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML_WITH_ERRORS)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"invalid spec {path} (3 error(s)):")
    assert f"{path}:8: position.kind: Input tag 'rpoe' found using 'kind'" in message
    assert f"{path}:9: attention.heads_dim: Extra inputs are not permitted" in message
    assert f"{path}:13: mlp.intermediate_size: Input should be greater than 0 (got -3)" in message


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\nposition: {kind: rope\nnorm: {}\n", r"bad\.yaml:3: not valid YAML: "),
    ("name: x\n  vocab_size: 3\n", r"bad\.yaml:2: not valid YAML: "),
    ("- just\n- a list\n", r"bad\.yaml: a spec is a YAML mapping of fields, got list"),
])
def test_a_file_that_is_not_a_mapping_is_a_spec_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(Path(path))


def test_errors_are_raised_before_any_tensor_is_allocated(monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was allocated for an invalid spec")

    monkeypatch.setattr(torch.nn.Linear, "__init__", refuse)
    with pytest.raises(SpecError):
        build_model(changed(attention={"num_heads": 12, "num_kv_heads": 5}))
