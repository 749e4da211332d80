"""The spec schema: what validates, what is refused and how the error names the field (and, for a
file, the line)."""

import copy
import json
import math
import typing
from pathlib import Path

import hypothesis
import pydantic
import pytest
import yaml
from hypothesis import given

from archcomposer import RegistryError, SpecError, build_model, get_registry, load_spec
from archcomposer.spec import BUILTIN_KINDS, RopeScalingKind
from tests.strategies import HEADS, KINDS, SCALINGS, spec_dicts

BASE = {
    "name": "t", "vocab_size": 32, "hidden_size": 16, "num_layers": 1, "max_positions": 32,
    "position": {"kind": "rope"},
    "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2},
    "norm": {"kind": "rmsnorm"},
    "mlp": {"kind": "gated", "intermediate_size": 32},
    "heads": [{"kind": "causal_lm"}],
}


CPM_ANT_EMBEDDING = {"kind": "prompt_segments", "prompt": {"num_types": 2, "length": 3, "type": 1},
                     "segments": {"num_types": 3}}


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
    **{f"embedding {kind}": (lambda kind: lambda s: s["embedding"]["kind"] == kind)(kind)
       for kind in KINDS["embedding"]},
    **{f"wiring {kind}": (lambda kind: lambda s: s["wiring"]["kind"] == kind)(kind) for kind in KINDS["wiring"]},
    **{f"layers selected by {selector}": (lambda sel: lambda s: any(sel in e for e in s.get("layers", [])))(selector)
       for selector in ("range", "every", "indices", "type")},
    **{f"layers changing {section}": (lambda sec: lambda s: any(sec in e for e in s.get("layers", [])))(section)
       for section in ("position", "attention", "norm", "mlp", "wiring")},
    "a layer with another position kind": lambda s: any(
        e.get("position", {}).get("kind", s["position"]["kind"]) != s["position"]["kind"]
        for e in s.get("layers", [])),
    "partial rope, fraction not 1/2, not interleaved": lambda s: s["position"]["kind"] == "partial_rope"
    and s["position"]["fraction"] not in (0.5, 1.0) and not s["position"]["interleaved"],
    "alibi, heads not a power of two": lambda s: s["position"]["kind"] == "alibi"
    and s["attention"]["num_heads"] in (3, 6, 9),
    "unidirectional buckets": lambda s: s["position"]["kind"] == "bucket_bias" and not s["position"]["bidirectional"],
    "segment buckets": lambda s: s["position"]["kind"] == "bucket_bias" and s["position"]["segments"],
    "MQA": lambda s: s["attention"].get("num_kv_heads") == 1 and s["attention"]["num_heads"] > 1,
    "GQA": lambda s: 1 < s["attention"].get("num_kv_heads", 1) < s["attention"]["num_heads"],
    "MHA by default": lambda s: "num_kv_heads" not in s["attention"] and s["attention"]["num_heads"] > 1,
    "fused qkv with bias": lambda s: s["attention"].get("fused_qkv") and s["attention"]["qkv_bias"],
    "mla with a q bottleneck": lambda s: s["attention"].get("q_lora_rank") is not None,
    "mla with a plain q projection, bias": lambda s: s["attention"]["kind"] == "mla"
    and "q_lora_rank" not in s["attention"] and s["attention"]["bias"],
    "mla with value heads wider than query heads": lambda s: s["attention"]["kind"] == "mla"
    and s["attention"]["v_head_dim"] > s["attention"]["qk_nope_head_dim"] + s["attention"]["qk_rope_head_dim"],
    "mla under yarn with mscale_all_dim": lambda s: s["attention"]["kind"] == "mla"
    and s["position"].get("scaling", {}).get("mscale_all_dim") is not None and "scale" not in s["attention"],
    "a layer with mla's q bottleneck changed": lambda s: s["attention"]["kind"] == "mla"
    and any("q_lora_rank" in e.get("attention", {}) for e in s.get("layers", [])),
    "fused gated mlp": lambda s: s["mlp"].get("fused") is True,
    "tied": lambda s: s["embedding"].get("tied"),
    "embedding norm": lambda s: s["embedding"].get("norm"),
    "embedding scaled by sqrt(hidden_size)": lambda s: s["embedding"].get("scale") == "sqrt_hidden_size",
    "learned positions with an offset": lambda s: s["embedding"].get("learned_positions", {}).get("offset", 0) > 0,
    "residual from norm": lambda s: s["wiring"].get("residual_from_norm"),
    "parallel with two norms": lambda s: s["wiring"]["kind"] == "parallel" and not s["wiring"]["shared_norm"],
    "no final norm": lambda s: not s["final_norm"],
    "odd head_dim": lambda s: s["attention"].get("head_dim", 2) % 2 == 1,
    "sliding window of 1": lambda s: s["attention"].get("sliding_window") == 1,
    "sliding window of 5": lambda s: s["attention"].get("sliding_window") == 5,
    "a layer with another sliding window": lambda s: any(
        e.get("attention", {}).get("sliding_window", -1) not in (-1, s["attention"].get("sliding_window"))
        for e in s.get("layers", [])),
    **{f"attention {field}": (lambda f: lambda s: f in s["attention"])(field)
       for field in ("scale", "softcap", "clip_qkv")},
    **{f"qk_norm scope {scope}": (lambda sc: lambda s: s["attention"].get("qk_norm", {}).get("scope") == sc)(scope)
       for scope in ("head", "per_head", "projection")},
    "qk_norm per head with the layer's norm": lambda s: s["attention"].get("qk_norm", {}).get("scope") == "per_head"
    and "norm" not in s["attention"]["qk_norm"],
    "qk_norm with a norm of its own": lambda s: "norm" in s["attention"].get("qk_norm", {}),
    "layernorm without parameters": lambda s: s["norm"]["kind"] == "layernorm" and not s["norm"]["affine"],
    "rmsnorm without parameters": lambda s: s["norm"]["kind"] == "rmsnorm" and not s["norm"]["affine"],
    "rmsnorm with unit offset": lambda s: s["norm"].get("unit_offset"),
    "alibi scaled, max_bias not 8": lambda s: s["position"]["kind"] == "alibi" and s["position"]["scaled"]
    and s["position"]["max_bias"] != 8,
    "lm head scaled and capped": lambda s: s["heads"][0].get("logit_scale") != 1 and "softcap" in s["heads"][0],
    "residual scale": lambda s: s["wiring"]["residual_scale"] != 1,
    "a layer with another attention scale": lambda s: any("scale" in e.get("attention", {})
                                                          for e in s.get("layers", [])),
}


@pytest.mark.parametrize("case", COVERAGE)
def test_the_strategies_reach(case):
    no_shrinking = hypothesis.settings(max_examples=2000, database=None, phases=[hypothesis.Phase.generate])
    hypothesis.find(spec_dicts(), COVERAGE[case], settings=no_shrinking)


@given(spec=spec_dicts(heads=HEADS, length_dependent=True))
def test_drawn_specs_validate_and_round_trip(spec):
    loaded = load_spec(spec)
    assert load_spec(loaded.to_dict()) == loaded
    assert load_spec(json.loads(json.dumps(loaded.to_dict()))) == loaded
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        loaded.hidden_size = 1


def test_defaults_are_filled_in():
    spec = load_spec(changed(attention={"num_kv_heads": None}))
    assert (spec.attention.num_kv_heads, spec.attention.head_dim) == (4, 4)
    assert spec.position.theta == 10000.0
    assert (spec.embedding.kind, spec.embedding.tied, spec.wiring.kind, spec.final_norm) == \
        ("tokens", False, "pre_norm", True)


def test_option_defaults_change_nothing():
    spec = load_spec(changed(position={"kind": "alibi"}))
    a, n, w, h = spec.attention, spec.norm, spec.wiring, spec.heads[0]
    assert (a.scale, a.softcap, a.clip_qkv, a.qk_norm, a.score_scale) == (None, None, None, None, 4**-0.5)
    assert (n.unit_offset, n.affine, w.residual_scale, h.logit_scale, h.softcap) == (False, True, 1.0, 1.0, None)
    assert (spec.position.max_bias, spec.position.scaled) == (8.0, False)


def test_a_layernorm_without_parameters_has_no_bias_unless_asked():
    spec = load_spec(changed(norm={"kind": "layernorm", "affine": False}))
    assert (spec.norm.affine, spec.norm.bias) == (False, False)
    assert load_spec(spec.to_dict()) == spec


def test_qk_norm_takes_the_layer_norm_or_its_own_through_the_registered_kinds():
    spec = load_spec(changed(attention={"qk_norm": {"scope": "per_head", "norm": {"kind": "layernorm",
                                                                                  "bias": False}}}))
    qk_norm = spec.attention.qk_norm
    assert type(qk_norm.norm).__name__ == "LayerNormSpec" and (qk_norm.norm.bias, qk_norm.norm.eps) == (False, 1e-5)
    assert spec.to_dict()["attention"]["qk_norm"] == {"scope": "per_head", "norm": {
        "kind": "layernorm", "eps": 1e-5, "bias": False, "affine": True}}
    assert load_spec(spec.to_dict()) == spec
    assert hash(spec.attention) == hash(load_spec(spec.to_dict()).attention)
    assert load_spec(changed(attention={"qk_norm": {}})).attention.qk_norm.scope == "head"


def test_a_layers_entry_changes_the_qk_norm_of_some_layers():
    spec = load_spec(changed(num_layers=2, layers=[{"indices": [1], "attention": {"qk_norm": {"scope": "projection"}}}]))
    first, second = (layer.attention for layer in spec.layer_specs)
    assert first.qk_norm is None and second.qk_norm.scope == "projection" and second.qk_norm.norm is None


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
    (changed(layer=2), r"\n  layer: Extra inputs are not permitted"),
    (changed(attention={"num_heads": 12, "num_kv_heads": 5}),
     r"attention: num_heads \(12\) must be divisible by num_kv_heads \(5\)"),
    (changed(attention={"head_dim": 5}), r"position\.kind 'rope' needs an even attention\.head_dim, got 5"),
    (changed(position={"kind": "partial_rope", "fraction": 0.3}, attention={"head_dim": 16}),
     r"position\.fraction \(0\.3\) \* attention\.head_dim \(16\) = 4\.8 must be an even whole number"),
    (changed(position={"kind": "partial_rope", "fraction": 0.25}, attention={"head_dim": 12}),
     r"position\.fraction \(0\.25\) \* attention\.head_dim \(12\) = 3\.0 must be an even whole number"),
    (changed(embedding=CPM_ANT_EMBEDDING | {"tied": True}),
     r"embedding\.tied cannot be true with embedding\.kind 'prompt_segments'"),
    (changed(embedding={"kind": "tokens", "prompt": {"num_types": 2, "length": 3}}),
     r"embedding\.prompt: Extra inputs are not permitted"),
    (changed(embedding={"tied": True}), r"embedding\.kind: Unable to extract tag using discriminator 'kind'"),
    (changed(position={"kind": "bucket_bias", "segments": True}),
     r"position\.segments is true but embedding\.kind 'tokens' gives no segment ids"),
    (changed(position={"kind": "bucket_bias", "num_buckets": 3}), r"position\.num_buckets \(3\) is too small"),
    (changed(position={"kind": "bucket_bias", "num_buckets": 32, "max_distance": 8}),
     r"position\.max_distance \(8\) must exceed the 8 exact buckets"),
    (changed(attention={"sliding_window": 0}), r"attention\.sliding_window: Input should be greater than 0 \(got 0\)"),
    (changed(attention={"num_heads": 3, "num_kv_heads": None}),
     r"hidden_size \(16\) is not divisible by attention\.num_heads \(3\); set attention\.head_dim"),
    (changed(embedding=CPM_ANT_EMBEDDING | {"segments": {"num_types": 2, "token_segment": 2}}),
     r"embedding\.segments: Value error, token_segment \(2\) must be < num_types \(2\)|"
     r"embedding\.segments: token_segment \(2\) must be < num_types \(2\)"),
    (changed(mlp={"activation": "swish"}), r"mlp\.activation: Input should be 'silu', 'gelu', 'gelu_tanh' or "
                                             r"'relu' \(got 'swish'\)"),
    (changed(heads=[{"kind": "causal_lm"}, {"kind": "causal_lm"}]), r"heads lists a kind more than once"),
    (changed(pad_token_id=32), r"pad_token_id: token id 32 is not in the vocabulary: ids are 0 to vocab_size - 1 = 31"),
    (changed(hidden_size=0), r"hidden_size: Input should be greater than 0 \(got 0\)"),
    (changed(family="no-such-family"), r"family: unknown family 'no-such-family'; registered families: .*glm-4"),
    ({k: v for k, v in BASE.items() if k != "norm"}, r"\n  norm: Field required"),
    (changed(norm={"unit_offset": True, "affine": False}),
     r"norm: norm\.unit_offset is true but norm\.affine is false"),
    (changed(norm={"kind": "layernorm", "bias": True, "affine": False}),
     r"norm: norm\.bias is true but norm\.affine is false"),
    (changed(attention={"qk_norm": {"scope": "heads"}}),
     r"attention\.qk_norm\.scope: Input should be 'head', 'per_head' or 'projection' \(got 'heads'\)"),
    (changed(attention={"qk_norm": {"norm": {"kind": "rms"}}}),
     r"attention\.qk_norm\.norm: kind: Input tag 'rms' found using 'kind' does not match any of the expected tags: "
     r"'layernorm', 'rmsnorm'"),
    (changed(attention={"qk_norm": {"norm": {"kind": "rmsnorm", "epsilon": 1e-6}}}),
     r"attention\.qk_norm\.norm: epsilon: Extra inputs are not permitted \(got 1e-06\)"),
    (changed(norm={"kind": "layernorm", "affine": False}, attention={"qk_norm": {"scope": "per_head"}}),
     r"attention\.qk_norm\.scope 'per_head' gives each head its own norm weights, but norm \(kind 'layernorm', "
     r"affine false\) learns none"),
    (changed(attention={"qk_norm": {"scope": "per_head", "norm": {"kind": "rmsnorm", "affine": False}}}),
     r"but attention\.qk_norm\.norm \(kind 'rmsnorm', affine false\) learns none"),
    (changed(layers=[{"indices": [0], "norm": {"affine": False}}], attention={"qk_norm": {"scope": "per_head"}}),
     r"layer 0 \(as the layers entries make it\): attention\.qk_norm\.scope 'per_head'"),
    (changed(attention={"softcap": 0}), r"attention\.softcap: Input should be greater than 0 \(got 0\)"),
    (changed(attention={"clip_qkv": -1.0}), r"attention\.clip_qkv: Input should be greater than 0"),
    (changed(heads=[{"kind": "causal_lm", "logit_scale": 0}]), r"heads\[0\]\.logit_scale: Input should be greater"),
    (changed(wiring={"kind": "parallel", "residual_scale": -0.5}), r"wiring\.residual_scale: Input should be greater"),
    (changed(position={"kind": "alibi", "max_bias": 0}), r"position\.max_bias: Input should be greater than 0"),
])
def test_invalid_spec_names_the_field(spec, message):
    with pytest.raises(SpecError, match=message):
        load_spec(spec)
    with pytest.raises(SpecError, match=message):
        build_model(spec, device="meta")


@pytest.mark.parametrize(("spec", "message"), [
    (changed(attention={"num_head": 4}),
     r"\n  attention\.num_head: Extra inputs are not permitted \(got 4\); did you mean 'num_heads'\?$"),
    (changed(vocab_sise=64), r"\n  vocab_sise: Extra inputs are not permitted \(got 64\); did you mean 'vocab_size'\?"),
    (changed(mlp={"intermediat_size": 8}), r"mlp\.intermediat_size: .*; did you mean 'intermediate_size'\?"),
    (changed(heads=[{"kind": "causal_lm", "bais": True}]), r"heads\[0\]\.bais: .*; did you mean 'bias'\?"),
    (changed(embedding={"kind": "tokens", "learned_positions": {"ofset": 2}}),
     r"embedding\.learned_positions\.ofset: .*; did you mean 'offset'\?"),
    (changed(position={"scaling": {"type": "yarn", "factor": 2.0, "betta_fast": 8}}),
     r"position\.scaling\.betta_fast: .*; did you mean 'beta_fast'\?"),
    (changed(position={"kind": "rpoe"}), r"\(got 'rpoe'\); did you mean 'rope'\?"),
    (changed(heads=[{"kind": "causal_lmm"}]), r"\(got 'causal_lmm'\); did you mean 'causal_lm'\?"),
    (changed(position={"scaling": {"type": "yran", "factor": 2.0}}), r"\(got 'yran'\); did you mean 'yarn'\?"),
])
def test_a_misspelled_key_or_kind_suggests_the_closest(spec, message):
    with pytest.raises(SpecError, match=message):
        load_spec(spec)


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(SpecError) as info:
        load_spec(changed(zzz=1, position={"kind": "qqq"}))
    assert str(info.value).endswith("(got 'qqq')\n  zzz: Extra inputs are not permitted (got 1)")
    assert "did you mean" not in str(info.value)


def test_a_misspelled_key_in_a_file_gets_its_line_and_a_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML_WITH_ERRORS)
    with pytest.raises(SpecError, match=rf"{path}:9: attention\.heads_dim: Extra inputs are not permitted "
                                        rf"\(got 4\); did you mean 'head_dim'\?"):
        load_spec(path)


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


# ---------------------------------------------------------------------------------------------
# per-layer differences


def layered(layers, num_layers=6, **fields) -> dict:
    return changed(num_layers=num_layers, layers=layers, **fields)


def test_each_selector_picks_its_layers():
    spec = load_spec(layered([
        {"range": [0, 2], "mlp": {"intermediate_size": 8}},
        {"every": 3, "offset": 2, "position": {"kind": "none"}},
        {"indices": [5], "attention": {"num_kv_heads": 4}},
        {"type": "global", "position": {"theta": 1e6}},
    ], layer_types=["local", "local", "local", "global", "local", "local"]))
    layers = spec.layer_specs
    assert [layer.mlp.intermediate_size for layer in layers] == [8, 8, 32, 32, 32, 32]
    assert [layer.position.kind for layer in layers] == ["rope", "rope", "none", "rope", "rope", "none"]
    assert [getattr(layer.position, "theta", None) for layer in layers] == [1e4, 1e4, None, 1e6, 1e4, None]
    assert [layer.attention.num_kv_heads for layer in layers] == [2, 2, 2, 2, 2, 4]
    assert layers[5].attention.head_dim == 4  # other fields kept from the spec's attention
    assert layers[0] is layers[1] and layers[3] is not layers[4]  # layers changed by the same entries share one


def test_a_section_with_another_kind_replaces_it_and_fields_merge_otherwise():
    spec = load_spec(layered([{"indices": [1], "position": {"kind": "partial_rope", "fraction": 0.5}},
                              {"indices": [2], "mlp": {"kind": "plain", "intermediate_size": 16}},
                              {"indices": [2], "mlp": {"activation": "relu"}}], num_layers=3))
    one, two = spec.layer_specs[1:]
    assert (one.position.kind, one.position.theta, one.position.fraction) == ("partial_rope", 10000.0, 0.5)
    assert (two.mlp.kind, two.mlp.intermediate_size, two.mlp.activation) == ("plain", 16, "relu")  # later wins
    assert spec.layer_specs[0].mlp.kind == "gated" and spec.mlp.kind == "gated"


def test_layers_round_trip_and_build_different_blocks():
    data = layered([{"every": 2, "attention": {"num_kv_heads": 1}, "wiring": {"kind": "parallel"}}], num_layers=3)
    spec = load_spec(data)
    assert load_spec(spec.to_dict()) == spec
    model = build_model(spec, device="meta")
    assert [type(layer).__name__ for layer in model.layers] == ["ParallelLayer", "SequentialLayer", "ParallelLayer"]
    assert [layer.attention.num_kv_heads for layer in model.layers] == [1, 2, 1]


@pytest.mark.parametrize(("layers", "extra", "message"), [
    ([{"range": [0, 2], "every": 2, "mlp": {"bias": True}}], {},
     r"layers\[0\]: give exactly one of range, every, indices, type to select layers; got \['range', 'every'\]"),
    ([{"mlp": {"bias": True}}], {}, r"layers\[0\]: give exactly one of .* got none"),
    ([{"indices": [1]}], {}, r"layers\[0\]: changes nothing"),
    ([{"indices": [1], "offset": 1, "mlp": {"bias": True}}], {}, r"offset goes with every"),
    ([{"range": [3, 3], "mlp": {"bias": True}}], {}, r"range \[3, 3\] is empty"),
    ([{"range": [2, 9], "mlp": {"bias": True}}], {},
     r"layers\[0\]\.range: range \[2, 9\] reaches past the last layer \(num_layers = 6\)"),
    ([{"indices": [6], "mlp": {"bias": True}}], {}, r"layers\[0\]\.indices: indices \[6\] name a layer past the last"),
    ([{"every": 2, "offset": 6, "mlp": {"bias": True}}], {}, r"layers\[0\]\.offset: offset 6 selects no layer"),
    ([{"type": "global", "mlp": {"bias": True}}], {}, r"layers\[0\]\.type: type 'global' is not among layer_types"),
    ([], {"layer_types": ["a", "b"]}, r"layer_types: layer_types has 2 entries; expected one per layer"),
    ([{"indices": [0], "mlp": {"bias": 3}}], {}, r"layers\[0\]\.mlp\.bias: Input should be a valid boolean.*\(layer 0\)"),
    ([{"indices": [1], "attention": {"sliding_window": -2}}], {},
     r"layers\[0\]\.attention\.sliding_window: Input should be greater than 0 \(layer 1\)"),
    ([{"indices": [3], "attention": {"num_kv_heads": 3}}], {},
     r"layers\[0\]\.attention: num_heads \(4\) must be divisible by num_kv_heads \(3\) \(layer 3\)"),
    ([{"indices": [1], "mlp": {"kind": "gatd"}}], {}, r"layers\[0\]\.mlp\.kind: Input tag 'gatd' found using 'kind' does not match.*\(layer 1\)"),
    ([{"indices": [4], "attention": {"head_dim": 5}}], {},
     r"layer 4 \(as the layers entries make it\): position\.kind 'rope' needs an even attention\.head_dim, got 5"),
])
def test_bad_layer_entries_name_the_entry_and_the_layer(layers, extra, message):
    with pytest.raises(SpecError, match=message):
        load_spec(layered(layers, **extra))


def test_a_layer_error_in_a_file_reports_its_line(tmp_path):
    path = tmp_path / "layered.yaml"
    path.write_text(yaml.safe_dump(BASE | {"num_layers": 4}, sort_keys=False)
                    + "layers:\n  - every: 2\n    attention:\n      num_kv_heads: 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    line = len(yaml.safe_dump(BASE | {"num_layers": 4}, sort_keys=False).splitlines()) + 3
    assert f"{path}:{line}: layers[0].attention: num_heads (4) must be divisible by num_kv_heads (3) (layer 0)" \
        in str(info.value)


def test_the_readme_layers_example_validates():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Layers that differ", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    spec = load_spec({**BASE, **example, "mlp": {"kind": "gated", "intermediate_size": 32}})
    assert [getattr(layer.position, "theta", None) for layer in spec.layer_specs] == [1e4, 1e4, 1e4, None, 1e4, 1e6]
    assert spec.layer_specs[0].mlp.intermediate_size == 18432


def test_the_readme_options_example_validates():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Options of the dense families", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    spec = load_spec({**BASE, **example, "hidden_size": 64})
    a = spec.attention
    assert (a.score_scale, a.softcap, a.clip_qkv, a.qk_norm.scope, a.qk_norm.norm.bias) == (0.0625, 50, 8, "head", False)
    assert (spec.norm.unit_offset, spec.position.scaled, spec.wiring.residual_scale) == (True, False, 0.22)
    assert (spec.heads[0].logit_scale, spec.heads[0].softcap) == (0.0625, 30)
    build_model(spec, device="meta")


# ---------------------------------------------------------------------------------------------
# RoPE scalings


def test_every_rope_scaling_is_drawn_by_the_strategies():
    members = typing.get_args(typing.get_args(RopeScalingKind)[0])
    assert {typing.get_args(cls.model_fields["type"].annotation)[0] for cls in members} == set(SCALINGS)


@pytest.mark.parametrize("scaling", [*SCALINGS, "any, in a layers entry"])
def test_the_strategies_reach_each_rope_scaling(scaling):
    def found(spec):
        if scaling in SCALINGS:
            return spec["position"].get("scaling", {}).get("type") == scaling
        return any("scaling" in entry.get("position", {}) for entry in spec.get("layers", []))

    no_shrinking = hypothesis.settings(max_examples=2000, database=None, phases=[hypothesis.Phase.generate])
    hypothesis.find(spec_dicts(length_dependent=True), found, settings=no_shrinking)
    if scaling != "dynamic":  # the default draws, for properties across lengths, have the others
        hypothesis.find(spec_dicts(), found, settings=no_shrinking)


@pytest.mark.parametrize(("position", "head_dim", "message"), [
    ({"scaling": {"type": "yran", "factor": 2.0}}, 4,
     r"\n  position.scaling.type: Input tag 'yran' found using 'type' does not match any of the expected tags: "
     r"'linear', 'dynamic', 'yarn', 'longrope', 'llama3'"),
    ({"scaling": {"factor": 2.0}}, 4, r"position\.scaling\.type: Unable to extract tag using discriminator 'type'"),
    ({"scaling": {"type": "yarn"}}, 4, r"position\.scaling\.factor: Field required"),
    ({"scaling": {"type": "linear", "factor": 0}}, 4, r"position\.scaling\.factor: Input should be greater than 0"),
    ({"scaling": {"type": "yarn", "factor": 2.0, "betta_fast": 8}}, 4,
     r"position\.scaling\.betta_fast: Extra inputs are not permitted"),
    ({"scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0, 2.0, 3.0, 4.0]}}, 8,
     r"position.scaling.short_factor has 1 entries; expected one per rotated channel pair, rotary_dim / 2 = 4"),
    ({"kind": "partial_rope", "fraction": 0.5, "scaling": {"type": "longrope", "short_factor": [1.0] * 4,
                                                          "long_factor": [1.0] * 4}}, 8,
     r"position.scaling.short_factor has 4 entries; expected one per rotated channel pair, rotary_dim / 2 = 2"),
    ({"scaling": {"type": "dynamic", "factor": 2.0}}, 2,
     r"position.scaling.type 'dynamic' needs at least 4 rotated channels .*, got 2"),
    ({"scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 4.0}}, 4,
     r"position.scaling: high_freq_factor \(4.0\) must exceed low_freq_factor \(4.0\)"),
])
def test_an_invalid_rope_scaling_names_the_field(position, head_dim, message):
    spec = changed(position=position, attention={"head_dim": head_dim})
    with pytest.raises(SpecError, match=message):
        load_spec(spec)


def test_a_rope_scaling_error_in_a_file_reports_its_line(tmp_path):
    path = tmp_path / "scaled.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in BASE.items() if k != "position"}, sort_keys=False)
                    + "position:\n  kind: rope\n  scaling:\n    type: yarn\n    factor: -2\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    line = len(yaml.safe_dump({k: v for k, v in BASE.items() if k != "position"}, sort_keys=False).splitlines()) + 5
    assert f"{path}:{line}: position.scaling.factor: Input should be greater than 0" in str(info.value)


def test_a_scaled_spec_round_trips_and_fills_in_its_defaults():
    spec = load_spec(changed(position={"scaling": {"type": "yarn", "factor": 4.0}}))
    assert spec.position.scaling.beta_fast == 32.0 and spec.position.scaling.original_max_positions is None
    assert load_spec(spec.to_dict()) == spec
    assert spec.to_dict()["position"]["scaling"] == {"type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                                     "beta_slow": 1.0, "truncate": True}
    rotary = build_model(spec.to_dict(), device="meta").positions[0]
    assert rotary.scaling.original_max_positions == 32 and rotary.attention_factor == pytest.approx(1.1386, abs=1e-4)


def test_the_readme_scaling_examples_validate():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("### RoPE scaling", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    for line in block.splitlines():
        spec = load_spec({**BASE, **yaml.safe_load(line)})
        assert spec.position.scaling.type in ("llama3", "yarn")


def test_the_readme_sliding_window_example_validates():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Sliding-window attention", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    spec = load_spec({**BASE, **example, "hidden_size": 32})
    assert [layer.attention.sliding_window for layer in spec.layer_specs] == [4096, None, 4096, None]


def test_the_readme_latent_attention_example_validates_with_deepseek_v3s_scale_and_cache_bytes():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Multi-head latent attention", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    spec = load_spec({**BASE, **example, "hidden_size": 7168, "max_positions": 163840})
    assert spec.attention.kv_bytes_per_token(1) == 512 + 64
    attention = build_model(spec, device="meta").layers[0].attention
    mscale = 0.1 * math.log(40.0) + 1.0  # DeepSeek-V3's mscale_all_dim 1 at factor 40
    assert attention.scale == pytest.approx(192**-0.5 * mscale**2) and attention.scale != 192**-0.5


def test_mla_without_yarn_or_with_an_explicit_scale_keeps_it():
    mla = {"kind": "mla", "num_heads": 2, "kv_lora_rank": 4, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4,
           "v_head_dim": 3}
    yarn = {"kind": "rope", "scaling": {"type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 1.0}}
    assert build_model({**BASE, "attention": mla}, device="meta").layers[0].attention.scale == 8**-0.5
    scaled = build_model({**BASE, "position": yarn, "attention": {**mla, "scale": 0.5}}, device="meta")
    assert scaled.layers[0].attention.scale == 0.5
    with pytest.raises(SpecError, match="num_kv_heads"):
        load_spec({**BASE, "attention": {**mla, "num_kv_heads": 2}})


def test_the_readme_mixture_of_experts_examples_validate():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Mixture of experts", 1)[1].split("\n## ", 1)[0]
    qwen2_moe, mixed = (yaml.safe_load(block.split("```", 1)[0]) for block in section.split("```yaml\n")[1:3])
    spec = load_spec({**BASE, **qwen2_moe})
    assert (spec.mlp.num_experts, spec.mlp.top_k, spec.mlp.router.normalize, spec.mlp.shared_expert.gated) == \
        (60, 4, False, True)
    spec = load_spec({**BASE, **mixed, "num_layers": 6})
    assert [(layer.mlp.kind, layer.mlp.intermediate_size) for layer in spec.layer_specs] == \
        [("gated", 18432)] * 3 + [("moe", 768), ("moe", 768), ("gated", 6144)]
