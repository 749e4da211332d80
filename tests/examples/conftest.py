"""Fixtures for the example plugin's tests."""

import sys
from pathlib import Path

import pytest

import archcomposer
from archcomposer.testing import registered

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "archcomposer-llama"



@pytest.fixture(scope="package")
def llama_plugin():
    """The example plugin, registered in this process from its source tree (unless it is
    installed and already loaded through its entry point)."""
    if "llama" in archcomposer.get_registry().families:
        yield
        return
    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        import archcomposer_llama.plugin

        with registered(archcomposer_llama.plugin, "llama"):
            yield
    finally:
        sys.path.remove(str(EXAMPLE / "src"))
