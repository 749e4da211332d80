"""The example plugin as a third party would ship it: installed with pip into a fresh virtual
environment, found only through its entry point, used from a user's YAML spec, listed by the
commands, checked with the test kit, and its own test suite run there. Offline: nothing is
downloaded (``--no-index``, no build isolation); the new environment sees this environment's
packages (torch, archcomposer, pytest) through a ``.pth`` file rather than copies of them."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples.conftest import EXAMPLE

ROOT = EXAMPLE.parents[1]

USER_SPEC = """\
name: my-nemotron
family: nemotron
vocab_size: 128
hidden_size: 32
num_layers: 2
max_positions: 64
pad_token_id: 0
position: {kind: partial_rope, theta: 10000.0, fraction: 0.5, interleaved: false}
attention: {kind: gqa, num_heads: 4, num_kv_heads: 2}
norm: {kind: layernorm1p}
mlp: {kind: squared_relu, intermediate_size: 64}
heads:
  - {kind: causal_lm}
  - {kind: sequence_classification, num_labels: 2}
"""

SCRIPT = """\
import json, sys
import archcomposer
from archcomposer.testing import check_cache_equivalence, check_output_contract

assert "archcomposer_nemotron" not in sys.modules  # importing archcomposer loads no plugin
model = archcomposer.build_model(sys.argv[1], seed=0)
check_cache_equivalence(model)
check_output_contract(model)
check_cache_equivalence("tiny-nemotron")
import archcomposer_nemotron
info = archcomposer.get_registry().plugins["nemotron"]
print(json.dumps({"file": archcomposer_nemotron.__file__, "distribution": info.distribution, "version": info.version,
                  "registered": info.registered, "norm": type(model.layers[0].attn_norm).__name__,
                  "mlp": type(model.layers[0].mlp).__name__, "family": model.spec.family}))
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the example plugin pip-installed; returns its python."""
    root = tmp_path_factory.mktemp("nemotron-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True)
    python = root / "env" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_parent_environment.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()))
    # pip builds in the source tree: build a copy, so the repository stays clean.
    source = shutil.copytree(EXAMPLE, root / "archcomposer-nemotron",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    result = run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    assert result.returncode == 0, result.stdout + result.stderr
    return python


def run(python: Path, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run in the venv with autoloading on (the suite's conftest turns it off for this process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARCHCOMPOSER_") and k != "PYTHONPATH"}
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd or python.parents[2],
                          env={**clean, "OMP_NUM_THREADS": "1", **env})


def test_installed_plugin_builds_a_user_spec_and_passes_the_test_kit(venv, tmp_path):
    (tmp_path / "my-nemotron.yaml").write_text(USER_SPEC)
    (tmp_path / "check.py").write_text(SCRIPT)
    result = run(venv, str(tmp_path / "check.py"), str(tmp_path / "my-nemotron.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(venv.parents[1])  # the installed copy, not the source tree
    assert (found["distribution"], found["version"]) == ("archcomposer-nemotron", "0.1.0")
    assert found["registered"] == ["norm:layernorm1p", "mlp:squared_relu", "family:nemotron",
                                   "spec:nemotron-3-8b", "spec:tiny-nemotron"]
    assert (found["norm"], found["mlp"], found["family"]) == ("LayerNorm1P", "SquaredReLUMLP", "nemotron")


def test_commands_list_the_plugin_and_its_blocks_and_the_env_var_hides_it(venv, tmp_path):
    listed = run(venv, "-m", "archcomposer", "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["nemotron"]["distribution"] == "archcomposer-nemotron" and plugins["nemotron"]["error"] is None
    assert plugins["glm"]["distribution"] == "archcomposer"

    blocks = run(venv, "-m", "archcomposer", "blocks", "mlp")
    assert blocks.returncode == 0, blocks.stderr
    assert "  squared_relu  [plugin 'nemotron' (distribution 'archcomposer-nemotron' 0.1.0)]" in blocks.stdout

    (tmp_path / "my-nemotron.yaml").write_text(USER_SPEC)
    hidden = run(venv, "-m", "archcomposer", "validate", str(tmp_path / "my-nemotron.yaml"),
                 ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD="1")
    assert hidden.returncode == 1  # an invalid spec
    assert "norm.kind: Input tag 'layernorm1p' found using 'kind' does not match any of the expected tags" \
        in hidden.stderr
    assert "Traceback" not in hidden.stderr


def test_the_plugins_own_test_suite_passes_where_it_is_installed(venv):
    source = venv.parents[2] / "archcomposer-nemotron"
    result = run(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=source)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "6 passed" in result.stdout


def test_the_core_never_imports_the_example():
    for path in [path for folder in ("archcomposer", "blocks", "plugins") for path in (ROOT / folder).rglob("*.py")]:
        assert "archcomposer_nemotron" not in path.read_text(), path
    assert "archcomposer-nemotron" not in (ROOT / "pyproject.toml").read_text()


