"""The errors archcomposer raises on bad input. Each message names where the problem is (file,
field path, argument), the value found and what was expected."""


class ComposerError(Exception):
    """Base class of every archcomposer error."""


class SpecError(ComposerError, ValueError):
    """A spec is invalid: unknown kind, wrong type, or inconsistent fields."""


class RegistryError(ComposerError, LookupError):
    """A name (spec, family, block kind, plugin) is unknown or claimed twice."""


class CacheError(ComposerError, ValueError):
    """A KV cache is used beyond its capacity or inconsistently with the inputs."""


class CheckpointError(ComposerError, ValueError):
    """A checkpoint cannot be read or written as asked."""


class InputError(ComposerError, ValueError):
    """Arguments to ``forward`` or ``generate`` are inconsistent."""
