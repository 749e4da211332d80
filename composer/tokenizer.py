"""Text in and out: the tokenizer of a checkpoint directory, read and applied as transformers does.

A ``Tokenizer`` wraps one of two models:

- a ``tokenizers.Tokenizer`` (``tokenizer.json``): its own pipeline does everything, and its
  post-processor adds BOS/EOS (transformers 5 ignores ``add_bos_token`` next to a tokenizer.json);
- a ``sentencepiece.SentencePieceProcessor`` (``tokenizer.model``), applied as transformers applies
  a sentencepiece model it converts (Llama's conversion): added tokens are split off first, each
  piece of text in between is encoded without normalization, with ``▁`` prepended to the first
  piece only (``legacy: false``) or to every piece (``legacy: true``) when ``add_prefix_space``;
  ``add_bos_token``/``add_eos_token`` add BOS/EOS.

On top: the special tokens (bos/eos/unk/pad and others), padding (side and token), the chat
template (rendered with jinja2 in a sandbox, as ``apply_chat_template`` does) and streaming
(``IncrementalDecoder``, ``TextStreamer``).

Our format (``save_pretrained(dir)``): ``tokenizer.json`` or ``tokenizer.model`` as they are, and
``tokenizer.yaml`` (``TokenizerConfig``). ``save_pretrained(dir, format="hf")`` writes what
transformers' ``AutoTokenizer`` loads."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import sentencepiece
import tokenizers
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tokenizers import decoders

from archcomposer.errors import CheckpointError, InputError

OUR_CONFIG_FILE = "tokenizer.yaml"
TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
HF_CONFIG_FILE = "tokenizer_config.json"
HF_SPECIAL_TOKENS_FILE = "special_tokens_map.json"
HF_CHAT_TEMPLATE_FILE = "chat_template.jinja"
HF_CHAT_TEMPLATE_DIR = "additional_chat_templates"
HF_ADDED_TOKENS_FILE = "added_tokens.json"
#: Every file (and folder) a tokenizer occupies in a checkpoint directory; a save replaces them all.
TOKENIZER_FILES = (OUR_CONFIG_FILE, TOKENIZER_JSON, SENTENCEPIECE_FILE, HF_CONFIG_FILE, HF_SPECIAL_TOKENS_FILE,
                   HF_CHAT_TEMPLATE_FILE, HF_CHAT_TEMPLATE_DIR, HF_ADDED_TOKENS_FILE)
FORMATS = ("archcomposer", "hf")
SPIECE_UNDERLINE = "▁"
#: transformers' tokenizer classes whose ``padding_side`` defaults to "left" (the class attribute),
#: for a tokenizer_config.json that names its class and not its side.
LEFT_PADDING_CLASSES = frozenset(f"{name}{fast}" for name in ("LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer",
                                                               "CohereTokenizer") for fast in ("", "Fast"))
# Appended to a serialized sentencepiece ModelProto: a second normalizer_spec (field 3), which
# protobuf merges into the first, setting precompiled_charsmap (2) to empty, add_dummy_prefix (3)
# and remove_extra_whitespaces (4) to false. Text then reaches the model as transformers' converted
# tokenizer passes it (no normalization) and the prefix space is ours to add.
_RAW_TEXT_NORMALIZER = b"\x1a\x06\x12\x00\x18\x00\x20\x00"


# ---------------------------------------------------------------------------------------------
# tokenizer.yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AddedToken(_Strict):
    """A token matched in text before the model sees it (tokenizers' ``AddedToken``)."""

    id: Annotated[int, Field(ge=0)]
    content: Annotated[str, Field(min_length=1)]
    special: bool = True  # skipped by decode(skip_special_tokens=True)
    lstrip: bool = False  # the match takes the whitespace on its left
    rstrip: bool = False  # ... and on its right
    single_word: bool = False  # matches only as a whole word
    normalized: bool = False


class TokenizersModel(_Strict):
    """``tokenizer.json``: the tokenizers library's pipeline; its post-processor adds BOS/EOS."""

    kind: Literal["tokenizers"]
    # transformers' clean-up of " ." and " n't"; it applies it to WordPiece/Unigram models, not BPE
    clean_up_tokenization_spaces: bool = False


class SentencePieceModel(_Strict):
    """``tokenizer.model``, applied as transformers applies a sentencepiece model it converts."""

    kind: Literal["sentencepiece"]
    add_bos_token: bool = False
    add_eos_token: bool = False
    add_prefix_space: bool = True  # prepend "▁" to text (sentencepiece's add_dummy_prefix)
    legacy: bool = False  # prefix every piece of text between added tokens, not only the first
    added_tokens: list[AddedToken] = []  # tokens beyond the model's own pieces (ids from its size on)


class TokenizerConfig(_Strict):
    """``tokenizer.yaml``: what a tokenizer needs besides its model file."""

    model: Annotated[TokenizersModel | SentencePieceModel, Field(discriminator="kind")]
    special_tokens: dict[str, str] = {}  # named: bos_token, eos_token, unk_token, pad_token, ...
    extra_special_tokens: list[str] = []
    padding_side: Literal["left", "right"] = "right"
    chat_template: str | dict[str, str] | None = None  # one template, or several by name

    @field_validator("special_tokens")
    @classmethod
    def _names_end_in_token(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not name.endswith("_token")]
        if bad:
            raise ValueError(f"special token names end in '_token' (bos_token, eos_token, ...), got {bad}")
        return value


# ---------------------------------------------------------------------------------------------
# the two models


class _TokenizersBackend:
    """A ``tokenizers.Tokenizer``: it splits added tokens, runs its pipeline and post-processor."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, options: TokenizersModel):
        self.tokenizer, self.options = tokenizer, options
        # padding and truncation baked into a tokenizer.json apply only when asked for, as in transformers
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.is_bpe = type(tokenizer.model).__name__ == "BPE"

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def added_tokens(self) -> dict[int, AddedToken]:
        return {i: AddedToken(id=i, content=t.content, special=t.special, lstrip=t.lstrip, rstrip=t.rstrip,
                              single_word=t.single_word, normalized=t.normalized)
                for i, t in sorted(self.tokenizer.get_added_tokens_decoder().items())}

    def mark_special(self, contents: Sequence[str]) -> None:
        """Register ``contents`` as special added tokens (as transformers does for every special
        token on load), keeping the matching flags a tokenizer.json gives them."""
        existing = {t.content: t for t in self.tokenizer.get_added_tokens_decoder().values()}
        tokens = []
        for content in contents:
            old = existing.get(content)
            flags = {"lstrip": old.lstrip, "rstrip": old.rstrip, "single_word": old.single_word,
                     "normalized": old.normalized} if old is not None else {"normalized": False}
            if old is None or not old.special:
                tokens.append(tokenizers.AddedToken(content, special=True, **flags))
        if tokens:
            self.tokenizer.add_special_tokens(tokens)

    def add(self, tokens: Sequence[AddedToken]) -> None:
        known = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()}
        self.tokenizer.add_tokens([tokenizers.AddedToken(t.content, special=t.special, lstrip=t.lstrip, rstrip=t.rstrip,
                                                         single_word=t.single_word, normalized=t.normalized)
                                   for t in tokens if t.content not in known])

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.tokenizer.id_to_token(index)

    def encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.options.clean_up_tokenization_spaces and not self.is_bpe:
            text = _clean_up_tokenization(text)
        return text

    def write(self, directory: Path) -> None:
        self.tokenizer.save(str(directory / TOKENIZER_JSON))


class _SentencePieceBackend:
    """A sentencepiece model with the added tokens, prefix space and BOS/EOS of transformers'
    conversion of it (``LlamaTokenizer``)."""

    def __init__(self, model: sentencepiece.SentencePieceProcessor, options: SentencePieceModel):
        self.proto = model.serialized_model_proto()
        self.model = sentencepiece.SentencePieceProcessor()
        self.model.LoadFromSerializedProto(self.proto + _RAW_TEXT_NORMALIZER)
        self.options = options
        self.size = model.get_piece_size()
        # the model's control and user-defined pieces are special added tokens, as transformers makes them
        self.added: dict[int, AddedToken] = {
            i: AddedToken(id=i, content=model.id_to_piece(i)) for i, kind in enumerate(_piece_types(self.proto))
            if kind in (3, 4)}
        ids = sorted(t.id for t in options.added_tokens)
        if ids != list(range(self.size, self.size + len(ids))):
            raise InputError(f"added tokens are numbered on from the model's {self.size} pieces ({self.size}, "
                             f"{self.size + 1}, ...), got ids {ids}")
        self.added.update({t.id: t for t in options.added_tokens})
        self._reindex()
        # transformers' decoder for a converted sentencepiece model
        steps = [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if options.add_prefix_space:
            steps.append(decoders.Strip(" ", 1, 0))
        self.decoder = decoders.Sequence(steps)

    def _reindex(self) -> None:
        self.by_content = {t.content: t for t in self.added.values()}
        # longest first: at one position the longest token wins, as in tokenizers' leftmost-longest match
        alternatives = [(r"\s*" if t.lstrip else "") + (r"(?<!\w)" if t.single_word else "")
                        + f"(?P<t{t.id}>{re.escape(t.content)})"
                        + (r"(?!\w)" if t.single_word else "") + (r"\s*" if t.rstrip else "")
                        for t in sorted(self.added.values(), key=lambda t: -len(t.content))]
        self.splitter = re.compile("|".join(alternatives)) if alternatives else None

    def __len__(self) -> int:
        return self.size + len([i for i in self.added if i >= self.size])

    def added_tokens(self) -> dict[int, AddedToken]:
        return dict(sorted(self.added.items()))

    def mark_special(self, contents: Sequence[str]) -> None:
        for content in contents:
            token = self.by_content.get(content)
            if token is None:
                index = self.model.piece_to_id(content)
                index = index if self.model.id_to_piece(index) == content else len(self)
                self.added[index] = AddedToken(id=index, content=content)
            elif not token.special:
                self.added[token.id] = token.model_copy(update={"special": True})
        self._reindex()

    def token_to_id(self, token: str) -> int | None:
        if token in self.by_content:
            return self.by_content[token].id
        index = self.model.piece_to_id(token)
        return index if self.model.id_to_piece(index) == token else None

    def id_to_token(self, index: int) -> str | None:
        if index in self.added:
            return self.added[index].content
        return self.model.id_to_piece(index) if 0 <= index < self.size else None

    def encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        """The ids of each text, without BOS/EOS (the Tokenizer adds those)."""
        return [self._encode(text) for text in texts]

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = []
        start = 0
        for match in self.splitter.finditer(text) if self.splitter is not None else ():
            ids += self._encode_text(text[start:match.start()], first=start == 0)
            ids.append(int(match.lastgroup[1:]))
            start = match.end()
        return ids + self._encode_text(text[start:], first=start == 0)

    def _encode_text(self, text: str, *, first: bool) -> list[int]:
        """tokenizers' Metaspace pre-tokenizer (prepend scheme "first", or "always" when legacy),
        then the sentencepiece model on the whole piece."""
        if not text:
            return []
        text = text.replace(" ", SPIECE_UNDERLINE)
        if self.options.add_prefix_space and (first or self.options.legacy) and not text.startswith(SPIECE_UNDERLINE):
            text = SPIECE_UNDERLINE + text
        return self.model.encode(text)

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        pieces = []
        for index in ids:
            token = self.added.get(index)
            if token is None:
                pieces.append(self.model.id_to_piece(index))
            elif not (skip_special_tokens and token.special):
                pieces.append(token.content)
        return self.decoder.decode(pieces)

    def write(self, directory: Path) -> None:
        (directory / SENTENCEPIECE_FILE).write_bytes(self.proto)


def _piece_types(proto: bytes) -> list[int]:
    """The type of each piece of a serialized sentencepiece ModelProto (1 normal, 2 unknown,
    3 control, 4 user-defined, 5 unused, 6 byte): field 3 of each SentencePiece in field 1. The
    Python API asks about every type but user-defined, and protobuf is not a dependency."""
    return [next((v for f, v in _proto_fields(piece) if f == 3), 1) for f, piece in _proto_fields(proto) if f == 1]


def _proto_fields(data: bytes):
    """(field number, value) of each field of a protobuf message, in order."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, i = data[i:i + width], i + width
        else:
            raise InputError(f"not a sentencepiece model: protobuf wire type {wire} at byte {i}")
        yield key >> 3, value


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def _clean_up_tokenization(text: str) -> str:
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


# ---------------------------------------------------------------------------------------------
# the tokenizer


class BatchEncoding(dict):
    """``input_ids`` and ``attention_mask`` (lists, or tensors with ``return_tensors="pt"``), by
    key or attribute, as transformers' ``BatchEncoding``: ``model.generate(**enc)`` works."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


class Tokenizer:
    """Text to token ids and back, with a checkpoint's special tokens, padding and chat template.

    ``model`` is a ``tokenizers.Tokenizer`` (which the Tokenizer takes over: it registers the
    special tokens on it) or a ``sentencepiece.SentencePieceProcessor``; ``options`` are the
    fields of that kind (``TokenizersModel`` or ``SentencePieceModel``: ``add_bos_token``,
    ``legacy``, ...). Usually made by ``Tokenizer.from_pretrained(dir)``."""

    def __init__(self, model: tokenizers.Tokenizer | sentencepiece.SentencePieceProcessor, *,
                 special_tokens: dict[str, str] | None = None, extra_special_tokens: Sequence[str] = (),
                 padding_side: str = "right", chat_template: str | dict[str, str] | None = None, **options):
        kind = "tokenizers" if isinstance(model, tokenizers.Tokenizer) else \
            "sentencepiece" if isinstance(model, sentencepiece.SentencePieceProcessor) else None
        if kind is None:
            raise InputError(f"a Tokenizer wraps a tokenizers.Tokenizer or a sentencepiece.SentencePieceProcessor, "
                             f"got {type(model).__name__}")
        config = _validate({"model": {"kind": kind, **options}, "special_tokens": special_tokens or {},
                            "extra_special_tokens": list(extra_special_tokens), "padding_side": padding_side,
                            "chat_template": chat_template}, where="Tokenizer()")
        self._options = config.model
        self._backend = _TokenizersBackend(model, config.model) if kind == "tokenizers" \
            else _SentencePieceBackend(model, config.model)
        self._special = dict(config.special_tokens)
        self.extra_special_tokens = list(config.extra_special_tokens)
        self.padding_side = config.padding_side
        self.chat_template = config.chat_template
        self._backend.mark_special(self.all_special_tokens)
        self._bos_eos()  # a tokenizer that must add BOS or EOS has them

    @property
    def config(self) -> TokenizerConfig:
        """What ``tokenizer.yaml`` holds: the tokenizer's settings now."""
        options = self._options
        if isinstance(options, SentencePieceModel):
            beyond = [t for i, t in self._backend.added_tokens().items() if i >= self._backend.size]
            options = options.model_copy(update={"added_tokens": beyond})
        return TokenizerConfig(model=options, special_tokens=dict(self._special),
                               extra_special_tokens=list(self.extra_special_tokens), padding_side=self.padding_side,
                               chat_template=self.chat_template)

    # -- files ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Read the tokenizer of a directory: ours (``tokenizer.yaml``) or transformers'
        (``tokenizer.json`` or ``tokenizer.model``, with ``tokenizer_config.json``)."""
        tokenizer = find_tokenizer(Path(path))
        if tokenizer is None:
            raise CheckpointError(f"{path}: no tokenizer: expected {OUR_CONFIG_FILE}, {TOKENIZER_JSON} or "
                                  f"{SENTENCEPIECE_FILE}")
        return tokenizer

    def save_pretrained(self, path: str | os.PathLike, *, format: str = "archcomposer") -> Path:
        """Write the tokenizer into the directory ``path`` (other files there are kept): ours
        (``tokenizer.json`` or ``tokenizer.model``, and ``tokenizer.yaml``) or, with
        ``format="hf"``, files transformers' ``AutoTokenizer`` loads. Written beside and renamed
        into place, as checkpoints are."""
        from archcomposer.storage import write_atomically

        return write_atomically(Path(path), self.writer(format))

    def writer(self, format: str = "archcomposer") -> Callable[[Path], None]:
        """A function writing the tokenizer into a directory, replacing any tokenizer there: what
        ``save_pretrained`` of a model runs inside its own atomic write."""
        if format not in FORMATS:
            raise CheckpointError(f"format={format!r}: expected one of {FORMATS}")

        def write(directory: Path) -> None:
            for name in TOKENIZER_FILES:
                old = directory / name
                if old.is_dir():
                    shutil.rmtree(old)
                elif old.exists():
                    old.unlink()  # a hard link to the previous checkpoint's file: never write through it
            self._backend.write(directory)
            if format == "archcomposer":
                (directory / OUR_CONFIG_FILE).write_text(_dump_yaml(self.config.model_dump(mode="json")))
            else:
                (directory / HF_CONFIG_FILE).write_text(json.dumps(self._hf_config(), indent=2, ensure_ascii=False)
                                                        + "\n")
        return write

    def _hf_config(self) -> dict:
        model = self._options
        config: dict[str, Any] = {"backend": "tokenizers"}
        if isinstance(model, TokenizersModel):
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config["clean_up_tokenization_spaces"] = model.clean_up_tokenization_spaces
        else:
            config.update(tokenizer_class="LlamaTokenizer", add_bos_token=model.add_bos_token,
                          add_eos_token=model.add_eos_token, add_prefix_space=model.add_prefix_space,
                          legacy=model.legacy, clean_up_tokenization_spaces=False)
        config.update(self._special)
        config["extra_special_tokens"] = list(self.extra_special_tokens)
        config["padding_side"] = self.padding_side
        config["added_tokens_decoder"] = {str(i): t.model_dump(exclude={"id"})
                                          for i, t in self._backend.added_tokens().items()}
        if isinstance(self.chat_template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.chat_template.items()]
        elif self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return config

    # -- vocabulary ----------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of ids, added tokens included."""
        return len(self._backend)

    @property
    def kind(self) -> str:
        """``"tokenizers"`` (tokenizer.json) or ``"sentencepiece"`` (tokenizer.model)."""
        return self._options.kind

    @property
    def model(self) -> tokenizers.Tokenizer | sentencepiece.SentencePieceProcessor:
        return self._backend.tokenizer if self.kind == "tokenizers" else self._backend.model

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        if isinstance(tokens, str):
            return self._backend.token_to_id(tokens)
        return [self._backend.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        return [self._backend.id_to_token(int(i)) for i in ids]

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens (``bos_token``, ``eos_token``, ...) that are set."""
        return dict(self._special)

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self._special.values(), *self.extra_special_tokens]))

    def _get(self, name: str) -> str | None:
        return self._special.get(name)

    def _set(self, name: str, token: str | None) -> None:
        if token is None:
            self._special.pop(name, None)
            return
        if self._backend.token_to_id(token) is None:
            raise InputError(f"{name}={token!r} is not in the vocabulary")
        self._special[name] = token
        self._backend.mark_special([token])

    bos_token = property(lambda self: self._get("bos_token"), lambda self, t: self._set("bos_token", t))
    eos_token = property(lambda self: self._get("eos_token"), lambda self, t: self._set("eos_token", t))
    unk_token = property(lambda self: self._get("unk_token"), lambda self, t: self._set("unk_token", t))
    pad_token = property(lambda self: self._get("pad_token"), lambda self, t: self._set("pad_token", t),
                         doc="set it to the eos token to pad a tokenizer without one, as with transformers")

    def _id(self, name: str) -> int | None:
        token = self._special.get(name)
        return None if token is None else self._backend.token_to_id(token)

    bos_token_id = property(lambda self: self._id("bos_token"))
    eos_token_id = property(lambda self: self._id("eos_token"))
    unk_token_id = property(lambda self: self._id("unk_token"))
    pad_token_id = property(lambda self: self._id("pad_token"))

    # -- text in ---------------------------------------------------------------------------------

    def _bos_eos(self) -> tuple[list[int], list[int]]:
        """What a sentencepiece tokenizer adds before and after the text (a tokenizer.json's
        post-processor adds its own)."""
        if not isinstance(self._options, SentencePieceModel):
            return [], []
        added = []
        for which in ("bos", "eos"):
            wanted = getattr(self._options, f"add_{which}_token")
            if wanted and self._id(f"{which}_token") is None:
                raise InputError(f"add_{which}_token is true but the tokenizer has no {which}_token")
            added.append([self._id(f"{which}_token")] if wanted else [])
        return added[0], added[1]

    def _encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        rows = self._backend.encode(texts, add_special_tokens)
        if not add_special_tokens:
            return rows
        before, after = self._bos_eos()
        return [before + row + after for row in rows] if before or after else rows

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The ids of ``text``; with ``add_special_tokens``, what the tokenizer adds around
        them (BOS, EOS)."""
        if not isinstance(text, str):
            raise InputError(f"encode takes one str, got {type(text).__name__}; call the tokenizer for a batch")
        return self._encode([text], add_special_tokens)[0]

    def __call__(self, text: str | Sequence[str], *, add_special_tokens: bool = True,
                 padding: bool | str = False, max_length: int | None = None, padding_side: str | None = None,
                 return_tensors: str | None = None, return_attention_mask: bool = True) -> BatchEncoding:
        """Encode one text or a batch into ``input_ids`` and ``attention_mask``.

        ``padding``: False; True or ``"longest"`` (to the longest row); ``"max_length"`` (to
        ``max_length``), with the pad token on ``padding_side`` (default: the tokenizer's).
        ``return_tensors="pt"`` gives ``[B, S]`` long tensors (a single text is a batch of one)."""
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        if not all(isinstance(t, str) for t in texts):
            raise InputError("the tokenizer takes a str or a list of str")
        ids = self._encode(texts, add_special_tokens)
        masks = [[1] * len(row) for row in ids]
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise InputError(f"padding={padding!r}: expected False, True, 'longest' or 'max_length'")
        if padding == "max_length" and max_length is None:
            raise InputError("padding='max_length' needs max_length")
        side = padding_side if padding_side is not None else self.padding_side
        if side not in ("left", "right"):
            raise InputError(f"padding_side={side!r}: expected 'left' or 'right'")
        if padding not in (False, "do_not_pad"):
            width = max_length if padding == "max_length" else max(len(row) for row in ids)
            if any(len(row) < width for row in ids):
                pad = self.pad_token_id
                if pad is None:
                    raise InputError("padding needs a pad token and the tokenizer has none; set "
                                     "tokenizer.pad_token = tokenizer.eos_token (as with transformers)")
                for i, row in enumerate(ids):
                    fill = width - len(row)
                    if fill > 0:
                        ids[i] = [pad] * fill + row if side == "left" else row + [pad] * fill
                        masks[i] = [0] * fill + masks[i] if side == "left" else masks[i] + [0] * fill
        if return_tensors not in (None, "pt"):
            raise InputError(f"return_tensors={return_tensors!r}: expected None or 'pt'")
        if return_tensors == "pt":
            if len({len(row) for row in ids}) > 1:
                raise InputError("rows of different lengths make no tensor: pass padding=True")
            out = {"input_ids": torch.tensor(ids, dtype=torch.long).reshape(len(ids), -1),
                   "attention_mask": torch.tensor(masks, dtype=torch.long).reshape(len(ids), -1)}
        elif batched:
            out = {"input_ids": ids, "attention_mask": masks}
        else:
            out = {"input_ids": ids[0], "attention_mask": masks[0]}
        if not return_attention_mask:
            del out["attention_mask"]
        return BatchEncoding(out)

    # -- text out --------------------------------------------------------------------------------

    def decode(self, ids: int | Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = False) -> str:
        """The text of ``ids`` (an id, a list or a 1-D tensor)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise InputError(f"decode takes one sequence, got shape {tuple(ids.shape)}; use batch_decode")
            ids = ids.reshape(-1).tolist()
        ids = [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
        size = len(self)
        if any(not 0 <= i < size for i in ids):
            raise InputError(f"token ids must lie in [0, {size}), got {[i for i in ids if not 0 <= i < size]}")
        return self._backend.decode(ids, skip_special_tokens)

    def batch_decode(self, sequences, *, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in sequences]

    # -- chat ------------------------------------------------------------------------------------

    def apply_chat_template(self, conversation: list[dict] | list[list[dict]], *, add_generation_prompt: bool = False,
                            continue_final_message: bool = False, tokenize: bool = True, return_dict: bool = True,
                            chat_template: str | None = None, tools: list[dict] | None = None,
                            documents: list[dict] | None = None, padding: bool | str = False,
                            return_tensors: str | None = None, **kwargs):
        """Render a conversation (a list of ``{"role", "content"}`` messages, or a batch of them)
        with the chat template, as transformers' ``apply_chat_template``: the text
        (``tokenize=False``), or its ids encoded without adding special tokens (a
        ``BatchEncoding``, or the ids alone with ``return_dict=False``). ``kwargs`` reach the
        template, as do the special tokens (``bos_token``, ...)."""
        import jinja2

        template = self._template(chat_template, tools)
        if not conversation:
            raise InputError("apply_chat_template needs at least one message")
        batched = isinstance(conversation[0], (list, tuple))
        conversations = [list(c) for c in conversation] if batched else [list(conversation)]
        if continue_final_message and add_generation_prompt:
            raise InputError("continue_final_message and add_generation_prompt exclude each other")
        if tools is not None and not all(isinstance(t, dict) for t in tools):
            raise InputError("tools are JSON schemas (dicts)")
        compiled = _compile_template(template)
        rendered = []
        for chat in conversations:
            if not all(isinstance(m, dict) for m in chat):
                raise InputError(f"chat messages are dicts with 'role' and 'content', got {chat!r}")
            chat = _alias_reasoning([{k: v for k, v in m.items() if v is not None} for m in chat])
            final = None
            if continue_final_message:
                final = chat[-1].get("content")
                if not isinstance(final, str):
                    raise InputError("continue_final_message needs a final message with text content")
                chat[-1] = {**chat[-1], "content": final + _CONTINUE_TAG}
            try:
                text = compiled.render(messages=chat, tools=tools, documents=documents,
                                       add_generation_prompt=add_generation_prompt, **{**self._special, **kwargs})
            except jinja2.exceptions.TemplateError as exc:  # its raise_exception, or the sandbox refusing
                raise InputError(f"the chat template stopped: {exc}") from None
            if final is not None:
                if final.strip() not in text or _CONTINUE_TAG.strip() not in text:
                    raise InputError("continue_final_message: the chat template drops part of the final message")
                at = text.rindex(_CONTINUE_TAG.strip())
                text = text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
            rendered.append(text)
        if not tokenize:
            return rendered if batched else rendered[0]
        out = self(rendered if batched else rendered[0], add_special_tokens=False, padding=padding,
                   return_tensors=return_tensors)
        return out if return_dict else out["input_ids"]

    def _template(self, chat_template: str | None, tools) -> str:
        templates = self.chat_template
        if isinstance(templates, dict):
            if chat_template is not None:
                return templates.get(chat_template, chat_template)
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise InputError(f"the tokenizer has several chat templates and none named 'default': pass "
                             f"chat_template= one of {sorted(templates)}")
        if chat_template is not None:
            return chat_template
        if templates is None:
            raise InputError("the tokenizer has no chat template (chat_template in tokenizer_config.json or "
                             "chat_template.jinja); pass chat_template=")
        return templates


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _alias_reasoning(chat: list[dict]) -> list[dict]:
    """A message's reasoning under every name templates read it by (transformers does the same)."""
    out = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        out.append({"thinking": reasoning, **message, "reasoning_content": reasoning} if reasoning is not None
                   else message)
    return out


@lru_cache(maxsize=16)
def _compile_template(template: str):
    """The template in jinja2's immutable sandbox with the globals and filters transformers gives
    chat templates (chat templates from the Hub are untrusted code)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text; it renders as its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    class TemplateDict:  # dict() and dict.fromkeys() without the dict type itself
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=TemplateDict(), namespace=Namespace)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise InputError(f"the chat template is not valid jinja: line {exc.lineno}: {exc.message}") from None


# ---------------------------------------------------------------------------------------------
# streaming


class IncrementalDecoder:
    """Text of a growing sequence of ids, handed out as it becomes final.

    ``push(ids)`` decodes the sequence so far and returns the text not handed out yet, holding
    back what a later token may still change: a trailing run of byte-fallback pieces
    (``<0xE2>``: one more byte can turn "☃" into "����"), trailing replacement characters (a
    UTF-8 character whose bytes have not all arrived) and trailing spaces (a clean-up step may
    drop them). ``finish()`` returns the rest. The pieces joined equal ``decode`` of the whole
    sequence. Decoding the sequence rather than each token alone keeps the spaces right: a
    sentencepiece piece's leading "▁" is a space inside text but not at its start."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.emitted = 0  # characters handed out

    def push(self, ids: Sequence[int] | torch.Tensor) -> str:
        self.ids += ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        end = len(self.ids)
        while end and _BYTE_PIECE.fullmatch(self.tokenizer.convert_ids_to_tokens(self.ids[end - 1]) or ""):
            end -= 1
        text = self.tokenizer.decode(self.ids[:end], skip_special_tokens=self.skip_special_tokens)
        stable = len(text.rstrip("\ufffd").rstrip(" "))
        if stable <= self.emitted:
            return ""
        new, self.emitted = text[self.emitted:stable], stable
        return new

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        rest = text[self.emitted:]
        self.ids, self.emitted = [], 0
        return rest


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class TextStreamer:
    """A streamer for ``generate(..., streamer=)`` with transformers' protocol (``put`` the
    prompt, then each step's token, then ``end``) for one sequence: prints the new text to stdout
    as it becomes final (see ``IncrementalDecoder``), and a newline at the end.
    ``skip_prompt`` leaves the prompt out; ``on_text`` replaces printing."""

    def __init__(self, tokenizer: Tokenizer, *, skip_prompt: bool = False, skip_special_tokens: bool = True,
                 on_text: Callable[[str], None] | None = None):
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
        self.skip_prompt = skip_prompt
        self.on_text = on_text or _print
        self._prompt_next = True

    def put(self, ids: torch.Tensor) -> None:
        prompt, self._prompt_next = self._prompt_next, False
        rows = ids.shape[0] if ids.dim() > 1 or not prompt else 1  # a prompt [1, S] or [S]; then tokens [1]
        if rows != 1:
            raise InputError(f"TextStreamer streams one sequence, got a batch of {rows}")
        if prompt and self.skip_prompt:
            return
        text = self.decoder.push(ids)
        if text:
            self.on_text(text)

    def end(self) -> None:
        self.on_text(self.decoder.finish() + "\n")
        self._prompt_next = True


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# reading a directory


def find_tokenizer(directory: Path) -> Tokenizer | None:
    """The tokenizer of a checkpoint directory, or None if it has none."""
    if (directory / OUR_CONFIG_FILE).is_file():
        return _read_ours(directory)
    if any((directory / name).is_file() for name in (TOKENIZER_JSON, SENTENCEPIECE_FILE)):
        return _read_hf(directory)
    if (directory / HF_CONFIG_FILE).is_file():
        warnings.warn(f"{directory}: {HF_CONFIG_FILE} comes without {TOKENIZER_JSON} or {SENTENCEPIECE_FILE}, the "
                      f"tokenizer files archcomposer reads (not vocab.json/merges.txt or vocab.txt): no tokenizer",
                      stacklevel=3)
    return None


def _read_ours(directory: Path) -> Tokenizer:
    path = directory / OUR_CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    config = _validate(data, where=str(path), error=CheckpointError)
    file = TOKENIZER_JSON if config.model.kind == "tokenizers" else SENTENCEPIECE_FILE
    model = _read_model(directory / file, f"{path} says model.kind: {config.model.kind}, so")
    return _make(Tokenizer, model, directory, special_tokens=config.special_tokens,
                 extra_special_tokens=config.extra_special_tokens, padding_side=config.padding_side,
                 chat_template=config.chat_template, **config.model.model_dump(exclude={"kind"}))


def _read_hf(directory: Path) -> Tokenizer:
    """As transformers 5's ``AutoTokenizer`` reads a directory: tokenizer.json before
    tokenizer.model; special tokens from tokenizer_config.json (special_tokens_map.json for older
    saves); the chat template from chat_template.jinja (and additional_chat_templates/) before
    tokenizer_config.json."""
    config = _read_json(directory / HF_CONFIG_FILE) if (directory / HF_CONFIG_FILE).is_file() else {}
    named = {k: _content(v) for k, v in config.items()
             if k.endswith("_token") and isinstance(v, (str, dict)) and _content(v) is not None}
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(extra, dict):  # transformers 5's model-specific named tokens
        named.update({k: _content(v) for k, v in extra.items()})
        extra = []
    extra = [_content(t) for t in extra]
    if "added_tokens_decoder" not in config and (directory / HF_SPECIAL_TOKENS_FILE).is_file():
        for key, value in _read_json(directory / HF_SPECIAL_TOKENS_FILE).items():
            if key in ("extra_special_tokens", "additional_special_tokens") and isinstance(value, list):
                extra += [t for t in map(_content, value) if t not in extra]
            elif key.endswith("_token") and _content(value) is not None:
                named[key] = _content(value)
    added = [AddedToken(id=int(i), **{k: v for k, v in t.items() if k in AddedToken.model_fields and k != "id"})
             for i, t in (config.get("added_tokens_decoder") or {}).items()]
    if (directory / HF_ADDED_TOKENS_FILE).is_file() and not added:
        specials = {*named.values(), *extra}
        added = [AddedToken(id=i, content=c, special=c in specials, normalized=c not in specials)
                 for c, i in _read_json(directory / HF_ADDED_TOKENS_FILE).items()]
    padding_side = config.get("padding_side")
    common = {"extra_special_tokens": extra, "chat_template": _hf_chat_template(directory, config)}
    if (directory / TOKENIZER_JSON).is_file():
        model = _read_model(directory / TOKENIZER_JSON, "")
        baked = model.padding  # a tokenizer.json may carry a padding setup: its pad token and side
        if baked is not None:
            named.setdefault("pad_token", baked["pad_token"])
            padding_side = padding_side or baked["direction"]
        side = padding_side or ("left" if config.get("tokenizer_class") in LEFT_PADDING_CLASSES else "right")
        tokenizer = _make(Tokenizer, model, directory, special_tokens=named, padding_side=side,
                          clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
                          **common)
        tokenizer._backend.add(added)
        return tokenizer
    model = _read_model(directory / SENTENCEPIECE_FILE, "")
    for name, index in (("bos_token", model.bos_id()), ("eos_token", model.eos_id()), ("unk_token", model.unk_id())):
        if name not in named and index >= 0:
            named[name] = model.id_to_piece(index)
    prefix = config.get("add_prefix_space")
    side = padding_side or ("left" if config.get("tokenizer_class") in LEFT_PADDING_CLASSES else "right")
    return _make(Tokenizer, model, directory, special_tokens=named, padding_side=side,
                 add_bos_token=bool(config.get("add_bos_token", False)),
                 add_eos_token=bool(config.get("add_eos_token", False)),
                 add_prefix_space=prefix if prefix is not None else model.normalize("x") == SPIECE_UNDERLINE + "x",
                 legacy=bool(config.get("legacy", False)),
                 added_tokens=[t for t in added if t.id >= model.get_piece_size()], **common)


def _hf_chat_template(directory: Path, config: dict) -> str | dict[str, str] | None:
    templates = {}
    if (directory / HF_CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (directory / HF_CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (directory / HF_CHAT_TEMPLATE_DIR).is_dir():
        for file in sorted((directory / HF_CHAT_TEMPLATE_DIR).glob("*.jinja")):
            templates[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    if templates:
        return templates["default"] if list(templates) == ["default"] else templates
    template = config.get("chat_template")
    if isinstance(template, list):
        return {t["name"]: t["template"] for t in template}
    return template


def _content(token) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_model(path: Path, why: str):
    if not path.is_file():
        raise CheckpointError(f"{why} {path.name} must be there; it is not: {path}".strip())
    try:
        if path.name == TOKENIZER_JSON:
            return tokenizers.Tokenizer.from_file(str(path))
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except Exception as exc:  # both libraries raise their own error types for unreadable files
        library = "tokenizers" if path.name == TOKENIZER_JSON else "sentencepiece"
        raise CheckpointError(f"{path}: not a readable {library} file: {exc}") from None


def _make(cls, model, directory: Path, **kwargs) -> Tokenizer:
    try:
        return cls(model, **kwargs)
    except InputError as exc:
        raise CheckpointError(f"{directory}: the tokenizer files are inconsistent: {exc}") from None


def _validate(data: dict, *, where: str, error=InputError) -> TokenizerConfig:
    try:
        return TokenizerConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise error(f"{where}: invalid tokenizer configuration: {problems}") from None


def _dump_yaml(data: dict) -> str:
    """YAML with multi-line strings (a chat template) as literal blocks, readable as written."""

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True)
