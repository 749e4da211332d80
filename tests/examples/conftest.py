"""Fixtures for the example plugin's tests."""

import sys
from pathlib import Path

import pytest

import archcomposer
from archcomposer.testing import registered

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "archcomposer-nemotron"



@pytest.fixture(scope="package")
def nemotron_plugin():
    """The example plugin, registered in this process from its source tree (unless it is
    installed and already loaded through its entry point)."""
    if "nemotron" in archcomposer.get_registry().families:
        yield
        return
    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        import archcomposer_nemotron.plugin

        with registered(archcomposer_nemotron.plugin, "nemotron"):
            yield
    finally:
        sys.path.remove(str(EXAMPLE / "src"))
