"""The JSON Schema of spec files (``archcomposer schema``), for editors: the YAML language server
completes and checks a spec file that names it (``# yaml-language-server: $schema=...``).

A file with ``extends:`` holds only the fields that differ from the spec it extends, so it is
checked against a partial schema: the same fields, kinds and types, none required. Lists replace
the base's whole (``heads``, ``layers``), so their items are checked in full."""

from __future__ import annotations

import copy
import json
from typing import Any

from archcomposer.registry import get_registry
from archcomposer.specfile import EXTENDS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:archcomposer:spec"
#: Where the schema of the built-in kinds is shipped, beside the specs it checks.
SHIPPED = "spec.schema.json"
#: The first line of a shipped spec: the YAML language server checks the file against the schema.
MODELINE = f"# yaml-language-server: $schema={SHIPPED}"
_DEFS = "#/$defs/"


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of spec files with every registered kind, plugins' included."""
    full = get_registry().spec_class().model_json_schema()
    defs = full.pop("$defs", {})
    defs["ModelSpec"] = full
    partial = _Partial(defs)
    partial.ref("ModelSpec")
    top = defs["ModelSpecPartial"]
    top["properties"] = {EXTENDS: {
        "type": "string", "title": "Extends",
        "description": "The spec this one starts from: a shipped spec's name or a YAML file (relative to this "
                       "one). This file's fields are merged over it: mappings field by field, lists and values "
                       "replace, a section with another kind replaces the section whole.",
    }, **top["properties"]}
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "ModelSpec",
        "description": "An archcomposer spec: a whole model, or with `extends` the fields that differ from another.",
        "type": "object",
        "if": {"required": [EXTENDS]},
        "then": {"$ref": f"{_DEFS}ModelSpecPartial"},
        "else": {"$ref": f"{_DEFS}ModelSpec"},
        "$defs": dict(sorted(defs.items())),
    }


class _Partial:
    """Adds to ``defs`` the partial version of each definition a partial spec reaches."""

    def __init__(self, defs: dict[str, Any]):
        self.defs = defs

    def ref(self, name: str) -> str:
        partial = f"{name}Partial"
        if partial not in self.defs:
            self.defs[partial] = {}  # reserved first: definitions may refer to themselves
            self.defs[partial] = self.walk(copy.deepcopy(self.defs[name]))
        return f"{_DEFS}{partial}"

    def walk(self, schema: Any) -> Any:
        if isinstance(schema, list):
            return [self.walk(item) for item in schema]
        if not isinstance(schema, dict):
            return schema
        out = {}
        for key, value in schema.items():
            if key in ("required", "discriminator"):
                continue  # nothing is required; without `kind` more than one kind may fit
            if key in ("items", "prefixItems"):
                out[key] = value  # a list replaces the base's: its items are whole
            elif key == "properties":
                out[key] = {name: self.walk(field) for name, field in value.items()}
            elif key == "$ref":
                out[key] = self.ref(value.removeprefix(_DEFS))
            else:
                out["anyOf" if key == "oneOf" else key] = self.walk(value)
        return out


def schema_text() -> str:
    """``spec_json_schema()`` as the shipped file holds it."""
    return json.dumps(spec_json_schema(), indent=2) + "\n"
