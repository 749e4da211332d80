"""Fuzzing the doors a spec comes in by: a dict (``load_spec(dict)``), a YAML file
(``load_spec(path)``, ``archcomposer validate``, a checkpoint's ``spec.yaml``) and a plugin
(``Registry.register``).

Valid specs, the shipped tiny ones and ones drawn by ``tests.strategies.spec_dicts``, are changed
at one place by one class of bad input: a wrong type, a bool, an int beyond int64 or merely huge,
a small or negative int, an int written as a float, inf or nan, a token id outside the vocabulary,
an unknown key, a deleted key, deep nesting; YAML text also gets other encodings, stray bytes,
duplicate keys, aliases (an alias bomb, a recursive alias), truncation. Each door answers with a
``ComposerError``, or with a valid spec that builds and runs a forward with finite outputs; never
another exception, and never a spec holding a value its class makes invalid (inf, nan, a bool
for a number, an int beyond int64, a token id outside the vocabulary, an unknown key, nesting
beyond ``MAX_DEPTH``), which must be refused. A value that is merely large (``2**40`` for a float)
may give a valid spec whose forward overflows float32: that is the value asked for.

Examples per door, in the ``ci`` profile (default) / ``thorough``: dict door 100 / 1200; YAML
door, the same mutations through a file 50 / 600, text mutations 100 / 1200; plugin door 50 / 600;
and each bad file of ``BAD_FILES`` through ``load_spec``, ``archcomposer validate`` and a
checkpoint directory."""

from __future__ import annotations

import codecs
import copy
import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from archcomposer import ComposerError, RegistryError, SpecError, build_model, get_registry, hookimpl, load_spec
from archcomposer.cli import main
from archcomposer.schema import MODELINE
from archcomposer.spec import SECTION_BASES, RMSNormSpec
from archcomposer.specfile import MAX_DEPTH
from tests.strategies import HEADS, spec_dicts

REGISTRY = get_registry()
TINY = sorted(name for name in REGISTRY.specs if name.startswith("tiny-"))
TINY_TEXT = {name: Path(REGISTRY.specs[name][0]).read_text() for name in TINY}
#: Examples per test: a multiple of the profile's count (25 in ci, 300 in thorough).
EXAMPLES = settings().max_examples
#: The largest model a valid mutated spec is materialised as; larger ones are only built on the
#: meta device (a mutation may make a tiny spec a valid large one).
MAX_MATERIALISED = 2_000_000


def bases() -> st.SearchStrategy[dict]:
    """A valid spec as the dict a YAML file holds: a shipped tiny spec or a drawn one."""
    shipped = st.sampled_from(TINY).map(lambda name: yaml.safe_load(TINY_TEXT[name]))
    return st.one_of(shipped, spec_dicts(heads=HEADS[:2], max_layers=2))


# ---------------------------------------------------------------------------------------------
# mutations of the data


@dataclass
class Mutated:
    kind: str
    what: str
    data: Any
    must_refuse: bool  # the value's class makes the spec invalid wherever it is put
    finite: bool = True  # if valid, its forward must be finite


def _paths(data: Any, loc: tuple = ()):
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield (*loc, key)
        yield from _paths(value, (*loc, key))


def _at(data: Any, loc: tuple) -> Any:
    for part in loc:
        data = data[part]
    return data


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


MUTATIONS = ("wrong_type", "bool", "beyond_int64", "huge_int", "small_int", "int_as_float", "inf_nan", "token_id",
             "unknown_key", "deleted", "deep")


@st.composite
def mutated(draw, base: dict) -> Mutated:
    data = copy.deepcopy(base)
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "unknown_key":
        loc = draw(st.sampled_from([()] + [p for p in _paths(data) if isinstance(_at(data, p), dict)]))
        key = draw(st.sampled_from(["zz_unknown", "hidden_sise", "Kind", "1"]))
        _at(data, loc)[key] = draw(st.sampled_from([1, "x", None]))
        return Mutated(kind, f"unknown key {key!r} at {loc}", data, must_refuse=True)
    if kind == "token_id":
        field, V = draw(st.sampled_from(["pad_token_id", "bos_token_id", "eos_token_id"])), data["vocab_size"]
        bad = [V, V + 5, -1, 2**40] + ([[0, V], [-1], [1, 2**70]] if field == "eos_token_id" else [])
        data[field] = draw(st.sampled_from(bad))
        return Mutated(kind, f"{field} = {data[field]} (vocab_size {V})", data, must_refuse=True)
    loc = draw(st.sampled_from(list(_paths(data))))
    parent, key = _at(data, loc[:-1]), loc[-1]
    old = parent[key]
    if kind == "deleted":
        del parent[key]
        return Mutated(kind, f"deleted {loc}", data, must_refuse=False)
    number = isinstance(old, (int, float)) and not isinstance(old, bool)
    if kind == "bool":
        value, refuse = draw(st.booleans()), not isinstance(old, bool)
    elif kind == "wrong_type":
        value, refuse = draw(st.sampled_from(["x", "64", [], [1], {}, None])), False
    elif kind == "beyond_int64":
        value, refuse = draw(st.sampled_from([2**63, -(2**63) - 1, 10**30])), True
    elif kind == "huge_int":  # within int64: no int field takes it; a float field may
        value, refuse = draw(st.sampled_from([2**31, 2**40, 2**62])), False
    elif kind == "small_int":
        value, refuse = draw(st.sampled_from([-1, 0, 1, 2, 3])), False
    elif kind == "int_as_float":
        value, refuse = (float(old) if number else 64.0), False
    elif kind == "inf_nan":
        value, refuse = draw(st.sampled_from([math.inf, -math.inf, math.nan])), True
    else:  # deep
        value, refuse = _nested(MAX_DEPTH + draw(st.sampled_from([1, 8, 500]))), True
    parent[key] = value
    return Mutated(kind, f"{kind}: {loc} = {_short(value)} (was {_short(old)})", data, must_refuse=refuse,
                   finite=kind != "huge_int")


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, list) or len(repr(value)) < 60 else "[[[...]]]"
    return text[:60]


def check_valid(spec, mutation: Mutated) -> None:
    """A spec the door accepted: it holds no refused value, builds, and runs a forward with
    finite outputs on every head."""
    assert not mutation.must_refuse, f"accepted a spec with {mutation.what}"
    floats = [v for v in _leaves(spec.model_dump()) if isinstance(v, float)]
    assert all(math.isfinite(v) for v in floats), f"{mutation.what}: a non-finite float got through"
    meta = build_model(spec, device="meta")
    if meta.num_parameters() > MAX_MATERIALISED:
        return
    model = build_model(spec, seed=0)
    prompt = getattr(spec.embedding, "prompt", None)
    length = max(1, min(4, spec.max_positions - (prompt.length if prompt is not None else 0)))
    ids = torch.arange(length).remainder(spec.vocab_size)[None]  # [1, S]
    for head in [h.kind for h in spec.heads] or [None]:
        with torch.no_grad():
            out = model(ids, head=head)
        for name, value in out.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and mutation.finite:
                assert torch.isfinite(value).all(), f"{mutation.what}: {head} {name} is not finite"


def _leaves(data: Any):
    if isinstance(data, dict):
        for value in data.values():
            yield from _leaves(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _leaves(value)
    else:
        yield data


def verdict(door):
    """The spec the door gives, or the ComposerError it raises (any other exception fails)."""
    try:
        return door()
    except ComposerError as exc:
        return exc


@settings(max_examples=4 * EXAMPLES)
@given(data=st.data())
def test_dict_door_refuses_or_builds(data):
    mutation = data.draw(mutated(data.draw(bases())))
    spec = verdict(lambda: load_spec(mutation.data))
    event(f"{mutation.kind}: {'refused' if isinstance(spec, ComposerError) else 'valid'}")
    if isinstance(spec, ComposerError):
        assert isinstance(spec, SpecError), f"{mutation.what}: {spec!r}"
    else:
        check_valid(spec, mutation)


# ---------------------------------------------------------------------------------------------
# the YAML door


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "spec.yaml"


@settings(max_examples=2 * EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_yaml_door_agrees_with_the_dict_door(spec_file, data):
    """The same mutations written to a file: the same verdict, and the error names the file."""
    mutation = data.draw(mutated(data.draw(bases())))
    spec_file.write_text(yaml.safe_dump(mutation.data, sort_keys=False))
    from_dict, from_file = verdict(lambda: load_spec(mutation.data)), verdict(lambda: load_spec(spec_file))
    assert isinstance(from_dict, ComposerError) == isinstance(from_file, ComposerError), \
        f"{mutation.what}: dict door {from_dict!r}, file door {from_file!r}"
    if isinstance(from_file, ComposerError):
        assert str(spec_file) in str(from_file), f"{mutation.what}: {from_file}"
    else:
        assert from_file.to_dict() == from_dict.to_dict()


def _top_level_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1].isalpha() and ":" in line]


TEXT_MUTATIONS = ("utf16", "utf32", "utf8_bom", "utf16_no_bom", "latin1", "stray_byte", "control", "duplicate_key",
                  "alias_bomb", "recursive_alias", "deep", "truncated", "yaml_literal")


@st.composite
def mutated_text(draw) -> tuple[str, str, bytes, bool | None]:
    """(kind, what, the file's bytes, expected): expected True means the spec is valid as it was,
    False that it must be refused, None either."""
    name = draw(st.sampled_from(TINY))
    text, kind = TINY_TEXT[name], draw(st.sampled_from(TEXT_MUTATIONS))
    lines = _top_level_lines(text)
    if kind in ("utf16", "utf32", "utf8_bom"):  # YAML's encodings, told by a byte-order mark
        raw = {"utf16": text.encode("utf-16"), "utf32": text.encode("utf-32"),
               "utf8_bom": codecs.BOM_UTF8 + text.encode()}[kind]
        return kind, f"{name} in {kind}", raw, True
    if kind == "utf16_no_bom":
        return kind, f"{name} in UTF-16 without a byte-order mark", text.encode("utf-16-le"), False
    if kind == "latin1":
        return kind, f"{name} in Latin-1", text.replace("\n", " # café\n", 1).encode("latin-1"), False
    at = draw(st.integers(0, len(text)))
    if kind == "stray_byte":
        byte = draw(st.integers(0x80, 0xFF))
        return kind, f"byte 0x{byte:02x} at {at}", text[:at].encode() + bytes([byte]) + text[at:].encode(), False
    if kind == "control":
        char = draw(st.sampled_from(["\x00", "\x07", "\x1b", "\x7f"]))
        return kind, f"character {char!r} at {at}", (text[:at] + char + text[at:]).encode(), False
    if kind == "truncated":
        return kind, f"{name} cut at {at}", text[:at].encode(), None
    if kind == "duplicate_key":
        line = draw(st.sampled_from(lines))
        return kind, f"{line!r} twice", (text + line + "\n").encode(), False
    if kind == "alias_bomb":
        levels = draw(st.integers(6, 12))
        bomb = "zz: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"zz{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, levels))
        return kind, f"an alias bomb of {levels} levels", (text + bomb + f"name: *a{levels - 1}\n").encode(), False
    if kind == "recursive_alias":
        return kind, "a recursive alias", (text + "zz: &loop [1, *loop]\n").encode(), False
    if kind == "deep":
        depth = MAX_DEPTH + draw(st.sampled_from([1, 10, 5000]))
        flow = draw(st.booleans())
        nested = "[" * depth + "]" * depth if flow else "{a: " * depth + "1" + "}" * depth
        return kind, f"nesting {depth} deep", (text + f"zz: {nested}\n").encode(), False
    line = draw(st.sampled_from(lines))  # yaml_literal: a value written as YAML can write it
    literal = draw(st.sampled_from([".inf", "-.inf", ".nan", "1e309", "true", "~", "0x10", "'64'", "64.0",
                                    "9223372036854775808", "[]", "{}", "&x 3", "!!binary aGk=", "2001-12-14",
                                    "!!python/object:os.system {}"]))
    key = line.split(":", 1)[0]
    return kind, f"{key}: {literal}", text.replace(line, f"{key}: {literal}", 1).encode(), None


@settings(max_examples=4 * EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated_text())
def test_yaml_door_refuses_bad_text_with_the_file_and_line(spec_file, case):
    kind, what, raw, expected = case
    spec_file.write_bytes(raw)
    spec = verdict(lambda: load_spec(spec_file))
    event(f"{kind}: {'refused' if isinstance(spec, ComposerError) else 'valid'}")
    if isinstance(spec, ComposerError):
        assert expected is not True, f"{what}: refused a valid spec: {spec}"
        assert isinstance(spec, SpecError) and str(spec).count(str(spec_file)) >= 1, f"{what}: {spec!r}"
    else:
        assert expected is not False, f"{what}: accepted"
        check_valid(spec, Mutated("text", what, None, must_refuse=False))


# ---------------------------------------------------------------------------------------------
# each class once, through load_spec, `archcomposer validate` and a checkpoint's spec.yaml

# without its editor modeline, so the lines and byte offsets below are those of the fields
GPT2 = TINY_TEXT["tiny-gpt2"].removeprefix(MODELINE + "\n")
BAD_FILES = {
    "latin1": (GPT2.replace("A tiny", "A café", 1).encode("latin-1"),
               r"spec\.yaml:1: byte 7 \(0xe9\) is not UTF-8 text \(invalid continuation byte\); save the spec as "
               r"UTF-8"),
    "utf16_no_bom": (GPT2.encode("utf-16-le"),
                     r"spec\.yaml:1: byte 1 is a NUL character; is the file UTF-16 without a byte-order mark\?"),
    "odd_utf16": (codecs.BOM_UTF16_LE + GPT2.encode("utf-16-le") + b"x", r"is not UTF-16-LE text"),
    "control": (GPT2.replace("name:", "\x1bname:").encode(),
                r"spec\.yaml:2: not valid YAML: character U\+001B is not allowed in YAML text"),
    "duplicate": (GPT2 + "hidden_size: 32\n",
                  r"spec\.yaml:17: key 'hidden_size' is given twice in one mapping \(first at line 5\)"),
    "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "name: *i\n",
        r"spec\.yaml:\d+: this value holds more than 100,000 values once its aliases are expanded"),
    "recursive_alias": ("name: &a [*a]\n", r"spec\.yaml:1: an alias refers to a value that contains it"),
    "deep": ("name: " + "[" * 10_000 + "]" * 10_000 + "\n", r"spec\.yaml:1: nested more than 32 deep"),
    "inf": (GPT2.replace("eps: 1.0e-5", "eps: .inf"), r"spec\.yaml:13: norm\.eps: Input should be a finite number"),
    "bool": (GPT2.replace("hidden_size: 64", "hidden_size: true"),
             r"spec\.yaml:5: hidden_size: Input should be a valid integer \(got True\)"),
    "huge": (GPT2.replace("vocab_size: 256", "vocab_size: 1000000000000000000000000000000"),
             r"spec\.yaml:4: vocab_size: 1,000,000,000,000,000,000,000,000,000,000 does not fit in 64 bits"),
    "eos": (GPT2.replace("eos_token_id: 2", "eos_token_id: [2, 261]"),
            r"spec\.yaml:9: eos_token_id\[1\]: token id 261 is not in the vocabulary"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_refused_by_every_door(tmp_path, capsys, name):
    content, message = BAD_FILES[name]
    path = tmp_path / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SpecError, match=message):
        load_spec(path)
    assert main(["validate", str(path)]) == 1  # invalid input
    err = capsys.readouterr().err
    assert err.startswith("archcomposer: error: ") and str(path) in err
    (tmp_path / "model.safetensors").write_bytes(b"")  # a checkpoint directory: its spec is read first
    with pytest.raises(SpecError, match=message):
        load_spec(tmp_path)


def test_yaml_encodings_with_a_byte_order_mark_and_exponent_floats_are_read(tmp_path):
    expected = load_spec("tiny-gpt2").to_dict()
    for raw in (GPT2.encode("utf-16"), GPT2.encode("utf-32"), codecs.BOM_UTF8 + GPT2.encode(),
                GPT2.replace("eps: 1.0e-5", "eps: 1e-5").encode()):
        (tmp_path / "spec.yaml").write_bytes(raw)
        assert load_spec(tmp_path / "spec.yaml").to_dict() == expected


def test_aliases_within_the_limits_are_read(tmp_path):
    norm = "{kind: layernorm, eps: 1.0e-5}"
    text = GPT2.replace("qkv_bias: true,", f"qkv_bias: true, qk_norm: {{norm: &norm {norm}}},")
    (tmp_path / "spec.yaml").write_text(text.replace(f"norm: {norm}", "norm: *norm"))
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.attention.qk_norm.norm == spec.norm == load_spec("tiny-gpt2").norm


# ---------------------------------------------------------------------------------------------
# each class of value once, with its message

TINY_GPT2 = yaml.safe_load(GPT2)


def changed(**fields) -> dict:
    data = copy.deepcopy(TINY_GPT2)
    for name, value in fields.items():
        section, _, field = name.partition("__")
        if field:
            data[section] = {**data[section], field: value}
        else:
            data[section] = value
    return data


@pytest.mark.parametrize(("data", "message"), [
    (changed(eos_token_id=256), r"eos_token_id: token id 256 is not in the vocabulary: ids are 0 to vocab_size - 1 "
                                r"= 255"),
    (changed(eos_token_id=-1), r"eos_token_id: token id -1 is not in the vocabulary"),
    (changed(eos_token_id=[2, 261]), r"eos_token_id\[1\]: token id 261 is not in the vocabulary"),
    (changed(bos_token_id=256), r"bos_token_id: token id 256 is not in the vocabulary"),
    (changed(norm__eps=math.inf), r"norm\.eps: Input should be a finite number \(got inf\)"),
    (changed(norm__eps=math.nan), r"norm\.eps: Input should be a finite number \(got nan\)"),
    (changed(initializer_range=math.inf), r"initializer_range: Input should be a finite number"),
    (changed(position={"kind": "rope", "theta": math.inf}), r"position\.theta: Input should be a finite number"),
    (changed(hidden_size=True), r"hidden_size: Input should be a valid integer \(got True\)"),
    (changed(hidden_size=64.0), r"hidden_size: Input should be a valid integer \(got 64\.0\)"),
    (changed(hidden_size="64"), r"hidden_size: Input should be a valid integer \(got '64'\)"),
    (changed(attention__qkv_bias=1), r"attention\.qkv_bias: Input should be a valid boolean \(got 1\)"),
    (changed(vocab_size=10**30), r"vocab_size: 1,000,000,000,000,000,000,000,000,000,000 does not fit in 64 bits "
                                 r"\(torch's integers, at most 9,223,372,036,854,775,807\)"),
    (changed(vocab_size=2**40), r"vocab_size: 1,099,511,627,776 is more than 1,073,741,824, the largest vocabulary"),
    (changed(num_layers=10**30), r"num_layers: 1,000,000,000,000,000,000,000,000,000,000 does not fit in 64 bits"),
    (changed(num_layers=5000), r"num_layers: 5,000 is more than 4,096, the most layers a spec accepts"),
    (changed(mlp__intermediate_size=2**20), r"mlp\.intermediate_size: 1,048,576 is more than 524,288, the largest "
                                            r"width, count or index"),
    (changed(name=_nested(40)), r"^name\[0\]\[0\]\[0\]\[0\]\[0\]\.\.\.: nested more than 32 deep; a spec nests a few "
                                r"levels$"),
    (changed(zz=1), r"zz: Extra inputs are not permitted"),
])
def test_each_class_of_bad_value_is_refused_naming_the_field(data, message):
    with pytest.raises(SpecError, match=message):
        load_spec(data)


def test_a_float_field_takes_an_int_and_a_tuple_field_a_list():
    spec = load_spec(changed(norm__eps=1, position={"kind": "partial_rope", "fraction": 0.5, "scaling": {
        "type": "longrope", "short_factor": [1, 2, 1, 2], "long_factor": [2.0] * 4}}))
    assert spec.norm.eps == 1.0 and spec.position.scaling.short_factor == (1.0, 2.0, 1.0, 2.0)


# ---------------------------------------------------------------------------------------------
# the plugin door


def _registry_state() -> tuple:
    return (sorted(REGISTRY.plugins), sorted(REGISTRY.sections), {s: sorted(k) for s, k in REGISTRY.kinds.items()},
            sorted(REGISTRY.families), sorted(REGISTRY.specs))


def _block_class(base: type, kind: str | None, *, build: bool = True) -> type:
    namespace: dict[str, Any] = {"__module__": __name__, "__annotations__": {}}
    if kind is not None:
        namespace["__annotations__"]["kind"] = Literal[kind]
    if build:  # every abstract method, implemented
        for method in getattr(base, "__abstractmethods__", ()):
            namespace[method] = lambda self, *args, **kwargs: None
    return type(f"Fuzz{base.__name__}", (base,), namespace)


class _PlainBase(BaseModel):  # a section base that is not archcomposer.spec.Strict
    kind: str


@st.composite
def bad_plugins(draw) -> tuple[str, object]:
    """(what is wrong, a plugin object or something passed as one)."""
    problem = draw(st.sampled_from(["not_a_plugin", "misspelled_hook", "no_build", "other_base", "not_a_class",
                                    "no_kind", "taken_kind", "unknown_section", "plain_section_base",
                                    "section_base_not_a_class"]))
    if problem == "not_a_plugin":
        value = draw(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4),
                               st.binary(max_size=4), st.lists(st.integers(), max_size=3),
                               st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                               st.sampled_from([print, object(), int, ValueError, types.ModuleType("no_hooks"),
                                                lambda register: None])))
        return f"{problem}: {value!r}", value
    if problem == "misspelled_hook":
        class Misspelled:
            @hookimpl
            def register_blokcs(self, register):
                pass

        return problem, Misspelled()
    section = draw(st.sampled_from(sorted(SECTION_BASES)))
    base = SECTION_BASES[section]
    hook, args = "register_blocks", None
    if problem == "no_build":
        args = (section, _block_class(base, "fuzz_kind", build=False))
    elif problem == "other_base":
        other = draw(st.sampled_from([b for s, b in SECTION_BASES.items() if s != section]))
        args = (section, _block_class(other, "fuzz_kind"))
    elif problem == "not_a_class":
        args = (section, draw(st.sampled_from([None, 3, "rmsnorm", RMSNormSpec(kind="rmsnorm")])))
    elif problem == "no_kind":
        args = (section, _block_class(base, None))
    elif problem == "taken_kind":
        taken = draw(st.sampled_from(sorted(REGISTRY.kinds[section])))
        args = (section, _block_class(base, taken))
    elif problem == "unknown_section":
        args = ("fuzz_section", _block_class(base, "fuzz_kind"))
    elif problem == "plain_section_base":
        hook, args = "register_sections", ("fuzz_section", _PlainBase)
    else:
        hook, args = "register_sections", ("fuzz_section", draw(st.sampled_from([None, 3, dict, BaseModel])))

    class Plugin:
        pass

    setattr(Plugin, hook, hookimpl(lambda self, register: register(*args)))
    return f"{problem}: {hook}{args!r}", Plugin()


@settings(max_examples=2 * EXAMPLES)
@given(case=bad_plugins())
def test_plugin_door_refuses_bad_plugins_and_leaves_the_registry_as_it_was(case):
    what, plugin = case
    event(what.split(":")[0])
    before = _registry_state()
    with pytest.raises(RegistryError):
        REGISTRY.register(plugin, name="fuzz")
    assert _registry_state() == before, what


def test_plugin_door_messages():
    class NoBuild(SECTION_BASES["norm"]):
        kind: Literal["no_build"]

    class Plugin:
        @hookimpl
        def register_blocks(self, register):
            register("norm", NoBuild)

    with pytest.raises(RegistryError, match=r"plugin 'Plugin' \(registered in-process\) registers "
                                            r"test_plugin_door_messages.<locals>.NoBuild for section 'norm' without "
                                            r"build\(\), which every NormSpec kind implements"):
        REGISTRY.register(Plugin())
    with pytest.raises(RegistryError, match=r"plugin 'NoneType' cannot be registered: None implements none of the "
                                            r"hooks \(register_sections, register_blocks, register_families, "
                                            r"register_specs\); a plugin is a module, class or object with functions "
                                            r"marked @archcomposer.hookimpl"):
        REGISTRY.register(None)
