"""The registry of block kinds, families and shipped specs, filled by plugins.

Plugins are found through ``importlib.metadata`` entry points in the ``archcomposer.plugins``
group, loaded once per process on first use (in every process: nothing registered in a parent
lives only there), and asked through the hooks of ``composer.hookspecs``. The built-in families
are entry points of this distribution, so they come through the same door.

Environment:
  ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD=1  load no entry point of another distribution (hermetic
                                          tests); this distribution's own still load.
  ARCHCOMPOSER_PLUGINS=a,b                load only the named entry points (and this distribution's).
"""

from __future__ import annotations

import importlib.resources
import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Union

import pluggy
from pydantic import Field, create_model

from composer import hookspecs
from composer.errors import RegistryError
from composer.family import Family
from composer.spec import BUILTIN_KINDS, SECTION_BASES, ModelSpecBase

ENTRY_POINT_GROUP = "archcomposer.plugins"
OWN_DISTRIBUTION = "archcomposer"
BUILTIN = "archcomposer (core)"


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    registered: list[str] = field(default_factory=list)
    error: str | None = None


class Registry:
    def __init__(self):
        self.kinds: dict[str, dict[str, tuple[type, str]]] = {s: {} for s in SECTION_BASES}
        self.families: dict[str, tuple[Family, str]] = {}
        self.specs: dict[str, tuple[Path, str]] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.pm = pluggy.PluginManager("archcomposer")
        self.pm.add_hookspecs(hookspecs)
        self._spec_class = None
        for section, classes in BUILTIN_KINDS.items():
            for cls in classes:
                self.add_kind(section, cls, BUILTIN)
        for path in sorted(importlib.resources.files("composer.specs").iterdir(), key=lambda p: p.name):
            if path.name.endswith(".yaml"):
                self.add_spec(path.name[: -len(".yaml")], Path(str(path)), BUILTIN)

    # -- registration -------------------------------------------------------------------------

    def add_kind(self, section: str, cls: type, source: str) -> None:
        if section not in SECTION_BASES:
            raise RegistryError(f"{source} registers a block for section {section!r}; "
                                f"sections are {sorted(SECTION_BASES)}")
        base = SECTION_BASES[section]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise RegistryError(f"{source} registers {cls!r} for section {section!r}; "
                                f"it must subclass composer.spec.{base.__name__}")
        kind = _kind_of(cls)
        if kind is None:
            raise RegistryError(f"{source} registers {cls.__name__} without a `kind: Literal[...]` field")
        if kind in self.kinds[section]:
            other = self.kinds[section][kind][1]
            raise RegistryError(f"{section} kind {kind!r} is registered twice: by {other} and by {source}")
        self.kinds[section][kind] = (cls, source)
        self._spec_class = None

    def add_family(self, family: Family, source: str) -> None:
        if not isinstance(family, Family):
            raise RegistryError(f"{source} registers {family!r}; expected a composer.Family")
        if family.name in self.families:
            other = self.families[family.name][1]
            raise RegistryError(f"family {family.name!r} is registered twice: by {other} and by {source}")
        self.families[family.name] = (family, source)

    def add_spec(self, name: str, path: Path, source: str) -> None:
        if name in self.specs and self.specs[name][1] != source:
            raise RegistryError(f"spec {name!r} is registered twice: by {self.specs[name][1]} and by {source}")
        self.specs[name] = (Path(path), source)

    # -- plugins ------------------------------------------------------------------------------

    def load_plugins(self) -> None:
        disabled = os.environ.get("ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0")
        only = {n.strip() for n in os.environ.get("ARCHCOMPOSER_PLUGINS", "").split(",") if n.strip()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else "unknown distribution"
            version = ep.dist.version if ep.dist else "?"
            own = dist == OWN_DISTRIBUTION
            if not own and (disabled or (only and ep.name not in only)):
                continue
            info = PluginInfo(ep.name, dist, version)
            self.plugins[ep.name] = info
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not break the others
                info.error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"archcomposer plugin {ep.name!r} from distribution {dist!r} failed to load "
                              f"and is skipped: {info.error}", RuntimeWarning, stacklevel=2)
        self.pm.check_pending()
        self.call_hooks()

    def call_hooks(self, plugin: object | None = None) -> None:
        """Ask each registered plugin (or only ``plugin``) to register what it provides."""
        hooks = {"register_blocks": self._register_block, "register_families": self._register_family,
                 "register_specs": self._register_spec}
        for hook_name, adder in hooks.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if plugin is not None and impl.plugin is not plugin:
                    continue
                info = self.plugins.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "in-process", "")
                self.plugins.setdefault(impl.plugin_name, info)
                source = f"plugin {info.name!r} (distribution {info.distribution!r})"
                try:
                    impl.function(register=lambda *a, _add=adder, _info=info, _src=source: _add(_info, _src, *a))
                except RegistryError:
                    raise
                except Exception as exc:
                    info.error = f"{type(exc).__name__} in {hook_name}: {exc}"
                    warnings.warn(f"archcomposer plugin {info.name!r} from distribution {info.distribution!r} "
                                  f"raised during {hook_name} and is skipped: {exc}", RuntimeWarning, stacklevel=2)

    def _register_block(self, info, source, section, cls):
        self.add_kind(section, cls, source)
        info.registered.append(f"{section}:{_kind_of(cls)}")

    def _register_family(self, info, source, family):
        self.add_family(family, source)
        info.registered.append(f"family:{family.name}")

    def _register_spec(self, info, source, name, path):
        self.add_spec(name, path, source)
        info.registered.append(f"spec:{name}")

    # -- the spec class -----------------------------------------------------------------------

    def spec_class(self) -> type[ModelSpecBase]:
        """``ModelSpec`` with each section narrowed to the union of its registered kinds."""
        if self._spec_class is None:
            fields: dict[str, Any] = {}
            for section in ("position", "norm", "attention", "mlp"):
                fields[section] = (self._union(section), ...)
            fields["heads"] = (list[self._union("head")], [])
            self._spec_class = create_model("ModelSpec", __base__=ModelSpecBase, __module__="composer", **fields)
        return self._spec_class

    def _union(self, section: str):
        classes = tuple(cls for cls, _ in self.kinds[section].values())
        if len(classes) == 1:
            return classes[0]
        return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007


def _kind_of(cls: type) -> str | None:
    field_info = getattr(cls, "model_fields", {}).get("kind")
    args = getattr(field_info.annotation, "__args__", ()) if field_info else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, with plugins loaded on first use."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                registry = Registry()
                registry.load_plugins()
                _registry = registry
    return _registry


def reset_registry() -> None:
    """Forget the registry; the next use loads plugins again (tests, after installing a plugin)."""
    global _registry
    _registry = None
