"""Turning what a user hands us (a spec object, a dict, a YAML path or a shipped name) into a
validated ``ModelSpec``, with errors that name the file, the line and the field path."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from archcomposer.errors import RegistryError, SpecError
from archcomposer.registry import get_registry
from archcomposer.spec import ModelSpecBase, SpecRuleError

SpecLike = ModelSpecBase | dict | str | os.PathLike


def load_spec(source: SpecLike) -> ModelSpecBase:
    """Validate ``source`` into a ``ModelSpec``: a spec, a dict, a shipped spec's name, a YAML
    file, or a checkpoint directory (ours or Hugging Face's; its spec, not its weights)."""
    registry = get_registry()
    if isinstance(source, ModelSpecBase):
        return _check_family(source, None)
    if isinstance(source, dict):
        return validate_spec(source)
    path = Path(source)
    if str(source) in registry.specs and not path.is_file():  # a name may hold dots: llama-3.2-1b
        path = registry.specs[str(source)][0]
    elif not path.suffix and not path.exists():
        raise RegistryError(f"no shipped spec named {str(source)!r} and no such file; "
                            f"shipped specs: {', '.join(sorted(registry.specs))}")
    if path.is_dir():
        from archcomposer.checkpoint import checkpoint_spec  # checkpoint imports this module

        return checkpoint_spec(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise SpecError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping of fields, got {type(data).__name__}")
    return validate_spec(data, path=path, node=node)


def validate_spec(data: dict[str, Any], *, path: Path | None = None, node: yaml.Node | None = None) -> ModelSpecBase:
    try:
        spec = get_registry().spec_class().model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, data, path, node)) from None
    return _check_family(spec, path)


def _check_family(spec: ModelSpecBase, path: Path | None) -> ModelSpecBase:
    families = get_registry().families
    if spec.family is not None and spec.family not in families:
        where = f"{path}: " if path else ""
        raise SpecError(f"{where}family: unknown family {spec.family!r}; registered families: "
                        f"{', '.join(sorted(families)) or 'none'}")
    return spec


def format_validation_error(exc: ValidationError, data: Any, path: Path | None, node: yaml.Node | None) -> str:
    lines = [f"invalid spec{f' {path}' if path else ''} ({exc.error_count()} error(s)):"]
    for err in exc.errors(include_url=False):
        rule = err.get("ctx", {}).get("error")
        # A rule that knows its field (SpecRuleError) is reported there, not at the model.
        loc = list(rule.loc) if isinstance(rule, SpecRuleError) else _input_path(data, err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # the tag field (``kind``, a RoPE scaling's ``type``) is what is wrong or missing, not the section
            loc.append(err["ctx"]["discriminator"].strip("'"))
        where = f"{path}:{_line_of(node, loc)}: " if path is not None and node is not None else ""
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


def _line_of(node: yaml.Node | None, loc) -> int:
    """The 1-based line of the deepest YAML node on ``loc`` that exists."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
            if child is None:
                break
            line = next(k for k, v in node.value if v is child).start_mark.line + 1
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
