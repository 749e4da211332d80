"""The plugin's hook implementations: the module the ``nemotron`` entry point names."""

from pathlib import Path

from archcomposer import hookimpl

from archcomposer_nemotron.family import FAMILY
from archcomposer_nemotron.spec import LayerNorm1PSpec, SquaredReLUMLPSpec

SPECS = Path(__file__).parent / "specs"


@hookimpl
def register_blocks(register):
    register("norm", LayerNorm1PSpec)
    register("mlp", SquaredReLUMLPSpec)


@hookimpl
def register_families(register):
    register(FAMILY)


@hookimpl
def register_specs(register):
    for path in sorted(SPECS.glob("*.yaml"), key=lambda p: p.stem):
        register(path.stem, path)
