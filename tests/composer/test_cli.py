"""The command line: the installed ``archcomposer`` script and ``python -m archcomposer`` (one
subprocess each), and the subcommands in process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archcomposer import build_model, get_registry
from archcomposer.cli import main
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


def test_unknown_spec_name_exits_2(capsys):
    assert main(["summary", "no-such-spec"]) == 2
    assert "no shipped spec named 'no-such-spec'" in capsys.readouterr().err


def test_a_missing_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


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


@pytest.mark.parametrize(("argv", "message"), [
    (["summary", "--length", "64"], "--batch and --length size the detailed breakdown of the specs you name"),
    (["summary", "tiny-glm-4", "--length", "300"], "length must be a whole number from 1 to the spec's max_positions "
                                                   "(256), got 300"),
    (["summary", "tiny-glm-4", "--batch", "0"], "batch must be a whole number >= 1, got 0"),
])
def test_summary_refuses_sizes_it_cannot_describe(capsys, argv, message):
    assert main(argv) == 2
    assert f"archcomposer: error: {message}" in capsys.readouterr().err
