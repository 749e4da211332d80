"""Tokenizer: transformers' AutoTokenizer is the oracle, on tokenizers trained at test time
(tests/composer/conftest.py) and saved as transformers saves them: encode, decode, batch padding,
special tokens and the chat template equal it, through our format and the Hugging Face export
too; streaming hands out exactly the decoded text, never half a character."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
import yaml

from archcomposer import CheckpointError, InputError, Tokenizer
from archcomposer.tokenizer import IncrementalDecoder, TextStreamer
from tests.composer.conftest import edit_config

KINDS = ("tokenizers", "sentencepiece")
PIECES = [*"abcdefghij klmnop  ü东😀☃\n\t▁.,!?'", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<sep>",
          "<|begin_of_text|>", " the", "hello", "world", "Hello", "café", "  ", "don't", "2024"]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "the cat sat."}, {"role": "user", "content": " über café 😀 "}]


def texts(count: int = 300, seed: int = 0) -> list[str]:
    """Random strings built from words, special tokens, odd spacing and multi-byte characters."""
    rng = random.Random(seed)
    return ["", " ", "hello world", " hello  world", "<s> the", "a<sep>b <|im_start|> c", "▁x ▁"] + [
        "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 14))) for _ in range(count)]


def id_sequences(size: int, count: int = 200, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(size) for _ in range(rng.randint(0, 10))] for _ in range(count)]


def auto(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def assert_same_as(ours: Tokenizer, theirs, *, count: int = 300) -> None:
    """Encode (with and without special tokens) and decode (with and without them) as transformers."""
    assert len(ours) == len(theirs)
    for text in texts(count):
        for add in (True, False):
            assert ours.encode(text, add_special_tokens=add) == theirs.encode(text, add_special_tokens=add), \
                (text, add, theirs.convert_ids_to_tokens(theirs.encode(text, add_special_tokens=add)))
    for ids in id_sequences(len(ours)):
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), \
                (ids, skip)


def assert_same_specials(ours: Tokenizer, theirs) -> None:
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert set(ours.all_special_tokens) == set(theirs.all_special_tokens)
    for name in ("bos", "eos", "unk", "pad"):
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    assert ours.padding_side == theirs.padding_side


@pytest.fixture
def copy_of(trained_tokenizers, tmp_path):
    def copy(kind, **config_changes):
        directory = tmp_path / f"{kind}-copy"
        shutil.copytree(trained_tokenizers[kind], directory)
        if config_changes:
            edit_config(directory, **config_changes)
        return directory
    return copy


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_and_special_tokens_equal_transformers(trained_tokenizers, kind):
    ours = Tokenizer.from_pretrained(trained_tokenizers[kind])
    theirs = auto(trained_tokenizers[kind])
    assert ours.kind == kind
    assert_same_specials(ours, theirs)
    assert_same_as(ours, theirs)
    assert ours.encode("hello")[0] == ours.bos_token_id  # both add BOS: a post-processor, add_bos_token


@pytest.mark.parametrize("changes", [
    {"legacy": True},                                    # "▁" before every piece of text, not only the first
    {"add_prefix_space": False},                         # no "▁" at all (Gemma's way)
    {"add_bos_token": False, "add_eos_token": True},
    {"pad_token": "</s>", "padding_side": "right"},
])
def test_sentencepiece_options_equal_transformers(copy_of, changes):
    directory = copy_of("sentencepiece", **changes)
    ours, theirs = Tokenizer.from_pretrained(directory), auto(directory)
    assert_same_specials(ours, theirs)
    assert_same_as(ours, theirs, count=150)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_padding_equals_transformers(trained_tokenizers, kind, side):
    ours, theirs = Tokenizer.from_pretrained(trained_tokenizers[kind]), auto(trained_tokenizers[kind])
    batch = ["hello world", "a", " the cat sat on the mat.", "东京 😀"]
    with pytest.raises(InputError, match="padding needs a pad token and the tokenizer has none"):
        ours(batch, padding=True)
    ours.pad_token, theirs.pad_token = ours.eos_token, theirs.eos_token
    for kwargs in ({"padding": True}, {"padding": "max_length", "max_length": 12}, {"add_special_tokens": False,
                                                                                  "padding": True}):
        got = ours(batch, padding_side=side, return_tensors="pt", **kwargs)
        want = theirs(batch, padding_side=side, return_tensors="pt", **kwargs)
        assert torch.equal(got.input_ids, want["input_ids"]) and torch.equal(got.attention_mask,
                                                                             want["attention_mask"])
    assert ours(batch[:2], padding=True) == dict(theirs(batch[:2], padding=True))  # lists
    assert ours("hello") == dict(theirs("hello"))  # one text: no batch dimension


@pytest.mark.parametrize("kind", KINDS)
def test_chat_template_equals_transformers(trained_tokenizers, kind):
    ours, theirs = Tokenizer.from_pretrained(trained_tokenizers[kind]), auto(trained_tokenizers[kind])
    chat = CHAT if kind == "tokenizers" else [m for m in CHAT if m["role"] != "system"]
    for options in ({}, {"add_generation_prompt": True}, {"continue_final_message": True},
                    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}):
        text = ours.apply_chat_template(chat, tokenize=False, **options)
        assert text == theirs.apply_chat_template(chat, tokenize=False, **options)
        ids = ours.apply_chat_template(chat, return_dict=False, **options)
        assert ids == theirs.apply_chat_template(chat, return_dict=False, **options)
        assert ids == ours.encode(text, add_special_tokens=False)
    ours.pad_token, theirs.pad_token = ours.eos_token, theirs.eos_token
    batch = [chat[:2], chat]
    got = ours.apply_chat_template(batch, add_generation_prompt=True, padding=True, return_tensors="pt")
    want = theirs.apply_chat_template(batch, add_generation_prompt=True, padding=True, return_tensors="pt")
    assert torch.equal(got.input_ids, want["input_ids"]) and torch.equal(got.attention_mask, want["attention_mask"])


def test_chat_template_errors_are_input_errors(trained_tokenizers):
    ours = Tokenizer.from_pretrained(trained_tokenizers["tokenizers"])
    with pytest.raises(InputError, match="the chat template stopped: unknown role tool"):  # its raise_exception
        ours.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(InputError, match="not valid jinja: line 1"):
        ours.apply_chat_template(CHAT, chat_template="{% for %}")
    ours.chat_template = None
    with pytest.raises(InputError, match="the tokenizer has no chat template"):
        ours.apply_chat_template(CHAT)


def test_chat_template_runs_in_a_sandbox(trained_tokenizers):
    ours = Tokenizer.from_pretrained(trained_tokenizers["tokenizers"])
    with pytest.raises(InputError, match="the chat template stopped: access to attribute '__class__' of 'list' "
                                         "object is unsafe"):
        ours.apply_chat_template(CHAT, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(InputError, match="cannot set underscore attributes"):
        ours.apply_chat_template(CHAT, chat_template="{% set ns = namespace(_x=1) %}")


@pytest.mark.parametrize("kind", KINDS)
def test_our_format_round_trip(trained_tokenizers, kind, tmp_path):
    original = Tokenizer.from_pretrained(trained_tokenizers[kind])
    original.pad_token = original.eos_token
    original.save_pretrained(tmp_path / "ours")
    model_file = "tokenizer.json" if kind == "tokenizers" else "tokenizer.model"
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted([model_file, "tokenizer.yaml"])
    config = yaml.safe_load((tmp_path / "ours" / "tokenizer.yaml").read_text())
    assert config["model"]["kind"] == kind and config["special_tokens"]["pad_token"] == original.eos_token
    assert config["chat_template"] == original.chat_template
    assert "|" in (tmp_path / "ours" / "tokenizer.yaml").read_text()  # the template as a readable block
    again = Tokenizer.from_pretrained(tmp_path / "ours")
    assert again.config == original.config
    assert again.special_tokens_map == original.special_tokens_map and again.padding_side == original.padding_side
    for text in texts(100):
        assert again.encode(text) == original.encode(text)
    for ids in id_sequences(len(original), 50):
        assert again.decode(ids) == original.decode(ids)
    assert again.apply_chat_template(CHAT[1:], tokenize=False) == original.apply_chat_template(CHAT[1:],
                                                                                               tokenize=False)


@pytest.mark.parametrize("kind", KINDS)
def test_hf_export_loads_in_transformers_and_equals_ours(trained_tokenizers, kind, tmp_path):
    ours = Tokenizer.from_pretrained(trained_tokenizers[kind])
    ours.save_pretrained(tmp_path / "ours")
    Tokenizer.from_pretrained(tmp_path / "ours").save_pretrained(tmp_path / "hf", format="hf")
    theirs = auto(tmp_path / "hf")
    assert_same_specials(ours, theirs)
    assert_same_as(ours, theirs, count=150)
    assert theirs.apply_chat_template(CHAT[1:], tokenize=False) == ours.apply_chat_template(CHAT[1:], tokenize=False)
    assert_same_as(Tokenizer.from_pretrained(tmp_path / "hf"), theirs, count=50)


def test_sentencepiece_options_survive_both_formats(copy_of, tmp_path):
    directory = copy_of("sentencepiece", legacy=True, add_prefix_space=False, add_eos_token=True)
    ours = Tokenizer.from_pretrained(directory)
    ours.save_pretrained(tmp_path / "ours")
    assert yaml.safe_load((tmp_path / "ours" / "tokenizer.yaml").read_text())["model"] == {
        "kind": "sentencepiece", "add_bos_token": True, "add_eos_token": True, "add_prefix_space": False,
        "legacy": True, "added_tokens": []}
    Tokenizer.from_pretrained(tmp_path / "ours").save_pretrained(tmp_path / "hf", format="hf")
    assert_same_as(ours, auto(tmp_path / "hf"), count=100)


def test_a_special_token_beyond_the_sentencepiece_vocabulary_gets_the_next_id(copy_of, tmp_path):
    directory = copy_of("sentencepiece", pad_token="<pad>")  # not one of the model's pieces
    ours, theirs = Tokenizer.from_pretrained(directory), auto(directory)
    assert ours.pad_token_id == theirs.pad_token_id == 420 and len(ours) == len(theirs) == 421
    assert ours.encode("a<pad>b") == theirs.encode("a<pad>b")
    ours.save_pretrained(tmp_path / "ours")
    assert yaml.safe_load((tmp_path / "ours" / "tokenizer.yaml").read_text())["model"]["added_tokens"] == [
        {"id": 420, "content": "<pad>", "special": True, "lstrip": False, "rstrip": False, "single_word": False,
         "normalized": False}]
    assert Tokenizer.from_pretrained(tmp_path / "ours").encode("a<pad>b") == theirs.encode("a<pad>b")


# ---------------------------------------------------------------------------------------------
# streaming


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_decoder_joins_to_decode_and_never_takes_back_text(trained_tokenizers, kind):
    tokenizer = Tokenizer.from_pretrained(trained_tokenizers[kind])
    for text in texts(150, seed=1):
        ids = tokenizer.encode(text)
        decoder = IncrementalDecoder(tokenizer)
        shown = [decoder.push([i]) for i in ids]
        shown.append(decoder.finish())
        assert "".join(shown) == tokenizer.decode(ids, skip_special_tokens=True), (text, shown)
        assert all("\ufffd" not in piece for piece in shown)  # the text has none: no half character shown
        # what was shown stands: every later sequence that does not end inside a byte run begins with it
        ends = [m for m in range(1, len(ids) + 1) if not tokenizer.convert_ids_to_tokens(ids[m - 1]).startswith("<0x")]
        for k in range(len(ids)):
            so_far = "".join(shown[:k + 1])
            assert all(tokenizer.decode(ids[:m], skip_special_tokens=True).startswith(so_far) for m in ends if m > k)


def test_sentencepiece_pieces_keep_their_spaces_when_streamed(trained_tokenizers):
    tokenizer = Tokenizer.from_pretrained(trained_tokenizers["sentencepiece"])
    ids = tokenizer.encode("the cat sat on the mat", add_special_tokens=False)
    alone = "".join(tokenizer.decode([i]) for i in ids)  # each piece alone loses its leading space
    assert alone != "the cat sat on the mat"
    decoder = IncrementalDecoder(tokenizer)
    assert "".join(decoder.push([i]) for i in ids) + decoder.finish() == "the cat sat on the mat"


def test_a_multi_byte_character_appears_once_all_its_bytes_have(trained_tokenizers):
    tokenizer = Tokenizer.from_pretrained(trained_tokenizers["sentencepiece"])
    ids = tokenizer.encode("a ☃ the", add_special_tokens=False)  # ☃ is three byte-fallback pieces
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁a", "▁", "<0xE2>", "<0x98>", "<0x83>", "▁the"]
    decoder = IncrementalDecoder(tokenizer)
    # a fourth byte could still turn "☃" into "����": it shows once a piece that is not a byte follows
    assert [decoder.push([i]) for i in ids] == ["a", "", "", "", "", " ☃ the"]
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.push([i]) for i in ids[:-1]] + [decoder.finish()] == ["a", "", "", "", "", " ☃"]


def test_text_streamer_prints_the_continuation(trained_tokenizers, capsys):
    tokenizer = Tokenizer.from_pretrained(trained_tokenizers["tokenizers"])
    prompt = torch.tensor([tokenizer.encode("hello")])
    ids = tokenizer.encode(" the cat sat on the mat. 东京", add_special_tokens=False)
    streamer = TextStreamer(tokenizer, skip_prompt=True)
    streamer.put(prompt)
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert capsys.readouterr().out == " the cat sat on the mat. 东京\n"
    with pytest.raises(InputError, match="streams one sequence, got a batch of 2"):
        TextStreamer(tokenizer).put(torch.tensor([[1, 2], [3, 4]]))


# ---------------------------------------------------------------------------------------------
# errors


def test_files_that_cannot_be_read_name_the_file(trained_tokenizers, tmp_path):
    assert not (tmp_path / "tokenizer.yaml").exists()
    with pytest.raises(CheckpointError, match="no tokenizer: expected tokenizer.yaml, tokenizer.json or "):
        Tokenizer.from_pretrained(tmp_path)
    Tokenizer.from_pretrained(trained_tokenizers["tokenizers"]).save_pretrained(tmp_path / "ours")
    config = tmp_path / "ours" / "tokenizer.yaml"
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "padding_side": "middle", "special_tokens": {"bos": "x"}}))
    with pytest.raises(CheckpointError, match=r"tokenizer.yaml: invalid tokenizer configuration: special_tokens: "
                                              r"Value error, special token names end in '_token'.*; padding_side: "):
        Tokenizer.from_pretrained(tmp_path / "ours")
    config.write_text(yaml.safe_dump({**data, "model": {"kind": "sentencepiece"}}))
    with pytest.raises(CheckpointError, match=r"says model.kind: sentencepiece, so tokenizer.model must be there"):
        Tokenizer.from_pretrained(tmp_path / "ours")
    config.write_text(yaml.safe_dump(data))
    (tmp_path / "ours" / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer.json: not a readable tokenizers file"):
        Tokenizer.from_pretrained(tmp_path / "ours")


def test_bad_arguments_raise_input_errors(trained_tokenizers):
    tokenizer = Tokenizer.from_pretrained(trained_tokenizers["tokenizers"])
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 360\), got \[360\]"):
        tokenizer.decode([5, 360])
    with pytest.raises(InputError, match="rows of different lengths make no tensor: pass padding=True"):
        tokenizer(["a", "a b c"], return_tensors="pt")
    with pytest.raises(InputError, match="pad_token='nope' is not in the vocabulary"):
        tokenizer.pad_token = "nope"
    with pytest.raises(InputError, match=r"Tokenizer\(\): invalid tokenizer configuration: model.tokenizers."
                                         r"add_bos_token: Extra inputs are not permitted"):
        Tokenizer(tokenizer.model, add_bos_token=True)  # a tokenizer.json's post-processor decides that
    with pytest.raises(InputError, match="wraps a tokenizers.Tokenizer or a sentencepiece.SentencePieceProcessor"):
        Tokenizer("tokenizer.json")


# ---------------------------------------------------------------------------------------------
# a tokenizer is part of a model directory


@pytest.mark.parametrize("kind", KINDS)
def test_from_pretrained_attaches_the_tokenizer_of_a_transformers_checkpoint(text_checkpoints, kind, tmp_path):
    import archcomposer

    model = archcomposer.from_pretrained(text_checkpoints[kind])
    assert model.tokenizer is not None and model.tokenizer.kind == kind
    assert_same_as(model.tokenizer, auto(text_checkpoints[kind]), count=50)
    assert archcomposer.build_model("tiny-glm-4", seed=0).tokenizer is None
    model.tokenizer = None
    model.save_pretrained(tmp_path / "bare")
    assert archcomposer.from_pretrained(tmp_path / "bare").tokenizer is None
    (tmp_path / "bare" / "tokenizer_config.json").write_text("{}")  # with vocab.json and merges.txt, say
    with pytest.warns(UserWarning, match="tokenizer_config.json comes without tokenizer.json or tokenizer.model"):
        assert archcomposer.from_pretrained(tmp_path / "bare").tokenizer is None


@pytest.mark.parametrize("kind", KINDS)
def test_model_save_writes_the_tokenizer_in_our_format_and_the_hf_export(text_checkpoints, kind, tmp_path):
    import transformers

    import archcomposer

    model = archcomposer.from_pretrained(text_checkpoints[kind])
    model.save_pretrained(tmp_path / "ours")
    model_file = "tokenizer.json" if kind == "tokenizers" else "tokenizer.model"
    assert {"spec.yaml", "model.safetensors", "tokenizer.yaml", model_file} == {
        p.name for p in (tmp_path / "ours").iterdir()}
    ours = archcomposer.from_pretrained(tmp_path / "ours")
    assert ours.tokenizer.config == model.tokenizer.config
    ours.save_pretrained(tmp_path / "hf", format="hf")
    theirs = auto(tmp_path / "hf")
    assert_same_specials(model.tokenizer, theirs)
    assert_same_as(model.tokenizer, theirs, count=50)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([theirs.encode("the cat sat")])
    assert torch.equal(reference.generate(ids, max_new_tokens=6, do_sample=False),
                       ours.generate(ids, max_new_tokens=6))


def test_a_save_replaces_the_previous_tokenizer_and_never_writes_through_it(text_checkpoints, tmp_path,
                                                                            monkeypatch):
    import archcomposer
    import archcomposer.tokenizer

    target = tmp_path / "ckpt"
    sentencepiece_model = archcomposer.from_pretrained(text_checkpoints["sentencepiece"])
    sentencepiece_model.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    other = archcomposer.from_pretrained(text_checkpoints["tokenizers"])

    def fail(data):
        raise OSError("disk full")

    monkeypatch.setattr(archcomposer.tokenizer, "_dump_yaml", fail)  # after tokenizer.json is written
    with pytest.raises(archcomposer.CheckpointError, match=r"failed \(disk full\); the checkpoint there is unchanged"):
        other.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    monkeypatch.undo()

    other.save_pretrained(target)  # a tokenizer.json takes the place of the tokenizer.model
    assert "tokenizer.model" not in {p.name for p in target.iterdir()}
    assert archcomposer.from_pretrained(target).tokenizer.kind == "tokenizers"
    other.tokenizer = None
    other.save_pretrained(target)  # a model without a tokenizer keeps the one there
    assert archcomposer.from_pretrained(target).tokenizer.kind == "tokenizers"
