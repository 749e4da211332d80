"""Hook specifications: what an archcomposer plugin can implement.

A plugin is a module (or object) named by an entry point in the ``archcomposer.plugins`` group,
with functions decorated by ``composer.hookimpl``. Every hook receives a ``register`` callback
and returns nothing; all implementations are called (no ``firstresult``), each in isolation: one
that raises is reported as a warning naming its distribution, and the others still register."""

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("archcomposer")
hookimpl = pluggy.HookimplMarker("archcomposer")


@hookspec
def register_families(register: Callable[..., None]) -> None:
    """Register model families: call ``register(family)`` with a ``composer.Family``.

    A family's name is what a spec's ``family`` field names. Two plugins registering the same
    family name is an error naming both distributions."""


@hookspec
def register_blocks(register: Callable[..., None]) -> None:
    """Register block kinds: call ``register(section, spec_class)``.

    ``section`` is one of ``position``, ``norm``, ``attention``, ``mlp``, ``head``. ``spec_class``
    subclasses that section's base (``composer.spec.PositionSpec``, ...) with a
    ``kind: Literal["name"]`` field and a ``build`` method that returns the ``nn.Module``. The kind
    then validates in YAML and appears in the JSON schema."""


@hookspec
def register_specs(register: Callable[..., None]) -> None:
    """Register shipped specs: call ``register(name, path)`` with a YAML file, so that
    ``build_model(name)`` finds it by name."""
