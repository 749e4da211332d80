"""The wheel installs the repository's top-level folders under ``archcomposer.`` (no generic top-level
``blocks``/``plugins``/``specs`` in site-packages) and works from there: shipped specs by name,
built-in families through the entry-point group."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.composer.test_plugins import BUILTIN_FAMILIES

ROOT = Path(__file__).resolve().parents[2]

SMOKE = """
import archcomposer, torch
assert archcomposer.__file__.startswith({site!r}), archcomposer.__file__
model = archcomposer.build_model("tiny-glm-4", seed=0)
print(model(torch.tensor([[5, 6, 7]])).logits.shape)
print(sorted(archcomposer.get_registry().families))
"""


ACME_PLUGIN = """
from archcomposer import Family, hookimpl

@hookimpl
def register_families(register):
    register(Family(name="acme"))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    return next(out.glob("archcomposer-*.whl"))


def test_wheel_has_only_the_composer_package(wheel):
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"archcomposer", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "archcomposer/blocks/attention.py" in names
    assert "archcomposer/plugins/glm.py" in names
    assert "archcomposer/specs/glm-4-9b.yaml" in names


def test_installed_wheel_builds_shipped_specs_and_finds_builtin_families(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    # Another archcomposer plugin installed beside it (as after `pip install ./examples/archcomposer-nemotron`):
    # the smoke test asks for this wheel's families only, so it must not see this one.
    (site / "acme_family.py").write_text(ACME_PLUGIN)
    dist = site / "acme_family-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-family\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[archcomposer.plugins]\nacme = acme_family\n")
    result = subprocess.run([sys.executable, "-c", SMOKE.format(site=str(site))], capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                                 # only this wheel's families, whatever plugins the test environment has
                                 "ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD": "1"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 3, 256])" in result.stdout
    assert f"{sorted(BUILTIN_FAMILIES.values())}\n" in result.stdout


def test_editable_install_maps_the_same_packages():
    import archcomposer.blocks
    import archcomposer.plugins
    import archcomposer.specs

    assert Path(archcomposer.blocks.__file__).parent == ROOT / "blocks"
    assert Path(archcomposer.plugins.__file__).parent == ROOT / "plugins"
    assert Path(archcomposer.specs.__file__).parent == ROOT / "specs"
