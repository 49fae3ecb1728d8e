"""The book as plain notebooks, two editions from one converter: Colab and student.

    python -m cccl_lite colab-edition [--out colab] [--overwrite]   # what the launch buttons open
    python -m cccl_lite student-edition --out DIR [--overwrite]     # to hand out to students

Both are made from the book's sources (``book/NN_*.md``; the Colab edition
also from every other page with code cells, e.g. ``book/teaching.md``) by
:func:`cccl_lite.book.student.myst_to_markdown`, so neither shows raw MyST. What
each holds (the decision, since the book itself shows each exercise's stub
with its solution folded under it):

* **colab** (``colab/NN_name.ipynb``, committed; ``make notebooks``
  regenerates it, tests/test_colab.py keeps it in sync): what a reader of the
  book sees, minus the solutions: every code cell, exercise stubs included
  with their checkers, and the book's note that ``show_solution("ex-...")``
  prints a solution. The book's rocket button opens it
  (``book/_ext/colab_launch.py``, through :func:`colab_url`). A page with code
  but no install cell gets the chapters' install cell before its first code
  cell, so it runs in a fresh Colab runtime.
* **student** (``NN_name_empty.ipynb``, chapters only): the same, plus an
  answer cell under each written exercise (one with no stub in its chapter)
  and a note for students in place of the book's note on folded solutions.

Links come from one place, ``_config.yml``'s ``repository.url`` and
``repository.branch`` (:func:`repository`; :data:`cccl_lite.book.notebook.REPOSITORY`
mirrors the URL, tests/test_repo_url.py checks): every install cell's
``cccl_lite @ git+URL`` is rewritten to it, ``{ref}`` links go to
:func:`book_page_url` (GitHub Pages) and the launch buttons to
:func:`colab_url`. Changing the URL there and running ``make notebooks``
changes all of them: its ``colab-edition --sync-url`` first writes the URL
into the two places that must spell it out (:func:`sync_repository_url`).

Figures are embedded as ``data:image/png;base64`` URIs, so a notebook
uploaded alone shows them: for a ``{figure}`` SVG, the PNG of the same name
beside it (``book/figures/make_architecture.py`` writes both), since Colab
shows neither an SVG data URI nor a cell attachment (googlecolab/colabtools
issues 2092 and 3836). The cell metadata a grader reads is described in
:mod:`cccl_lite.book.student`; every cell has a stable id (``NN_name-017``) and
the output is byte-for-byte the same for the same sources.

An edition is never written into the book's source folder (or, for the
student edition, into ``colab/``), and never over notebooks already there
without ``overwrite``; both refusals come before anything is written, and
each notebook is written whole or not at all.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from cccl_lite.errors import InputError
from cccl_lite.files import write_atomic, write_text_atomic
from cccl_lite.book.student import (ANSWER_LINE, SUFFIX, STUDENT_NOTE, answer_placeholder,
                                    chapter_sources, citation_labels, default_book_dir,
                                    myst_to_markdown, reference_targets)
from cccl_lite.book.exercises import EXERCISES
from cccl_lite.book.notebook import REPOSITORY

__all__ = ["EDITIONS", "repository", "book_page_url", "colab_url", "edition_sources",
           "edition_notebook", "figure_uri", "make_edition", "make_colab_edition",
           "sync_repository_url", "COLAB_DIR", "student_notebook", "make_student_edition"]

EDITIONS = ("colab", "student")
COLAB_DIR = "colab"
_GITHUB = re.compile(r"https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?")
_INSTALL_URL = re.compile(r"(cccl_lite(?:\[[\w,-]*\])? @ git\+)https://[^\"'\s@]+")
_STUB = re.compile(r"^# ✍️ (?P<label>ex-[\w-]+):", flags=re.M)
_EXERCISE_LABEL = re.compile(r"^:label: (?P<label>ex-[\w-]+)\s*$", flags=re.M)
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
_INSTALL_CELL = ('import sys\n\n'
                 'if "google.colab" in sys.modules:  # Colab: install the package\n'
                 '    !pip install -q "cccl_lite @ git+{url}"')


# ---- the repository and the URLs derived from it -----------------------------------


def repository(root=None) -> tuple[str, str]:
    """``(url, branch)`` of ``_config.yml``'s ``repository`` section in the
    checkout ``root`` (default: this package's); :data:`cccl_lite.book.notebook.REPOSITORY`
    and "main" where there is no ``_config.yml``."""
    root = Path(root) if root is not None else default_book_dir().parent
    config = root / "_config.yml"
    if not config.is_file():
        return REPOSITORY, "main"
    import yaml

    section = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("repository") or {}
    url, branch = str(section.get("url", "")), str(section.get("branch", "main") or "main")
    if not _GITHUB.fullmatch(url):
        raise InputError(f"{config}: repository.url is {url!r}; expected "
                         f"https://github.com/OWNER/REPO")
    return url.rstrip("/").removesuffix(".git"), branch


def _owner_repo(url: str) -> tuple[str, str]:
    m = _GITHUB.fullmatch(url)
    if not m:
        raise InputError(f"repository URL {url!r}: expected https://github.com/OWNER/REPO")
    return m["owner"], m["repo"]


def book_page_url(url: str, page: str, label: str | None = None) -> str:
    """The rendered book's page ``page`` (a path from the repository root
    without suffix, e.g. "book/02_perceive"), at anchor ``label``, as GitHub
    Pages serves the build of repository ``url``:
    ``https://OWNER.github.io/REPO/book/02_perceive.html#label``."""
    owner, repo = _owner_repo(url)
    return f"https://{owner.lower()}.github.io/{repo}/{page}.html" + (f"#{label}" if label else "")


def colab_url(url: str, path: str, branch: str = "main") -> str:
    """Colab's address of the notebook at ``path`` (from the repository root,
    e.g. "colab/02_perceive.ipynb") on ``branch`` of repository ``url``."""
    owner, repo = _owner_repo(url)
    return f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/{path}"


# ---- one notebook ----------------------------------------------------------------------


def edition_sources(edition: str, book_dir: Path) -> list[Path]:
    """The pages an edition is made of: the chapters, and for Colab every
    other page with a jupytext header and code cells."""
    sources = chapter_sources(book_dir)
    if edition == "colab":
        sources += [p for p in sorted(Path(book_dir).glob("*.md")) if p not in sources
                    and "jupytext" in (text := p.read_text(encoding="utf-8"))[:400]
                    and "```{code-cell}" in text]
    return sources


def _output_name(edition: str, md: Path) -> str:
    return f"{md.stem}{SUFFIX}.ipynb" if edition == "student" else f"{md.stem}.ipynb"


def figure_uri(path: Path) -> str:
    """The ``data:`` URI a notebook shows the figure at ``path`` from: the
    file itself if it is a PNG, JPEG or GIF, else (an SVG) the PNG beside it."""
    path = Path(path)
    shown = path if path.suffix.lower() in _MIME else path.with_suffix(".png")
    if not shown.is_file():
        raise InputError(f"{path}: no {shown.name} beside it to embed (Colab does not show "
                         f"SVG); python book/figures/make_architecture.py writes the "
                         f"architecture's")
    data = base64.b64encode(shown.read_bytes()).decode("ascii")
    return f"data:{_MIME[shown.suffix.lower()]};base64,{data}"


def edition_notebook(md_path, edition: str = "colab", book_dir=None, url: str | None = None,
                     branch: str | None = None, _refs: tuple | None = None):
    """One page's notebook (nbformat v4) of ``edition`` ("colab" or
    "student"), links to repository ``url`` (default: :func:`repository`)."""
    import jupytext
    import nbformat

    if edition not in EDITIONS:
        raise InputError(f"edition {edition!r}: expected one of {', '.join(EDITIONS)}")
    md_path = Path(md_path)
    book_dir = Path(book_dir) if book_dir is not None else md_path.parent
    if url is None:
        url, branch = repository(book_dir.parent)
    branch = branch or "main"
    targets, cites = _refs or (reference_targets(book_dir), citation_labels(
        book_dir / "references.bib"))
    source_text = md_path.read_text(encoding="utf-8")
    nb = jupytext.reads(source_text, fmt="md:myst")
    stem, page = md_path.stem, f"book/{md_path.stem}"
    stubs = set(_STUB.findall("\n".join(c.source for c in nb.cells if c.cell_type == "code")))
    written = (set(_EXERCISE_LABEL.findall(source_text)) - stubs) if edition == "student" else ()
    title = targets.get(stem, (stem, stem))[1]

    def link(target_page, label):
        return book_page_url(url, f"book/{target_page or stem}", label)

    if edition == "colab":
        header = (f"*The Colab edition of [{title}]({book_page_url(url, page)}), made from "
                  f"`book/{md_path.name}` by `python -m cccl_lite colab-edition`: the book's "
                  f"text and code, each exercise's solution left out (`show_solution(\"ex-...\")` "
                  f"prints one). Run the cells in order; the first installs `cccl_lite`.*")
    else:
        header = (f"*Student edition of `book/{md_path.name}` ([{title}]"
                  f"({book_page_url(url, page)})): the chapter's code with every ✍️ exercise "
                  f"a stub to fill in or an answer cell to write in, and no solutions. Made by "
                  f"`python -m cccl_lite student-edition`.*")
    cells = [nbformat.v4.new_markdown_cell(header)]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = myst_to_markdown(cell.source, targets, cites, link=link, written=written,
                                    base=md_path.parent,
                                    embed=lambda figure: figure_uri(md_path.parent / figure),
                                    note=STUDENT_NOTE if edition == "student" else None)
            pieces = ANSWER_LINE.split(text)  # text, label, text, label, ..., text
            for i, piece in enumerate(pieces):
                if i % 2:
                    answer = nbformat.v4.new_markdown_cell(answer_placeholder(piece))
                    answer.metadata["cccl"] = {"exercise": piece, "kind": "written"}
                    cells.append(answer)
                elif piece.strip():
                    cells.append(nbformat.v4.new_markdown_cell(piece.strip("\n")))
        elif cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(_INSTALL_URL.sub(lambda m: m[1] + url, cell.source))
            tags = cell.metadata.get("tags")
            if tags:
                new.metadata["tags"] = list(tags)
            stub = _STUB.match(cell.source)
            if stub:
                mark = {"exercise": stub["label"], "kind": "code"}
                if stub["label"] in EXERCISES:
                    ex = EXERCISES[stub["label"]]
                    mark.update(function=ex.function, checker=ex.checker)
                new.metadata["cccl"] = mark
            cells.append(new)
    codes = [c for c in cells if c.cell_type == "code"]
    if (edition == "colab" and codes and not any(_INSTALL_URL.search(c.source) for c in codes)
            and any("cccl_lite" in c.source for c in codes)):
        cells.insert(cells.index(codes[0]),
                     nbformat.v4.new_code_cell(_INSTALL_CELL.format(url=url)))
    for i, cell in enumerate(cells):
        cell.id = f"{stem}-{i:03d}"
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata["kernelspec"] = dict(nb.metadata.get(
        "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}))
    out.metadata["language_info"] = {"name": "python"}
    out.metadata["cccl"] = {"edition": edition, "source": f"book/{md_path.name}"}
    return out


# ---- a whole edition -------------------------------------------------------------------


def _check_out_dir(out: Path, edition: str, book_dir: Path, paths: list[Path],
                   overwrite: bool) -> None:
    """Refuse, before anything is written, a folder an edition must not go to."""
    if out.is_symlink() and not out.exists():
        raise InputError(f"--out {out}: a symbolic link to {os.readlink(out)}, which does not "
                         f"exist (nothing written)")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file, not a folder (nothing written)")
    real, book = out.resolve(), book_dir.resolve()
    if real == book or book in real.parents:
        raise InputError(f"--out {out}: that is the book's source folder {book}; the {edition} "
                         f"edition is made from it, not into it; choose another folder "
                         f"(nothing written)")
    if edition == "student" and real == (book.parent / COLAB_DIR).resolve():
        raise InputError(f"--out {out}: that is the Colab edition's folder, which "
                         f"`python -m cccl_lite colab-edition` makes; choose another folder "
                         f"(nothing written)")
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        whose = " (a student's work, perhaps)" if edition == "student" else ""
        raise InputError(f"--out {out}: {existing[0].name}{more} already there{whose}; pass "
                         f"--overwrite to replace them (nothing written)")


def _write_whole(nb, path: Path) -> None:
    """Write ``nb`` to ``path`` through a temporary file beside it: whole or not at all."""
    import nbformat

    # A new file's permissions (0666 less the umask), as a notebook saved by hand.
    write_atomic(path, lambda f: nbformat.write(nb, f), "w", encoding="utf-8")


def make_edition(edition: str, out_dir, book_dir=None, chapters=None, overwrite: bool = False,
                 url: str | None = None, branch: str | None = None) -> list[Path]:
    """Write ``edition``'s notebooks of every page (or of the given page
    stems) into ``out_dir``; return their paths. ``url``/``branch`` default
    to :func:`repository` of the book's checkout."""
    import nbformat

    if edition not in EDITIONS:
        raise InputError(f"edition {edition!r}: expected one of {', '.join(EDITIONS)}")
    book_dir = Path(book_dir) if book_dir is not None else default_book_dir()
    sources = edition_sources(edition, book_dir) if book_dir.is_dir() else []
    if not sources:
        raise InputError(f"{book_dir}: no chapters (book/NN_*.md) to make the {edition} "
                         f"edition from; run from a checkout of the book or pass --book")
    if chapters:
        unknown = sorted(set(chapters) - {p.stem for p in sources})
        if unknown:
            raise InputError(f"--chapter {', '.join(unknown)}: no such page; known: "
                             f"{', '.join(p.stem for p in sources)}")
        sources = [p for p in sources if p.stem in chapters]
    out = Path(out_dir)
    paths = [out / _output_name(edition, md) for md in sources]
    _check_out_dir(out, edition, book_dir, paths, overwrite)
    if url is None:
        url, branch = repository(book_dir.parent)
    refs = (reference_targets(book_dir), citation_labels(book_dir / "references.bib"))
    notebooks = []
    for md in sources:  # every notebook made and valid before the first is written
        nb = edition_notebook(md, edition, book_dir, url, branch, _refs=refs)
        nbformat.validate(nb)
        notebooks.append(nb)
    out.mkdir(parents=True, exist_ok=True)
    for nb, path in zip(notebooks, paths):
        _write_whole(nb, path)
    return paths


def sync_repository_url(root=None) -> list[Path]:
    """Write ``_config.yml``'s ``repository.url`` (:func:`repository`) into the
    two places of checkout ``root`` that must spell it out: the install cell
    of every page (``cccl_lite @ git+URL`` in ``book/*.md``, which the built
    book shows) and :data:`cccl_lite.book.notebook.REPOSITORY` (which an installed
    package reads); return the files changed. ``make notebooks`` runs it
    first, so that a new URL in ``_config.yml`` reaches everything."""
    root = Path(root) if root is not None else default_book_dir().parent
    url, _ = repository(root)
    changed = []
    pages = sorted((root / "book").glob("*.md"))
    module = root / "cccl_lite" / "book" / "notebook.py"
    for path in pages + ([module] if module.is_file() else []):
        text = path.read_text(encoding="utf-8")
        if path == module:
            new = re.sub(r'^REPOSITORY = "[^"]*"$', f'REPOSITORY = "{url}"', text, count=1,
                         flags=re.M)
        else:
            new = _INSTALL_URL.sub(lambda m: m[1] + url, text)
        if new != text:
            write_text_atomic(new, path, encoding="utf-8", chmod=path.stat().st_mode & 0o777)
            changed.append(path)
    return changed


def make_colab_edition(out_dir=None, book_dir=None, chapters=None, overwrite: bool = False,
                       url: str | None = None, branch: str | None = None) -> list[Path]:
    """The Colab edition into ``out_dir`` (default: ``colab/`` of the checkout)."""
    book_dir = Path(book_dir) if book_dir is not None else default_book_dir()
    out_dir = Path(out_dir) if out_dir is not None else book_dir.parent / COLAB_DIR
    return make_edition("colab", out_dir, book_dir, chapters, overwrite, url, branch)


def student_notebook(md_path, book_dir=None):
    """The student notebook (an nbformat v4 node) of one chapter source."""
    return edition_notebook(md_path, "student", book_dir=book_dir)


def make_student_edition(out_dir, book_dir=None, chapters=None, overwrite: bool = False
                         ) -> list[Path]:
    """Write ``NN_*_empty.ipynb`` for every chapter (or the given chapter
    stems) into ``out_dir``; return the paths. Refuses (InputError, nothing
    written) the book's own folders, and notebooks already there unless
    ``overwrite``: they may hold a student's work."""
    return make_edition("student", out_dir, book_dir, chapters, overwrite)
