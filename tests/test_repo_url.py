"""The repository's URL lives in one place, _config.yml's repository.url (the
Colab buttons use it): every chapter's install cell must name it, and chapter
9 needs nothing but the installed package (no clone)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from helpers import notebook_chapters

ROOT = Path(__file__).resolve().parent.parent


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
        installs = re.findall(r'pip install[^\n]*"cccl_lite @ git\+([^"\s]+)"', text)
        if chapter not in numbered and not installs:
            continue  # a page that installs nothing names no repository
        assert installs, f"{chapter.name}: no Colab install cell of cccl_lite"
        assert set(installs) == {url}, f"{chapter.name}: installs {installs}, _config.yml has {url}"
        # the paired notebook (what Colab opens) says the same
        ipynb = chapter.with_suffix(".ipynb")
        assert set(re.findall(r'cccl_lite @ git\+([^"\\\s]+)', ipynb.read_text())) == {url}, \
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
    assert re.findall(r'pip install[^\n]*"cccl_lite @ git\+([^"\s]+)"', line) == [
        "https://github.com/someone/fork"]
    assert "https://github.com/someone/fork" != config_url()


def test_notebook_names_the_configured_repository():
    from cccl_lite.notebook import REPOSITORY

    assert REPOSITORY == config_url()


def test_results_file_reads_the_checkout_then_fetches_once(tmp_path, monkeypatch):
    import io
    import json
    import urllib.error
    import urllib.request

    from cccl_lite.notebook import results_file

    path = ROOT / "book" / "results" / "diagnosis.json"
    assert results_file("diagnosis.json") == json.loads(path.read_text())

    monkeypatch.setenv("CCCL_DATA", str(tmp_path))
    asked = []

    def offline(url, timeout):
        asked.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert results_file("nothing.json") is None
    assert asked == [config_url().replace("github.com", "raw.githubusercontent.com")
                     + "/main/book/results/nothing.json"]
    assert list((tmp_path / "results").iterdir()) == []  # nothing half-written is kept

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(b'{"rows": [1, 2]}'))
    assert results_file("fetched.json") == {"rows": [1, 2]}
    monkeypatch.setattr(urllib.request, "urlopen", offline)  # the second read is local
    assert results_file("fetched.json") == {"rows": [1, 2]}
