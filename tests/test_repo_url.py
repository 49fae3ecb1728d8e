"""The repository's URL lives in one place, _config.yml's repository.url (the
Colab buttons use it): every chapter's install cell must name it, and chapter
9 needs nothing but the installed package (no clone)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers import notebook_chapters

ROOT = Path(__file__).resolve().parent.parent
# an install cell's requirement, with or without extras ("cccl_lite[download] @ git+URL")
INSTALL = r'pip install[^\n]*"cccl_lite(?:\[[\w,-]+\])? @ git\+([^"\s]+)"'


def config_url() -> str:
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    return url


def code_chapters() -> list[Path]:
    """The notebook chapters that hold code cells."""
    return [f for f in notebook_chapters() if "```{code-cell}" in f.read_text()]


def test_every_install_cell_installs_the_configured_repository():
    url = config_url()
    pages = code_chapters()
    numbered = [p for p in pages if re.match(r"\d\d_", p.name)]
    assert len(numbered) >= 10
    for chapter in pages:
        text = chapter.read_text()
        installs = re.findall(INSTALL, text)
        if chapter not in numbered and not installs:
            continue  # a page that installs nothing names no repository
        assert installs, f"{chapter.name}: no Colab install cell of cccl_lite"
        assert set(installs) == {url}, f"{chapter.name}: installs {installs}, _config.yml has {url}"
        # the paired notebook (what Colab opens) says the same
        ipynb = chapter.with_suffix(".ipynb")
        assert set(re.findall(r'cccl_lite(?:\[[\w,-]+\])? @ git\+([^"\\\s]+)',
                              ipynb.read_text())) == {url}, \
            ipynb.name


def test_chapter_9_runs_the_package_not_a_clone():
    # Every data step is a command of `python -m cccl_lite` (issue 15, point 4).
    text = (ROOT / "book" / "09_flickr30k.md").read_text()
    assert '"git", "clone"' not in text and "REPO_URL" not in text
    for command in ("download", "prepare-precomp", "encode-words", "parse", "train",
                    "evaluate"):
        assert f'"-m", "cccl_lite", "{command}"' in text, command


def test_the_check_catches_a_different_url(tmp_path):
    # The regular expression must see a mismatch, not pass on anything.
    line = 'pip install -q "cccl_lite @ git+https://github.com/someone/fork"'
    assert re.findall(INSTALL, line) == ["https://github.com/someone/fork"]
    # with an extra, as chapter 9 installs it
    line = 'pip install -q "cccl_lite[download] @ git+https://github.com/someone/fork"'
    assert re.findall(INSTALL, line) == ["https://github.com/someone/fork"]
    assert "https://github.com/someone/fork" != config_url()


def test_notebook_names_the_configured_repository():
    from cccl_lite.book.notebook import REPOSITORY

    assert REPOSITORY == config_url()


def test_results_file_reads_the_package_data_and_never_the_network(monkeypatch, capsys):
    import json
    import urllib.request

    from cccl_lite.book.notebook import results_file

    def no_network(*args, **kwargs):
        raise AssertionError("results_file went to the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    # the file as committed, read independently of the package's reader
    path = ROOT / "cccl_lite" / "results" / "diagnosis.json"
    assert results_file("diagnosis.json") == json.loads(path.read_text())
    capsys.readouterr()
    # a study not run yet: None and one line naming the file, no traceback
    assert results_file("nothing.json", optional=True) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "cccl_lite/results/nothing.json" in out[0]
    # a file a chapter needs: an error that IPython shows as one line
    from cccl_lite.book.notebook import MissingResult

    with pytest.raises(MissingResult, match="cccl_lite/results/nothing.json") as caught:
        results_file("nothing.json")
    shown = caught.value._render_traceback_()
    assert len(shown) == 1 and "\n" not in shown[0] and "nothing.json" in shown[0]


def test_results_files_are_package_data():
    # every results file the chapters read is matched by pyproject's package-data
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["cccl_lite"]
    files = sorted((ROOT / "cccl_lite" / "results").glob("*.json"))
    assert files
    for f in files:
        rel = f.relative_to(ROOT / "cccl_lite").as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel
    assert not (ROOT / "book" / "results").exists()
