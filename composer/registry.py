"""The registry of spec sections, block kinds, families and shipped specs, filled by plugins.

Plugins are found through ``importlib.metadata`` entry points in the ``archcomposer.plugins``
group and asked through the hooks of ``archcomposer.hookspecs``. The built-in families are entry
points of this distribution (see its ``pyproject.toml``), so they come through the same door as a
third-party plugin. Plugins are loaded once per process, on first use (``get_registry()``), never
as a side effect of an import: every process that builds a model loads them itself, so nothing
registered through an entry point lives only in a parent process. A spec pickled in one process
is validated again, with that process's registry, when it is unpickled in another.

Environment:
  ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD=1  load no entry point of another distribution (hermetic
                                          tests); archcomposer's own built-in families still load.
  ARCHCOMPOSER_PLUGINS=a,b                load only these plugins (entry-point or distribution
                                          names), plus archcomposer's own.

A plugin object can also be registered in-process (tests): ``get_registry().register(plugin)``,
then ``get_registry().unregister(plugin)`` in a ``finally``."""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
import reprlib
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any, ClassVar, Optional, Union

import pluggy
from pydantic import BaseModel, Field, create_model, model_validator

from archcomposer import hookspecs
from archcomposer.errors import RegistryError
from archcomposer.family import Family
from archcomposer.spec import BUILTIN_KINDS, SECTION_BASES, SECTION_DEFAULTS, BuildContext, ModelSpecBase, Strict

ENTRY_POINT_GROUP = "archcomposer.plugins"
DISABLE_AUTOLOAD_ENV = "ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "ARCHCOMPOSER_PLUGINS"
OWN_DISTRIBUTION = "archcomposer"
CORE = "archcomposer (core)"
#: The hooks, in the order they are called.
HOOKS = ("register_sections", "register_blocks", "register_families", "register_specs")


class RegistryConflict(RegistryError):
    """Two plugins (or a plugin and the core) claim the same name. Unlike a plugin that merely
    fails, this stops the registry from loading: which of the two should win is not ours to guess."""


@dataclass(frozen=True)
class Section:
    """A part of the spec whose value is one of several registered kinds.

    field: the spec field that holds it (``heads`` for the ``head`` section).
    required: the spec must set it (position, attention, norm, mlp); otherwise it defaults to
        ``default`` (embedding, wiring), None (plugin sections) or an empty list (``many``)."""

    name: str
    base: type[BaseModel]
    source: str
    field: str
    required: bool = False
    many: bool = False
    default: Any = None


@dataclass
class PluginInfo:
    """One plugin: an entry point (with its distribution) or an object registered in-process."""

    name: str
    distribution: str | None = None  # None: registered in-process
    version: str | None = None
    error: str | None = None
    entries: list[tuple[str, ...]] = field(default_factory=list)  # ("block", section, kind), ("family", name), ...

    @property
    def source(self) -> str:
        where = f"distribution {self.distribution!r} {self.version}" if self.distribution else "registered in-process"
        return f"plugin {self.name!r} ({where})"

    @property
    def registered(self) -> list[str]:
        """What it registered, as ``family:llama``, ``attention:sliding_window``, ``spec:tiny-llama``."""
        return [f"{e[0]}:{e[1]}" if e[0] in ("family", "spec", "section") else f"{e[1]}:{e[2]}" for e in self.entries]


class Registry:
    """Sections, kinds, families and specs by name, each with its source (``archcomposer (core)``
    or ``plugin 'x' (distribution 'd' 1.0)``). ``get_registry()`` is the process-wide one."""

    def __init__(self):
        self.sections: dict[str, Section] = {}
        self.kinds: dict[str, dict[str, tuple[type, str]]] = {}
        self.families: dict[str, tuple[Family, str]] = {}
        self.specs: dict[str, tuple[Path, str]] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.pm = pluggy.PluginManager("archcomposer")
        self.pm.add_hookspecs(hookspecs)
        self._spec_class: type[ModelSpecBase] | None = None
        for name, base in SECTION_BASES.items():
            many, default = name == "head", SECTION_DEFAULTS.get(name)
            self.sections[name] = Section(name, base, CORE, field="heads" if many else name,
                                          required=not many and default is None, many=many, default=default)
            self.kinds[name] = {}
        for section, classes in BUILTIN_KINDS.items():
            for cls in classes:
                self.add_kind(section, cls, CORE)
        for path in sorted(importlib.resources.files("archcomposer.specs").iterdir(), key=lambda p: p.name):
            if path.name.endswith(".yaml"):
                self.add_spec(path.name[: -len(".yaml")], Path(str(path)), CORE)

    # -- registration: each add_* validates, stores and returns the entry it made ---------------

    def add_section(self, name: str, base: type, source: str) -> tuple[str, ...]:
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(f"{source} registers section {name!r}; a section name must be a Python identifier")
        taken = {s.field: s for s in self.sections.values()} | {s.name: s for s in self.sections.values()}
        if name in taken:
            raise RegistryConflict(f"section {name!r} is registered twice: by {taken[name].source} and by {source}")
        if name in ModelSpecBase.model_fields:
            raise RegistryError(f"{source} registers section {name!r}, which is already a field of every spec; "
                                f"choose another name")
        if not (isinstance(base, type) and issubclass(base, Strict) and "kind" in base.model_fields):
            raise RegistryError(f"{source} registers section {name!r} with base {base!r}; the base must subclass "
                                f"archcomposer.spec.Strict (strict, finite fields) and have a `kind: str` field")
        self.sections[name] = Section(name, base, source, field=name)
        self.kinds[name] = {}
        self._spec_class = None
        return ("section", name)

    def add_kind(self, section: str, cls: type, source: str) -> tuple[str, ...]:
        if section not in self.sections:
            raise RegistryError(f"{source} registers a block for section {section!r}, which does not exist; "
                                f"sections are {sorted(self.sections)} (register_sections adds one)")
        base = self.sections[section].base
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise RegistryError(f"{source} registers {cls!r} for section {section!r}; it must subclass "
                                f"{base.__module__}.{base.__qualname__}")
        kind = kind_of(cls)
        if kind is None:
            raise RegistryError(f"{source} registers {cls.__qualname__} for section {section!r} without a "
                                f"`kind: Literal[\"name\"]` field")
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:  # the model would fail at build time, far from here
            raise RegistryError(f"{source} registers {cls.__qualname__} for section {section!r} without "
                                f"{', '.join(m + '()' for m in missing)}, which every {base.__qualname__} kind "
                                f"implements (see {base.__qualname__}.{missing[0]})")
        if kind in self.kinds[section]:
            other = self.kinds[section][kind][1]
            raise RegistryConflict(f"{section} kind {kind!r} is registered twice: by {other} and by {source}")
        self.kinds[section][kind] = (cls, source)
        self._spec_class = None
        return ("block", section, kind)

    def add_family(self, family: Family, source: str) -> tuple[str, ...]:
        if not isinstance(family, Family):
            raise RegistryError(f"{source} registers {family!r}; expected a archcomposer.Family")
        if family.name in self.families:
            other = self.families[family.name][1]
            raise RegistryConflict(f"family {family.name!r} is registered twice: by {other} and by {source}")
        for model_type in family.hf_model_types:
            for other, other_source in self.families.values():
                if model_type in other.hf_model_types:
                    raise RegistryConflict(f"Hugging Face model_type {model_type!r} is claimed by family "
                                           f"{other.name!r} of {other_source} and by family {family.name!r} of "
                                           f"{source}")
        self.families[family.name] = (family, source)
        return ("family", family.name)

    def add_spec(self, name: str, path: str | os.PathLike, source: str) -> tuple[str, ...]:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{source} registers a spec named {name!r}; a spec name is a non-empty string")
        if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
            raise RegistryError(f"{source} registers spec {name!r} at {path!r}, which is not a file")
        if name in self.specs:
            raise RegistryConflict(f"spec {name!r} is registered twice: by {self.specs[name][1]} and by {source}")
        self.specs[name] = (Path(path), source)
        return ("spec", name)

    def _withdraw(self, info: PluginInfo) -> None:
        """Remove everything ``info`` registered (last first)."""
        for entry in reversed(info.entries):
            if entry[0] == "section":
                del self.sections[entry[1]], self.kinds[entry[1]]
            elif entry[0] == "block":
                self.kinds.get(entry[1], {}).pop(entry[2], None)
            elif entry[0] == "family":
                del self.families[entry[1]]
            else:
                del self.specs[entry[1]]
        info.entries.clear()
        self._spec_class = None

    # -- plugins ------------------------------------------------------------------------------

    def load_plugins(self) -> None:
        """Register every entry point of the ``archcomposer.plugins`` group (as the environment
        allows) and call their hooks. A plugin that fails is skipped with a warning."""
        disabled = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")
        wanted = {_normalize(n) for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()}
        found: set[str] = set()
        own_found = False
        candidates = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: not _is_own(ep))  # ours first
        for ep in candidates:
            names = {_normalize(ep.name), _normalize(_dist_name(ep))}
            found |= names
            if _is_own(ep):
                own_found = True
            elif disabled or (wanted and not names & wanted):
                continue
            info = PluginInfo(ep.name, _dist_name(ep), ep.dist.version if ep.dist else "?")
            if ep.name in self.plugins:
                raise RegistryConflict(f"plugin name {ep.name!r} is claimed by two entry points of group "
                                       f"{ENTRY_POINT_GROUP!r}: {self.plugins[ep.name].source} and {info.source}")
            self.plugins[ep.name] = info
            try:
                self._register_object(ep.load(), ep.name)
            except Exception as exc:  # a broken plugin must not break the others
                self._skip(info, f"failed to load: {type(exc).__name__}: {exc}")
        if not own_found:
            warnings.warn(f"no entry point of the {OWN_DISTRIBUTION!r} distribution in group {ENTRY_POINT_GROUP!r}: "
                          f"the built-in families are missing. Is archcomposer installed (pip install -e .)?",
                          RuntimeWarning, stacklevel=2)
        if wanted and not disabled and wanted - found:
            warnings.warn(f"{PLUGINS_ENV} names {sorted(wanted - found)}, which no installed distribution provides; "
                          f"installed plugins: {sorted(ep.name for ep in candidates)}", RuntimeWarning, stacklevel=2)
        self._call_hooks(set(self.plugins), strict=False)

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object in this process only (tests, notebooks) and call its hooks now;
        returns its name. Unlike an entry point, any failure raises ``RegistryError`` here. Pair it
        with ``unregister`` in a ``finally``."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.plugins:
            raise RegistryConflict(f"plugin name {name!r} is already registered, by {self.plugins[name].source}")
        try:
            self._register_object(plugin, name)
        except Exception as exc:
            raise RegistryError(f"plugin {name!r} cannot be registered: {exc}") from exc
        self.plugins[name] = PluginInfo(name)
        self._call_hooks({name}, strict=True)
        return name

    def unregister(self, plugin: object | str) -> None:
        """Withdraw an in-process plugin (the object or its name) and everything it registered."""
        name = plugin if isinstance(plugin, str) else self.pm.get_name(plugin)
        if name is None or name not in self.plugins:
            raise RegistryError(f"plugin {plugin!r} is not registered; registered plugins: {sorted(self.plugins)}")
        info = self.plugins.pop(name)
        self._withdraw(info)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    def _register_object(self, plugin: object, name: str) -> None:
        """Hand ``plugin`` to pluggy, which checks its hook signatures; ``check_pending`` then
        rejects a hook name no spec declares (a misspelling such as ``register_familes``). A plugin
        that implements no hook (None, a string, the wrong object) is refused too."""
        nothing = f"{reprlib.repr(plugin)} implements none of the hooks ({', '.join(HOOKS)}); a plugin is a " \
                  f"module, class or object with functions marked @archcomposer.hookimpl"
        if plugin is None:  # pluggy takes a None plugin as a blocked name
            raise RegistryError(nothing)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise RegistryError(f"{exc} (the hooks are {', '.join(HOOKS)}; is one misspelled?)") from None
        if not self.pm.get_hookcallers(plugin):
            self.pm.unregister(name=name)
            raise RegistryError(nothing)

    def _call_hooks(self, names: set[str], strict: bool) -> None:
        """Call each hook of the plugins ``names``, hook by hook (all sections before any block). A
        plugin that raises is skipped with a warning, or (``strict``) withdrawn and the error raised."""
        for hook in HOOKS:
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                info = self.plugins.get(impl.plugin_name)
                if impl.plugin_name not in names or info is None or info.error:
                    continue
                register = self._register_callback(hook, info)
                try:
                    impl.function(*[register for _ in impl.argnames])
                except Exception as exc:
                    if strict:
                        self.unregister(info.name)
                        if isinstance(exc, RegistryError):  # it names the plugin already
                            raise
                        raise RegistryError(f"{info.source} raised in {hook}: {type(exc).__name__}: {exc}") from exc
                    if isinstance(exc, RegistryConflict):
                        raise
                    self._skip(info, f"raised in {hook}: {type(exc).__name__}: {exc}")

    def _register_callback(self, hook: str, info: PluginInfo) -> Callable[..., None]:
        add = {"register_sections": self.add_section, "register_blocks": self.add_kind,
               "register_families": self.add_family, "register_specs": self.add_spec}[hook]

        def register(*args: Any, **kwargs: Any) -> None:
            info.entries.append(add(*args, **kwargs, source=info.source))

        return register

    def _skip(self, info: PluginInfo, error: str) -> None:
        info.error = error
        self._withdraw(info)
        if self.pm.has_plugin(info.name):
            self.pm.unregister(name=info.name)
        warnings.warn(f"archcomposer {info.source} is skipped: it {error}", RuntimeWarning, stacklevel=3)

    # -- the spec class -----------------------------------------------------------------------

    def spec_class(self) -> type[ModelSpecBase]:
        """``ModelSpec``: each section narrowed to the discriminated union of its registered kinds,
        and an optional field per plugin section. Rebuilt whenever a kind or section changes."""
        if self._spec_class is None:
            fields: dict[str, Any] = {}
            plugin_sections = []
            for section in self.sections.values():
                kinds = self._union(section.name)
                if section.many:
                    fields[section.field] = (list[kinds], [])
                elif section.required:
                    fields[section.field] = (kinds, ...)
                elif section.default is not None:
                    fields[section.field] = (kinds, section.default)
                elif kinds is not None:
                    fields[section.field] = (Optional[kinds], None)  # noqa: UP045
                    plugin_sections.append(section.field)
            cls = create_model("ModelSpec", __base__=RegisteredSpec, __module__=__name__, **fields)
            cls.plugin_sections = tuple(plugin_sections)
            self._spec_class = cls
        return self._spec_class

    def _union(self, section: str):
        classes = tuple(cls for cls, _ in self.kinds[section].values())
        if len(classes) <= 1:
            return classes[0] if classes else None
        return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007


class RegisteredSpec(ModelSpecBase):
    """Base of the ``ModelSpec`` class the registry builds: runs the plugin sections' checks, and
    pickles as its data (validated again where it is unpickled, with that process's plugins)."""

    plugin_sections: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _check_plugin_sections(self):
        for name in self.plugin_sections:
            value = getattr(self, name)
            if value is not None and callable(getattr(value, "check", None)):
                value.check(BuildContext(self))
        return self

    def __reduce__(self):
        return _validate, (self.to_dict(),)


def _validate(data: dict) -> ModelSpecBase:
    from archcomposer.specfile import validate_spec

    return validate_spec(data)


def kind_of(cls: type) -> str | None:
    """The ``kind`` of a block spec class (its ``Literal`` value), or None."""
    field_info = getattr(cls, "model_fields", {}).get("kind")
    args = getattr(field_info.annotation, "__args__", ()) if field_info else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def _dist_name(ep: EntryPoint) -> str:
    return _name_of(ep.dist) if ep.dist is not None else "unknown distribution"


@functools.cache
def _name_of(dist) -> str:
    """A distribution's name. Entry points of one distribution share its object, and each
    ``.name`` re-parses the METADATA file: 66 built-in entry points made that 0.8 s per process."""
    return dist.name


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _is_own(ep: EntryPoint) -> bool:
    return _normalize(_dist_name(ep)) == OWN_DISTRIBUTION


_registry: Registry | None = None
_loading: Registry | None = None
_lock = threading.RLock()


def get_registry() -> Registry:
    """The process-wide registry, with plugins loaded on first use."""
    global _registry, _loading
    if _registry is None:
        with _lock:
            if _loading is not None:
                raise RegistryError("get_registry() was called while plugins are loading (from a plugin's import or "
                                    "hook); a hook must only call its register callback")
            if _registry is None:
                _loading = Registry()
                try:
                    _loading.load_plugins()
                    _registry = _loading
                finally:
                    _loading = None
    return _registry


def reset_registry() -> None:
    """Forget the registry; the next use loads plugins again (after installing a plugin)."""
    global _registry
    _registry = None
