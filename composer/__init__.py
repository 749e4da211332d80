"""archcomposer: transformer language models composed from declarative specs."""

from archcomposer.build import build_model, init_weights
from archcomposer.cache import DynamicCache, StaticCache
from archcomposer.checkpoint import from_pretrained
from archcomposer.errors import CacheError, CheckpointError, ComposerError, InputError, RegistryError, SpecError
from archcomposer.family import Family, TensorMap
from archcomposer.hookspecs import hookimpl
from archcomposer.model import ComposedModel
from archcomposer.registry import get_registry
from archcomposer.specfile import load_spec
from archcomposer.tokenizer import TextStreamer, Tokenizer

__version__ = "0.1.0"

__all__ = [
    "CacheError", "CheckpointError", "ComposedModel", "ComposerError", "DynamicCache", "Family", "InputError",
    "RegistryError", "SpecError", "StaticCache", "TensorMap", "TextStreamer", "Tokenizer", "build_model",
    "from_pretrained", "get_registry", "hookimpl", "init_weights", "load_spec",
]
