"""archcomposer: transformer language models composed from declarative specs."""

from composer.build import build_model, init_weights
from composer.cache import DynamicCache, StaticCache
from composer.checkpoint import from_pretrained
from composer.errors import CacheError, CheckpointError, ComposerError, InputError, RegistryError, SpecError
from composer.family import Family, TensorMap
from composer.hookspecs import hookimpl
from composer.model import ComposedModel
from composer.registry import get_registry
from composer.specfile import load_spec

__version__ = "0.1.0"

__all__ = [
    "CacheError", "CheckpointError", "ComposedModel", "ComposerError", "DynamicCache", "Family", "InputError",
    "RegistryError", "SpecError", "StaticCache", "TensorMap", "build_model", "from_pretrained", "get_registry",
    "hookimpl", "init_weights", "load_spec",
]
