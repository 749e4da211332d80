"""Helpers for a family that writes its Hugging Face translation as functions rather than as an
``archcomposer.hf_table`` (CPM-Ant): task-head config fields, which each head kind describes
itself, and ``require`` for export errors."""

from __future__ import annotations

from typing import Any

from archcomposer.errors import CheckpointError
from archcomposer.registry import get_registry
from archcomposer.spec import HeadSpec, ModelSpecBase


def require(family: str, field: str, value: Any, expected: Any) -> None:
    """Raise the export error for a spec field that ``family``'s Hugging Face model cannot express."""
    if value != expected:
        raise CheckpointError(f"{field} = {value!r} has no equivalent in Hugging Face {family}, which needs "
                              f"{expected!r}")



def _head_class(kind: str) -> type[HeadSpec]:
    """The registered spec class of head ``kind``."""
    return get_registry().kinds["head"][kind][0]


def heads_from_hf(config: dict[str, Any], kind: str | None, **fields: Any) -> list[dict[str, Any]]:
    """The ``heads`` of a spec for the head kind of a Hugging Face architecture, read as
    transformers' task heads read the config (each head kind's ``from_hf_config``: for the
    built-in ones ``num_labels``/``id2label``, ``problem_type``, ``classifier_dropout``).
    ``fields`` are head fields the family fixes (CPM-Ant's ``shift_labels=False``), set on the
    head where its kind has them."""
    if kind is None:
        return []
    cls = _head_class(kind)
    return [{"kind": kind, **cls.from_hf_config(config),
             **{name: value for name, value in fields.items() if name in cls.model_fields}}]


def hf_head_config(spec: ModelSpecBase, family: str, **fields: Any) -> dict[str, Any]:
    """The config.json fields for the spec's head (its ``hf_config``), after checking it
    matches transformers' task head: its ``bias`` is the kind's ``hf_bias``, and each of
    ``fields`` (the head fields the family's transformers model fixes; default
    ``shift_labels=True``, as transformers shifts LM labels) has that value, where the head's
    kind has the field."""
    if not spec.heads:
        return {}
    head = spec.heads[0]
    names = type(head).model_fields
    if "bias" in names:
        require(family, "heads[0].bias", head.bias, head.hf_bias)
    for field, expected in {"shift_labels": True, **fields}.items():
        if field in names:
            require(family, f"heads[0].{field}", getattr(head, field), expected)
    return head.hf_config()


def require_same_layers(spec: ModelSpecBase, family: str) -> None:
    """Refuse per-layer differences (``layers``): no Hugging Face family here expresses them."""
    if spec.layers:
        raise CheckpointError(f"layers: per-layer differences have no equivalent in Hugging Face {family}, "
                              f"whose layers are all alike")

