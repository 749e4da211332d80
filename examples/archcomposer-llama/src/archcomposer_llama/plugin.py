"""The plugin's hook implementations: the module the ``llama`` entry point names."""

from pathlib import Path

from archcomposer import hookimpl

from archcomposer_llama.family import FAMILY
from archcomposer_llama.spec import Llama3RopeSpec, SlidingWindowSpec

SPECS = Path(__file__).parent / "specs"


@hookimpl
def register_blocks(register):
    register("position", Llama3RopeSpec)
    register("attention", SlidingWindowSpec)


@hookimpl
def register_families(register):
    register(FAMILY)


@hookimpl
def register_specs(register):
    for path in sorted(SPECS.glob("*.yaml"), key=lambda p: p.stem):
        register(path.stem, path)
