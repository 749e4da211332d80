"""Tokenizers trained at test time (nothing downloads) and saved as transformers saves them: a
byte-level BPE (``tokenizer.json``, as GPT-2, Llama 3 and Qwen ship) and a sentencepiece BPE with
byte fallback (``tokenizer.model``, as Llama 2 and Mistral ship), each with special tokens and a
chat template. Trained once per session."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

WORDS = ("the a cat dog sat on mat ran fast slow big small red blue green house tree river über café naïve "
         "東京 😀 hello world quick brown fox jumps over lazy don't it's 42 2024 Hello The").split()

CHATML = """{{ bos_token }}{%- set ns = namespace(turns=0) -%}
{%- for message in messages -%}
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}
{{- raise_exception('unknown role ' + message['role']) -}}
{%- endif -%}
{%- set ns.turns = ns.turns + 1 -%}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor -%}
{%- if tools %}<|im_start|>tools
{{ tools | tojson }}<|im_end|>
{% endif -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"""

LLAMA2 = """{%- for message in messages -%}
{%- if message['role'] == 'user' -%}{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}
{%- elif message['role'] == 'assistant' -%}{{ ' ' + message['content'] | trim + ' ' + eos_token }}
{%- endif -%}
{%- endfor -%}"""


def corpus(path: Path, lines: int = 400) -> Path:
    rng = random.Random(0)
    text = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice([".", "!", "?", ",", ""])
            for _ in range(lines)]
    path.write_text("\n".join(text) + "\n")
    return path


def train_byte_level(directory: Path, text: Path) -> Path:
    """A byte-level BPE whose post-processor adds BOS, wrapped in PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train([str(text)], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tokenizer.token_to_id("<|begin_of_text|>"))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                      eos_token="<|im_end|>", chat_template=CHATML,
                                      extra_special_tokens=["<|im_start|>", "<|end_of_text|>"])
    wrapped.save_pretrained(directory)
    return directory


def train_sentencepiece(directory: Path, text: Path) -> Path:
    """A sentencepiece BPE with byte fallback (Llama 2's recipe) read by transformers'
    LlamaTokenizer, saved with tokenizer.model and tokenizer_config.json as Llama 2 ships
    (add_bos_token: true)."""
    import sentencepiece
    from transformers import LlamaTokenizer

    prefix = directory.parent / f"{directory.name}-sp"
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), vocab_size=420, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        control_symbols=["<|im_start|>", "<|im_end|>"], user_defined_symbols=["<sep>"])
    source = directory.parent / f"{directory.name}-source"
    source.mkdir()
    shutil.copy(f"{prefix}.model", source / "tokenizer.model")
    LlamaTokenizer.from_pretrained(source, chat_template=LLAMA2).save_pretrained(directory)
    (directory / "tokenizer.json").unlink()  # the directory holds the sentencepiece model only
    shutil.copy(f"{prefix}.model", directory / "tokenizer.model")
    edit_config(directory, add_bos_token=True)
    return directory


def edit_config(directory: Path, **changes) -> None:
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="session")
def trained_tokenizers(tmp_path_factory) -> dict[str, Path]:
    """Directories as transformers saves them, by kind: "tokenizers" (tokenizer.json) and
    "sentencepiece" (tokenizer.model). Copy one before changing it."""
    root = tmp_path_factory.mktemp("trained-tokenizers")
    text = corpus(root / "corpus.txt")
    return {"tokenizers": train_byte_level(root / "byte-level", text),
            "sentencepiece": train_sentencepiece(root / "sentencepiece", text)}


def llama_checkpoint(directory: Path, tokenizer_directory: Path, seed: int = 0) -> Path:
    """A tiny random transformers Llama saved with save_pretrained, its tokenizer's files beside it."""
    import transformers

    from tests.plugins.parity import build_reference

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_directory)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=None, tie_word_embeddings=False)
    build_reference("LlamaForCausalLM", config, seed=seed).save_pretrained(directory)
    shutil.copytree(tokenizer_directory, directory, dirs_exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def text_checkpoints(trained_tokenizers, tmp_path_factory) -> dict[str, Path]:
    """Tiny transformers Llama checkpoints with a trained tokenizer, by tokenizer kind."""
    root = tmp_path_factory.mktemp("text-checkpoints")
    return {kind: llama_checkpoint(root / kind, directory) for kind, directory in trained_tokenizers.items()}
