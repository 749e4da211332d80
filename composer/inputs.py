"""Checks of the arguments given to ``forward``, ``generate`` and the heads' labels, each raising an
``InputError`` that names the argument, what it got and what it expects.

Shape and dtype checks read only a tensor's metadata: they cost nothing and keep ``forward`` free
of host syncs (``torch.compile`` traces it whole). Value checks (ids in the vocabulary, labels in
range) read the tensor, a host sync, so they run once per call that brings new values from the
caller: ``generate`` checks the prompt once, not each decoding step."""

from __future__ import annotations

import numbers

import torch
from torch._subclasses.fake_tensor import is_fake

from archcomposer.errors import InputError

#: The integer dtypes an embedding lookup takes (tokenizers give int64): ids, positions, labels.
INDEX_DTYPES = (torch.int64, torch.int32)


def describe(value) -> str:
    """A short account of a non-tensor argument: its value when short, and its type."""
    kind = type(value)
    kind = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    shown = repr(value)
    return f"{shown} ({kind})" if len(shown) <= 40 else kind


def tensor(name: str, value, expected: str) -> torch.Tensor:
    """``value`` itself, if it is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor ({expected}), got {describe(value)}")
    return value


def index_tensor(name: str, value, expected: str) -> torch.Tensor:
    """``value`` itself, if it is a tensor of integers an embedding lookup takes (int64 or int32)."""
    tensor(name, value, expected)
    if value.dtype not in INDEX_DTYPES:
        raise InputError(f"{name} must hold integers of dtype torch.int64 (or torch.int32), got {value.dtype}; "
                         f"convert with {name}.long()")
    return value


def mask_tensor(name: str, value, shape: tuple[int, ...], expected: str) -> torch.Tensor:
    """``value`` itself, if it is a mask (bool, integer or float: nonzero means 1) of ``shape``."""
    tensor(name, value, f"a mask of 1 and 0, shape {shape}")
    if value.dtype.is_complex:
        raise InputError(f"{name} must be a mask of 1 and 0 (bool, integer or float), got {value.dtype}")
    if tuple(value.shape) != shape:
        raise InputError(f"{name} has shape {tuple(value.shape)}; expected {shape}{expected}")
    return value


def in_range(name: str, value: torch.Tensor, high: int, bound: str, *, low: int = 0,
             ignore: int | None = None) -> None:
    """Refuse values of ``value`` outside [low, high) (other than ``ignore``). Reads the values:
    a host sync, so it runs in eager calls only: tensors without values (meta, or fake while
    tracing shapes) pass, and so does everything while ``torch.compile`` or ``torch.export``
    traces (a check there would break the graph on every call)."""
    if torch.compiler.is_compiling() or value.is_meta or is_fake(value):
        return
    outside = (value < low) | (value >= high)  # [...]
    if ignore is not None:
        outside &= value != ignore
    if outside.any():
        considered = value if ignore is None else value[value != ignore]
        also = f" or be the ignore index {ignore}" if ignore is not None else ""
        raise InputError(f"{name} must lie in [{low}, {bound}={high}){also}, got values in "
                         f"[{int(considered.min())}, {int(considered.max())}]")


def count(name: str, value, minimum: int) -> int:
    """``value`` as an int, if it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {describe(value)}")
    return int(value)


def number(name: str, value, *, low: float, low_inclusive: bool, high: float = float("inf"),
           high_inclusive: bool = False) -> float:
    """``value`` as a float, if it is a real number (not a bool, not NaN) in the interval given."""
    interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number in {interval}, got {describe(value)}")
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if not (above and below):  # NaN fails both
        raise InputError(f"{name} must be a number in {interval}, got {value}")
    return float(value)
