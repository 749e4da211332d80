"""Meta-tests: every hook in ``composer/hookspecs.py`` is typed, documented in its docstring and
in README's "Writing a plugin" section (with its exact signature), called by the registry, and
exercised by ``tests/composer/test_plugins.py``; the section names the entry-point group, the
environment variables, the commands and the test kit."""

import inspect
from pathlib import Path

import pytest

from archcomposer import hookspecs, registry, testing

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, "archcomposer_spec")]


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    assert "\n## Writing a plugin\n" in text, "README.md has no '## Writing a plugin' section"
    section = text.split("\n## Writing a plugin\n", 1)[1]
    return section.split("\n## ", 1)[0]


def signature(name: str) -> str:
    """``register_blocks(register: Callable[[str, type[BaseModel]], None]) -> None``"""
    fn = getattr(hookspecs, name)
    params = ", ".join(f"{p}: {a}" for p, a in fn.__annotations__.items() if p != "return")
    return f"{name}({params}) -> {fn.__annotations__['return']}"


def test_the_hooks_are_the_ones_the_registry_calls():
    assert sorted(HOOKS) == sorted(registry.HOOKS)
    assert len(HOOKS) >= 4


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_typed_and_has_a_docstring(name):
    fn = getattr(hookspecs, name)
    assert list(inspect.signature(fn).parameters) == ["register"]
    assert fn.__annotations__["register"].startswith("Callable[")
    assert fn.__annotations__["return"] == "None"
    assert len(inspect.getdoc(fn) or "") > 80
    opts = getattr(fn, "archcomposer_spec")
    assert not opts["firstresult"] and not opts["historic"]  # every implementation is called, once


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_signature_is_in_the_readme(name):
    assert f"def {signature(name)}:" in readme_section(), f"README 'Writing a plugin' lacks def {signature(name)}:"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_test(name):
    tests = (ROOT / "tests" / "composer" / "test_plugins.py").read_text()
    assert f"def {name}(" in tests, f"tests/composer/test_plugins.py implements no {name} hook"
    assert f"def test_{name}" in tests, f"tests/composer/test_plugins.py has no test_{name}... test"


@pytest.mark.parametrize("needle", [
    registry.ENTRY_POINT_GROUP, registry.DISABLE_AUTOLOAD_ENV, registry.PLUGINS_ENV, "archcomposer plugins",
    "archcomposer blocks", "archcomposer.hookimpl", "check_pending", ".register(", ".unregister(",
    *testing.__all__,
])
def test_the_readme_section_names(needle):
    assert needle in readme_section()


def test_the_readme_minimal_plugin_works():
    import types

    from archcomposer import build_model
    from archcomposer.testing import check_cache_equivalence, check_output_contract

    code = readme_section().split("```python\n", 1)[1].split("```", 1)[0]
    plugin = types.ModuleType("acme_blocks")
    exec(compile(code, "README.md (acme_blocks)", "exec"), plugin.__dict__)
    with testing.registered(plugin):
        spec = {**build_model("tiny-seed-oss", device="meta").spec.to_dict(), "norm": {"kind": "scalenorm"}}
        assert type(build_model(spec).final_norm).__name__ == "ScaleNorm"
        check_cache_equivalence(spec)
        check_output_contract(spec)
