"""The command line: the installed ``archcomposer`` script and ``python -m archcomposer`` (one
subprocess each), and the subcommands in process."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from archcomposer import build_model, get_registry
from archcomposer.cli import main
from archcomposer.schema import MODELINE
from archcomposer.testing import registered
from tests.composer.test_specs_shipped import PUBLISHED


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD": "1"})


def test_summary_script_lists_every_shipped_spec_with_its_parameter_count():
    script = Path(sys.executable).with_name("archcomposer")
    result = run(str(script), "summary")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in get_registry().specs:
        count = PUBLISHED.get(name) or build_model(name, device="meta").num_parameters()
        row = next((line for line in lines if line.split()[:1] == [name]), None)
        assert row is not None, f"{name} missing from:\n{result.stdout}"
        assert f" {count:,} " in row


def test_validate_module_exits_2_naming_the_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nvocab_size: 32\nhidden_size: 16\nnum_layers: 1\nmax_positions: 8\n"
                   "position: {kind: rpoe}\nattention: {kind: gqa, num_heads: 4}\nnorm: {kind: rmsnorm}\n"
                   "mlp: {kind: gated, intermediate_size: 8}\n")
    result = run(sys.executable, "-m", "archcomposer", "validate", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"archcomposer: error: invalid spec {bad} (1 error(s)):")
    assert f"{bad}:6: position.kind: Input tag 'rpoe' found using 'kind' does not match any of the expected tags" \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_accepts_good_files_and_stops_at_a_missing_one(capsys, tmp_path):
    from archcomposer.specs import __file__ as specs_init

    good = Path(specs_init).with_name("tiny-glm-4.yaml")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"{good}: ok (tiny-glm-4: partial_rope | gqa 4/2h | rmsnorm |")
    assert main(["validate", str(good), str(tmp_path / "missing.yaml")]) == 2
    captured = capsys.readouterr()
    assert "missing.yaml: no such spec file" in captured.err


def test_summary_of_named_specs_in_float32(capsys):
    assert main(["summary", "tiny-bloom", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    count = build_model("tiny-bloom", device="meta").num_parameters()
    assert "weights (float32)" in out and f"{count:,}" in out and "bloom-560m" not in out


def test_generate_prints_the_tokens_generate_returns(capsys):
    import torch

    assert main(["generate", "tiny-seed-oss", "--prompt-ids", "5", "6", "--max-new-tokens", "3", "--seed", "2"]) == 0
    expected = build_model("tiny-seed-oss", seed=2).generate(torch.tensor([[5, 6]]), max_new_tokens=3)[0, 2:]
    assert capsys.readouterr().out.strip().endswith(f"prompt [5, 6] -> generated {expected.tolist()}")


def test_schema_is_json_listing_the_kinds(capsys):
    assert main(["schema"]) == 0
    text = capsys.readouterr().out
    schema = json.loads(text)
    assert schema["title"] == "ModelSpec"
    for kind in ("rope", "partial_rope", "alibi", "bucket_bias", "layernorm", "rmsnorm", "gated", "plain"):
        assert f'"{kind}"' in text


def test_unknown_spec_name_exits_2(capsys):
    assert main(["summary", "no-such-spec"]) == 2
    assert "no shipped spec named 'no-such-spec'" in capsys.readouterr().err


def test_a_missing_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# -- schema: the JSON Schema editors check spec files with ---------------------------------------

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "archcomposer-nemotron"
EXAMPLE_SPECS = EXAMPLE / "src" / "archcomposer_nemotron" / "specs"
REGENERATE = "ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD=1 archcomposer schema --output specs/spec.schema.json"


@functools.cache
def validator(schema_path: Path):
    """A validator of the schema at ``schema_path``, checked against the 2020-12 meta-schema (once: ~0.5 s)."""
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_is_a_draft_2020_12_schema_with_an_id(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "urn:archcomposer:spec"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_shipped_schema_is_what_the_command_writes(tmp_path, capsys):
    out = tmp_path / "spec.schema.json"
    assert main(["schema", "--output", str(out)]) == 0
    assert f"wrote the JSON schema of spec files to {out}" in capsys.readouterr().out
    assert out.read_text() == (ROOT / "specs" / "spec.schema.json").read_text(), \
        f"specs/spec.schema.json is stale: regenerate it with `{REGENERATE}`"


def test_the_example_plugin_ships_the_schema_with_its_kinds(tmp_path):
    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        import archcomposer_nemotron.plugin

        with registered(archcomposer_nemotron.plugin, "nemotron"):
            assert main(["schema", "--output", str(tmp_path / "schema.json")]) == 0
    finally:
        sys.path.remove(str(EXAMPLE / "src"))
    text = (tmp_path / "schema.json").read_text()
    assert text == (EXAMPLE_SPECS / "spec.schema.json").read_text(), \
        "the example's specs/spec.schema.json is stale: regenerate it with the plugin installed"
    assert '"layernorm1p"' in text and '"squared_relu"' in text
    assert '"layernorm1p"' not in (ROOT / "specs" / "spec.schema.json").read_text()


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")) + sorted(EXAMPLE_SPECS.glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_spec_names_the_schema_beside_it_and_satisfies_it(path):
    assert path.read_text().splitlines()[0] == MODELINE
    schema = validator(path.parent / "spec.schema.json")
    assert [e.message for e in schema.iter_errors(yaml.safe_load(path.read_text()))] == []


@pytest.mark.parametrize(("spec", "errors"), [
    ({"extends": "glm-4-9b", "name": "a", "num_layers": 2, "position": {"kind": "alibi"},
      "attention": {"num_kv_heads": 4}}, []),
    ({"extends": "glm-4-9b", "position": {"theta": 5.0, "scaling": None}, "heads": [{"kind": "causal_lm"}]}, []),
    ({"extends": "glm-4-9b", "num_layer": 2}, ["Additional properties are not allowed ('num_layer' was unexpected)"]),
    ({"extends": "glm-4-9b", "position": {"kind": "rpoe"}},
     ["{'kind': 'rpoe'} is not valid under any of the given schemas"]),
    ({"extends": "glm-4-9b", "mlp": {"intermediate_size": "wide"}},
     ["{'intermediate_size': 'wide'} is not valid under any of the given schemas"]),
    # a list replaces the base's: its items are checked whole
    ({"extends": "glm-4-9b", "heads": [{"num_labels": 2}]},
     ["{'num_labels': 2} is not valid under any of the given schemas"]),
    ({"extends": 3}, ["3 is not of type 'string'"]),
    ({"name": "a", "vocab_size": 8, "hidden_size": 8, "num_layers": 1, "max_positions": 8,
      "position": {"kind": "rope"}, "attention": {"kind": "gqa", "num_heads": 2}, "norm": {"kind": "rmsnorm"}},
     ["'mlp' is a required property"]),
])
def test_the_schema_checks_an_extending_file_as_a_partial_spec(spec, errors):
    found = [e.message for e in validator(ROOT / "specs" / "spec.schema.json").iter_errors(spec)]
    assert found == errors


def test_schema_to_an_unwritable_place_exits_2(tmp_path, capsys):
    assert main(["schema", "--output", str(tmp_path / "missing" / "schema.json")]) == 2
    assert f"--output {tmp_path / 'missing' / 'schema.json'}: cannot write the schema there: No such file or " \
           f"directory" in capsys.readouterr().err
