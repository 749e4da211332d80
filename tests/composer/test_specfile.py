"""Spec files that extend others, the merge rules, errors that point into the right file, and the
same merge from Python (``load_spec``/``build_model`` keyword overrides)."""

from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings

from archcomposer import SpecError, build_model, get_registry, load_spec
from archcomposer.specfile import Source, merge, read_spec_file, read_yaml
from archcomposer.testing import spec_strategy

GLM = load_spec("glm-4-9b")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def merged(base, over):
    return merge((base, Source.of_data(base, "base")), (over, Source.of_data(over, "over")))[0]


def test_mappings_merge_lists_and_values_replace_and_a_new_kind_replaces_its_section():
    base = {"a": 1, "position": {"kind": "rope", "theta": 1.0, "scaling": {"type": "linear", "factor": 2.0}},
            "heads": [{"kind": "causal_lm"}, {"kind": "question_answering"}], "eos_token_id": [1, 2]}
    assert merged(base, {"position": {"theta": 5.0}, "heads": [{"kind": "causal_lm"}], "eos_token_id": 3}) == {
        "a": 1, "position": {"kind": "rope", "theta": 5.0, "scaling": {"type": "linear", "factor": 2.0}},
        "heads": [{"kind": "causal_lm"}], "eos_token_id": 3}
    assert merged(base, {"position": {"kind": "alibi"}})["position"] == {"kind": "alibi"}
    assert merged(base, {"position": {"kind": "rope", "scaling": {"type": "yarn", "factor": 4.0}}})["position"] == {
        "kind": "rope", "theta": 1.0, "scaling": {"type": "yarn", "factor": 4.0}}
    assert merged(base, {"position": {"scaling": None}})["position"]["scaling"] is None
    # CPM-Ant's prompt ``type`` is a number, not a kind: it merges
    prompt = {"embedding": {"prompt": {"num_types": 2, "length": 3, "type": 1}}}
    assert merged(prompt, {"embedding": {"prompt": {"type": 0}}})["embedding"]["prompt"] == {
        "num_types": 2, "length": 3, "type": 0}
    assert base["position"]["theta"] == 1.0  # the inputs are left as they were


def test_a_five_line_file_extends_a_shipped_spec(tmp_path):
    path = write(tmp_path / "ablation.yaml", "extends: glm-4-9b\nname: glm-4-alibi-2l\nnum_layers: 2\n"
                                             "position: {kind: alibi}\nattention: {num_kv_heads: 4}\n")
    spec = load_spec(path)
    assert (spec.name, spec.num_layers, spec.position.kind) == ("glm-4-alibi-2l", 2, "alibi")
    assert spec.attention == GLM.attention.model_copy(update={"num_kv_heads": 4})
    assert spec.model_dump(exclude={"name", "num_layers", "position", "attention"}) == \
        GLM.model_dump(exclude={"name", "num_layers", "position", "attention"})


def test_the_readme_extends_example_is_the_spec_it_describes(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Extending a spec", 1)[1].split("\n## ", 1)[0]
    path = write(tmp_path / "example.yaml", section.split("```yaml\n", 1)[1].split("```", 1)[0])
    spec = load_spec(path)
    assert (spec.num_layers, spec.position.kind, spec.attention.num_kv_heads) == (2, "alibi", 4)
    assert spec.attention.qkv_bias and spec.mlp == GLM.mlp


def test_a_relative_path_is_relative_to_the_extending_file_and_chains_merge_in_order(tmp_path, monkeypatch):
    write(tmp_path / "bases" / "base.yaml", "extends: tiny-glm-4\nname: base\nnum_layers: 3\n"
                                            "mlp: {intermediate_size: 96}\n")
    write(tmp_path / "bases" / "middle.yaml", "extends: base.yaml\nname: middle\nnum_layers: 4\n"
                                              "position: {theta: 500.0}\n")
    child = write(tmp_path / "variants" / "child.yaml", "extends: ../bases/middle.yaml\nname: child\n"
                                                        "mlp: {activation: gelu}\n")
    monkeypatch.chdir(tmp_path / "bases")  # not where the paths are resolved from
    spec = load_spec(child)
    assert (spec.name, spec.num_layers, spec.position.theta, spec.position.fraction) == ("child", 4, 500.0, 0.5)
    assert (spec.mlp.intermediate_size, spec.mlp.activation, spec.mlp.fused) == (96, "gelu", True)


def test_a_file_beside_the_extending_one_wins_over_a_shipped_name(tmp_path):
    write(tmp_path / "tiny-glm-4", "extends: tiny-seed-oss\nname: local\n")
    spec = load_spec(write(tmp_path / "child.yaml", "extends: tiny-glm-4\nnum_layers: 1\n"))
    assert (spec.name, spec.family, spec.num_layers) == ("local", "seed-oss", 1)


def test_a_bad_value_is_reported_in_the_file_and_at_the_line_it_was_written(tmp_path):
    base = write(tmp_path / "base.yaml", "extends: tiny-glm-4\n\nnorm:\n  eps: -1.0\nlayer_types: [a, b]\n")
    child = write(tmp_path / "child.yaml", "# an ablation\nextends: base.yaml\nname: child\n"
                                           "mlp:\n  activation: swish\n")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    message = str(info.value)
    assert message.startswith(f"invalid spec {child} (2 error(s)):")
    assert f"  {base}:4: norm.eps: Input should be greater than 0 (got -1.0)" in message
    assert f"  {child}:5: mlp.activation: Input should be 'silu', 'gelu', 'gelu_tanh' or 'relu' (got 'swish')" \
        in message
    # a rule over fields of both files is reported at the field it names, in the file that wrote it
    deeper = write(tmp_path / "deeper.yaml", "extends: base.yaml\nnorm: {eps: 1.0e-5}\nnum_layers: 3\n")
    with pytest.raises(SpecError, match=rf"\n  {base}:5: layer_types: layer_types has 2 entries; expected one per "
                                        rf"layer, num_layers = 3$"):
        load_spec(deeper)


def test_an_error_inside_a_replaced_or_merged_section_points_at_the_file_that_wrote_it(tmp_path):
    child = write(tmp_path / "child.yaml", "extends: tiny-glm-4\nposition:\n  kind: alibi\n  fraction: 0.5\n"
                                           "attention:\n  num_kv_heads: 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    message = str(info.value)
    assert f"{child}:4: position.fraction: Extra inputs are not permitted (got 0.5)" in message
    assert f"{child}:5: attention: num_heads (4) must be divisible by num_kv_heads (3)" in message


def test_an_unknown_family_is_reported_where_the_family_was_written(tmp_path):
    base = write(tmp_path / "base.yaml", "extends: tiny-glm-4\nfamily: glm-5\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: c\n")
    with pytest.raises(SpecError, match=rf"^{base}:2: family: unknown family 'glm-5'; registered families: "):
        load_spec(child)


@pytest.mark.parametrize(("files", "cycle"), [
    ({"a.yaml": "extends: a.yaml\n"}, "a.yaml -> a.yaml"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "name: b\nextends: ./c.yaml\n", "c.yaml": "\nextends: a.yaml\n"},
     "a.yaml -> b.yaml -> c.yaml -> a.yaml"),
])
def test_a_cycle_of_extends_names_the_chain(tmp_path, files, cycle):
    for name, text in files.items():
        write(tmp_path / name, text)
    closes = list(files)[-1]  # the file whose extends closes the cycle
    line = files[closes].splitlines().index("extends: a.yaml") + 1
    chain = " -> ".join(str(tmp_path / name) for name in cycle.split(" -> "))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "a.yaml")
    assert str(info.value) == f"{tmp_path / closes}:{line}: extends: the specs extend each other in a cycle: {chain}"


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\n\nextends: no-such-spec\n", r"child\.yaml:3: extends: no shipped spec named 'no-such-spec' and no "
                                          r"file .*no-such-spec; shipped specs: .*tiny-glm-4"),
    ("extends: base.yml\n", r"child\.yaml:1: extends: no shipped spec named 'base.yml' and no file .*base\.yml;"),
    ("extends: [tiny-glm-4]\n", r"child\.yaml:1: extends: give the name of a shipped spec or the path of a YAML "
                                r"file \(e\.g\. extends: glm-4-9b or extends: base\.yaml\), got \['tiny-glm-4'\]"),
])
def test_a_missing_or_malformed_base_names_the_extends_line(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path / "child.yaml", text))


def test_a_base_that_is_not_a_spec_is_reported_in_its_own_file(tmp_path):
    write(tmp_path / "base.yaml", "- a list\n")
    with pytest.raises(SpecError, match=r"base\.yaml: a spec is a YAML mapping of fields, got list"):
        load_spec(write(tmp_path / "child.yaml", "extends: base.yaml\n"))
    write(tmp_path / "broken.yaml", "name: x\n  vocab_size: 3\n")
    with pytest.raises(SpecError, match=r"broken\.yaml:2: not valid YAML: "):
        load_spec(write(tmp_path / "child.yaml", "extends: broken.yaml\n"))


def test_read_yaml_gives_the_data_and_the_nodes_with_their_lines(tmp_path):
    data, node = read_yaml(write(tmp_path / "x.yaml", "# c\na: 1\nb:\n  c: [2, 3]\n"))
    assert data == {"a": 1, "b": {"c": [2, 3]}}
    assert Source.of_node(node, Path("x.yaml")).at(["b", "c", 1]).where == "x.yaml:4"


def test_keyword_overrides_merge_over_a_shipped_spec():
    model = build_model("glm-4-9b", num_layers=2, position={"kind": "alibi"}, device="meta")
    assert (model.spec.num_layers, model.spec.position.kind, model.spec.name) == (2, "alibi", "glm-4-9b")
    assert model.spec.attention == GLM.attention
    assert load_spec("glm-4-9b", position={"theta": 500.0}).position == GLM.position.model_copy(update={"theta": 500.0})


def test_build_models_own_arguments_stay_its_own():
    a = build_model("tiny-glm-4", seed=3, dtype=torch.float64, num_layers=1, mlp={"intermediate_size": 32})
    b = build_model("tiny-glm-4", num_layers=1, mlp={"intermediate_size": 32}, seed=3, dtype=torch.float64)
    assert (a.spec.num_layers, a.spec.mlp.intermediate_size) == (1, 32)
    assert all(p.dtype == torch.float64 for p in a.parameters())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_overrides_apply_to_every_kind_of_source(tmp_path):
    spec = load_spec("tiny-glm-4")
    assert load_spec(spec, num_layers=1).num_layers == 1
    assert load_spec(spec.to_dict(), attention={"num_kv_heads": 4}).attention.num_kv_heads == 4
    build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ckpt")
    assert load_spec(tmp_path / "ckpt", norm={"eps": 1e-5}).norm.eps == 1e-5
    child = write(tmp_path / "child.yaml", "extends: tiny-glm-4\nnum_layers: 3\n")
    assert load_spec(child, num_layers=4).num_layers == 4
    assert spec.num_layers == 2  # a spec object is not changed


def test_an_unknown_or_bad_override_is_a_spec_error_naming_the_field():
    with pytest.raises(SpecError) as info:
        load_spec("tiny-glm-4", num_layer=2, position={"kind": "alibi", "theta": 1.0}, mlp={"intermediate_size": 0})
    message = str(info.value)
    assert "(3 error(s))" in message
    assert "  overrides: num_layer: Extra inputs are not permitted (got 2)" in message
    assert "  overrides: position.theta: Extra inputs are not permitted (got 1.0)" in message
    assert "  overrides: mlp.intermediate_size: Input should be greater than 0 (got 0)" in message
    with pytest.raises(SpecError, match=r"^invalid spec \(1 error\(s\)\):\n  overrides: vocab_size: Input should be "
                                        r"greater than 0 \(got -1\)$"):
        load_spec(load_spec("tiny-glm-4").to_dict(), vocab_size=-1)


def test_spec_strategy_takes_an_extending_file(tmp_path):
    child = write(tmp_path / "child.yaml", "extends: tiny-glm-4\nname: child\nposition: {kind: alibi}\n")

    @settings(max_examples=3)
    @given(spec_strategy(child, num_layers=1))
    def check(spec):
        assert (spec.name, spec.position.kind, spec.num_layers) == ("child", "alibi", 1)
    check()


def test_the_merged_file_data_has_no_extends_key(tmp_path):
    child = write(tmp_path / "child.yaml", "extends: tiny-glm-4\nname: child\n")
    data, source = read_spec_file(child)
    assert "extends" not in data and "extends" not in source.entries
    assert data == {**yaml.safe_load(get_registry().specs["tiny-glm-4"][0].read_text()), "name": "child"}
