"""Plugins: the four hooks (register_sections, register_blocks, register_families,
register_specs), discovery through the ``archcomposer.plugins`` entry-point group, isolation of
broken plugins, name conflicts, the environment variables, in-process registration, loading in
every process, and the ``plugins`` and ``blocks`` commands.

Entry-point plugins are throwaway distributions: a module and a ``*.dist-info`` folder with an
``entry_points.txt``, put on ``sys.path``. Each such test loads a fresh process-wide registry and
puts the previous one back afterwards."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import re
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

import archcomposer
import archcomposer.registry
import archcomposer.testing
from archcomposer import Family, RegistryError, SpecError, hookimpl
from archcomposer.blocks.position import PositionEncoding
from archcomposer.cli import main
from archcomposer.registry import ENTRY_POINT_GROUP, Registry, get_registry
from archcomposer.spec import AlibiSpec, GatedMLPSpec, Strict

BUILTIN_FAMILIES = {"bloom": "bloom", "glm": "glm-4", "seed_oss": "seed-oss", "cpmant": "cpm-ant",
                    "gpt_neox": "gpt-neox", "starcoder2": "starcoder2", "phi": "phi", "stablelm": "stablelm",
                    "phi3": "phi3", "gpt2": "gpt2", "gpt_bigcode": "gpt-bigcode", "opt": "opt", "gptj": "gpt-j",
                    "granite": "granite", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                    "smollm3": "smollm3", "falcon": "falcon", "mpt": "mpt", "olmo": "olmo", "olmo2": "olmo2",
                    "cohere": "cohere", "gemma": "gemma", "gemma2": "gemma-2", "gemma3": "gemma-3",
                    "deepseek_v3": "deepseek-v3", "deepseek_v2": "deepseek-v2", "mixtral": "mixtral",
                    "qwen2_moe": "qwen2-moe", "qwen3_moe": "qwen3-moe", "olmoe": "olmoe"}



@pytest.fixture
def autoload(monkeypatch):
    """A fresh process-wide registry, loaded (on first use) with autoloading on; the previous
    registry is put back afterwards."""
    monkeypatch.delenv("ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("ARCHCOMPOSER_PLUGINS", raising=False)
    monkeypatch.setattr(archcomposer.registry, "_registry", None)
    return monkeypatch


def make_dist(root: Path, dist: str, module: str, source: str, *, entry_point: str | None = None,
              version: str = "1.0") -> None:
    """A throwaway installed distribution ``dist`` whose entry point ``entry_point`` (default: the
    module name) in the archcomposer group names ``module``, written from ``source``."""
    sys.modules.pop(module, None)  # an earlier test's module of that name
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point or module} = {module}\n")
    importlib.invalidate_caches()


FAMILY_PLUGIN = """
    from archcomposer import Family, hookimpl

    @hookimpl
    def register_families(register):
        register(Family(name={family!r}, description="a test family"))
"""

#: A position kind that is ALiBi with the opposite slope sign, as a plugin module.
BLOCK_PLUGIN = """
    from typing import Literal
    from archcomposer import hookimpl
    from archcomposer.spec import AlibiSpec

    class MirroredAlibiSpec(AlibiSpec):
        '''ALiBi with the slopes' sign flipped (a test kind).'''
        kind: Literal["mirrored_alibi"]

    @hookimpl
    def register_blocks(register):
        register("position", MirroredAlibiSpec)
"""


def glm_with(**sections) -> dict:
    return {**archcomposer.load_spec("tiny-glm-4").to_dict(), **sections}


# ---------------------------------------------------------------------------------------------
# discovery: the built-in families come through the same group


def test_builtin_families_are_entry_points_of_this_distribution():
    ours = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.dist.name == "archcomposer"}
    assert ours == {name: f"archcomposer.plugins.{name}" for name in BUILTIN_FAMILIES}
    assert Registry().families == {}  # no private path: before the entry points load, no family
    registry = get_registry()
    for plugin, family in BUILTIN_FAMILIES.items():
        info = registry.plugins[plugin]
        assert (info.distribution, info.version, info.error) == ("archcomposer", archcomposer.__version__, None)
        assert f"family:{family}" in info.registered
        assert registry.families[family][1] == f"plugin {plugin!r} (distribution 'archcomposer' {archcomposer.__version__})"


def test_an_installed_plugin_is_found_through_its_entry_point(autoload, tmp_path):
    make_dist(tmp_path, "acme-blocks", "acme_blocks", BLOCK_PLUGIN, entry_point="acme")
    autoload.syspath_prepend(str(tmp_path))
    registry = get_registry()
    info = registry.plugins["acme"]
    assert (info.distribution, info.version, info.registered) == ("acme-blocks", "1.0", ["position:mirrored_alibi"])
    assert registry.kinds["position"]["mirrored_alibi"][1] == "plugin 'acme' (distribution 'acme-blocks' 1.0)"
    model = archcomposer.build_model(glm_with(position={"kind": "mirrored_alibi"}), seed=0)
    assert model.spec.position.kind == "mirrored_alibi"
    assert get_registry() is registry  # loaded once


def test_plugins_load_lazily_not_on_import():
    code = "import archcomposer, archcomposer.registry as r; assert r._registry is None; archcomposer.get_registry(); " \
           "assert r._registry is not None; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_a_spawned_process_loads_plugins_itself(autoload, tmp_path):
    """The child gets the spec pickled as data and validates it with its own registry, which
    loads the plugin through its entry point; the model it returns comes back the same way."""
    make_dist(tmp_path, "acme-blocks", "acme_blocks", BLOCK_PLUGIN)
    autoload.syspath_prepend(str(tmp_path))  # spawn hands sys.path to the child
    autoload.setenv("OMP_NUM_THREADS", "1")
    spec = archcomposer.load_spec(glm_with(position={"kind": "mirrored_alibi"}))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        theirs = pool.submit(archcomposer.build_model, spec, seed=3).result()
    ours = archcomposer.build_model(spec, seed=3)
    assert theirs.spec == spec and type(theirs.spec) is type(spec)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# the hooks, through in-process plugins


class Mirrored(nn.Module):
    def __init__(self, *, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *positions) -> PositionEncoding:
        encoding = self.inner(*positions)
        return PositionEncoding(encoding.rotate, -encoding.bias)


class MirroredAlibi(AlibiSpec):
    """ALiBi with the slopes' sign flipped (a test kind)."""

    kind: Literal["mirrored_alibi"]

    def build(self, ctx):
        return Mirrored(inner=super().build(ctx))


class BlockPlugin:
    @hookimpl
    def register_blocks(self, register):
        register("position", MirroredAlibi)


def test_register_blocks_adds_a_kind_to_yaml_schema_and_errors(tmp_path):
    registry = get_registry()
    path = tmp_path / "mirrored.yaml"
    path.write_text(Path(registry.specs["tiny-glm-4"][0]).read_text().replace("kind: partial_rope, theta: 10000.0, "
                    "fraction: 0.5, interleaved: true", "kind: mirrored_alibi"))
    with pytest.raises(SpecError, match="position.kind: Input tag 'mirrored_alibi' found using 'kind' does not match"):
        archcomposer.load_spec(path)
    name = registry.register(BlockPlugin())
    try:
        assert registry.plugins[name].registered == ["position:mirrored_alibi"]
        assert registry.plugins[name].source == "plugin 'BlockPlugin' (registered in-process)"
        model = archcomposer.build_model(path, seed=0)
        assert isinstance(model.spec.position, MirroredAlibi)
        assert "mirrored_alibi" in json.dumps(registry.spec_class().model_json_schema())
        with pytest.raises(SpecError, match=r"'partial_rope', 'alibi', 'bucket_bias', 'mirrored_alibi'"):
            archcomposer.load_spec(glm_with(position={"kind": "mirrored_alibbi"}))
    finally:
        registry.unregister(name)
    assert "mirrored_alibi" not in registry.kinds["position"] and name not in registry.plugins
    with pytest.raises(SpecError, match="does not match"):
        archcomposer.load_spec(path)


class ScaleSpec(Strict):
    """Base of a plugin section: how much the MLP output is scaled."""

    kind: str


class ConstantScale(ScaleSpec):
    kind: Literal["constant"]
    value: float = 1.0

    def check(self, ctx):
        if ctx.spec.mlp.kind != "scaled_gated":
            raise ValueError(f"scale is set but mlp.kind is {ctx.spec.mlp.kind!r}; it needs 'scaled_gated'")


class Scaled(nn.Module):
    def __init__(self, *, inner: nn.Module, value: float):
        super().__init__()
        self.inner, self.value = inner, value

    def forward(self, x):
        return self.inner(x) * self.value


class ScaledGatedMLP(GatedMLPSpec):
    """A gated MLP scaled by the spec's ``scale`` section (a test kind)."""

    kind: Literal["scaled_gated"]

    def build(self, ctx):
        scale = ctx.spec.scale
        return Scaled(inner=super().build(ctx), value=scale.value if scale is not None else 1.0)


class SectionPlugin:
    @hookimpl
    def register_blocks(self, register):  # blocks before sections here: hooks run in hookspec order anyway
        register("scale", ConstantScale)
        register("mlp", ScaledGatedMLP)

    @hookimpl
    def register_sections(self, register):
        register("scale", ScaleSpec)


def test_register_sections_adds_an_optional_section_that_blocks_read():
    registry = get_registry()
    with archcomposer.testing.registered(SectionPlugin()) as name:
        assert registry.plugins[name].registered == ["section:scale", "scale:constant", "mlp:scaled_gated"]
        assert archcomposer.load_spec("tiny-glm-4").scale is None
        spec = glm_with(mlp={**glm_with()["mlp"], "kind": "scaled_gated"}, scale={"kind": "constant", "value": 2.0})
        ids = torch.tensor([[5, 6, 7]])
        doubled, plain = archcomposer.build_model(spec, seed=0), archcomposer.build_model({**spec, "scale": None}, seed=0)
        assert not torch.equal(doubled(ids).logits, plain(ids).logits)
        assert "scale" in registry.spec_class().model_json_schema()["properties"]
        with pytest.raises(SpecError, match="scale is set but mlp.kind is 'gated'; it needs 'scaled_gated'"):
            archcomposer.load_spec(glm_with(scale={"kind": "constant"}))
        with pytest.raises(SpecError, match=r"scale.kind: Input should be 'constant' \(got 'constnat'\)"):
            archcomposer.load_spec({**spec, "scale": {"kind": "constnat"}})
    assert "scale" not in registry.sections
    with pytest.raises(SpecError, match="scale: Extra inputs are not permitted"):
        archcomposer.load_spec({**spec, "mlp": glm_with()["mlp"]})


@pytest.mark.parametrize(("name", "message"), [
    ("heads", "section 'heads' is registered twice: by archcomposer \\(core\\)"),
    ("vocab_size", "section 'vocab_size', which is already a field of every spec"),
    ("not-an-identifier", "a section name must be a Python identifier"),
])
def test_register_sections_refuses_names_the_spec_uses(name, message):
    class Plugin:
        @hookimpl
        def register_sections(self, register):
            register(name, ScaleSpec)

    with pytest.raises(RegistryError, match=message):
        get_registry().register(Plugin())
    assert "Plugin" not in get_registry().plugins


def test_register_families_makes_a_family_name_valid():
    class Plugin:
        @hookimpl
        def register_families(self, register):
            register(Family(name="acme", description="Acme's models"))

    registry = get_registry()
    with pytest.raises(SpecError, match="unknown family 'acme'; registered families: bloom, cohere, cpm-ant, deepseek-v2, "
                                        "deepseek-v3, falcon, gemma, gemma-2, gemma-3, glm-4"):
        archcomposer.load_spec(glm_with(family="acme"))
    with archcomposer.testing.registered(Plugin(), "acme"):
        assert registry.families["acme"][1] == "plugin 'acme' (registered in-process)"
        assert archcomposer.load_spec(glm_with(family="acme")).family == "acme"
    assert "acme" not in registry.families


def test_register_specs_ships_a_spec_by_name(tmp_path):
    path = tmp_path / "acme.yaml"
    path.write_text(Path(get_registry().specs["tiny-bloom"][0]).read_text().replace("name: tiny-bloom", "name: acme-1"))

    class Plugin:
        @hookimpl
        def register_specs(self, register):
            register("acme-1.0", path)

    with archcomposer.testing.registered(Plugin()):
        assert archcomposer.build_model("acme-1.0", device="meta").spec.name == "acme-1"
        assert main(["summary", "acme-1.0"]) == 0
    with pytest.raises(archcomposer.ComposerError, match="acme-1.0: no such spec file"):
        archcomposer.load_spec("acme-1.0")


# ---------------------------------------------------------------------------------------------
# bad plugins: misspelled hooks, bad registrations, failures, conflicts


def test_check_pending_catches_a_misspelled_hook():
    class Plugin:
        @hookimpl
        def register_familes(self, register):
            pass

    with pytest.raises(RegistryError, match="unknown hook 'register_familes'.*is one misspelled"):
        get_registry().register(Plugin())
    assert "Plugin" not in get_registry().plugins


def test_a_hook_with_a_wrong_argument_is_refused():
    class Plugin:
        @hookimpl
        def register_families(self, reg):
            pass

    with pytest.raises(RegistryError, match="Argument\\(s\\) {'reg'} are declared in the hookimpl"):
        get_registry().register(Plugin())


@pytest.mark.parametrize(("section", "cls", "message"), [
    ("positon", MirroredAlibi, "section 'positon', which does not exist; sections are"),
    ("norm", MirroredAlibi, "for section 'norm'; it must subclass archcomposer.spec.NormSpec"),
    ("position", AlibiSpec.__base__, "without a `kind: Literal"),
])
def test_a_bad_block_registration_says_what_is_wrong(section, cls, message):
    class Plugin:
        @hookimpl
        def register_blocks(self, register):
            register(section, cls)

    with pytest.raises(RegistryError, match=message):
        get_registry().register(Plugin())


def test_broken_plugins_are_skipped_with_a_warning_naming_their_distribution(autoload, tmp_path):
    make_dist(tmp_path, "broken-import", "broken_import", "raise ImportError('no module named acme_core')")
    make_dist(tmp_path, "broken-hook", "broken_hook", """
        from archcomposer import hookimpl

        @hookimpl
        def register_families(register):
            raise RuntimeError("database unreachable")
    """)
    make_dist(tmp_path, "broken-spelling", "broken_spelling", """
        from archcomposer import hookimpl

        @hookimpl
        def register_familes(register):
            pass
    """)
    make_dist(tmp_path, "broken-registration", "broken_registration", """
        from archcomposer import hookimpl
        from archcomposer.spec import AlibiSpec
        from typing import Literal

        class Mine(AlibiSpec):
            kind: Literal["mine"]

        @hookimpl
        def register_blocks(register):
            register("position", Mine)  # withdrawn when the next hook fails

        @hookimpl
        def register_specs(register):
            register("mine", "/nonexistent/mine.yaml")
    """)
    make_dist(tmp_path, "acme-family", "acme_family", FAMILY_PLUGIN.format(family="acme"))
    autoload.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning) as caught:
        registry = get_registry()
    messages = "\n".join(str(w.message) for w in caught)
    assert "plugin 'broken_import' (distribution 'broken-import' 1.0) is skipped: it failed to load: " \
           "ImportError: no module named acme_core" in messages
    assert "plugin 'broken_hook' (distribution 'broken-hook' 1.0) is skipped: it raised in register_families: " \
           "RuntimeError: database unreachable" in messages
    assert "(distribution 'broken-spelling' 1.0) is skipped: it failed to load: RegistryError: unknown hook " \
           "'register_familes'" in messages
    assert "(distribution 'broken-registration' 1.0) is skipped: it raised in register_specs: RegistryError: " \
           "plugin 'broken_registration' (distribution 'broken-registration' 1.0) registers spec 'mine' at " \
           "'/nonexistent/mine.yaml', which is not a file" in messages
    assert "mine" not in registry.kinds["position"] and "mine" not in registry.specs  # withdrawn
    assert {"acme", *BUILTIN_FAMILIES.values()} <= set(registry.families)
    assert archcomposer.build_model("tiny-glm-4", seed=0) is not None
    for name in ("broken_import", "broken_hook", "broken_spelling", "broken_registration"):
        assert registry.plugins[name].error and registry.plugins[name].registered == []
        assert not registry.pm.has_plugin(name)


def test_two_plugins_claiming_one_family_is_an_error_naming_both(autoload, tmp_path):
    make_dist(tmp_path, "acme-one", "acme_one", FAMILY_PLUGIN.format(family="acme"))
    make_dist(tmp_path, "acme-two", "acme_two", FAMILY_PLUGIN.format(family="acme"))
    autoload.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match=r"family 'acme' is registered twice: by plugin 'acme_(one|two)' "
                                            r"\(distribution 'acme-(one|two)' 1.0\) and by plugin 'acme_(one|two)'"):
        get_registry()


def test_a_plugin_claiming_a_core_kind_is_an_error_naming_both(autoload, tmp_path):
    make_dist(tmp_path, "acme-rope", "acme_rope", """
        from archcomposer import hookimpl
        from archcomposer.spec import RopeSpec

        @hookimpl
        def register_blocks(register):
            register("position", RopeSpec)
    """)
    autoload.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match=r"position kind 'rope' is registered twice: by archcomposer \(core\) "
                                            r"and by plugin 'acme_rope' \(distribution 'acme-rope' 1.0\)"):
        get_registry()


def test_two_distributions_with_one_entry_point_name_is_an_error(autoload, tmp_path):
    make_dist(tmp_path, "acme-one", "acme_one", FAMILY_PLUGIN.format(family="one"), entry_point="acme")
    make_dist(tmp_path, "acme-two", "acme_two", FAMILY_PLUGIN.format(family="two"), entry_point="acme")
    autoload.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match=r"plugin name 'acme' is claimed by two entry points .*'acme-(one|two)'.*"
                                            r"'acme-(one|two)'"):
        get_registry()


def test_a_family_claiming_another_ones_hf_model_type_is_an_error():
    class Plugin:
        @hookimpl
        def register_families(self, register):
            register(Family(name="bloom-too", hf_model_types=("bloom",)))

    with pytest.raises(RegistryError, match="model_type 'bloom' is claimed by family 'bloom' of plugin 'bloom'"):
        get_registry().register(Plugin())
    assert "bloom-too" not in get_registry().families


# ---------------------------------------------------------------------------------------------
# environment and in-process registration


def test_disable_autoload_keeps_only_the_builtin_families(autoload, tmp_path):
    make_dist(tmp_path, "acme-family", "acme_family", FAMILY_PLUGIN.format(family="acme"))
    autoload.syspath_prepend(str(tmp_path))
    autoload.setenv("ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert set(get_registry().families) == set(BUILTIN_FAMILIES.values())


def test_archcomposer_plugins_limits_loading_to_the_named_plugins(autoload, tmp_path):
    make_dist(tmp_path, "acme-one", "acme_one", FAMILY_PLUGIN.format(family="one"))
    make_dist(tmp_path, "acme-two", "acme_two", FAMILY_PLUGIN.format(family="two"))
    autoload.syspath_prepend(str(tmp_path))
    autoload.setenv("ARCHCOMPOSER_PLUGINS", "acme_one, acme-nothing")  # an entry-point name
    with pytest.warns(RuntimeWarning, match=r"ARCHCOMPOSER_PLUGINS names \['acme-nothing'\], which no installed"):
        families = set(get_registry().families)
    assert families == {"one", *BUILTIN_FAMILIES.values()}
    autoload.setattr(archcomposer.registry, "_registry", None)
    autoload.setenv("ARCHCOMPOSER_PLUGINS", "acme-two")  # a distribution name
    assert set(get_registry().families) == {"two", *BUILTIN_FAMILIES.values()}


def test_in_process_register_then_unregister_in_finally():
    registry = get_registry()
    plugin = BlockPlugin()
    name = registry.register(plugin, "mirror")
    try:
        with pytest.raises(RegistryError, match="plugin name 'mirror' is already registered, by plugin 'mirror' "
                                                "\\(registered in-process\\)"):
            registry.register(BlockPlugin(), "mirror")
        assert archcomposer.load_spec(glm_with(position={"kind": "mirrored_alibi"})).position.kind == "mirrored_alibi"
    finally:
        registry.unregister(plugin)
    assert name not in registry.plugins and not registry.pm.has_plugin(name)
    with pytest.raises(RegistryError, match="plugin 'mirror' is not registered"):
        registry.unregister("mirror")


def test_a_hook_that_raises_in_process_raises_and_leaves_nothing_behind():
    class Plugin:
        @hookimpl
        def register_blocks(self, register):
            register("position", MirroredAlibi)

        @hookimpl
        def register_families(self, register):
            raise RuntimeError("no families today")

    registry = get_registry()
    with pytest.raises(RegistryError, match="plugin 'Plugin' \\(registered in-process\\) raised in "
                                            "register_families: RuntimeError: no families today"):
        registry.register(Plugin())
    assert "mirrored_alibi" not in registry.kinds["position"] and "Plugin" not in registry.plugins


def test_specs_pickle_as_data_and_validate_again():
    import pickle

    with archcomposer.testing.registered(BlockPlugin()):
        spec = archcomposer.load_spec(glm_with(position={"kind": "mirrored_alibi"}))
        assert pickle.loads(pickle.dumps(spec)) == spec
        data = pickle.dumps(archcomposer.build_model(spec, seed=0))
    with pytest.raises(SpecError, match="mirrored_alibi"):  # the kind is gone: unpickling says so
        pickle.loads(data)


# ---------------------------------------------------------------------------------------------
# the commands


def test_plugins_command_lists_distribution_version_and_registrations(capsys, autoload, tmp_path):
    make_dist(tmp_path, "broken-import", "broken_import", "raise ImportError('no acme_core')")
    make_dist(tmp_path, "acme-blocks", "acme_blocks", BLOCK_PLUGIN, entry_point="acme", version="2.3")
    autoload.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["plugin", "distribution", "version", "registers"]
    rows = {line.split()[0]: line.split(maxsplit=3)[1:] for line in lines[1:]}
    assert rows["glm"] == ["archcomposer", archcomposer.__version__, "family:glm-4"]
    assert rows["acme"] == ["acme-blocks", "2.3", "position:mirrored_alibi"]
    assert rows["broken_import"] == ["broken-import", "1.0", "SKIPPED: it failed to load: ImportError: no acme_core"]
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["acme"] == {"name": "acme", "distribution": "acme-blocks", "version": "2.3",
                              "registers": ["position:mirrored_alibi"], "error": None}


def test_blocks_command_lists_every_kind_with_parameters_and_source(capsys):
    registry = get_registry()
    with archcomposer.testing.registered(SectionPlugin(), "scaling"):
        assert main(["blocks", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert {(b["section"], b["kind"]) for b in listed} == {
            (section, kind) for section in registry.sections for kind in registry.kinds[section]}
        assert main(["blocks"]) == 0
        text = capsys.readouterr().out
    by_kind = {(b["section"], b["kind"]): b for b in listed}
    rope = by_kind["position", "rope"]
    assert rope["source"] == "archcomposer (core)" and rope["description"].startswith("Rotary embedding")
    assert rope["parameters"] == [
        {"name": "theta", "type": "float (> 0)", "required": False, "default": 10000.0},
        {"name": "scaling", "type": "{type: 'linear' | 'dynamic' | 'yarn' | 'longrope' | 'llama3'} | None",
         "required": False, "default": None}]
    gqa = {p["name"]: p for p in by_kind["attention", "gqa"]["parameters"]}
    assert gqa["num_heads"] == {"name": "num_heads", "type": "int (> 0, <= 524288)", "required": True, "default": None}
    wiring = {p["name"]: p for p in by_kind["wiring", "pre_norm"]["parameters"]}
    assert wiring["residual_from_norm"] == {"name": "residual_from_norm", "type": "bool", "required": False,
                                            "default": False}
    assert gqa["num_kv_heads"]["type"] == "int (> 0, <= 524288) | None"
    assert by_kind["scale", "constant"]["source"] == "plugin 'scaling' (registered in-process)"
    assert "scale (spec field `scale`)" in text and "head (spec field `heads`)" in text
    assert re.search(r"^      theta +float \(> 0\) += 10000.0$", text, re.M)
    assert re.search(r"^      num_heads +int \(> 0, <= 524288\) +required$", text, re.M)  # columns as wide as the longest field
    assert main(["blocks", "mlp"]) == 0
    assert "gated" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # a usage error, as an argparse choice would be
        main(["blocks", "positon"])
    assert info.value.code == 2
    assert "no section 'positon'; sections are ['attention', 'embedding', 'head', 'mlp', 'norm', 'position', 'wiring']" in \
        capsys.readouterr().err


def test_a_plugin_that_uses_the_registry_while_loading_is_skipped(autoload, tmp_path):
    make_dist(tmp_path, "acme-eager", "acme_eager", """
        import archcomposer
        from archcomposer import hookimpl

        @hookimpl
        def register_specs(register):
            archcomposer.load_spec("tiny-glm-4")
    """)
    autoload.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"'acme-eager' 1.0\) is skipped: it raised in register_specs: "
                                            r"RegistryError: get_registry\(\) was called while plugins are loading"):
        registry = get_registry()
    assert registry.plugins["acme_eager"].error


# ---------------------------------------------------------------------------------------------
# a plugin kind with a different shape of its own


class LatentAttentionSpec(archcomposer.spec.AttentionSpec):
    """An attention kind without ``head_dim`` (as a latent-attention kind would be)."""

    kind: Literal["latent_test"]
    latent_dim: int = 8

    def build(self, ctx):
        raise AssertionError("this test only validates specs")

    def kv_bytes_per_token(self, dtype_bytes):
        return self.latent_dim * dtype_bytes


class LatentPlugin:
    @hookimpl
    def register_blocks(self, register):
        register("attention", LatentAttentionSpec)


@pytest.mark.parametrize("position", [{"kind": "rope"}, {"kind": "partial_rope", "fraction": 0.5}])
def test_a_rotary_scheme_over_an_attention_kind_without_head_dim_is_a_spec_error(position):
    """Was a raw AttributeError from RopeSpec.check."""
    with archcomposer.testing.registered(LatentPlugin()):
        with pytest.raises(SpecError, match=r"position\.kind '(partial_)?rope' rotates the channels of each "
                                            r"attention head, but attention\.kind 'latent_test' has no head_dim"):
            archcomposer.load_spec(glm_with(position=position, attention={"kind": "latent_test", "num_heads": 4}))
        spec = archcomposer.load_spec(glm_with(position={"kind": "alibi"},
                                               attention={"kind": "latent_test", "num_heads": 4}))
        assert spec.attention.position_head_dim is None
