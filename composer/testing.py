"""A test kit for plugin authors: the properties every composed model must have, as functions
that raise ``AssertionError`` with what differs, and a hypothesis strategy that varies a base spec
with your block. A plugin's tests then take a few lines::

    from hypothesis import given, settings, strategies as st
    from archcomposer.testing import check_cache_equivalence, check_output_contract, spec_strategy

    @settings(max_examples=10, deadline=None)
    @given(spec_strategy("tiny-seed-oss", attention={"kind": "sliding_window", "window": st.integers(1, 6)}))
    def test_sliding_window(spec):
        check_cache_equivalence(spec)
        check_output_contract(spec)

The checks take a spec (anything ``build_model`` takes) or a built model. A spec is built with
weights of std ``1 / sqrt(hidden_size)``, not its ``initializer_range``: with the usual 0.02 a tiny
model's attention is nearly uniform, and a cache or position bug would move its outputs by less
than any tolerance. ``registered(plugin)`` registers a plugin object for the duration of a
``with`` block, before the plugin is installed. Only ``spec_strategy`` needs hypothesis (a test
dependency), and imports it when called."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from archcomposer import spec as specs
from archcomposer.build import build_model, init_weights
from archcomposer.cache import DynamicCache, StaticCache
from archcomposer.errors import RegistryError
from archcomposer.model import ComposedModel
from archcomposer.outputs import BaseModelOutputWithPast, ModelOutput
from archcomposer.registry import get_registry
from archcomposer.specfile import SpecLike, load_spec, read_spec_file, validate_spec

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["check_cache_equivalence", "check_output_contract", "registered", "spec_strategy"]


# ---------------------------------------------------------------------------------------------
# cache equivalence


@torch.no_grad()
def check_cache_equivalence(spec_or_model: SpecLike | ComposedModel, *, batch_size: int = 2, prompt_length: int = 4,
                            new_tokens: int = 3, seed: int = 0, caches: Sequence[str] = ("dynamic", "static"),
                            atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """One forward over ``prompt_length + new_tokens`` tokens equals a prefill of the prompt
    followed by decoding with a cache (one token per step, the last step two tokens at once), for
    each cache in ``caches`` (``"dynamic"``: ``DynamicCache``, ``"static"``: ``StaticCache``).
    Compared: the final hidden states at every position and, with a ``causal_lm`` head, the
    logits. For an embedding kind with a prefix-LM mask, the reference forward marks the prompt as
    context (``prefix_mask``), which is what its prefill sees."""
    model = _as_model(spec_or_model, seed)
    head = "causal_lm" if "causal_lm" in model.heads else None
    total = prompt_length + new_tokens
    ids = _input_ids(model, batch_size, total, seed)  # [B, T]
    prefix_mask = None
    if model.prefix_lm:
        prefix_mask = (torch.arange(total) < prompt_length).long().expand(batch_size, total)  # [B, T]
    with _eval(model):
        full = model(ids, use_cache=False, output_hidden_states=True, prefix_mask=prefix_mask, head=head)
        bounds = _steps(prompt_length, new_tokens)
        for name in caches:
            if name == "dynamic":
                cache = DynamicCache()
            elif name == "static":
                cache = StaticCache(max_length=model.num_prepended + total)
            else:
                raise ValueError(f"caches: {name!r} is not a cache; expected 'dynamic' or 'static'")
            for start, end in bounds:
                mask = torch.ones(batch_size, end, dtype=torch.long)  # as generate passes it
                step = model(ids[:, start:end], attention_mask=mask, past_key_values=cache, use_cache=True,
                             output_hidden_states=True, head=head)
                where = f"{model.spec.name}: {name} cache, tokens {start}:{end} (prefill {prompt_length})"
                _close(step.hidden_states[-1], full.hidden_states[-1][:, start:end], atol, rtol,
                       f"{where}: final hidden states differ from one forward over all tokens")
                if head == "causal_lm":
                    _close(step.logits, full.logits[:, start:end], atol, rtol,
                           f"{where}: logits differ from one forward over all tokens")
                length = cache.get_seq_length()
                if length != model.num_prepended + end:
                    raise AssertionError(f"{where}: the cache holds {length} tokens; expected "
                                         f"{model.num_prepended + end}")


def _steps(prompt_length: int, new_tokens: int) -> list[tuple[int, int]]:
    """Prefill, then one token per step, the last step two tokens at once."""
    if prompt_length < 1 or new_tokens < 0:
        raise ValueError(f"prompt_length ({prompt_length}) must be >= 1 and new_tokens ({new_tokens}) >= 0")
    ends = [prompt_length + i for i in range(1, new_tokens + 1)]
    if new_tokens >= 3:
        del ends[-2]
    bounds, start = [], 0
    for end in [prompt_length, *ends]:
        bounds.append((start, end))
        start = end
    return bounds


# ---------------------------------------------------------------------------------------------
# the output contract


@torch.no_grad()
def check_output_contract(spec_or_model: SpecLike | ComposedModel, *, batch_size: int = 2, seq_len: int = 5,
                          seed: int = 0, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Every head's output keeps transformers' ``ModelOutput`` contract (see
    ``archcomposer.outputs``): its class is the head's ``output_class``; attribute, key and index
    access agree and skip None fields; ``to_tuple()`` is what ``return_dict=False`` returns; the
    mutating dict methods are refused; ``hidden_states`` has ``num_layers + 1`` tensors
    ``[B, S, hidden_size]`` and ``attentions`` ``num_layers`` tensors ``[B, num_heads, S, S]`` whose
    rows sum to 1 (at most 1 with prompt tokens, whose columns are dropped); ``past_key_values``
    holds the tokens seen (only for heads that return a cache); with labels, ``loss`` is a finite
    scalar and comes first; each head's outputs have the shapes its ``output_shapes`` gives; and the same
    input gives the same output twice."""
    model = _as_model(spec_or_model, seed)
    spec = model.spec
    head_specs = list(model.head_specs.values()) or [None]
    with _eval(model):
        for head_spec in head_specs:
            limit = head_spec.max_batch(spec) if head_spec is not None else None
            batch = min(batch_size, limit) if limit is not None else batch_size
            ids = _input_ids(model, batch, seq_len, seed)  # [B, S]
            kind = head_spec.kind if head_spec is not None else None
            where = f"{spec.name}: head {kind or '(none)'}"
            labels = {} if head_spec is None else \
                head_spec.example_labels(spec, ids, torch.Generator().manual_seed(seed + 1))
            kwargs = {"head": kind, "output_hidden_states": True, "output_attentions": True, **labels}
            out = model(ids, **kwargs)
            expected_class = head_spec.output_class if head_spec is not None else BaseModelOutputWithPast
            if type(out) is not expected_class:
                raise AssertionError(f"{where}: returned {type(out).__name__}; expected {expected_class.__name__}")
            _check_access(out, where)
            _check_tuple(out, model(ids, return_dict=False, **kwargs), where, atol, rtol)
            _check_sizes(model, head_spec, out, ids, where)
            _check_shapes(model, head_spec, out, ids, where, atol, rtol)
            if labels:
                loss = out.loss
                if loss is None or loss.dim() != 0 or not torch.isfinite(loss):
                    raise AssertionError(f"{where}: with labels, loss must be a finite scalar; got {loss!r}")
                if out[0] is not loss:
                    raise AssertionError(f"{where}: loss must be the first field of the output")
            plain = model(ids, head=kind)
            for name in ("loss", "hidden_states", "attentions"):
                if name in plain.keys():
                    raise AssertionError(f"{where}: {name} is in the output although nothing asked for it")
            again = model(ids, head=kind)
            for key in plain.keys():
                if isinstance(plain[key], torch.Tensor):
                    _close(again[key], plain[key], 0.0, 0.0, f"{where}: {key} differs between two identical calls")


def _check_access(out: ModelOutput, where: str) -> None:
    present = [f.name for f in dataclasses.fields(out) if getattr(out, f.name) is not None]
    if list(out.keys()) != present:
        raise AssertionError(f"{where}: keys() is {list(out.keys())}; expected the non-None fields in order, {present}")
    values = out.to_tuple()
    if len(values) != len(present):
        raise AssertionError(f"{where}: to_tuple() has {len(values)} items for {len(present)} non-None fields")
    for i, name in enumerate(present):
        if not (out[name] is getattr(out, name) is out[i] is values[i]):
            raise AssertionError(f"{where}: out[{name!r}], out.{name}, out[{i}] and to_tuple()[{i}] are not "
                                 f"the same object")
    if len(out[:2]) != len(values[:2]) or not all(a is b for a, b in zip(out[:2], values[:2])):
        raise AssertionError(f"{where}: out[:2] is not to_tuple()[:2]")
    for method, args in (("pop", ("x",)), ("update", ({},)), ("setdefault", ("x", 1)), ("__delitem__", ("x",))):
        try:
            getattr(out, method)(*args)
        except Exception:
            continue
        raise AssertionError(f"{where}: {type(out).__name__}.{method} must be refused")


def _check_tuple(out: ModelOutput, as_tuple: Any, where: str, atol: float, rtol: float) -> None:
    if type(as_tuple) is not tuple or len(as_tuple) != len(out):
        raise AssertionError(f"{where}: return_dict=False gave {type(as_tuple).__name__} of "
                             f"{len(as_tuple) if isinstance(as_tuple, tuple) else '?'} items; expected a tuple "
                             f"like to_tuple(), of {len(out)}")
    for name, mine, theirs in zip(out.keys(), out.to_tuple(), as_tuple):
        _same_value(mine, theirs, f"{where}: return_dict=False, {name}", atol, rtol)


def _same_value(a: Any, b: Any, where: str, atol: float, rtol: float) -> None:
    if isinstance(a, torch.Tensor):
        _close(b, a, atol, rtol, f"{where} differs from to_tuple()")
    elif isinstance(a, tuple):
        if not isinstance(b, tuple) or len(a) != len(b):
            raise AssertionError(f"{where}: expected a tuple of {len(a)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _same_value(x, y, f"{where}[{i}]", atol, rtol)
    elif hasattr(a, "get_seq_length") and a.get_seq_length() != b.get_seq_length():
        raise AssertionError(f"{where}: a cache of {b.get_seq_length()} tokens; expected {a.get_seq_length()}")


def _check_sizes(model: ComposedModel, head_spec: Any, out: ModelOutput, ids: torch.Tensor, where: str) -> None:
    spec = model.spec
    B, S = ids.shape
    hidden, attentions = out.hidden_states, out.attentions
    if hidden is None or len(hidden) != spec.num_layers + 1:
        raise AssertionError(f"{where}: hidden_states must hold num_layers + 1 = {spec.num_layers + 1} tensors; "
                             f"got {None if hidden is None else len(hidden)}")
    for i, h in enumerate(hidden):
        if tuple(h.shape) != (B, S, spec.hidden_size):
            raise AssertionError(f"{where}: hidden_states[{i}] has shape {tuple(h.shape)}; expected "
                                 f"{(B, S, spec.hidden_size)}")
    if attentions is None or len(attentions) != spec.num_layers:
        raise AssertionError(f"{where}: attentions must hold num_layers = {spec.num_layers} tensors; got "
                             f"{None if attentions is None else len(attentions)}")
    for i, a in enumerate(attentions):
        H = spec.layer_specs[i].attention.num_heads  # layers may differ
        if tuple(a.shape) != (B, H, S, S):
            raise AssertionError(f"{where}: attentions[{i}] has shape {tuple(a.shape)}; expected {(B, H, S, S)}")
        rows = a.float().sum(-1)  # [B, H, S]
        if model.num_prepended:  # the prompt's columns are dropped, as the reference does
            if not ((rows > 0) & (rows <= 1 + 1e-4)).all():
                raise AssertionError(f"{where}: attentions[{i}] rows must sum to at most 1 (the prompt columns "
                                     f"are dropped); got sums in [{rows.min():.4g}, {rows.max():.4g}]")
        else:
            _close(rows, torch.ones(B, H, S), 1e-4, 1e-4, f"{where}: attentions[{i}] rows must sum to 1")
    cache = out.get("past_key_values")
    if head_spec is None or head_spec.returns_cache:
        if cache is None or cache.get_seq_length() != model.num_prepended + S:
            raise AssertionError(f"{where}: past_key_values must be a cache of {model.num_prepended + S} tokens "
                                 f"(use_cache defaults to True); got {cache!r}")
    elif "past_key_values" in out.keys():
        raise AssertionError(f"{where}: this head does not return a cache, yet past_key_values is set")


def _check_shapes(model: ComposedModel, head_spec: Any, out: ModelOutput, ids: torch.Tensor, where: str,
                  atol: float, rtol: float) -> None:
    spec = model.spec
    B, S = ids.shape
    if head_spec is None:
        expected = {"last_hidden_state": (B, S, spec.hidden_size)}
    else:
        expected = head_spec.output_shapes(spec, B, S)
        if head_spec.keeps_positions:
            last = model(ids, head=head_spec.kind, logits_to_keep=1).logits  # [B, 1, ...]
            _close(last, out.logits[:, -1:], atol, rtol,
                   f"{where}: logits_to_keep=1 must give the last position's logits")
    for name, shape in expected.items():
        value = out.get(name)
        if value is None or tuple(value.shape) != shape:
            raise AssertionError(f"{where}: {name} has shape {None if value is None else tuple(value.shape)}; "
                                 f"expected {shape}")


# ---------------------------------------------------------------------------------------------
# shared pieces


def _as_model(spec_or_model: SpecLike | ComposedModel, seed: int) -> ComposedModel:
    if isinstance(spec_or_model, ComposedModel):
        return spec_or_model
    model = build_model(spec_or_model, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    init_weights(model, std=model.spec.hidden_size**-0.5, generator=generator)
    return model


@contextmanager
def _eval(model: ComposedModel) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _input_ids(model: ComposedModel, batch: int, length: int, seed: int) -> torch.Tensor:
    """Random token ids that avoid ``pad_token_id`` (so every token is a real one)."""
    spec = model.spec
    g = torch.Generator().manual_seed(seed)
    pad = spec.pad_token_id
    high = spec.vocab_size - (pad is not None and spec.vocab_size > 1)
    ids = torch.randint(0, high, (batch, length), generator=g)  # [B, S]
    if pad is not None and spec.vocab_size > 1:
        ids = ids + (ids >= pad).long()
    return ids.to(next(model.parameters()).device)


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}:\n{m}")


# ---------------------------------------------------------------------------------------------
# hypothesis


def spec_strategy(base: SpecLike, /, **fields: Any) -> SearchStrategy:
    """Specs that are ``base`` with ``fields`` replaced, for ``@given``.

    ``base`` is anything ``build_model`` takes (a shipped name, a YAML path, a dict, a spec). Each
    keyword is a top-level spec field (``num_layers``, ``position``, ``attention``, ``heads``, a
    plugin section, ...) and its value a plain value, a hypothesis strategy, or, for a section, a
    dict whose values are plain values or strategies. Such a dict is merged over the base's
    section; when it changes ``kind``, the base's fields the new kind does not have are dropped,
    so ``attention={"kind": "sliding_window", "window": st.integers(1, 8)}`` keeps the base's
    heads and widths. A drawn spec that does not validate raises ``SpecError`` with the reason:
    draw valid values (a ``num_heads`` that divides by ``num_kv_heads``) rather than filter."""
    from hypothesis import strategies as st

    data = _spec_data(base)
    validate_spec(copy.deepcopy(data))  # a bad base fails here, not at the first draw

    def strategy(value: Any) -> SearchStrategy:
        if isinstance(value, st.SearchStrategy):
            return value
        if isinstance(value, dict):
            return st.fixed_dictionaries({k: strategy(v) for k, v in value.items()})
        return st.just(value)

    parts = {name: strategy(value) for name, value in fields.items()}

    @st.composite
    def variants(draw):
        drawn = copy.deepcopy(data)
        for name, part in parts.items():
            value = draw(part)
            if isinstance(value, dict) and isinstance(drawn.get(name), dict):
                value = _merge_section(name, drawn[name], value)
            drawn[name] = value
        return validate_spec(drawn)

    return variants()


def _spec_data(base: SpecLike) -> dict:
    """The base as the dict its author wrote (defaults left out, so they follow the fields drawn)."""
    if isinstance(base, dict):
        return copy.deepcopy(base)
    if isinstance(base, specs.ModelSpecBase):
        return base.model_dump(mode="json", exclude_unset=True)
    path = Path(base)
    if not path.suffix and not path.exists():
        load_spec(base)  # the error for an unknown name
        path = get_registry().specs[str(base)][0]
    load_spec(path)  # the error, with file and line, for an invalid file
    return read_spec_file(path)[0]  # with the spec it extends merged in


def _merge_section(name: str, old: dict, new: dict) -> dict:
    if "kind" in new and new["kind"] != old.get("kind"):
        registry = get_registry()
        section = next((s for s in registry.sections.values() if s.field == name), None)
        cls = registry.kinds[section.name].get(new["kind"], (None,))[0] if section is not None else None
        if cls is not None:
            old = {k: v for k, v in old.items() if k in cls.model_fields}
    return {**old, **new}


# ---------------------------------------------------------------------------------------------
# plugins in-process


@contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` (a module or object with hook implementations) with the process-wide
    registry for the duration of the block; yields its name. For testing a plugin before (or
    without) installing it; an installed plugin is found through its entry point."""
    registry = get_registry()
    name = registry.register(plugin, name)
    try:
        yield name
    finally:
        try:
            registry.unregister(name)
        except RegistryError:
            pass  # the test unregistered it itself

