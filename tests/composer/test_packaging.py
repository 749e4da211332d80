"""The wheel installs the repository's top-level folders under ``composer.`` (no generic top-level
``blocks``/``plugins``/``specs`` in site-packages) and works from there: shipped specs by name,
built-in families through the entry-point group."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SMOKE = """
import composer, torch
assert composer.__file__.startswith({site!r}), composer.__file__
model = composer.build_model("tiny-glm-4", seed=0)
print(model(torch.tensor([[5, 6, 7]])).logits.shape)
print(sorted(composer.get_registry().families))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    return next(out.glob("archcomposer-*.whl"))


def test_wheel_has_only_the_composer_package(wheel):
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"composer", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "composer/blocks/attention.py" in names
    assert "composer/plugins/glm.py" in names
    assert "composer/specs/glm-4-9b.yaml" in names


def test_installed_wheel_builds_shipped_specs_and_finds_builtin_families(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-c", SMOKE.format(site=str(site))], capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 3, 256])" in result.stdout
    assert "'bloom', 'cpm-ant', 'glm-4', 'seed-oss'" in result.stdout


def test_editable_install_maps_the_same_packages():
    import composer.blocks
    import composer.plugins
    import composer.specs

    assert Path(composer.blocks.__file__).parent == ROOT / "blocks"
    assert Path(composer.plugins.__file__).parent == ROOT / "plugins"
    assert Path(composer.specs.__file__).parent == ROOT / "specs"
