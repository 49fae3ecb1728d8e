"""The converter from the book's MyST chapters to plain Markdown, and the student edition.

    python -m cccl_lite student-edition --out DIR [--overwrite]   # from a checkout of the book

The book's chapters are MyST-markdown notebooks (``book/NN_*.md``). Opened
in Jupyter or Colab, their directives arrive as raw text. This module holds
the one converter (:func:`myst_to_markdown`) that both generated editions
use (:mod:`cccl_lite.book.editions` assembles the notebooks: the Colab edition in
``colab/`` and the student edition). The student edition is one
``NN_*_empty.ipynb`` per chapter in the style of the UvA deep-learning
course's ``_empty`` notebooks: the same code cells, every "write it
yourself" cell a stub (``raise NotImplementedError``, as in the book), no
solutions, and an answer cell under each written exercise. Markdown is made
readable without Sphinx:

* ``{solution}`` blocks are dropped (``show_solution("ex-...")`` prints one);
* ``{exercise}`` blocks become a "✍️ Exercise" quote, ``{admonition}`` and
  notes a quote with its title in bold, ``{figure}`` an image with its
  caption, embedded as a data URI (``![alt](data:image/png;base64,...)``,
  the PNG beside the book's SVG), so a notebook uploaded alone shows it:
  Colab shows neither SVG data URIs nor cell attachments;
* ``{ref}``, ``{numref}``, ``{doc}`` and ``{eq}`` roles become links to the
  rendered book's page and anchor (``link(page, label)``, given by the
  caller), ``{cite}`` roles "(Author et al., year)" read from
  ``book/references.bib``, linked to the entry's DOI or URL where it has one;
  ``{glue:text}`name:fmt``` (a number computed by a cell, which
  :func:`cccl_lite.book.notebook.glue` prints as ``name = value`` outside the book
  build) becomes the code-formatted ``name``; ``{math}`` becomes ``$...$``;
* ``(label)=`` targets and build-only directives (``{bibliography}``,
  ``{nb-exec-table}``, ``{literalinclude}``) disappear; an ``{include}`` of a
  Markdown file is resolved (converted in place), any other is dropped.

Cell metadata of the student edition, for a grader (``python -m cccl_lite
grade``): every exercise stub code cell (its first line ``# ✍️ <label>:``)
carries ``{"cccl": {"exercise": label, "kind": "code", "function": ...,
"checker": ...}}`` (function and checker from
:data:`cccl_lite.book.exercises.EXERCISES`), and each written exercise (one with
no stub in its chapter) is followed by a Markdown cell with ``{"cccl":
{"exercise": label, "kind": "written"}}`` whose text, until the student
writes in it, is exactly :func:`answer_placeholder` ``(label)``. The
notebook's own metadata says ``{"cccl": {"edition": "student", "source":
"book/NN_name.md"}}``. Cell ids are stable (``NN_name-017``), but a grader
should find cells by metadata, since students add and move cells.

The test suite builds the edition and checks that it holds no solution text,
that each stub's checker says "not implemented yet" and that each reference
solution (``cccl_lite/solutions/``) passes its checker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

__all__ = ["myst_to_markdown", "answer_placeholder",
           "reference_targets", "reference_titles", "citation_labels", "chapter_sources",
           "default_book_dir", "SUFFIX"]

SUFFIX = "_empty"
_DIRECTIVE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:-]+)\}[ \t]*(?P<arg>.*)$")
_ROLE = re.compile(r"\{(?P<role>[a-z][\w:-]*)\}`(?P<text>[^`]*)`")
_TARGET = re.compile(r"^\((?P<label>[\w-]+)\)=[ \t]*$")
# Where a written exercise's answer cell goes: a line of its own that
# cccl_lite.book.editions splits the converted cell at.
ANSWER_MARK = "\x00answer:{label}\x00"
ANSWER_LINE = re.compile(r"^\x00answer:(?P<label>[\w-]+)\x00$", flags=re.M)
STUDENT_NOTE = (
    "Cells marked ✍️ are yours to write: replace `raise NotImplementedError` with "
    "your code, and write your answers to the other exercises in the \"Your answer\" "
    "cell under each. Until you do, the checker under each code cell says \"not "
    "implemented yet\"; then it says what differs from the reference, or that yours "
    "matches.\n")
_BOOK_NOTE = "Each exercise's solution is folded under it in the book."


def answer_placeholder(label: str) -> str:
    """The text of a written exercise's answer cell before the student writes in it."""
    return f"✍️ **Your answer** ({label}): *double-click here and write your answer.*"


def default_book_dir() -> Path:
    """``book/`` of the checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "book"


# ---- references: {ref} targets and {cite} labels ---------------------------------


def reference_targets(book_dir: Path) -> dict[str, tuple[str, str]]:
    """Every ``(label)=`` target and figure ``:name:`` of the book's pages ->
    (page stem, the heading or caption after it); every page stem -> (stem,
    its first heading), for ``{doc}``."""
    targets = {}
    for md in sorted(Path(book_dir).glob("*.md")):
        lines = md.read_text(encoding="utf-8").splitlines()
        heading = next((h for h in lines if h.startswith("# ")), "")
        targets.setdefault(md.stem, (md.stem, heading.lstrip("#").strip() or md.stem))
        for i, line in enumerate(lines):
            m = _TARGET.match(line) or re.match(r"^:name: (?P<label>[\w-]+)\s*$", line)
            if m:
                after = next((h for h in lines[i + 1:] if h.strip() and not h.startswith(":")), "")
                targets[m["label"]] = (md.stem, after.lstrip("#").strip() or m["label"])
    return targets


def reference_titles(book_dir: Path) -> dict[str, str]:
    """Every ``(label)=`` target of the book's pages -> the heading after it
    ("1. The task: ..." for a chapter)."""
    return {label: title for label, (_, title) in reference_targets(book_dir).items()}


def citation_labels(bib: Path) -> dict[str, tuple[str, str, str]]:
    """BibTeX key -> (authors as cited, year, URL): "Liu et al.", "Kipf and
    Welling", "Lee et al."; the URL is the entry's ``url``, else
    ``https://doi.org/`` + its ``doi``, else "". Empty when the file or pybtex
    is missing."""
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
        url = entry.fields.get("url", "") or (
            f"https://doi.org/{entry.fields['doi']}" if entry.fields.get("doi") else "")
        out[key] = (who, entry.fields.get("year", "n.d."), url)
    return out


def _linked(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


def _roles(text: str, ctx: dict) -> str:
    titles, cites, link = ctx["titles"], ctx["cites"], ctx["link"]

    def target(label):  # (page or None, title) of a label
        value = titles.get(label)
        if isinstance(value, tuple):
            return value
        return None, value

    def url_of(label, page=None):
        if link is None or (page is None and label not in titles):
            return None
        return link(page if page is not None else target(label)[0], label)

    def cite(key, textual):
        who, year, url = (tuple(cites[key]) + ("",))[:3] if key in cites else (key, "", "")
        shown = (f"{who} ({year})" if textual else f"{who}, {year}") if year else who
        return _linked(shown, url)

    def replace(m):
        role, body = m["role"], m["text"]
        if role.startswith("cite"):
            keys = [k.strip() for k in body.split(",")]
            if role == "cite:t":
                return ", ".join(cite(k, True) for k in keys)
            return "(" + "; ".join(cite(k, False) for k in keys) + ")"
        if role.startswith("glue"):  # {glue:text}`name:fmt`: the name the cell prints
            return f"`{body.split(':')[0].strip()}`"
        if role == "math":
            return f"${body}$"
        explicit = re.match(r"^(.*?)\s*<([^>]+)>$", body, flags=re.S)  # {ref}`text <label>`
        shown, label = (explicit[1], explicit[2]) if explicit else (None, body)
        if role in ("ref", "numref", "eq"):
            page, title = target(label)
            shown = shown or (f"({label})" if role == "eq" else title)
            url = url_of(label)
            if url:
                return _linked(shown, url)
            return shown if explicit else f"*{shown or label}*"
        if role == "doc":
            page = label.split("/")[-1]
            page_title = target(page)[1]
            url = link(page, None) if link is not None and page in titles else None
            return _linked(shown or page_title or page, url) if url else f"*{shown or page}*"
        if role in ("code", "samp", "download", "file"):
            return f"`{shown or label}`" if not shown else shown
        return shown or label  # term, abbr, anything else: its text
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
    if name in ("solution", "bibliography", "nb-exec-table", "literalinclude",
                "tableofcontents"):
        return []
    if name == "include":  # a Markdown file is read in place; anything else is build-only
        path = Path(ctx["base"], arg) if ctx["base"] is not None else None
        if path is None or path.suffix != ".md" or not path.is_file():
            return []
        return _convert_lines(path.read_text(encoding="utf-8").splitlines(), ctx)
    inner = _convert_lines(body, ctx)
    if name == "exercise":
        label = options.get("label", "") or arg
        title = f"**✍️ Exercise** ({label})" if label else "**✍️ Exercise**"
        answer = [ANSWER_MARK.format(label=label), ""] if label in ctx["written"] else []
        return _quote([title, ""] + inner) + [""] + answer
    if name == "figure":
        ctx["figures"].add(arg)
        alt = options.get("alt", "figure")
        where = ctx["embed"](arg) if ctx["embed"] is not None else arg
        caption = " ".join(x.strip() for x in inner if x.strip())
        return [f"![{alt}]({where})", "", f"*{caption}*" if caption else "", ""]
    if name == "admonition":
        return _quote([f"**{arg}**", ""] + inner) + [""]
    if name in ("note", "tip", "important", "warning", "caution", "hint", "seealso",
                "attention", "danger", "error"):
        return _quote([f"**{arg or name.capitalize() + '.'}**", ""] + inner) + [""]
    if name in ("math",):
        return ["$$", *inner, "$$", ""]
    if name.startswith("glue"):  # {glue:figure} name: what the cell that glued it shows
        return [f"*(`{arg}`: shown by the cell that computes it)*", ""]
    if name in ("margin", "sidebar", "dropdown", "topic", "epigraph", "table", "div",
                "card", "container"):  # Markdown inside: kept, under its title if any
        return (_quote([f"**{arg}**", ""] + inner) if arg else inner) + [""]
    # A code block or anything else: keep its text, fenced.
    return [f"```{arg}", *body, "```", ""]


def myst_to_markdown(text: str, titles: dict | None = None, cites: dict | None = None,
                     figures: set | None = None, *, link: Callable | None = None,
                     written=(), base: Path | None = None, embed: Callable | None = None,
                     note: str | None = STUDENT_NOTE) -> str:
    """One markdown cell of a chapter, readable in Jupyter and Colab: MyST
    directives and roles rewritten as described in the module docstring.

    ``titles``: label -> title, or label -> (page stem, title) as
    :func:`reference_targets` gives; ``cites``: :func:`citation_labels`;
    ``link(page, label)``: the URL of a label on a page of the rendered book
    (None: no links). ``figures`` collects the paths of ``{figure}`` images;
    ``embed(path)``, where given, is the address an image is shown from (a
    data URI). ``written``: labels of the
    exercises that get an answer cell (a marker line :data:`ANSWER_LINE` the
    caller splits at). ``base``: the folder ``{include}`` paths start from.
    ``note``: what replaces the book's paragraph on folded solutions (when
    the cell has a ✍️ stub; else the paragraph goes); None keeps it."""
    ctx = {"figures": figures if figures is not None else set(), "written": set(written),
           "base": base, "embed": embed, "titles": titles or {}, "cites": cites or {},
           "link": link}
    lines = _convert_lines(text.splitlines(), ctx)
    text = _roles("\n".join(lines), ctx)
    if note is not None:
        paragraphs = [(note.strip() if "✍️" in para else "") if para.startswith(_BOOK_NOTE)
                      else para for para in text.split("\n\n")]
        text = "\n\n".join(paragraphs)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


# ---- the student edition ------------------------------------------------------------


def chapter_sources(book_dir: Path) -> list[Path]:
    """The book's notebook chapters: ``NN_*.md`` files with a jupytext header."""
    return [p for p in sorted(Path(book_dir).glob("[0-9][0-9]_*.md"))
            if "jupytext" in p.read_text(encoding="utf-8")[:400]]
