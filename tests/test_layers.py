"""The layering of the package (pyproject.toml [tool.importlinter]) and the linter: both hold on this tree,
and the layering check fails when a model module imports the engine."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(exe).exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return exe


def lint_imports(project: Path, src: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(src), "HOME": str(project)}
    return subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_layers_hold():
    out = lint_imports(ROOT, ROOT / "src")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_a_model_importing_the_engine_breaks_the_layers(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "indextts_fast", tmp_path / "src" / "indextts_fast",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    model = tmp_path / "src" / "indextts_fast" / "models" / "codec.py"
    model.write_text(model.read_text() + "\n\ndef _engine():\n    from ..pipeline import Engine\n    return Engine\n")
    out = lint_imports(tmp_path, tmp_path / "src")
    assert out.returncode != 0 and "indextts_fast.models.codec -> indextts_fast.pipeline" in out.stdout


def test_ruff_is_clean():
    out = subprocess.run([_tool("ruff"), "check", "src", "tests"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
