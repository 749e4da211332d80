"""The doors of the Python API, fuzzed: ``forward``, ``generate`` and the KV cache get arguments of
every kind (dtypes, shapes, ranges, None, lists and scalars, caches of other models) on tiny shipped
models (GLM-4, BLOOM with ALiBi, CPM-Ant with its prepended prompt, Seed-OSS). Each call is either
refused with a ComposerError (InputError, CacheError) that names the argument, or returns what the
same call in canonical form returns (int64 ids for int32 ones, a long mask for a bool one...):
never another exception, never an invalid argument accepted.

Each test is one argument class. An example draws a model, a batch and the values, then tries
every form of the argument (invalid forms cost one refusal each; a valid one costs its call and the
canonical call). Examples per test: ``max_examples`` of the hypothesis profile (tests/conftest.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from archcomposer import ComposerError, DynamicCache, StaticCache, build_model, load_spec

MODELS = ("tiny-glm-4", "tiny-bloom", "tiny-cpm-ant", "tiny-seed-oss")
V = 256  # the vocabulary of each of them
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.bool, torch.uint8,
          torch.int8, torch.int16, torch.int32, torch.int64)
INDEX_DTYPES = (torch.int32, torch.int64)
NOT_INDEX_DTYPES = tuple(d for d in DTYPES if d not in INDEX_DTYPES)
MASK_DTYPES = tuple(d for d in DTYPES if not d.is_complex)


@functools.cache
def model(name: str, *, num_layers: int | None = None, dtype: torch.dtype = torch.float32, heads: bool = False):
    """A shipped tiny model in eval mode; ``num_layers``/``dtype`` make a variant whose cache
    another model must refuse; ``heads`` gives it every head kind."""
    spec = load_spec(name).to_dict()
    if num_layers is not None:
        spec["num_layers"] = num_layers
    if heads:
        spec["heads"] = [{"kind": "causal_lm"}, {"kind": "sequence_classification", "num_labels": 3},
                         {"kind": "token_classification", "num_labels": 3}, {"kind": "question_answering"}]
    return build_model(spec, seed=0).to(dtype).eval()


@dataclass
class Case:
    argument: str  # the argument a refusal must name
    form: str
    call: Callable[[], Any]
    canonical: Callable[[], Any] | None  # the same call in canonical form; None: the call must be refused


@torch.no_grad()
def check(case: Case) -> None:
    where = f"{case.argument} ({case.form})"
    try:
        got = case.call()
    except ComposerError as exc:
        event(f"{case.argument}: refused")  # pytest --hypothesis-show-statistics counts them
        assert case.canonical is None, f"{where}: a valid form was refused: {exc}"
        assert case.argument in str(exc), f"{where}: the error does not name {case.argument!r}: {exc}"
        return
    except Exception as exc:
        raise AssertionError(f"{where}: {type(exc).__name__} instead of a ComposerError: {exc}") from exc
    event(f"{case.argument}: accepted")
    assert case.canonical is not None, f"{where}: an invalid form was accepted"
    expected = case.canonical()
    if isinstance(expected, torch.Tensor):  # generate's tokens
        assert torch.equal(got.long(), expected.long()), f"{where}: {got} != {expected}"
        return
    assert list(got.keys()) == list(expected.keys()), where
    for name in expected.keys():
        if name != "past_key_values":
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, equal_nan=True,
                                       msg=lambda message, name=name: f"{where}, {name}: {message}")


def check_forms(argument: str, call: Callable[[Any], Any], valid: dict[str, tuple[Any, Any]],
                invalid: dict[str, Any]) -> None:
    """Valid forms (name -> (value, canonical value)): ``call(value)`` gives what ``call(canonical
    value)`` gives. Invalid forms (name -> value): ``call(value)`` is refused, naming ``argument``."""
    for form, (value, canonical) in valid.items():
        check(Case(argument, form, lambda: call(value), lambda: call(canonical)))
    for form, value in invalid.items():
        check(Case(argument, form, lambda: call(value), None))


def draw_call(data, names=MODELS, max_rows=3, max_length=5):
    """A model and valid ids [B, S] for it."""
    m = model(data.draw(st.sampled_from(names), label="model"))
    B, S = data.draw(st.integers(1, max_rows), label="rows"), data.draw(st.integers(1, max_length), label="length")
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="ids seed"))
    return m, torch.randint(0, V, (B, S), generator=generator)


def draw_mask(data, B: int, S: int) -> torch.Tensor:
    """A left-padding mask [B, S] (long), each row with at least one token."""
    real = [data.draw(st.integers(1, S), label="real tokens") for _ in range(B)]
    return torch.stack([(torch.arange(S) >= S - n).long() for n in real])


def draw_outside(data, low: int, high: int, label: str) -> int:
    """An integer outside [low, high), within int32."""
    return data.draw(st.one_of(st.integers(high, 2**31 - 1), st.integers(-2**31, low - 1)), label=label)


def ids_forms(data, ids: torch.Tensor) -> tuple[dict, dict]:
    """Valid forms of ``input_ids`` (with their canonical form) and invalid ones."""
    B, S = ids.shape
    out_of_vocab = ids.clone()
    out_of_vocab[data.draw(st.integers(0, B - 1), label="row"), data.draw(st.integers(0, S - 1), label="col")] = \
        draw_outside(data, 0, V, "id")
    valid = {"int64": (ids, ids), "int32": (ids.int(), ids)}
    invalid = {str(dtype): ids.to(dtype) for dtype in NOT_INDEX_DTYPES}
    invalid.update({"list": ids.tolist(), "tuple": tuple(ids.tolist()), "numpy": ids.numpy(), "int": int(ids[0, 0]),
                    "string": "5 17 42", "1-D": ids[0], "3-D": ids[None], "0-D": ids[0, 0],
                    "out of vocabulary": out_of_vocab, "out of vocabulary int32": out_of_vocab.int()})
    return valid, invalid


# ---------------------------------------------------------------------------------------------
# forward


@given(data=st.data())
def test_forward_input_ids(data):
    m, ids = draw_call(data)
    valid, invalid = ids_forms(data, ids)
    check_forms("input_ids", lambda value: m(input_ids=value), valid, {**invalid, "None": None})


@given(data=st.data())
def test_forward_attention_mask(data):
    m, ids = draw_call(data)
    B, S = ids.shape
    mask = draw_mask(data, B, S)
    dtype = data.draw(st.sampled_from(MASK_DTYPES), label="dtype")
    invalid = {f"shape {shape}": torch.ones(shape, dtype=torch.long)
               for shape in [(B, S + 1), (B, S - 1), (B + 1, S), (S,), (B, 1, S), (B, 1, 1, S)]}
    invalid.update({"complex": mask.to(torch.complex64), "list": mask.tolist(), "int": 1})
    check_forms("attention_mask", lambda value: m(ids, attention_mask=value),
                {str(dtype): (mask.to(dtype), mask)}, invalid)


@given(data=st.data())
def test_forward_position_ids(data):
    m, ids = draw_call(data)
    B, S = ids.shape
    positions = torch.arange(S) + data.draw(st.integers(0, 3), label="offset")  # [S]
    expanded = positions.expand(B, S)
    dtype = data.draw(st.sampled_from(INDEX_DTYPES), label="dtype")
    valid = {"[B, S]": (expanded.to(dtype), expanded), "[1, S]": (positions[None].to(dtype), expanded),
             "[S]": (positions.to(dtype), expanded)}
    invalid = {str(dtype): positions.to(dtype) for dtype in NOT_INDEX_DTYPES}
    invalid.update({f"shape {shape}": torch.zeros(shape, dtype=torch.long)
                    for shape in [(S + 1,), (B, S + 1), (B + 1, S), (1, 1, S), ()]})
    invalid["list"] = positions.tolist()
    check_forms("position_ids", lambda value: m(ids, position_ids=value), valid, invalid)


@given(data=st.data())
def test_forward_labels(data):
    m, ids = draw_call(data)
    B, S = ids.shape
    ignored = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B * S, max_size=B * S), label="ignored"))
    labels = ids.masked_fill(ignored.view(B, S), -100)  # -100: the ignore index
    out_of_range = labels.clone()
    out_of_range[data.draw(st.integers(0, B - 1), label="row"), data.draw(st.integers(0, S - 1), label="col")] = \
        data.draw(st.one_of(st.integers(V, 2**31 - 1), st.integers(-2**31, -101), st.integers(-99, -1)), label="label")
    invalid = {str(dtype): ids.to(dtype) for dtype in NOT_INDEX_DTYPES}
    invalid.update({f"shape {shape}": torch.zeros(shape, dtype=torch.long)
                    for shape in [(B, S + 1), (B,), (B * S,), (B + 1, S), (B, S, 1)]})
    invalid.update({"out of range": out_of_range, "list": labels.tolist()})
    valid = {"int64": (labels, labels), "int32": (labels.int(), labels)}
    check_forms("labels", lambda value: m(ids, labels=value), valid, invalid)


@given(data=st.data())
def test_forward_logits_to_keep(data):
    m, ids = draw_call(data)
    S = ids.shape[1]
    keep = data.draw(st.integers(0, S + 3), label="keep")  # the last `keep` positions; all from S on
    index = torch.tensor(data.draw(st.lists(st.integers(-S, S - 1), max_size=S + 1), label="index"), dtype=torch.long)
    dtype = data.draw(st.sampled_from(INDEX_DTYPES), label="dtype")
    valid = {"int": (keep, keep if keep < S else 0), "numpy int": (np.int64(keep), keep if keep < S else 0),
             "tensor": (index.to(dtype), index % S)}
    invalid = {"negative": -data.draw(st.integers(1, 10), label="negative"), "float": float(keep), "True": True,
               "False": False, "None": None, "string": "1", "float tensor": index.float(), "2-D tensor": index[None],
               "bool tensor": torch.ones(S, dtype=torch.bool),
               "position outside": torch.tensor([0, draw_outside(data, -S, S, "outside")])}
    check_forms("logits_to_keep", lambda value: m(ids, logits_to_keep=value), valid, invalid)
    if keep:  # a loss needs the logits of every position
        check(Case("logits_to_keep", "with labels", lambda: m(ids, labels=ids, logits_to_keep=keep), None))


@given(data=st.data())
def test_forward_inputs_embeds(data):
    m, ids = draw_call(data)
    B, S = ids.shape
    embeds = m.embedding.tokens(ids).detach()  # [B, S, D]: the canonical form of them is the ids
    D = embeds.shape[-1]
    invalid = {str(dtype): embeds.to(dtype) for dtype in DTYPES if dtype != torch.float32}
    invalid.update({f"shape {shape}": torch.zeros(shape) for shape in [(B, S, D + 1), (B, S), (S, D), (B, S, D, 1)]})
    invalid["list"] = embeds.tolist()
    check_forms("inputs_embeds", lambda value: m(inputs_embeds=value), {}, invalid)
    check(Case("inputs_embeds", "embeddings of the ids", lambda: m(inputs_embeds=embeds), lambda: m(ids)))
    check(Case("inputs_embeds", "with input_ids", lambda: m(ids, inputs_embeds=embeds), None))


@given(data=st.data())
def test_forward_prefix_mask(data):
    m, ids = draw_call(data)
    B, S = ids.shape
    prefix = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B * S, max_size=B * S), label="prefix"))
    prefix = prefix.view(B, S).long()
    dtype = data.draw(st.sampled_from(MASK_DTYPES), label="dtype")
    invalid = {f"shape {shape}": torch.ones(shape, dtype=torch.long) for shape in [(B, S + 1), (B + 1, S), (S,)]}
    invalid.update({"list": prefix.tolist(), "complex": prefix.to(torch.complex64)})
    valid = {str(dtype): (prefix.to(dtype), prefix)}
    if not m.prefix_lm:  # only a prefix-LM embedding (CPM-Ant's) takes one
        invalid.update({name: value for name, (value, _) in valid.items()})
        valid = {}
    check_forms("prefix_mask", lambda value: m(ids, prefix_mask=value), valid, invalid)


@given(data=st.data())
def test_forward_head_labels(data):
    """Each head's label arguments, on a tiny GLM-4 with every head kind (``head=`` picks it)."""
    m = model("tiny-glm-4", heads=True)
    _, ids = draw_call(data)
    B, S = ids.shape
    other = data.draw(st.sampled_from(NOT_INDEX_DTYPES), label="other dtype")
    classes = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=B, max_size=B), label="classes"))
    tokens = torch.tensor(data.draw(st.lists(st.sampled_from([0, 1, 2, -100]), min_size=B * S, max_size=B * S),
                                    label="token classes")).view(B, S)
    start, end = torch.tensor(data.draw(st.lists(st.integers(-3, S + 3), min_size=2 * B, max_size=2 * B),
                                        label="span")).view(2, B)
    span = {"start_positions": start.clamp(0, S), "end_positions": end.clamp(0, S)}  # transformers clamps to [0, S]
    wrong_tokens = tokens.clone()
    wrong_tokens[data.draw(st.integers(0, B - 1), label="row"), data.draw(st.integers(0, S - 1), label="col")] = \
        data.draw(st.sampled_from([3, 4, 2**31 - 1, -1, -99, -101, -2**31]), label="wrong class")
    soft = classes.float()[:, None].expand(B, 3) / 2
    # head -> form -> (label arguments, their canonical form or None, the argument a refusal names)
    forms = {
        "causal_lm": {"span": ({"start_positions": start, "end_positions": end}, None, "start_positions")},
        "sequence_classification": {
            "class": ({"labels": classes}, {"labels": classes}, "labels"),
            "int32 class": ({"labels": classes.int()}, {"labels": classes}, "labels"),
            "multi-label": ({"labels": soft}, {"labels": soft}, "labels"),
            "float class": ({"labels": classes.float()}, None, "labels"),
            "class [B, 1]": ({"labels": classes[:, None]}, None, "labels"),
            "class out of range": ({"labels": classes + 3}, None, "labels"),
            "negative class": ({"labels": classes - 4}, None, "labels"),
            "logits_to_keep": ({"logits_to_keep": 1}, None, "logits_to_keep")},
        "token_classification": {
            "labels": ({"labels": tokens}, {"labels": tokens}, "labels"),
            "int32": ({"labels": tokens.int()}, {"labels": tokens}, "labels"),
            "out of range": ({"labels": wrong_tokens}, None, "labels"),
            "other dtype": ({"labels": tokens.to(other)}, None, "labels"),
            "other shape": ({"labels": tokens[:, :-1]}, None, "labels"),
            "logits_to_keep": ({"logits_to_keep": torch.tensor([0])}, None, "logits_to_keep")},
        "question_answering": {
            "span": ({"start_positions": start, "end_positions": end}, span, "start_positions"),
            "int32 span": ({"start_positions": start.int(), "end_positions": end.int()}, span, "start_positions"),
            "start alone": ({"start_positions": start}, {"start_positions": start}, "start_positions"),  # no loss
            "other dtype": ({"start_positions": start.to(other), "end_positions": end}, None, "start_positions"),
            "[B, 1]": ({"start_positions": start, "end_positions": end[:, None]}, None, "end_positions"),
            "labels": ({"labels": ids}, None, "labels")},
        "nope": {"unknown head": ({}, None, "head")},
        3: {"head not a name": ({}, None, "head")},
    }
    head = data.draw(st.sampled_from(list(forms)), label="head")
    for form, (kwargs, canonical, argument) in forms[head].items():
        check(Case(argument, form, lambda: m(ids, head=head, **kwargs),
                   None if canonical is None else lambda: m(ids, head=head, **canonical)))


# ---------------------------------------------------------------------------------------------
# the cache


@given(data=st.data())
def test_cache_of_another_kind(data):
    """What is not an archcomposer cache: transformers' caches, legacy (key, value) tuples..."""
    import transformers

    m, ids = draw_call(data)
    kv = torch.zeros(ids.shape[0], 2, 3, 16)  # [B, Hkv, S, Dh]
    legacy = tuple((kv, kv) for _ in range(m.spec.num_layers))
    invalid = {"legacy tuple": legacy, "legacy list": list(legacy), "transformers": transformers.DynamicCache(),
               "dict": {}, "string": "dynamic", "int": 0}
    check_forms("past_key_values", lambda value: m(ids, past_key_values=value), {}, invalid)


@given(data=st.data())
def test_cache_of_another_model(data):
    """A cache filled by another model (other heads, head size, layer count, dtype) or for
    another batch is refused, never silently used."""
    m, ids = draw_call(data, max_rows=2)
    B, S = ids.shape
    name = next(n for n in MODELS if model(n) is m)
    static = data.draw(st.booleans(), label="static")
    writers = {other: (model(other), ids) for other in MODELS if other != name}
    writers.update({"1 layer": (model(name, num_layers=1), ids), "3 layers": (model(name, num_layers=3), ids),
                    "float64": (model(name, dtype=torch.float64), ids), "other batch": (m, ids.repeat(2, 1))})
    for form, (writer, prompt) in writers.items():
        cache = StaticCache(max_length=2 * S + 3) if static else DynamicCache()  # holds a prompt and ids
        writer(prompt, past_key_values=cache, use_cache=True)
        check(Case("past_key_values", form, lambda: m(ids, past_key_values=cache), None))


@given(data=st.data())
def test_cache_length(data):
    """A cache of this model continues a sequence: the attention_mask covers its tokens and the
    new ones, a static cache must hold them all; a static cache gives what a dynamic one gives."""
    m, ids = draw_call(data, max_length=6)
    B, S = ids.shape
    first = data.draw(st.integers(0, S - 1), label="prefilled")  # tokens given before the step
    P = m.num_prepended
    mask = draw_mask(data, B, S)
    extra = data.draw(st.integers(1, 3), label="extra")

    def continued(cache, mask=None):
        if first:
            m(ids[:, :first], attention_mask=None if mask is None else mask[:, :first], past_key_values=cache)
        return m(ids[:, first:], attention_mask=mask, past_key_values=cache)

    # A padded query sees only masked keys, so its (meaningless) output depends on how many slots
    # the cache has: static and dynamic are compared without padding.
    check(Case("past_key_values", "static", lambda: continued(StaticCache(max_length=P + S + extra)),
               lambda: continued(DynamicCache())))
    check(Case("past_key_values", "empty", lambda: m(ids, attention_mask=mask, past_key_values=DynamicCache()),
               lambda: m(ids, attention_mask=mask)))
    check(Case("StaticCache", "too small", lambda: continued(StaticCache(max_length=P + S - 1)), None))
    for form, columns in (("mask too long", S + extra), ("mask too short", S - extra)):
        check(Case("attention_mask", form, lambda: continued(DynamicCache(), torch.ones(B, max(columns, 0))), None))


# ---------------------------------------------------------------------------------------------
# generate


def generate_call(m, ids, argument: str, **common) -> Callable[[Any], Any]:
    return lambda value: m.generate(ids, **{"max_new_tokens": 2, **common, argument: value})


@given(data=st.data())
def test_generate_prompt(data):
    m, ids = draw_call(data, max_rows=2, max_length=4)
    B, S = ids.shape
    valid, invalid = ids_forms(data, ids)
    invalid.update({"no tokens": ids[:, :0], "no rows": ids[:0]})
    check_forms("input_ids", lambda value: m.generate(value, max_new_tokens=2), valid, invalid)
    mask = draw_mask(data, B, S)
    dtype = data.draw(st.sampled_from(MASK_DTYPES), label="dtype")
    invalid = {f"shape {shape}": torch.ones(shape, dtype=torch.long)
               for shape in [(B, S + 1), (B, S - 1), (B + 1, S), (S,), (B, 1, S)]}
    invalid.update({"list": mask.tolist(), "complex": mask.to(torch.complex64)})
    check_forms("attention_mask", generate_call(m, ids, "attention_mask"), {str(dtype): (mask.to(dtype), mask)},
                invalid)


@given(data=st.data())
def test_generate_counts(data):
    """max_new_tokens, top_k, seed: integers (a numpy one too), in range; do_sample: a bool."""
    m, ids = draw_call(data, max_rows=2, max_length=4)
    argument = data.draw(st.sampled_from(["max_new_tokens", "top_k", "seed", "do_sample"]), label="argument")
    low = {"max_new_tokens": 0, "top_k": 1, "seed": 0, "do_sample": 0}[argument]
    good = data.draw(st.integers(low, 3), label="good")
    if argument == "do_sample":
        valid = {"bool": (good % 2 == 1, good % 2 == 1)}
        invalid = {"int": good % 2, "None": None, "string": "yes"}
    else:
        valid = {"int": (good, good), "numpy int": (np.int64(good), good)}
        invalid = {"float": float(good), "half": good + 0.5, "string": str(good), "bool": True,
                   "tensor": torch.tensor(good), "below": low - 1 - data.draw(st.integers(0, 10**6), label="below")}
        if argument == "max_new_tokens":  # None is valid for the others: no top-k, no seed
            invalid["None"] = None
    common = {"seed": 0} if argument == "do_sample" else {"do_sample": True, "seed": 0}
    check_forms(argument, generate_call(m, ids, argument, **common), valid, invalid)


@given(data=st.data())
def test_generate_sampling_numbers(data):
    """temperature: a finite number >= 0 (> 0 when sampling; unused when not); top_p in (0, 1]."""
    m, ids = draw_call(data, max_rows=2, max_length=4)
    argument = data.draw(st.sampled_from(["temperature", "top_p"]), label="argument")
    do_sample = data.draw(st.booleans(), label="do_sample")
    greedy_temperature = argument == "temperature" and not do_sample
    good = data.draw(st.floats(0.0 if greedy_temperature else 0.05, 1.0), label="good")
    if greedy_temperature:  # not used: any valid temperature gives the default's tokens
        valid = {"float": (good, 1.0), "numpy float": (np.float64(good), 1.0)}
    else:
        valid = {"float": (good, good), "int": (1, 1.0), "numpy float": (np.float64(good), good)}
    invalid = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "string": "0.5", "bool": True,
               "None": None, "tensor": torch.tensor(0.5), "negative": -data.draw(st.floats(1e-6, 1e6), label="neg")}
    if not greedy_temperature:
        invalid["zero"] = 0.0
    if argument == "top_p":
        invalid["above one"] = 1.0 + data.draw(st.floats(1e-6, 10.0), label="above")
        del invalid["None"]  # no top-p filtering
    check_forms(argument, generate_call(m, ids, argument, do_sample=do_sample, seed=0), valid, invalid)


@given(data=st.data())
def test_generate_token_ids(data):
    """eos_token_id (an id or a list) and pad_token_id (fed back as input): ids in the vocabulary."""
    m, ids = draw_call(data, max_rows=2, max_length=4)
    argument = data.draw(st.sampled_from(["eos_token_id", "pad_token_id"]), label="argument")
    token = data.draw(st.integers(0, V - 1), label="token")
    outside = data.draw(st.one_of(st.integers(V, 2**40), st.integers(-2**40, -1)), label="outside")
    valid = {"int": (token, token), "numpy int": (np.int64(token), token)}
    invalid = {"outside": outside, "float": float(token), "string": str(token), "bool": True,
               "tensor": torch.tensor(token)}
    if argument == "eos_token_id":
        valid.update({"list": ([token, 3], [token, 3]), "empty list": ([], [])})
        invalid.update({"list with one outside": [token, outside], "list of floats": [float(token)]})
    check_forms(argument, generate_call(m, ids, argument, max_new_tokens=4), valid, invalid)


@given(data=st.data())
def test_generate_cache(data):
    """cache='static' gives what 'dynamic' gives, and refuses a preallocation past max_positions
    at once (max_new_tokens up to 10**12) instead of trying to allocate it."""
    m, ids = draw_call(data, max_rows=2, max_length=4)
    new = data.draw(st.integers(0, 4), label="max_new_tokens")
    check_forms("cache", generate_call(m, ids, "cache", max_new_tokens=new), {"static": ("static", "dynamic")},
                {"other name": "paged", "None": None, "cache object": DynamicCache()})
    huge = data.draw(st.integers(m.spec.max_positions, 10**12), label="huge")
    check_forms("max_new_tokens", generate_call(m, ids, "max_new_tokens", cache="static"), {}, {"huge": huge})


@pytest.mark.parametrize("name", MODELS)
def test_the_decoding_loop_reads_no_id_values(name, monkeypatch):
    """generate checks the prompt's values once; its steps feed back sampled ids unchecked, so a
    decoding step has no host sync for checking."""
    import archcomposer.inputs

    m, checked = model(name), []
    in_range = archcomposer.inputs.in_range

    def counted(argument, *args, **kwargs):
        checked.append(argument)
        return in_range(argument, *args, **kwargs)

    monkeypatch.setattr(archcomposer.inputs, "in_range", counted)
    m.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, eos_token_id=[])
    assert checked == ["input_ids"]
