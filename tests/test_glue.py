"""Every number a chapter's prose pastes from a cell ({glue:text}`name...`,
myst-nb) is defined by a glue("name", ...) call in one of that chapter's code
cells: a name used but not defined would print an error in the built book
(or, worse, a stale value from another chapter). Names defined but never
used are reported, not failed: a cell may glue a number the prose drops."""

import re
import warnings
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("*.md"))

# {glue}`name`, {glue:text}`name:.1f`, {glue:md}`name`, {glue:any}`name`, {glue:figure} name
USED = re.compile(r"\{glue(?::(?:text|md|any|figure|math))?\}`([A-Za-z_][\w.-]*)")
USED_DIRECTIVE = re.compile(r"^```\{glue(?::\w+)?\}\s+([A-Za-z_][\w.-]*)", re.M)
# glue("name", ...) or glue(f"prefix_{key}", ...) in a code cell
DEFINED = re.compile(r"\bglue\(\s*(f?)([\"'])(.+?)\2")


def glue_names(text: str) -> tuple[set[str], set[str]]:
    """(used, defined) for one chapter's MyST text. An f-string name
    (glue(f"diag_{key}_gain", ...)) becomes a pattern: {…} matches any word."""
    nb = jupytext.reads(text, fmt="myst")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    used = set(USED.findall(markdown)) | set(USED_DIRECTIVE.findall(markdown))
    defined = set()
    for is_f, _, name in DEFINED.findall(code):
        defined.add(re.sub(r"\{[^}]*\}", "{}", name) if is_f else name)
    return used, defined


def undefined(used: set[str], defined: set[str]) -> set[str]:
    patterns = [re.compile("^" + re.escape(d).replace(r"\{\}", r"\w+") + "$") for d in defined]
    return {u for u in used if not any(p.match(u) for p in patterns)}


def unused(used: set[str], defined: set[str]) -> set[str]:
    out = set()
    for d in defined:
        pattern = re.compile("^" + re.escape(d).replace(r"\{\}", r"\w+") + "$")
        if not any(pattern.match(u) for u in used):
            out.add(d)
    return out


def test_the_parser_finds_uses_and_definitions():
    # Hand case: one plain and one f-string definition, three uses, one unknown.
    text = ("---\njupytext:\n  text_representation:\n    format_name: myst\n---\n\n"
            "A {glue:text}`a:.1f` and {glue}`b_x` and {glue:text}`c`.\n\n"
            "```{code-cell} ipython3\nglue(\"a\", 1.0)\nfor k in 'x':\n"
            "    glue(f\"b_{k}\", 2)\nglue('d', 3)\n```\n")
    used, defined = glue_names(text)
    assert used == {"a", "b_x", "c"}
    assert defined == {"a", "b_{}", "d"}
    assert undefined(used, defined) == {"c"}
    assert unused(used, defined) == {"d"}


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_glued_name_used_is_defined_in_its_chapter(chapter):
    used, defined = glue_names(chapter.read_text(encoding="utf-8"))
    missing = undefined(used, defined)
    assert not missing, f"{chapter.name}: glued in prose but no glue(...) defines them: " \
                        f"{sorted(missing)}"
    spare = unused(used, defined)
    if spare:
        warnings.warn(f"{chapter.name}: glued but unused in prose: {sorted(spare)}")


def test_numpy_and_tensor_scalars_are_glued_as_numbers_myst_nb_can_format():
    # myst-nb reads a glued value back from its text/plain repr (literal_eval)
    # before applying the format spec; NumPy 2's repr np.float64(5.94) defeats it.
    import ast

    import numpy as np
    import torch

    from cccl_lite.book.notebook import plain_value

    def pasted(value, spec):  # what myst-nb's format_plain_text does, written out
        text = repr(value)
        try:
            value = ast.literal_eval(text)
        except (SyntaxError, ValueError):
            value = text
        return format(float(value) if spec[-1] == "f" else int(value), spec)

    if repr(np.float64(1.0)) != "1.0":  # NumPy 2: the raw scalar cannot be pasted
        with pytest.raises(ValueError):
            pasted(np.float64(5.94), ".1f")
    assert pasted(plain_value(np.float64(5.94)), ".1f") == "5.9"
    assert pasted(plain_value(np.int64(3)), "d") == "3"
    assert pasted(plain_value(torch.tensor(0.25)), ".2f") == "0.25"
    assert plain_value("a name") == "a name" and plain_value([1, 2]) == [1, 2]
