"""Hook specifications: what an archcomposer plugin can implement.

A plugin is a module (or any object) with functions decorated by ``archcomposer.hookimpl`` and named
after the hooks below. It is found through an entry point in the ``archcomposer.plugins`` group
(``[project.entry-points."archcomposer.plugins"]`` in its ``pyproject.toml``); the built-in
families enter through the same group. Every hook receives one argument, a ``register`` callback,
and returns nothing. All implementations of a hook are called (no hook is ``firstresult``), hook
by hook in the order of this module: every plugin's sections first, then blocks, families, specs,
so one plugin can register blocks for a section another plugin adds.

Each plugin is called in isolation: one that fails to import, or raises inside a hook, is skipped
(with a ``RuntimeWarning`` naming its distribution and the error, and everything it had
registered withdrawn) and the others still register. Claiming a name that another plugin (or the
core) already holds is a ``archcomposer.RegistryError`` naming both distributions."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from archcomposer.family import Family

hookspec = pluggy.HookspecMarker("archcomposer")
hookimpl = pluggy.HookimplMarker("archcomposer")


@hookspec
def register_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    """Add spec sections: call ``register(name, base)``.

    ``base`` is the pydantic base class of the new section's kinds (subclass
    ``archcomposer.spec.Strict``, give it ``kind: str`` and the interface its blocks share, usually an
    abstract ``build`` method). The spec then has an optional top-level field ``name`` (default
    None) holding one of the kinds registered for the section with ``register_blocks``; if it
    defines ``check(ctx)`` (``ctx`` an ``archcomposer.spec.BuildContext``), that runs on every
    validated spec, like the core sections' checks.

    The core model does not wire a new section itself: the plugin's own blocks (whose ``build``
    receives the whole spec as ``ctx.spec``) and families read it. ``name`` must be a Python
    identifier that is not already a spec field or section; the core sections are ``embedding``,
    ``position``, ``norm``, ``attention``, ``mlp``, ``wiring`` and ``head`` (the ``heads`` list)."""


@hookspec
def register_blocks(register: Callable[[str, type[BaseModel]], None]) -> None:
    """Add block kinds: call ``register(section, spec_class)``.

    ``section`` is a core section (``embedding``, ``position``, ``norm``, ``attention``, ``mlp``,
    ``wiring``, ``head``) or one registered with ``register_sections``. ``spec_class`` is the
    kind's pydantic model: a subclass of that section's base (``archcomposer.spec.EmbeddingSpec``,
    ``PositionSpec``, ``NormSpec``, ``AttentionSpec``, ``MLPSpec``, ``WiringSpec``, ``HeadSpec``)
    with a ``kind: Literal["name"]`` field, its parameters as typed fields, and
    ``build(ctx)`` returning the ``nn.Module``. The kind then
    validates in YAML (``kind: name``) and appears in ``archcomposer schema`` and
    ``archcomposer blocks``. A kind name is unique within its section."""


@hookspec
def register_families(register: Callable[[Family], None]) -> None:
    """Add model families: call ``register(family)`` with a ``archcomposer.Family``.

    The family's ``name`` is what a spec's ``family`` field names; its ``hf_*`` fields (see
    ``archcomposer.family``) let ``archcomposer.from_pretrained`` read and write its Hugging Face
    checkpoints. A family name is unique."""


@hookspec
def register_specs(register: Callable[[str, str | os.PathLike[str]], None]) -> None:
    """Ship specs: call ``register(name, path)`` with the path of a YAML spec file, so
    ``build_model(name)``, ``archcomposer summary`` and ``archcomposer generate name`` find it by
    name. The file is read when the spec is used, so it may use the kinds and families of any
    plugin. A spec name is unique."""
