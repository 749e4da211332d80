"""``archcomposer diff``: what differs between two specs, block by block and layer by layer."""

import json
from pathlib import Path

import pytest

from archcomposer import build_model, load_spec
from archcomposer.cli import main
from archcomposer.diff import Change, diff_specs, layer_ranges

TINY = load_spec("tiny-glm-4")


def diff(a, b):
    return diff_specs(load_spec(a), load_spec(b))


def test_the_readme_shows_what_the_command_prints_for_glm_4_against_seed_oss(capsys):
    assert main(["diff", "glm-4-9b", "seed-oss-36b"]) == 1
    printed = capsys.readouterr().out
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"$ archcomposer diff glm-4-9b seed-oss-36b\n{printed}```" in readme
    assert printed.startswith("--- glm-4-9b\n+++ seed-oss-36b\nsizes\n")
    assert "position: partial_rope -> rope\n  - partial_rope(theta=10000.0, fraction=0.5, interleaved=true)\n" \
           "  + rope(theta=10000000.0)\n" in printed
    assert "position.fraction" not in printed and "fraction  " not in printed
    assert "\nattention (gqa)\n  num_heads          32 -> 80\n" in printed


def test_specs_that_say_the_same_thing_differently_are_equal(tmp_path, capsys):
    written_out = TINY.to_dict() | {"name": "other", "eos_token_id": [1, 2], "wiring": {"kind": "pre_norm"}}
    written_out["attention"] = {k: v for k, v in written_out["attention"].items() if k not in ("head_dim",)}
    assert diff(TINY, written_out).equal
    per_layer = TINY.to_dict() | {"layers": [{"range": [0, 2], "mlp": {"intermediate_size": 128}}]}
    assert diff(TINY, per_layer).equal
    one_eos = load_spec("tiny-seed-oss")
    assert diff(one_eos, one_eos.to_dict() | {"eos_token_id": [one_eos.eos_token_id]}).equal
    assert main(["diff", "tiny-glm-4", str(Path(__file__).resolve().parents[2] / "specs" / "tiny-glm-4.yaml")]) == 0
    assert capsys.readouterr().out.startswith("no differences between tiny-glm-4 and ")


def test_a_changed_kind_is_one_change_with_both_blocks_whole():
    found = diff(TINY, load_spec("tiny-glm-4", position={"kind": "alibi"}))
    (block,) = found.blocks
    assert (block.block, block.kind) == ("position", None)
    assert block.changes == (Change("position", {"kind": "partial_rope", "theta": 10000.0, "fraction": 0.5,
                                                 "interleaved": True},
                                    {"kind": "alibi", "max_bias": 8.0, "scaled": False, "bias_dtype": "float32"},
                                    ("partial_rope", "alibi")),)
    assert found.format().splitlines()[2:] == [
        "position: partial_rope -> alibi",
        "  - partial_rope(theta=10000.0, fraction=0.5, interleaved=true)",
        "  + alibi(max_bias=8.0, scaled=false, bias_dtype=float32)"]


def test_fields_of_the_same_kind_and_nested_blocks():
    linear = load_spec("tiny-glm-4", position={"scaling": {"type": "linear", "factor": 2.0}})
    found = diff(TINY, linear)
    assert found.blocks[0].kind == "partial_rope"
    assert found.blocks[0].changes == (Change("position.scaling", None, {"type": "linear", "factor": 2.0},
                                              (None, "linear")),)
    yarn = load_spec("tiny-glm-4", position={"scaling": {"type": "yarn", "factor": 4.0}}, mlp={"fused": False},
                     hidden_size=128)
    text = diff(linear, yarn).format()
    assert "  hidden_size  64 -> 128\n" in text
    assert "\nposition (partial_rope)\n  scaling      linear(factor=2.0) -> yarn(factor=4.0, beta_fast=32.0, " \
           "beta_slow=1.0, truncate=true)\n" in text
    assert "\nmlp (gated)\n  fused        true -> false" in text


def test_heads_are_matched_by_kind():
    a = TINY.to_dict() | {"heads": [{"kind": "causal_lm"}, {"kind": "question_answering"}]}
    b = TINY.to_dict() | {"heads": [{"kind": "sequence_classification", "num_labels": 3},
                                    {"kind": "causal_lm", "softcap": 30.0}]}
    (block,) = diff(a, b).blocks
    assert [c.path for c in block.changes] == ["heads.causal_lm.softcap", "heads.question_answering",
                                               "heads.sequence_classification"]
    assert diff(a, b).format().splitlines()[2:] == [
        "heads", "  causal_lm.softcap  null -> 30.0", "  - question_answering(bias=true)",
        "  + sequence_classification(num_labels=3, bias=false)"]


def test_layers_that_differ_are_listed_in_ranges():
    base = TINY.to_dict() | {"num_layers": 8}
    windows = base | {"layer_types": ["local", "global"] * 4,
                      "layers": [{"type": "local", "attention": {"sliding_window": 16}},
                                 {"indices": [7], "mlp": {"intermediate_size": 64}}]}
    found = diff(base, windows)
    assert [(b.block, b.layers) for b in found.blocks] == []
    assert [(b.block, b.layers) for b in found.layers] == [
        ("layer_types", (0, 2, 4, 6)), ("attention", (0, 2, 4, 6)), ("layer_types", (1, 3, 5, 7)),
        ("mlp", (7,))]
    assert found.format().splitlines()[2:] == [
        "layers 0, 2, ..., 6: layer_types", "  layer_types        null -> local",
        "layers 0, 2, ..., 6: attention (gqa)", "  sliding_window     null -> 16",
        "layers 1, 3, ..., 7: layer_types", "  layer_types        null -> global",
        "layer 7: mlp (gated)", "  intermediate_size  128 -> 64"]


def test_a_layer_where_the_specs_difference_does_not_hold_says_so():
    a = TINY.to_dict() | {"num_layers": 4}
    b = a | {"position": {"kind": "rope", "theta": 500.0},
             "layers": [{"range": [1, 3], "position": {"kind": "partial_rope", "theta": 10000.0, "fraction": 0.5,
                                                        "interleaved": True}},
                        {"indices": [3], "position": {"theta": 20.0}}]}
    found = diff(a, b)
    assert [(b.block, b.layers) for b in found.layers] == [("position", (1, 2)), ("position", (3,))]
    text = found.format()
    assert "\nlayers 1-2: position (partial_rope): the same in both\n  = partial_rope(theta=10000.0, fraction=0.5, " \
           "interleaved=true)\n" in text
    assert text.endswith("\nlayer 3: position: partial_rope -> rope\n  - partial_rope(theta=10000.0, fraction=0.5, "
                         "interleaved=true)\n  + rope(theta=20.0)")


def test_a_layer_of_the_same_kind_under_a_changed_kind_shows_its_fields():
    a = TINY.to_dict() | {"num_layers": 3, "layers": [{"indices": [2], "position": {"kind": "rope", "theta": 7.0}}]}
    b = TINY.to_dict() | {"num_layers": 3, "position": {"kind": "rope", "theta": 9.0}}
    found = diff(a, b)
    assert [(b.block, b.kind, b.layers) for b in found.layers] == [("position", "rope", (2,))]
    assert found.layers[0].changes == (Change("position.theta", 7.0, 9.0),)


@pytest.mark.parametrize(("layers", "text"), [
    ([3], "3"), ([1, 2], "1-2"), ([0, 2, 4], "0, 2, 4"), ([0, 1, 2, 3, 5, 7, 9, 11], "0-3, 5, 7, ..., 11"),
    ([5, 11, 17, 23, 29], "5, 11, ..., 29"), ([0, 1, 2, 3, 4, 6, 7, 8, 9, 10], "0-4, 6-10"), ([4, 0, 2], "0, 2, 4"),
])
def test_layer_ranges(layers, text):
    assert layer_ranges(layers) == text


def test_the_command_compares_checkpoint_directories_and_prints_json(tmp_path, capsys):
    build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ours")
    build_model("tiny-glm-4", seed=0, num_layers=3).save_pretrained(tmp_path / "hf", format="hf")
    assert main(["diff", "tiny-glm-4", str(tmp_path / "ours")]) == 0
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "ours"), str(tmp_path / "hf"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data == {"a": f"{tmp_path / 'ours'} (tiny-glm-4)", "b": f"{tmp_path / 'hf'} (hf)", "equal": False,
                    "blocks": [{"block": "sizes", "changes": [{"field": "num_layers", "a": 2, "b": 3}]}],
                    "layers": []}
    assert main(["diff", "tiny-glm-4", "tiny-glm-4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["equal"] is True


def test_a_spec_that_cannot_be_read_exits_2(tmp_path, capsys):
    assert main(["diff", "tiny-glm-4", "tiny-glm4"]) == 2
    assert "no shipped spec named 'tiny-glm4'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny-glm-4\nmlp: {intermediate_size: 0}\n")
    assert main(["diff", str(bad), "tiny-glm-4"]) == 2
    assert f"{bad}:2: mlp.intermediate_size: Input should be greater than 0" in capsys.readouterr().err
