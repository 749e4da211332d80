"""Turning what a user hands us (a spec object, a dict, a YAML path or a shipped name) into a
validated ``ModelSpec``, with errors that name the file, the line and the field path.

A spec file may start from another: ``extends: NAME_OR_PATH`` loads that spec (a shipped name, or
a file relative to the extending one) and merges the file's fields over it (``merge``). Each value
remembers where it was written (``Source``), so an error names the file and line the bad value
came from, in the extending file or in the one it extends."""

from __future__ import annotations

import codecs
import difflib
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from archcomposer.errors import RegistryError, SpecError
from archcomposer.registry import get_registry
from archcomposer.spec import ModelSpecBase, SpecRuleError

SpecLike = ModelSpecBase | dict | str | os.PathLike

#: Nesting deeper than this is refused (a spec nests about 7 deep; Python's own recursion would
#: fail somewhere past a few hundred).
MAX_DEPTH = 32
#: More values than this, counted as the models see them (a YAML alias counted each time it is
#: used), are refused: a spec holds a few hundred, and a few aliases nested can stand for billions.
MAX_VALUES = 100_000
#: Integers torch holds: anything beyond cannot be a size, an index or an id.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


#: The key of a spec file that names the spec it starts from.
EXTENDS = "extends"
#: Keys whose value names a mapping's kind: a mapping that changes it is replaced, not merged
#: (``kind`` of every section, ``type`` of a RoPE scaling; CPM-Ant's numeric prompt ``type`` is no tag).
TAGS = ("kind", "type")


@dataclass
class Source:
    """Where a value of a spec was written (``where``: ``file:line``, ``overrides`` for keyword
    arguments, None for a dict), and where each of its entries (mapping keys, list items) was."""

    where: str | None
    entries: dict[Any, Source] = field(default_factory=dict)

    @classmethod
    def of_node(cls, node: yaml.Node, path: Path, line: int | None = None) -> Source:
        """A mapping entry is where its key is written; a list item where the item starts."""
        line = line if line is not None else node.start_mark.line + 1
        entries = {}
        if isinstance(node, yaml.MappingNode):
            entries = {k.value: cls.of_node(v, path, k.start_mark.line + 1) for k, v in node.value
                       if isinstance(k, yaml.ScalarNode)}
        elif isinstance(node, yaml.SequenceNode):
            entries = {i: cls.of_node(v, path) for i, v in enumerate(node.value)}
        return cls(f"{path}:{line}", entries)

    @classmethod
    def of_data(cls, data: Any, where: str | None) -> Source:
        items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
        return cls(where, {k: cls.of_data(v, where) for k, v in items})

    def at(self, loc) -> Source:
        """The source of the deepest entry on ``loc`` that exists."""
        source = self
        for part in loc:
            if part not in source.entries:
                break
            source = source.entries[part]
        return source


def load_spec(source: SpecLike, /, **overrides: Any) -> ModelSpecBase:
    """Validate ``source`` into a ``ModelSpec``: a spec, a dict, a shipped spec's name, a YAML
    file, or a checkpoint directory (ours or Hugging Face's; its spec, not its weights).
    ``overrides`` are spec fields merged over it as an extending file's are (``merge``):
    ``load_spec("glm-4-9b", num_layers=2, position={"kind": "alibi"})``."""
    if isinstance(source, ModelSpecBase) and not overrides:
        return _check_family(source, None)
    if isinstance(source, dict) and not overrides:
        return validate_spec(source)
    data, origin, path = _spec_data(source)
    if overrides:
        data, origin = merge((data, origin), (overrides, Source.of_data(overrides, "overrides")))
    return validate_spec(data, path=path, node=origin)


def _spec_data(source: SpecLike) -> tuple[dict, Source, Path | None]:
    """What ``source`` holds as the data its author wrote (defaults left out), where each value
    was written, and its file."""
    if isinstance(source, ModelSpecBase):
        data = source.model_dump(mode="json", exclude_unset=True)
        return data, Source.of_data(data, None), None
    if isinstance(source, dict):
        return source, Source.of_data(source, None), None
    registry = get_registry()
    path = Path(source)
    if str(source) in registry.specs and not path.is_file():  # a name may hold dots: llama-3.2-1b
        path = registry.specs[str(source)][0]
    elif not path.suffix and not path.exists():
        raise RegistryError(f"no shipped spec named {str(source)!r} and no such file; "
                            f"shipped specs: {', '.join(sorted(registry.specs))}")
    if path.is_dir():
        from archcomposer.checkpoint import checkpoint_spec  # checkpoint imports this module

        data = checkpoint_spec(path).model_dump(mode="json", exclude_unset=True)
        return data, Source.of_data(data, None), None
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    data, origin = read_spec_file(path)
    return data, origin, path


def read_spec_file(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, Source]:
    """A spec file's data with the spec it ``extends`` merged under it, and where each value was
    written. ``chain``: the files that extend this one, to catch a cycle."""
    data, node = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping of fields, got {type(data).__name__}")
    origin = Source.of_node(node, path)
    if EXTENDS not in data:
        return data, origin
    ref = data.pop(EXTENDS)
    where = origin.at([EXTENDS]).where
    origin.entries.pop(EXTENDS, None)
    base = _base_path(ref, path, where)
    chain = (*chain, path)
    resolved = [p.resolve() for p in chain]
    if base.resolve() in resolved:
        cycle = [*chain[resolved.index(base.resolve()):], base]
        raise SpecError(f"{where}: {EXTENDS}: the specs extend each other in a cycle: "
                        f"{' -> '.join(str(p) for p in cycle)}")
    return merge(read_spec_file(base, chain), (data, origin))


def _base_path(ref: Any, path: Path, where: str) -> Path:
    """The file ``extends: ref`` in ``path`` names: a file relative to ``path``'s folder, else a shipped spec."""
    if not isinstance(ref, str) or not ref:
        raise SpecError(f"{where}: {EXTENDS}: give the name of a shipped spec or the path of a YAML file "
                        f"(e.g. extends: glm-4-9b or extends: base.yaml), got {_short(ref)}")
    candidate = path.parent / ref
    if candidate.is_file():
        return candidate
    specs = get_registry().specs
    if ref in specs:
        return specs[ref][0]
    raise SpecError(f"{where}: {EXTENDS}: no shipped spec named {ref!r} and no file {candidate}; "
                    f"shipped specs: {', '.join(sorted(specs))}")


def merge(base: tuple[Any, Source], over: tuple[Any, Source]) -> tuple[Any, Source]:
    """``over`` (data, source) merged over ``base``: mappings merge key by key, recursively; lists
    and scalars replace; a mapping whose kind (``TAGS``) changes replaces the base's whole, since
    the old kind's fields would not belong to the new one."""
    (old, old_source), (new, new_source) = base, over
    if not (isinstance(old, dict) and isinstance(new, dict)) or _retagged(old, new):
        return new, new_source
    data, entries = dict(old), dict(old_source.entries)
    for key, value in new.items():
        source = new_source.entries.get(key, new_source)
        if key in old:
            data[key], entries[key] = merge((old[key], old_source.entries.get(key, old_source)), (value, source))
        else:
            data[key], entries[key] = value, source
    return data, Source(new_source.where, entries)


def _retagged(old: dict, new: dict) -> bool:
    return any(isinstance(old.get(tag), str) and isinstance(new.get(tag), str) and old[tag] != new[tag]
               for tag in TAGS)


def validate_spec(data: dict[str, Any], *, path: Path | None = None,
                  node: yaml.Node | Source | None = None) -> ModelSpecBase:
    """Validate spec data; ``node`` (the file's YAML nodes, or a ``Source``) says where each value
    was written, for errors that name a file and line."""
    if isinstance(node, yaml.Node):
        node = Source.of_node(node, path) if path is not None else None
    _check_values(data, path, node)
    try:
        spec = get_registry().spec_class().model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, data, path, node)) from None
    return _check_family(spec, node)


def _check_family(spec: ModelSpecBase, origin: Source | None) -> ModelSpecBase:
    families = get_registry().families
    if spec.family is not None and spec.family not in families:
        where = origin.at(["family"]).where if origin is not None else None
        raise SpecError(f"{f'{where}: ' if where else ''}family: unknown family {spec.family!r}; registered "
                        f"families: {', '.join(sorted(families)) or 'none'}")
    return spec


def format_validation_error(exc: ValidationError, data: Any, path: Path | None, node: yaml.Node | Source | None) -> str:
    if isinstance(node, yaml.Node):
        node = Source.of_node(node, path) if path is not None else None
    lines = [f"invalid spec{f' {path}' if path else ''} ({exc.error_count()} error(s)):"]
    for err in exc.errors(include_url=False):
        rule = err.get("ctx", {}).get("error")
        # A rule that knows its field (SpecRuleError) is reported there, not at the model.
        loc = list(rule.loc) if isinstance(rule, SpecRuleError) else _input_path(data, err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # the tag field (``kind``, a RoPE scaling's ``type``) is what is wrong or missing, not the section
            loc.append(err["ctx"]["discriminator"].strip("'"))
        where = node.at(loc).where if node is not None else None
        where = f"{where}: " if where else ""
        got = "" if err["type"] in ("missing", "value_error", "union_tag_not_found") \
            else f" (got {_short(err['ctx']['tag'] if err['type'] == 'union_tag_invalid' else err['input'])})"
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field rules have no single field: their messages name the fields involved.
        lines.append(f"  {where}{_dotted(loc) + ': ' if loc else ''}{msg}{got}{_suggestion(err)}")
    return "\n".join(lines)


def _suggestion(err: dict) -> str:
    """``; did you mean 'num_heads'?`` for a misspelled key or kind, else nothing."""
    if err["type"] == "extra_forbidden":
        model = _model_at(get_registry().spec_class(), err["loc"][:-1])
        given, choices = err["loc"][-1], list(model.model_fields) if model is not None else []
    elif err["type"] == "union_tag_invalid":
        given, choices = err["ctx"]["tag"], re.findall(r"'([^']*)'", err["ctx"]["expected_tags"])
    else:
        return ""
    close = difflib.get_close_matches(str(given), choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _model_at(annotation: Any, loc) -> type[BaseModel] | None:
    """The spec model class that pydantic's error location ``loc`` points into: field names,
    list indices and union tags (``('mlp', 'gated')`` is the gated MLP's class)."""
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        members = _members(annotation)
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if isinstance(part, int):
            lists = [typing.get_args(m)[0] for m in members if typing.get_origin(m) in (list, tuple)]
            annotation = lists[0] if lists else None
        elif len(models) == 1 and part in models[0].model_fields:
            annotation = models[0].model_fields[part].annotation
        else:
            tagged = [m for m in models if part in (_literal(m, "kind"), _literal(m, "type"))]
            annotation = tagged[0] if tagged else None
        if annotation is None:
            return None
    models = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    return models[0] if len(models) == 1 else None


def _members(annotation: Any) -> list:
    """The alternatives of a type, through ``Annotated`` and unions (``X | None``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _literal(model: type[BaseModel], field: str) -> Any:
    info = model.model_fields.get(field)
    if info is not None and typing.get_origin(info.annotation) is typing.Literal:
        return typing.get_args(info.annotation)[0]
    return None


def _input_path(data: Any, loc) -> list:
    """``loc`` as a path into the input: without pydantic's validator steps and without the
    union tags it inserts (``mlp.gated.bias`` is ``mlp.bias`` in the file, ``position.rope.scaling.yarn.factor``
    is ``position.scaling.factor``)."""
    path = []
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if isinstance(data, dict) and part not in data and part in (data.get("kind"), data.get("type")):
            continue
        path.append(part)
        data = data.get(part) if isinstance(data, dict) else \
            data[part] if isinstance(data, list) and isinstance(part, int) and part < len(data) else None
    return path


def _dotted(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_reprs = reprlib.Repr()  # abbreviates as it goes: a huge value is never written out whole
_reprs.maxlevel, _reprs.maxstring, _reprs.maxlong, _reprs.maxother = 3, 80, 80, 80
_reprs.maxlist = _reprs.maxtuple = _reprs.maxdict = _reprs.maxset = 8


def _short(value: Any) -> str:
    text = _reprs.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# reading a YAML file


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The data of a YAML file and its node tree (for line numbers; None for an empty file), or a
    ``SpecError`` naming the file and the line: for bytes that are not UTF-8 (UTF-16 and UTF-32
    are read when a byte-order mark says so, as YAML allows), YAML syntax, a key given twice in one
    mapping, nesting beyond MAX_DEPTH, and aliases that expand the document beyond MAX_VALUES
    values or into itself. Plain YAML 1.1 otherwise (the safe loader), except that ``1e-5`` is a
    float, as in YAML 1.2 and JSON, rather than a string."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    text = _decode(raw, path)
    try:
        loader = _SpecLoader(text, path)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        line = text.count("\n", 0, exc.position) + 1
        raise SpecError(f"{path}:{line}: not valid YAML: character U+{exc.character:04X} is not allowed in YAML "
                        f"text") from None
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise SpecError(f"{where}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, node


_BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]  # UTF-32 LE's starts as UTF-16 LE's


def _decode(raw: bytes, path: Path) -> str:
    bom, encoding = next(((bom, name) for bom, name in _BOMS if raw.startswith(bom)), (b"", "utf-8"))
    try:
        text = raw[len(bom):].decode(encoding)
    except UnicodeDecodeError as exc:
        at = len(bom) + exc.start
        line = raw[len(bom):at].decode(encoding, errors="replace").count("\n") + 1
        raise SpecError(f"{path}:{line}: byte {at} (0x{raw[at]:02x}) is not {encoding.upper()} text ({exc.reason}); "
                        f"save the spec as UTF-8") from None
    if "\0" in text:  # valid UTF-8, but in no text: UTF-16 written without a byte-order mark
        at = text.index("\0")
        raise SpecError(f"{path}:{text.count(chr(10), 0, at) + 1}: byte {len(bom) + len(text[:at].encode(encoding))} "
                        f"is a NUL character; is the file UTF-16 without a byte-order mark? Save the spec as UTF-8")
    return text


class _SpecLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys and nesting beyond MAX_DEPTH while it reads."""

    def __init__(self, text: str, path: Path):
        super().__init__(text)
        self.name = str(path)  # YAML's own messages name the file
        self.path = path
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:  # PyYAML composes recursively: refuse before Python's stack runs out
                raise SpecError(f"{self.path}:{self.peek_event().start_mark.line + 1}: nested more than {MAX_DEPTH} "
                                f"deep; a spec nests a few levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the safe loader refuses it next
                continue
            if seen is not key_node:
                raise SpecError(f"{self.path}:{key_node.start_mark.line + 1}: key {_short(key)} is given twice in "
                                f"one mapping (first at line {seen.start_mark.line + 1}); give each key once")
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's floats with an exponent and no dot (``1e-5``), which YAML 1.1 reads as strings.
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                                  list("-+0123456789."))


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse a document that its aliases (``*name``, repeating what ``&name`` anchors) expand
    beyond MAX_VALUES values or MAX_DEPTH levels, or into itself; measured on the node graph, in
    which an alias is the anchored node itself, so without expanding anything."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) of its expansion
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        line = node.start_mark.line + 1
        if id(node) in open_nodes:
            raise SpecError(f"{path}:{line}: an alias refers to a value that contains it; a spec is a tree")
        if id(node) not in measured:
            if depth > MAX_DEPTH:
                raise SpecError(f"{path}:{line}: nested more than {MAX_DEPTH} deep once its aliases are expanded")
            open_nodes.add(id(node))
            children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
                node.value if isinstance(node, yaml.SequenceNode) else []
            values, levels = 1, 1
            for child in children:
                child_values, child_levels = measure(child, depth + 1)
                values, levels = values + child_values, max(levels, child_levels + 1)
                if values > MAX_VALUES:
                    raise SpecError(f"{path}:{line}: this value holds more than {MAX_VALUES:,} values once its "
                                    f"aliases are expanded; a spec holds a few hundred")
            open_nodes.discard(id(node))
            measured[id(node)] = values, levels
        values, levels = measured[id(node)]
        if depth + levels - 1 > MAX_DEPTH:
            raise SpecError(f"{path}:{line}: nested more than {MAX_DEPTH} deep once its aliases are expanded")
        return values, levels

    measure(root, 1)


def _check_values(data: Any, path: Path | None, node: Source | None) -> None:
    """Refuse, before the models see it, what they cannot be trusted with: nesting beyond
    MAX_DEPTH, more than MAX_VALUES values (a shared object counted each time it is reached),
    and integers beyond int64, which no field can use."""
    def where(loc: tuple) -> str:
        written = node.at(loc).where if node is not None else None
        line = f"{written}: " if written else f"{path}: " if path is not None else ""
        field = _dotted(loc) if len(loc) <= 8 else _dotted(loc[:6]) + "..."
        return f"{line}{field + ': ' if loc else ''}"

    stack, count = [(data, ())], 0
    while stack:
        value, loc = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError(f"{where(())}the spec holds more than {MAX_VALUES:,} values; a spec holds a few hundred")
        if len(loc) >= MAX_DEPTH:  # the spec's own mapping is the first level, as in read_yaml
            raise SpecError(f"{where(loc[:MAX_DEPTH])}nested more than {MAX_DEPTH} deep; a spec nests a few levels")
        if isinstance(value, dict):
            stack.extend((v, (*loc, k)) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, (*loc, i)) for i, v in enumerate(value))
        elif type(value) is int and not INT64_MIN <= value <= INT64_MAX:
            raise SpecError(f"{where(loc)}{value:,} does not fit in 64 bits (torch's integers, at most "
                            f"{INT64_MAX:,}); no size, index or id can be that large")
