"""The package's layering (pyproject's [tool.importlinter]) and module sizes."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 500


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def lint_ok():
    if not LINT.exists():
        pytest.fail(f"{LINT} missing: install the test extra (pip install -e '.[test]')")
    return _lint(ROOT)


def test_import_contracts_are_kept(lint_ok):
    assert lint_ok.returncode == 0, lint_ok.stdout[-3000:] + lint_ok.stderr[-2000:]
    assert "0 broken" in lint_ok.stdout


@pytest.mark.slow
def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: an equation file importing the engine is caught."""
    tree = tmp_path / "repo"
    shutil.copytree(ROOT / "cccl_lite", tree / "cccl_lite",
                    ignore=shutil.ignore_patterns("__pycache__", "assets", "csrc"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    loss = tree / "cccl_lite" / "loss.py"
    loss.write_text(loss.read_text() + "\n\ndef _up():\n    from . import train  # noqa\n")
    out = _lint(tree)
    assert out.returncode != 0
    assert "cccl_lite.loss -> cccl_lite.train" in out.stdout


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def test_long_modules_say_why():
    """No module over ~500 lines without a reason written at its top (its docstring
    names its length, e.g. "Why one module of ~560 lines: ...")."""
    long = []
    for path in sorted((ROOT / "cccl_lite").rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and not re.search(r"\b\d{3} lines\b", _docstring(path)):
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, "modules over 500 lines with no reason at the top: " + ", ".join(long)
