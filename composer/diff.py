"""What differs between two specs, block by block and layer by layer (``archcomposer diff``).

Specs are compared as validated, defaults filled in: a field written out at its default equals
one left out, ``head_dim`` left to be derived equals the same value written, ``eos_token_id: 2``
equals ``[2]``, and two ways of writing the same per-layer pattern are equal. Names are not
compared. A block whose kind differs is one change (the two blocks whole), not a list of the
fields of two unrelated kinds. Layers are compared one by one where they differ otherwise than
the spec's blocks do (``layers`` entries, ``layer_types``), as far as the shorter spec goes:
``num_layers`` covers the layers only one spec has."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from archcomposer.spec import LAYER_SECTIONS, ModelSpecBase

#: Top-level fields shown together, before the blocks.
GROUPS = {"sizes": ("vocab_size", "hidden_size", "num_layers", "max_positions"),
          "token ids": ("pad_token_id", "bos_token_id", "eos_token_id")}
#: Fields compared elsewhere (``layers`` and ``layer_types`` through each layer's blocks) or not at all.
NOT_FIELDS = ("name", "layers", "layer_types", "heads")
#: Signs before a whole block in the text: A's, B's, both's.
SIGNS = ("-", "+", "=")
#: Keys that name a mapping's kind (a RoPE scaling's is ``type``).
TAGS = ("kind", "type")


@dataclass(frozen=True)
class Change:
    """One difference at ``path`` (dotted, from the top of the spec). ``kinds`` is set when the
    value is a block whose kind differs (or which one spec lacks): ``a`` and ``b`` are then the
    two blocks whole, as their fields are written (None where a spec has none)."""

    path: str
    a: Any
    b: Any
    kinds: tuple[str | None, str | None] | None = None

    def to_json(self) -> dict:
        out = {"field": self.path, "a": self.a, "b": self.b}
        return out | ({"kind": {"a": self.kinds[0], "b": self.kinds[1]}} if self.kinds else {})


@dataclass(frozen=True)
class BlockDiff:
    """The changes in one block (``sizes``, ``token ids``, ``model``, a section, ``heads``), for
    every layer or, with ``layers``, for those layers only. ``kind``: the kind the block has in
    both specs (None where it differs or the block has none)."""

    block: str
    changes: tuple[Change, ...]
    kind: str | None = None
    layers: tuple[int, ...] | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"block": self.block}
        if self.layers is not None:
            out["layers"] = list(self.layers)
        if self.kind is not None:
            out["kind"] = self.kind
        return out | {"changes": [c.to_json() for c in self.changes]}


@dataclass(frozen=True)
class SpecDiff:
    a: str
    b: str
    blocks: tuple[BlockDiff, ...]
    layers: tuple[BlockDiff, ...]

    @property
    def equal(self) -> bool:
        return not (self.blocks or self.layers)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "equal": self.equal, "blocks": [b.to_json() for b in self.blocks],
                "layers": [b.to_json() for b in self.layers]}

    def format(self) -> str:
        if self.equal:
            return f"no differences between {self.a} and {self.b}"
        titled = [(block, block.block) for block in self.blocks] + [
            (block, f"{'layer' if len(block.layers) == 1 else 'layers'} {layer_ranges(block.layers)}: {block.block}")
            for block in self.layers]
        rows = {id(block): _rows(block) for block, _ in titled}
        width = max((len(field) for r in rows.values() for field, _ in r if field not in SIGNS), default=0)
        lines = [f"--- {self.a}", f"+++ {self.b}"]
        for block, title in titled:
            whole = next((c for c in block.changes if c.path == block.block and c.kinds), None)
            if whole is not None:  # the block's kind differs (or one spec lacks it): both, whole
                lines.append(f"{title}: {_value(whole.kinds[0])} -> {_value(whole.kinds[1])}")
            else:
                same = all(c.a == c.b for c in block.changes)  # at these layers, unlike the others
                lines.append(f"{title}{f' ({block.kind})' if block.kind else ''}{': the same in both' if same else ''}")
            lines += [f"  {f} {v}" if f in SIGNS else f"  {f.ljust(width)}  {v}" for f, v in rows[id(block)]]
        return "\n".join(lines)


def diff_specs(a: ModelSpecBase, b: ModelSpecBase, *, labels: tuple[str, str] | None = None) -> SpecDiff:
    """What differs between spec ``a`` and spec ``b`` (see the module's docstring)."""
    labels = labels or (a.name, b.name)
    blocks = []
    for group, fields in GROUPS.items():
        blocks.append(BlockDiff(group, tuple(c for f in fields for c in _changes(f, _top(a, f), _top(b, f)))))
    grouped = {f for fields in GROUPS.values() for f in fields}
    others = [f for f in {**type(a).model_fields, **type(b).model_fields} if f not in grouped and f not in NOT_FIELDS]
    sections = [f for f in others if isinstance(getattr(a, f, None), BaseModel) or
                isinstance(getattr(b, f, None), BaseModel)]
    blocks.append(BlockDiff("model", tuple(c for f in others if f not in sections
                                           for c in _changes(f, _top(a, f), _top(b, f)))))
    for name in sections:
        blocks.append(_block(name, getattr(a, name, None), getattr(b, name, None)))
    blocks.append(_heads(a, b))
    return SpecDiff(*labels, tuple(b for b in blocks if b.changes), _layers(a, b))


def _top(spec: ModelSpecBase, field: str) -> Any:
    if field == "eos_token_id":
        return spec.eos_token_ids
    value = getattr(spec, field, None)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _block(name: str, a: BaseModel | None, b: BaseModel | None) -> BlockDiff:
    kind_a, kind_b = getattr(a, "kind", None), getattr(b, "kind", None)
    return BlockDiff(name, tuple(_changes(name, _dump(a), _dump(b))), kind_a if kind_a == kind_b else None)


def _dump(block: BaseModel | None) -> dict | None:
    return None if block is None else block.model_dump(mode="json")


def _changes(path: str, a: Any, b: Any) -> list[Change]:
    if a == b:
        return []
    if isinstance(a, dict) and isinstance(b, dict) and not _retagged(a, b):
        return [c for key in {**a, **b} for c in _changes(f"{path}.{key}", a.get(key), b.get(key))]
    if isinstance(a, dict) or isinstance(b, dict):
        return [Change(path, _written(a), _written(b), (_tag(a), _tag(b)))]
    return [Change(path, a, b)]


def _retagged(a: dict, b: dict) -> bool:
    return any(isinstance(a.get(tag), str) and a.get(tag) != b.get(tag) for tag in TAGS)


def _tag(value: Any) -> str | None:
    return next((value[t] for t in TAGS if isinstance(value, dict) and isinstance(value.get(t), str)), None)


def _written(value: Any) -> Any:
    """A block as its fields would be written: without nulls (fields left unset)."""
    if isinstance(value, dict):
        return {k: _written(v) for k, v in value.items() if v is not None}
    return value


def _heads(a: ModelSpecBase, b: ModelSpecBase) -> BlockDiff:
    heads_a = {h.kind: h.model_dump(mode="json") for h in a.heads}
    heads_b = {h.kind: h.model_dump(mode="json") for h in b.heads}
    return BlockDiff("heads", tuple(c for kind in {**heads_a, **heads_b}
                                    for c in _changes(f"heads.{kind}", heads_a.get(kind), heads_b.get(kind))))


def _layers(a: ModelSpecBase, b: ModelSpecBase) -> tuple[BlockDiff, ...]:
    """Each layer's blocks where their differences are not those of the spec's blocks; layers
    with the same differences in a block together."""
    found: dict[str, tuple[BlockDiff, list[int]]] = {}

    def add(block: BlockDiff, layer: int) -> None:
        key = json.dumps(block.to_json(), sort_keys=True)
        found.setdefault(key, (block, []))[1].append(layer)

    spec_wide = {name: _block(name, getattr(a, name), getattr(b, name)).changes for name in LAYER_SECTIONS}
    for i in range(min(a.num_layers, b.num_layers)):
        type_a, type_b = (s.layer_types[i] if s.layer_types else None for s in (a, b))
        if type_a != type_b:
            add(BlockDiff("layer_types", (Change("layer_types", type_a, type_b),)), i)
        for name in LAYER_SECTIONS:
            layer_a = getattr(a.layer_specs[i], name)
            block = _block(name, layer_a, getattr(b.layer_specs[i], name))
            if block.changes == spec_wide[name]:
                continue
            # what is not as the spec's blocks: other changes, and those of the spec's blocks that
            # do not hold here (a change with the same value on both sides)
            paths = [c.path for c in block.changes]
            kept = [c for c in block.changes if c not in spec_wide[name]]
            undone = [Change(c.path, v, v) for c in spec_wide[name] if not any(_overlap(c.path, p) for p in paths)
                      for v in [_at(_dump(layer_a), c.path.split(".")[1:])]]
            add(replace(block, changes=tuple(sorted(kept + undone, key=_order(block.changes + spec_wide[name])))), i)
    return tuple(replace(block, layers=tuple(layers)) for block, layers in found.values())


def _overlap(path: str, other: str) -> bool:
    """Whether one path is the other or inside it."""
    return path == other or path.startswith(f"{other}.") or other.startswith(f"{path}.")


def _at(data: Any, keys: list[str]) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _order(changes: tuple[Change, ...]):
    paths = list(dict.fromkeys(c.path for c in changes))
    return lambda change: paths.index(change.path)


def layer_ranges(layers: Sequence[int]) -> str:
    """``0-3, 8, 10, 12, ..., 20``: runs as ranges, longer strides as their first terms and last."""
    layers, parts, i = sorted(layers), [], 0
    while i < len(layers):
        j, step = i, 0
        if i + 1 < len(layers):
            j, step = i + 1, layers[i + 1] - layers[i]
            while j + 1 < len(layers) and layers[j + 1] - layers[j] == step:
                j += 1
        run = layers[i: j + 1]
        if step == 1:
            parts.append(f"{run[0]}-{run[-1]}")
        elif len(run) >= 4:
            parts.append(f"{run[0]}, {run[1]}, ..., {run[-1]}")
        else:
            parts.append(str(run[0]))
            j = i  # the rest may start a run of their own
        i = j + 1
    return ", ".join(parts)


def _rows(block: BlockDiff) -> list[tuple[str, str]]:
    """(field, "a -> b") per change; ("-"/"+", block) for blocks of another kind or a head one
    spec has and the other not; ("=", block) for a block that is the same in both."""
    rows = []
    for c in block.changes:
        if c.kinds and (c.path == block.block or block.block == "heads" and None in (c.a, c.b)):
            rows += [(sign, _value(v)) for sign, v in (("-", c.a), ("+", c.b)) if v is not None]
        elif c.path == block.block and c.a == c.b:
            rows.append(("=", _value(c.a)))
        else:
            field = c.path.removeprefix(f"{block.block}.")
            rows.append((field, f"{_value(c.a)} in both" if c.a == c.b else f"{_value(c.a)} -> {_value(c.b)}"))
    return rows


def _value(value: Any) -> str:
    """A value as a YAML author reads it; a block as ``kind(field=value, ...)``."""
    if isinstance(value, dict):
        tag = _tag(value)
        fields = ", ".join(f"{k}={_value(v)}" for k, v in value.items() if v is not None and not
                           (k in TAGS and v == tag))
        return (f"{tag}({fields})" if fields else tag) if tag else f"{{{fields}}}"
    if isinstance(value, list):
        return f"[{', '.join(_value(v) for v in value)}]"
    if isinstance(value, str):
        return value
    return json.dumps(value)
