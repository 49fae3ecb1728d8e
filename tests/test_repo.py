"""Repository-shape checks for the book: the ToC, the jupytext pairs, the
book config and the top level of the repo. These run without building the
book, so they catch the usual mistakes (a chapter missing from disk, an
.ipynb that drifted from its .md) in seconds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jupytext
import pytest
import yaml

from helpers import myst_chapter

ROOT = Path(__file__).resolve().parent.parent

# Suffixes jupyter-book (sphinx-external-toc) tries for a ToC entry written
# without one; an entry may also carry one of them explicitly.
TOC_SUFFIXES = (".md", ".ipynb", ".rst")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def toc_entries(node) -> list[str]:
    """Every document named in a jupyter-book ToC (``root`` and ``file`` keys,
    at any depth: parts, chapters, sections, subtrees)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("root", "file") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(toc_entries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(toc_entries(item))
    return found


def resolve_toc_entry(entry: str, base: Path = ROOT) -> Path | None:
    """The file a ToC entry refers to, or None if there is none."""
    path = base / entry
    if path.suffix in TOC_SUFFIXES and path.is_file():
        return path
    for suffix in TOC_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def front_matter(path: Path) -> dict:
    """The YAML front matter of a markdown file ({} if it has none)."""
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    lines = text.splitlines()
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            data = yaml.safe_load("\n".join(lines[1:end]))
            return data if isinstance(data, dict) else {}
    return {}


def is_jupytext_md(path: Path) -> bool:
    return "jupytext" in front_matter(path)


def jupytext_notebooks(book: Path = ROOT / "book") -> list[Path]:
    return sorted(p for p in book.rglob("*.md") if is_jupytext_md(p))


def cells(path: Path) -> list[tuple[str, str]]:
    nb = jupytext.read(path)
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def pair_problems(md: Path) -> list[str]:
    """Why ``md`` and its paired .ipynb are out of sync ([] if they are not)."""
    ipynb = md.with_suffix(".ipynb")
    if not ipynb.is_file():
        return [f"{ipynb.name} is missing (run: jupytext --sync {md.name})"]
    a, b = cells(md), cells(ipynb)
    problems = []
    if len(a) != len(b):
        problems.append(f"{md.name} has {len(a)} cells, {ipynb.name} has {len(b)}")
    for i, (ca, cb) in enumerate(zip(a, b)):
        if ca != cb:
            problems.append(f"cell {i} differs: {ca[0]} {ca[1][:60]!r} vs {cb[0]} {cb[1][:60]!r}")
    return problems


def load_yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------
# (a) the ToC names only files that exist
# --------------------------------------------------------------------------


def test_toc_files_exist():
    toc = load_yaml("_toc.yml")
    entries = toc_entries(toc)
    assert toc.get("root") in entries, "_toc.yml has no root"
    missing = [e for e in entries if resolve_toc_entry(e) is None]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_toc_helpers_find_nested_and_missing(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "a.md").write_text("# A\n")
    (tmp_path / "book" / "b.ipynb").write_text("{}")
    toc = {
        "root": "book/a",
        "parts": [{"chapters": [{"file": "book/b", "sections": [{"file": "book/c"}]}]}],
    }
    assert toc_entries(toc) == ["book/a", "book/b", "book/c"]
    assert resolve_toc_entry("book/a", tmp_path) == tmp_path / "book" / "a.md"
    assert resolve_toc_entry("book/a.md", tmp_path) == tmp_path / "book" / "a.md"
    assert resolve_toc_entry("book/b", tmp_path) == tmp_path / "book" / "b.ipynb"
    assert resolve_toc_entry("book/c", tmp_path) is None


# --------------------------------------------------------------------------
# (b) every jupytext .md has a paired .ipynb with the same cells
# --------------------------------------------------------------------------

NOTEBOOKS = jupytext_notebooks()


def test_the_book_has_notebooks():
    assert NOTEBOOKS, "no jupytext notebooks under book/"


@pytest.mark.parametrize("md", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_pair_in_sync(md):
    problems = pair_problems(md)
    assert not problems, f"{md.relative_to(ROOT)} is out of sync with its .ipynb:\n" + "\n".join(problems)


MYST_NOTEBOOK = myst_chapter("""
# A chapter

```{code-cell} ipython3
x = 1
```
""", formats="ipynb,md:myst")


def test_pair_check_detects_drift(tmp_path):
    md = tmp_path / "chapter.md"
    md.write_text(MYST_NOTEBOOK)
    plain = tmp_path / "plain.md"
    plain.write_text("---\ntitle: Plain page\n---\n# Plain\n")
    assert is_jupytext_md(md) and not is_jupytext_md(plain)
    assert jupytext_notebooks(tmp_path) == [md]

    # No .ipynb yet: reported as missing.
    assert pair_problems(md) and "missing" in pair_problems(md)[0]

    # A freshly written pair is in sync.
    jupytext.write(jupytext.read(md), md.with_suffix(".ipynb"))
    assert pair_problems(md) == []

    # Edit a code cell in the .md only: detected.
    md.write_text(MYST_NOTEBOOK.replace("x = 1", "x = 2"))
    assert any("cell" in p for p in pair_problems(md))

    # Add a cell to the .md only: detected.
    md.write_text(MYST_NOTEBOOK + "\n```{code-cell} ipython3\ny = 2\n```\n")
    assert pair_problems(md)


# --------------------------------------------------------------------------
# (c) Sphinx reads only the .md of each pair
# --------------------------------------------------------------------------


def test_config_excludes_ipynb():
    config = load_yaml("_config.yml")
    assert "**.ipynb" in (config.get("exclude_patterns") or []), (
        "_config.yml exclude_patterns must contain '**.ipynb', or Sphinx finds "
        "both chapter.md and chapter.ipynb ('multiple files found for the document')"
    )


# --------------------------------------------------------------------------
# (d) nothing unexpected at the top level
# --------------------------------------------------------------------------

ALLOWED_TOP_LEVEL = {
    "book",
    "colab",  # the Colab edition of the chapters (make notebooks; tests/test_colab.py)
    "cccl_lite",
    "data_scripts",
    "tests",
    "benchmarks",
    ".ci",
    "_config.yml",
    "_toc.yml",
    "environment.yml",
    "pyproject.toml",
    "README.md",
    "Makefile",
    # ignored build outputs
    "_build",
}


def top_level_allowed(name: str) -> bool:
    return (
        name in ALLOWED_TOP_LEVEL
        or name.startswith(".")  # .git, .gitignore, .venv, .pytest_cache, ...
        or name.endswith(".egg-info")  # pip install -e .
    )


def top_level_entries() -> set[str]:
    """What the repository holds at its top level: tracked and untracked files
    git does not ignore (so a reader's ignored data/ or runs/ never fails it)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {p.name for p in ROOT.iterdir()}
    return {line.split("/")[0] for line in out.splitlines() if line}


def test_top_level_entries():
    unexpected = sorted(n for n in top_level_entries() if not top_level_allowed(n))
    assert not unexpected, f"unexpected entries at the top level of the repo: {unexpected}"


def test_top_level_rule():
    assert top_level_allowed(".venv") and top_level_allowed("cccl_lite.egg-info")
    assert not top_level_allowed("notes.md") and not top_level_allowed("postBuild")
