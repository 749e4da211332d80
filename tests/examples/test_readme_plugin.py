"""The minimal plugin of the README's "Writing a plugin", copied as written (its module and its
pyproject.toml), installs with pip and registers its norm kind."""

import re
import site
import subprocess
import sys
from pathlib import Path

from tests.examples.test_nemotron_plugin import run

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(after: str, language: str) -> str:
    """The first fenced ``language`` block after the text ``after`` in the README."""
    text = README.read_text()
    start = text.index(after)
    return re.search(rf"```{language}\n(.*?)```", text[start:], re.S).group(1)


def test_the_readme_plugin_installs_and_registers_its_kind(tmp_path):
    project = tmp_path / "acme-blocks"
    project.mkdir()
    (project / "acme_blocks.py").write_text(readme_block("in `acme_blocks.py`", "python"))
    (project / "pyproject.toml").write_text(readme_block("complete `pyproject.toml`", "toml"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")],
                   check=True)
    python = tmp_path / "env" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_parent_environment.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()))
    installed = run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    str(project), cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    script = ("import torch, archcomposer\n"
              "spec = archcomposer.load_spec('tiny-glm-4').to_dict()\n"
              "spec['norm'] = {'kind': 'scalenorm'}\n"
              "model = archcomposer.build_model(spec, seed=0)\n"
              "print(type(model.final_norm).__name__, bool(model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()))\n")
    result = run(python, "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ScaleNorm", "True"]
    listed = run(python, "-m", "archcomposer", "plugins", cwd=tmp_path)
    assert "acme-blocks" in listed.stdout and "norm:scalenorm" in listed.stdout, listed.stdout
