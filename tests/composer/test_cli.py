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
    assert main(["generate", "tiny-glm-4", "--prompt", "hello"]) == 2
    err = capsys.readouterr().err
    assert "--prompt needs a tokenizer and spec 'tiny-glm-4' has no tokenizer" in err
    assert "give a checkpoint directory with a tokenizer, or token ids with --prompt-ids" in err
    from archcomposer import from_pretrained

    model = from_pretrained(text_checkpoints["tokenizers"])
    model.tokenizer = None
    model.save_pretrained(tmp_path / "bare")
    assert main(["generate", str(tmp_path / "bare"), "--prompt", "hello"]) == 2
    assert f"checkpoint {tmp_path / 'bare'} has no tokenizer (tokenizer.json or tokenizer.model)" \
        in capsys.readouterr().err
    assert main(["generate", "tiny-glm-4", "--chat"]) == 2
    assert "--chat applies the chat template to --prompt text" in capsys.readouterr().err
