"""The command line: the installed ``archcomposer`` script and ``python -m archcomposer`` (one
subprocess each), and the subcommands in process."""

import argparse
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
from archcomposer.cli import build_parser, main
from archcomposer.schema import MODELINE
from archcomposer.testing import registered
from tests.composer.test_specs_shipped import PUBLISHED

SPECS_DIR = Path(__file__).parents[2] / "specs"


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


BAD_SPEC = ("name: bad\nvocab_size: 32\nhidden_size: 16\nnum_layers: 1\nmax_positions: 8\n"
            "position: {kind: rpoe}\nattention: {kind: gqa, num_heads: 4, num_kv_head: 2}\nnorm: {kind: rmsnorm}\n"
            "mlp: {kind: gated, intermediate_size: 8}\n")


def test_validate_module_exits_1_naming_the_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_SPEC)
    result = run(sys.executable, "-m", "archcomposer", "validate", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"archcomposer: error: invalid spec {bad} (2 error(s)):")
    assert f"{bad}:6: position.kind: Input tag 'rpoe' found using 'kind' does not match any of the expected tags" \
        in result.stderr
    assert "(got 'rpoe'); did you mean 'rope'?" in result.stderr
    assert f"{bad}:7: attention.num_kv_head: Extra inputs are not permitted (got 2); did you mean 'num_kv_heads'?" \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reports_every_file_and_exits_1_if_any_is_invalid(capsys, tmp_path):
    good = SPECS_DIR / "tiny-glm-4.yaml"
    bad, binary = tmp_path / "bad.yaml", tmp_path / "binary.yaml"
    bad.write_text(BAD_SPEC)
    binary.write_bytes(b"\x89PNG\x00\xff")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"{good}: ok (tiny-glm-4: partial_rope | gqa 4/2h | rmsnorm |")
    missing = tmp_path / "missing.yaml"
    assert main(["validate", str(missing), str(bad), str(binary), str(good), "tiny-glm4"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ok (tiny-glm-4:")  # the files after the bad ones are validated too
    errors = captured.err.split("archcomposer: error: ")
    assert errors[1] == f"{missing}: no such spec file\n"
    assert errors[2].startswith(f"invalid spec {bad} (2 error(s)):")
    assert errors[3].startswith(f"{binary}")
    assert errors[4].startswith("no shipped spec named 'tiny-glm4'")
    assert captured.err.endswith("archcomposer: 4 of 5 invalid\n")
    assert "Traceback" not in captured.err


def test_validate_json_lists_each_file_with_its_errors(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_SPEC)
    assert main(["validate", "--json", "tiny-glm-4", str(bad), str(tmp_path / "missing.yaml")]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    first, second, third = json.loads(captured.out)
    assert first == {"file": "tiny-glm-4", "ok": True, "spec": "tiny-glm-4", "errors": []}
    assert second["file"] == str(bad) and second["ok"] is False and second["spec"] is None
    assert [e.split(": ")[0] for e in second["errors"]] == [f"{bad}:6", f"{bad}:7"]  # one entry per error
    assert second["errors"][1].endswith("did you mean 'num_kv_heads'?")
    assert third["errors"] == [f"{tmp_path / 'missing.yaml'}: no such spec file"]


def test_validate_checks_a_checkpoint_directory_and_its_tensors(capsys, tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_model("tiny-glm-4", seed=0)
    ours = model.save_pretrained(tmp_path / "ours")
    hf = model.save_pretrained(tmp_path / "hf", format="hf")
    assert main(["validate", str(ours), str(hf)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{ours}: ok (tiny-glm-4: partial_rope | gqa 4/2h")
    assert out[1].startswith(f"{hf}: ok (hf: partial_rope | gqa 4/2h")
    tensors = load_file(hf / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})
    assert main(["validate", "--json", str(hf)]) == 1
    [result] = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert "missing (1):\n    model.layers.1.mlp.down_proj.weight (for layers.1.mlp.down.weight)" in result["errors"][0]


def test_summary_of_named_specs_in_float32(capsys):
    assert main(["summary", "tiny-bloom", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    count = build_model("tiny-bloom", device="meta").num_parameters()
    assert "float32" in out.splitlines()[1] and f"{count:,}" in out and "bloom-560m" not in out


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


def test_invalid_input_exits_1_and_misuse_exits_2(capsys):
    assert main(["summary", "no-such-spec"]) == 1
    assert capsys.readouterr().err.startswith("archcomposer: error: no shipped spec named 'no-such-spec'")
    for argv in ([], ["summary", "--dtype", "float8"], ["no-such-command"], ["validate"], ["blocks", "positon"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: archcomposer")
    assert err.endswith("archcomposer blocks: error: argument section: no section 'positon'; sections are "
                        "['attention', 'embedding', 'head', 'mlp', 'norm', 'position', 'wiring']; did you mean "
                        "'position'?\n")


def test_version_names_archcomposer_torch_and_python(capsys):
    import platform

    import torch

    import archcomposer

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == (f"archcomposer {archcomposer.__version__} (torch {torch.__version__}, "
                                       f"Python {platform.python_version()})\n")


# ---------------------------------------------------------------------------------------------
# numbers are checked at the door: a usage error naming the option


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "tiny-glm-4", "--prompt-ids", "5", "99999999999999999999"],
     "argument --prompt-ids: 99999999999999999999 is out of range: expected a whole number from 0 to "
     "9223372036854775807 (2**63 - 1)"),
    (["generate", "tiny-glm-4", "--prompt-ids", "-3"], "argument --prompt-ids: -3 is out of range"),
    (["generate", "tiny-glm-4", "--temperature", "nan"], "argument --temperature: expected a finite number, got 'nan'"),
    (["generate", "tiny-glm-4", "--temperature", "inf"], "argument --temperature: expected a finite number, got 'inf'"),
    (["generate", "tiny-glm-4", "--temperature", "0"], "argument --temperature: expected a number > 0, got '0'"),
    (["generate", "tiny-glm-4", "--top-p", "1.5"], "argument --top-p: expected a number in (0, 1], got '1.5'"),
    (["generate", "tiny-glm-4", "--top-p=-inf"], "argument --top-p: expected a finite number, got '-inf'"),
    (["generate", "tiny-glm-4", "--top-k", "0"], "argument --top-k: 0 is out of range: expected a whole number from 1"),
    (["generate", "tiny-glm-4", "--max-new-tokens", "-1"], "argument --max-new-tokens: -1 is out of range"),
    (["generate", "tiny-glm-4", "--seed", "1e3"], "argument --seed: expected a whole number, got '1e3'"),
    (["generate", "tiny-glm-4", "--seed", str(2**64)], "argument --seed: 18446744073709551616 is out of range"),
    (["convert", "a", "b", "--to", "hf", "--max-shard-size", "lots"],
     "argument --max-shard-size: expected a size such as 500MB, 5GB or 2GiB, got 'lots'"),
    (["convert", "a", "b", "--to", "hf", "--max-shard-size", "0"],
     "argument --max-shard-size: expected a size such as 500MB, 5GB or 2GiB, got '0'"),
])
def test_a_number_out_of_range_is_a_usage_error_naming_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"archcomposer {argv[0]}: error: {message}" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# help: every option shows an example, every command example invocations


def subcommands(parser):
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: sub for action in actions for name, sub in action.choices.items()}


def test_every_option_and_positional_has_help_with_an_example():
    parser = build_parser()
    missing = []
    for name, sub in [("(top level)", parser), *subcommands(parser).items()]:
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if "e.g." not in (action.help or ""):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: {action.help!r}")
    assert not missing, "help without an example (e.g. ...):\n" + "\n".join(missing)


def test_every_subcommand_has_a_description_and_example_invocations():
    for name, sub in subcommands(build_parser()).items():
        assert sub.description, name
        assert sub.formatter_class is argparse.RawDescriptionHelpFormatter, name
        assert f"\n  archcomposer {name}" in (sub.epilog or ""), f"{name}: no example invocation in its epilog"


def test_help_shows_the_examples(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "examples:\n  archcomposer convert " in out
    assert "(default: 5GB; e.g. --max-shard-size 2GB)\n" in out


# ---------------------------------------------------------------------------------------------
# a reader that goes away (| head) and the file system refusing


CLOSED_PIPE_SCRIPT = """
import json, os, sys
from archcomposer.cli import main
codes = []
for command in json.loads(sys.argv[1]):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line arrives, like `| head -0`
    os.dup2(write, 1)
    os.close(write)
    codes.append(main(command))
print(json.dumps(codes), file=sys.stderr)
"""


def test_every_command_that_prints_exits_quietly_into_a_closed_pipe(tmp_path):
    ours = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ours")
    commands = [["blocks"], ["blocks", "--json"], ["plugins"], ["plugins", "--json"], ["schema"],
                ["validate", "tiny-glm-4"], ["validate", "--json", str(ours)], ["summary", "tiny-bloom"],
                ["generate", "tiny-glm-4", "--max-new-tokens", "1"],
                ["convert", str(ours), str(tmp_path / "hf"), "--to", "hf", "--json"]]
    # one interpreter for all (each starts in seconds), each command into a fresh closed pipe
    result = subprocess.run([sys.executable, "-c", CLOSED_PIPE_SCRIPT, json.dumps(commands)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0 and json.loads(result.stderr) == [141] * len(commands), result.stderr


def test_the_script_exits_141_into_a_closed_pipe():
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "archcomposer", "blocks"], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=120,
                                env={**os.environ, "ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD": "1"})
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (141, "")  # as a shell reports a tool that SIGPIPE ended


def test_a_file_system_error_is_reported_without_a_traceback(capsys, tmp_path):
    ours = build_model("tiny-glm-4", seed=0).save_pretrained(tmp_path / "ours")
    (tmp_path / "file").write_text("")
    assert main(["convert", str(ours), str(tmp_path / "file" / "out"), "--to", "hf"]) == 1
    err = capsys.readouterr().err
    assert err == f"archcomposer: error: [Errno 17] File exists: '{tmp_path / 'file'}'\n"  # mkdir of out's parent


# ---------------------------------------------------------------------------------------------
# convert


def transformers_checkpoint(path: Path) -> Path:
    """A tiny Llama written by transformers' own save_pretrained, every weight randomised."""
    import transformers

    from tests.plugins.parity import build_reference

    config = transformers.LlamaConfig(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    build_reference("LlamaForCausalLM", config).save_pretrained(path)
    return path


def test_convert_round_trip_through_both_formats_keeps_the_logits(capsys, tmp_path):
    import torch
    import transformers

    from archcomposer import from_pretrained

    hf = transformers_checkpoint(tmp_path / "hf")
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf, attn_implementation="eager")
    with torch.no_grad():
        expected = reference(ids).logits

    assert main(["convert", str(hf), str(tmp_path / "ours"), "--to", "archcomposer", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written == {"path": str(tmp_path / "ours"), "format": "archcomposer",
                       "files": ["model.safetensors", "spec.yaml"]}
    ours = from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        assert (ours(ids).logits - expected).abs().max() <= 1e-4

    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "hf", "--progress",
                 "--max-shard-size", "60KB"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {tmp_path / 'back'} (hf: config.json, model-00001-of-")
    assert "loading ours: 100%" in captured.err and "saving back: 100%" in captured.err
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager")
    with torch.no_grad():
        assert torch.equal(back(ids).logits, expected)  # the same weights through the same code
    expected_state = reference.state_dict()
    assert back.state_dict().keys() == expected_state.keys()
    assert all(torch.equal(t, expected_state[n]) for n, t in back.state_dict().items())


def test_convert_casts_and_is_quiet_without_a_terminal(capsys, tmp_path):
    from safetensors import safe_open

    hf = transformers_checkpoint(tmp_path / "hf")
    assert main(["convert", str(hf), str(tmp_path / "bf16"), "--to", "hf", "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16"}


def test_convert_of_several_heads_needs_head_for_hf(capsys, tmp_path):
    import torch

    from archcomposer import from_pretrained

    spec = build_model("tiny-seed-oss", device="meta").spec.to_dict()
    spec["heads"] = [{"kind": "causal_lm"}, {"kind": "question_answering"}]
    model = build_model(spec, seed=0)
    ours = model.save_pretrained(tmp_path / "ours")
    for argv, message in (
            ([], f"{ours} has heads ['causal_lm', 'question_answering'] and a Hugging Face model has one: "
                 f"pick one, e.g. --head causal_lm"),
            (["--head", "token_classification"], f"argument --head: {ours} has heads ['causal_lm', "
                                                 f"'question_answering'], not 'token_classification'")):
        with pytest.raises(SystemExit) as info:
            main(["convert", str(ours), str(tmp_path / "hf"), "--to", "hf", *argv])
        assert info.value.code == 2
        assert f"archcomposer convert: error: {message}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(ours), str(tmp_path / "x"), "--to", "archcomposer", "--head", "causal_lm"])
    assert "--head picks the one head of a --to hf export" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "x").exists()

    assert main(["convert", str(ours), str(tmp_path / "hf"), "--to", "hf", "--head", "question_answering"]) == 0
    loaded = from_pretrained(tmp_path / "hf")
    ids = torch.tensor([[5, 17, 42, 8]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).start_logits, model(ids, head="question_answering").start_logits)


def test_convert_refuses_a_spec_and_a_missing_directory(capsys, tmp_path):
    assert main(["convert", "tiny-glm-4", str(tmp_path / "out"), "--to", "hf"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("archcomposer: error: tiny-glm-4 is a spec, not a checkpoint: convert converts the weights "
                          "of a checkpoint directory. To write a spec's random initialisation, use Python, e.g. "
                          f"build_model('tiny-glm-4', seed=0).save_pretrained('{tmp_path / 'out'}', format='hf')")
    assert main(["convert", str(SPECS_DIR / "tiny-glm-4.yaml"), str(tmp_path / "out"), "--to", "hf"]) == 1
    assert capsys.readouterr().err.startswith(f"archcomposer: error: {SPECS_DIR / 'tiny-glm-4.yaml'} is a spec, not")
    assert main(["convert", str(tmp_path / "nothing"), str(tmp_path / "out"), "--to", "hf"]) == 1
    assert f"{tmp_path / 'nothing'}: no such checkpoint directory" in capsys.readouterr().err


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


def test_schema_to_an_unwritable_place_exits_1(tmp_path, capsys):
    assert main(["schema", "--output", str(tmp_path / "missing" / "schema.json")]) == 1
    assert f"--output {tmp_path / 'missing' / 'schema.json'}: cannot write the schema there: No such file or " \
           f"directory" in capsys.readouterr().err


def transformers_continuations(directory, prompts, *, max_new_tokens, chat=False):
    """transformers' greedy continuation of each prompt, decoded without special tokens: left-padded
    with EOS as the pad for a batch, the chat template applied with ``chat``."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    if chat:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False) for p in prompts]
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    batch = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=not chat, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, batch["input_ids"].shape[1]:]]


@pytest.mark.parametrize("kind", ["tokenizers", "sentencepiece"])
def test_generate_streams_the_text_transformers_generates(text_checkpoints, kind, capsys, monkeypatch):
    import archcomposer.tokenizer

    shown = []
    monkeypatch.setattr(archcomposer.tokenizer, "_print", lambda text: (shown.append(text), print(text, end="")))
    directory = text_checkpoints[kind]
    assert main(["generate", str(directory), "--prompt", "the cat sat", "--max-new-tokens", "16"]) == 0
    expected = transformers_continuations(directory, ["the cat sat"], max_new_tokens=16)[0]
    assert capsys.readouterr().out == expected + "\n"
    assert len([text for text in shown if text.strip()]) > 2  # it came out piece by piece, as it was generated


@pytest.mark.parametrize("kind", ["tokenizers", "sentencepiece"])
def test_generate_pads_a_batch_on_the_left_and_prints_each_completion(text_checkpoints, kind, capsys):
    prompts = ["the cat sat", "hello", "a big red house on the river"]
    args = [a for p in prompts for a in ("--prompt", p)]
    assert main(["generate", str(text_checkpoints[kind]), *args, "--max-new-tokens", "10"]) == 0
    expected = transformers_continuations(text_checkpoints[kind], prompts, max_new_tokens=10)
    assert capsys.readouterr().out == "".join(f"--- {i}: {p!r}\n{text}\n"
                                              for i, (p, text) in enumerate(zip(prompts, expected), start=1))


@pytest.mark.parametrize("kind", ["tokenizers", "sentencepiece"])
def test_generate_chat_applies_the_chat_template(text_checkpoints, kind, capsys):
    assert main(["generate", str(text_checkpoints[kind]), "--chat", "--prompt", "hello world",
                 "--max-new-tokens", "10"]) == 0
    expected = transformers_continuations(text_checkpoints[kind], ["hello world"], max_new_tokens=10, chat=True)[0]
    assert capsys.readouterr().out == expected + "\n"


def test_generate_samples_text_as_generate_samples(text_checkpoints, capsys):
    import torch

    from archcomposer import from_pretrained

    directory = text_checkpoints["tokenizers"]
    assert main(["generate", str(directory), "--prompt", "the cat sat", "--max-new-tokens", "8", "--sample",
                 "--seed", "3", "--top-k", "20", "--top-p", "0.9", "--temperature", "0.8"]) == 0
    model = from_pretrained(directory)
    ids = torch.tensor([model.tokenizer.encode("the cat sat")])
    out = model.generate(ids, max_new_tokens=8, do_sample=True, seed=3, top_k=20, top_p=0.9, temperature=0.8)
    assert capsys.readouterr().out == model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) + "\n"


def test_generate_from_a_checkpoint_takes_ids_too(text_checkpoints, capsys):
    import torch

    from archcomposer import from_pretrained

    directory = text_checkpoints["sentencepiece"]
    assert main(["generate", str(directory), "--prompt-ids", "5", "6", "--max-new-tokens", "3",
                 "--dtype", "bfloat16"]) == 0
    model = from_pretrained(directory, dtype=torch.bfloat16)
    expected = model.generate(torch.tensor([[5, 6]]), max_new_tokens=3)[0, 2:].tolist()
    assert capsys.readouterr().out == f"{model.spec.name} (checkpoint {directory}): prompt [5, 6] -> " \
                                      f"generated {expected}\n"


def test_generate_prompt_without_a_tokenizer_names_what_is_missing(text_checkpoints, capsys, tmp_path):
    assert main(["generate", "tiny-glm-4", "--prompt", "hello"]) == 1  # the input lacks a tokenizer
    err = capsys.readouterr().err
    assert "--prompt needs a tokenizer and spec 'tiny-glm-4' has no tokenizer" in err
    assert "give a checkpoint directory with a tokenizer, or token ids with --prompt-ids" in err
    from archcomposer import from_pretrained

    model = from_pretrained(text_checkpoints["tokenizers"])
    model.tokenizer = None
    model.save_pretrained(tmp_path / "bare")
    assert main(["generate", str(tmp_path / "bare"), "--prompt", "hello"]) == 1
    assert f"checkpoint {tmp_path / 'bare'} has no tokenizer (tokenizer.json or tokenizer.model)" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # a misused command
        main(["generate", "tiny-glm-4", "--chat"])
    assert info.value.code == 2
    assert "--chat applies the chat template to --prompt text" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# summary SPEC: the detailed breakdown (the numbers themselves: tests/composer/test_summary.py)


def test_summary_breaks_a_spec_down_by_block_with_flops_and_memory(capsys):
    import torch

    from archcomposer.summary import format_summary, summarize

    assert main(["summary", "tiny-glm-4", "--batch", "2", "--length", "12", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    s = summarize("tiny-glm-4", batch=2, length=12, dtype=torch.float32)
    lines = out.splitlines()
    assert lines[0] == "tiny-glm-4 (family glm-4): partial_rope | gqa 4/2h | rmsnorm | gated | causal_lm"
    assert lines[1] == "at batch 2, length 12, float32"
    table = {line.split()[0]: line.split() for line in lines[3:11]}
    assert list(table) == ["block", "embedding", "position", "attention", "mlp", "norm", "head", "---------"]
    attention = next(b for b in s.blocks if b.section == "attention")
    assert table["attention"][:3] == ["attention", "gqa", f"{attention.parameters:,}"]
    total = next(line for line in lines if line.startswith("total"))
    assert f"{s.parameters:,}" in total and f"{s.forward_flops_per_token / 1e3:.2f} KFLOP" in total
    assert f"training {s.training_flops_per_token / 1e3:.2f} KFLOP (3 x forward)" in out
    assert next(line for line in lines if line.startswith("activations")).split()[1:3] == \
        f"{s.activation_bytes / 1024:.2f} KiB".split()
    assert out == format_summary(s, "partial_rope | gqa 4/2h | rmsnorm | gated | causal_lm") + "\n"


def test_explain_is_summary(capsys):
    assert main(["explain", "tiny-phi3", "--length", "8"]) == 0
    explained = capsys.readouterr().out
    assert main(["summary", "tiny-phi3", "--length", "8"]) == 0
    assert capsys.readouterr().out == explained
    assert explained.splitlines()[1] == "at batch 1, length 8, bfloat16"


def test_summary_json_has_every_number_for_scripts(capsys):
    import torch

    from archcomposer.summary import summarize

    assert main(["summary", "tiny-gemma-2", "tiny-opt", "--json", "--batch", "3", "--length", "16"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == ["tiny-gemma-2", "tiny-opt"]
    expected = summarize("tiny-gemma-2", batch=3, length=16, dtype=torch.bfloat16).to_dict()
    assert data[0] == json.loads(json.dumps(expected))
    assert {b["section"] for b in data[0]["blocks"]} == {"embedding", "position", "attention", "mlp", "norm", "head"}
    assert data[0]["kv_cache_bytes"] < data[0]["static_kv_cache_bytes"]  # Gemma 2's sliding layers keep 7 tokens
    assert data[1]["training_flops_per_token"] == 3 * data[1]["forward_flops_per_token"]


def test_summary_of_a_checkpoint_directory(capsys, tmp_path):
    path = tmp_path / "tiny-starcoder2"  # a Hugging Face checkpoint's spec is named after its directory
    build_model("tiny-starcoder2", seed=0).save_pretrained(path, format="hf")
    assert main(["summary", str(path), "--length", "8"]) == 0
    by_path = capsys.readouterr().out
    assert main(["summary", "tiny-starcoder2", "--length", "8"]) == 0
    assert by_path == capsys.readouterr().out


def test_summary_refuses_sizes_it_cannot_describe(capsys):
    for argv, message in [(["summary", "--length", "64"], "--batch and --length size the detailed breakdown of "
                                                          "the specs you name"),
                          (["summary", "tiny-glm-4", "--batch", "0"], "argument --batch: 0 is out of range")]:
        with pytest.raises(SystemExit) as info:  # misuse
            main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert main(["summary", "tiny-glm-4", "--length", "300"]) == 1  # a length this spec does not have
    assert capsys.readouterr().err == ("archcomposer: error: length must be a whole number from 1 to the spec's "
                                       "max_positions (256), got 300\n")
