"""The student edition: every chapter as a plain notebook with stubs and no solutions.

    python -m cccl_lite student-edition --out DIR        # from a checkout of the book

The book's chapters are MyST-markdown notebooks (``book/NN_*.md``). Opened
in Jupyter or Colab, their directives arrive as raw text. This module makes,
from the same sources, one ``NN_*_empty.ipynb`` per chapter in the style of
the UvA deep-learning course's ``_empty`` notebooks: the same code cells,
every "write it yourself" cell a stub (``raise NotImplementedError``, as in
the book), and no solutions. Markdown is made readable without Sphinx:

* ``{solution}`` blocks are dropped;
* ``{exercise}`` blocks become a "✍️ Exercise" quote, ``{admonition}`` and
  notes a titled quote, ``{figure}`` an image with its caption (the SVGs are
  copied next to the notebooks);
* ``{ref}`` roles become the title they point to, ``{cite}`` roles
  "(Author et al., year)" read from ``book/references.bib``;
* ``(label)=`` targets and build-only directives (``{bibliography}``,
  ``{nb-exec-table}``) disappear.

The test suite builds the edition and checks that it holds no solution text,
that each stub's checker says "not implemented yet" and that each reference
solution (``cccl_lite/solutions/``) passes its checker.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

__all__ = ["myst_to_markdown", "student_notebook", "make_student_edition"]

SUFFIX = "_empty"
_DIRECTIVE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}[ \t]*(?P<arg>.*)$")
_ROLE = re.compile(r"\{(?P<role>[a-z:]+)\}`(?P<text>[^`]*)`")
_TARGET = re.compile(r"^\((?P<label>[\w-]+)\)=[ \t]*$")
_STUDENT_NOTE = (
    "Cells marked ✍️ are yours to write: replace `raise NotImplementedError` with "
    "your code. Until you do, the checker under each says \"not implemented yet\"; "
    "then it says what differs from the reference, or that yours matches.\n")
_BOOK_NOTE = "Each exercise's solution is folded under it in the book."


def default_book_dir() -> Path:
    """``book/`` of the checkout this package runs from."""
    return Path(__file__).resolve().parent.parent / "book"


# ---- references: {ref} titles and {cite} labels ---------------------------------


def reference_titles(book_dir: Path) -> dict[str, str]:
    """Every ``(label)=`` target of the book's pages -> the heading after it
    ("1. The task: ..." for a chapter)."""
    titles = {}
    for md in sorted(Path(book_dir).glob("*.md")):
        lines = md.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = _TARGET.match(line)
            if m:
                heading = next((h for h in lines[i + 1:] if h.strip()), "")
                titles[m["label"]] = heading.lstrip("#").strip() or m["label"]
    return titles


def citation_labels(bib: Path) -> dict[str, tuple[str, str]]:
    """BibTeX key -> (authors as cited, year): "Liu et al.", "Kipf and
    Welling", "Lee et al.". Empty when the file or pybtex is missing."""
    try:
        from pybtex.database import parse_file
    except ImportError:  # pybtex comes with the book's extra (sphinxcontrib-bibtex)
        return {}
    if not Path(bib).is_file():
        return {}
    out = {}
    for key, entry in parse_file(str(bib)).entries.items():
        last = [" ".join(p.last_names).replace("{", "").replace("}", "")
                for p in entry.persons.get("author", [])]
        who = (last[0] if len(last) == 1 else " and ".join(last) if len(last) == 2
               else f"{last[0]} et al." if last else key)
        out[key] = (who, entry.fields.get("year", "n.d."))
    return out


def _roles(text: str, titles: dict, cites: dict) -> str:
    def cite_p(keys):
        return "(" + "; ".join(f"{cites[k][0]}, {cites[k][1]}" if k in cites else k
                               for k in keys) + ")"

    def replace(m):
        role, body = m["role"], m["text"]
        if role.startswith("cite"):
            keys = [k.strip() for k in body.split(",")]
            if role == "cite:t":
                return ", ".join(f"{cites[k][0]} ({cites[k][1]})" if k in cites else k
                                 for k in keys)
            return cite_p(keys)
        explicit = re.match(r"^(.*?)\s*<([^>]+)>$", body)  # {ref}`text <label>`
        if explicit:
            return explicit[1]
        if role in ("ref", "numref", "doc"):
            return f"*{titles.get(body, body)}*"
        return f"`{body}`" if role in ("code", "samp") else body
    return _ROLE.sub(replace, text)


# ---- MyST directives -> plain markdown ---------------------------------------------


def _split_options(body: list[str]) -> tuple[dict, list[str]]:
    """A directive's ``:key: value`` lines (at its top) and the rest."""
    options, i = {}, 0
    while i < len(body) and re.match(r"^:[\w-]+:", body[i]):
        key, _, value = body[i][1:].partition(":")
        options[key] = value.strip()
        i += 1
    return options, body[i:]


def _quote(lines: list[str]) -> list[str]:
    return [f"> {line}" if line.strip() else ">" for line in lines]


def _convert_lines(lines: list[str], ctx: dict) -> list[str]:
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line)
        if not m:
            if not _TARGET.match(line):
                out.append(line)
            i += 1
            continue
        fence, char = m["fence"], m["fence"][0]
        end = i + 1
        while end < len(lines) and not (lines[end].strip().startswith(char * len(fence))
                                         and set(lines[end].strip()) == {char}
                                         and len(lines[end].strip()) >= len(fence)):
            end += 1
        options, body = _split_options(lines[i + 1:end])
        while body and not body[0].strip():
            body = body[1:]
        out.extend(_directive(m["name"], m["arg"].strip(), options, body, ctx))
        i = end + 1
    return out


def _directive(name: str, arg: str, options: dict, body: list[str], ctx: dict) -> list[str]:
    inner = _convert_lines(body, ctx)
    if name in ("solution", "bibliography", "nb-exec-table", "include", "literalinclude",
                "tableofcontents"):
        return []
    if name == "exercise":
        label = options.get("label", "")
        title = f"**✍️ Exercise** ({label})" if label else "**✍️ Exercise**"
        return _quote([title, ""] + inner) + [""]
    if name == "figure":
        ctx["figures"].add(arg)
        alt = options.get("alt", "figure")
        caption = " ".join(x.strip() for x in inner if x.strip())
        return [f"![{alt}]({arg})", "", f"*{caption}*" if caption else "", ""]
    if name == "admonition":
        return _quote([f"**{arg}**", ""] + inner) + [""]
    if name in ("note", "tip", "important", "warning", "caution", "hint", "seealso"):
        return _quote([f"**{name.capitalize()}.**", ""] + inner) + [""]
    if name in ("math",):
        return ["$$", *inner, "$$", ""]
    # A code block or anything else: keep its text, fenced.
    return [f"```{arg}", *body, "```", ""]


def myst_to_markdown(text: str, titles: dict | None = None, cites: dict | None = None,
                     figures: set | None = None) -> str:
    """One markdown cell of a chapter, readable in Jupyter and Colab: MyST
    directives and roles rewritten as described in the module docstring.
    ``figures`` collects the paths of ``{figure}`` images."""
    ctx = {"figures": figures if figures is not None else set()}
    lines = _convert_lines(text.splitlines(), ctx)
    text = _roles("\n".join(lines), titles or {}, cites or {})
    # The book's note on folded solutions becomes the student edition's (or
    # goes, in a chapter without stubs).
    paragraphs = [(_STUDENT_NOTE.strip() if "✍️" in para else "")
                  if para.startswith(_BOOK_NOTE) else para for para in text.split("\n\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n\n".join(paragraphs)).strip("\n")


# ---- notebooks ---------------------------------------------------------------------


def student_notebook(md_path, titles: dict | None = None, cites: dict | None = None,
                     figures: set | None = None):
    """The student notebook (an nbformat v4 node) of one chapter source."""
    import jupytext
    import nbformat

    md_path = Path(md_path)
    nb = jupytext.read(md_path)
    cells = [nbformat.v4.new_markdown_cell(
        f"*Student edition of `book/{md_path.name}`: the chapter's code with every ✍️ "
        f"exercise a stub to fill in, and no solutions. Made by `python -m "
        f"cccl_lite.student`.*")]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = myst_to_markdown(cell.source, titles, cites, figures)
            if text.strip():
                cells.append(nbformat.v4.new_markdown_cell(text))
        elif cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(cell.source)
            tags = cell.metadata.get("tags")
            if tags:
                new.metadata["tags"] = list(tags)
            cells.append(new)
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata["kernelspec"] = dict(nb.metadata.get(
        "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}))
    out.metadata["language_info"] = {"name": "python"}
    return out


def chapter_sources(book_dir: Path) -> list[Path]:
    """The book's notebook chapters: ``NN_*.md`` files with a jupytext header."""
    return [p for p in sorted(Path(book_dir).glob("[0-9][0-9]_*.md"))
            if "jupytext" in p.read_text(encoding="utf-8")[:400]]


def make_student_edition(out_dir, book_dir=None, chapters=None) -> list[Path]:
    """Write ``NN_*_empty.ipynb`` for every chapter (or the given chapter
    stems) into ``out_dir``, with the figures they show; return the paths."""
    import nbformat

    book_dir = Path(book_dir) if book_dir is not None else default_book_dir()
    sources = chapter_sources(book_dir)
    if not sources:
        raise FileNotFoundError(f"{book_dir}: no chapters (book/NN_*.md) to make a student "
                                f"edition from; run from a checkout of the book or pass --book")
    if chapters:
        unknown = sorted(set(chapters) - {p.stem for p in sources})
        if unknown:
            raise ValueError(f"unknown chapters {unknown}; known: "
                             f"{', '.join(p.stem for p in sources)}")
        sources = [p for p in sources if p.stem in chapters]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    titles = reference_titles(book_dir)
    cites = citation_labels(book_dir / "references.bib")
    written, figures = [], set()
    for md in sources:
        nb = student_notebook(md, titles, cites, figures)
        nbformat.validate(nb)
        path = out_dir / f"{md.stem}{SUFFIX}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
    for figure in sorted(figures):
        target = out_dir / figure
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(book_dir / figure, target)
    return written
