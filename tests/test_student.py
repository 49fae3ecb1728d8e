"""The student edition (cccl_lite.student): one plain notebook per chapter, built
from the book's sources, with every checked exercise a stub whose checker says
"not implemented yet", no solution text, and no MyST syntax left for Jupyter or
Colab to show raw."""

import re
from pathlib import Path

import nbformat
import pytest

import cccl_lite.exercises as exercises
from cccl_lite.exercises import EXERCISES, _last_value, solution_code, solution_text
from cccl_lite.cli import main as cli_main
from cccl_lite.student import make_student_edition, myst_to_markdown

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    paths = make_student_edition(out, BOOK)
    return out, {p.name.removesuffix("_empty.ipynb"): nbformat.read(p, as_version=4)
                 for p in paths}


def labels_of(stem: str) -> list[str]:
    return re.findall(r"^:label: (ex-[\w-]+)$", (BOOK / f"{stem}.md").read_text(), flags=re.M)


def test_one_valid_notebook_per_chapter_with_its_figures(edition):
    out, notebooks = edition
    chapters = sorted(p.stem for p in BOOK.glob("[0-9][0-9]_*.md"))
    assert sorted(notebooks) == chapters
    for nb in notebooks.values():
        nbformat.validate(nb)
        assert "jupytext" not in nb.metadata  # a standalone notebook, not a pair
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    for stage in ("perceive", "reason", "align", "loss"):
        assert (out / "figures" / f"architecture-{stage}.svg").is_file()
    assert "](figures/architecture-perceive.svg)" in "".join(
        c.source for c in notebooks["02_perceive"].cells)


def test_no_myst_left_and_every_exercise_kept(edition):
    _, notebooks = edition
    for stem, nb in notebooks.items():
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        for syntax in ("```{", "{solution}", ":class:", "{cite", "{ref}", ":label:"):
            assert syntax not in markdown, (stem, syntax)
        assert not re.search(r"^\([\w-]+\)=$", markdown, flags=re.M), stem
        shown = re.findall(r"\*\*✍️ Exercise\*\* \((ex-[\w-]+)\)", markdown)
        assert shown == labels_of(stem), stem


def test_no_solution_in_the_student_edition(edition):
    _, notebooks = edition
    everything = "\n".join(c.source for nb in notebooks.values() for c in nb.cells)
    for stem in notebooks:
        for label in labels_of(stem):
            prose = re.sub(r"^```python\n.*?^```", "", solution_text(label), flags=re.S | re.M)
            for line in prose.splitlines():
                line = line.strip()
                if len(line) > 40 and "`" not in line and "$" not in line:
                    assert line not in everything, (label, line)
    for label, ex in EXERCISES.items():
        body = re.search(rf"^def {ex.function}\(.*?\n(.+)$", solution_code(label), flags=re.M)
        assert body.group(0) not in everything, label


@pytest.mark.parametrize("label", sorted(EXERCISES))
def test_each_stub_is_not_implemented_and_each_reference_passes(edition, label):
    _, notebooks = edition
    ex = EXERCISES[label]
    stubs = [c.source for c in notebooks[ex.chapter].cells if c.cell_type == "code"
             and c.source.startswith(f"# ✍️ {label}:")]
    assert len(stubs) == 1, f"{ex.chapter}: no stub cell for {label}"
    assert "raise NotImplementedError" in stubs[0]
    result = _last_value(stubs[0], dict(vars(exercises)))
    assert not result and result.status == "todo", result.message
    assert "not implemented yet" in result.message
    namespace = {}
    _last_value(solution_code(label), namespace)
    assert ex.check(namespace[ex.function]).status == "pass"


def test_roles_and_directives_by_hand():
    titles = {"ch-task": "1. The task"}
    cites = {"liu2024cccl": ("Liu et al.", "2024"), "kipf2017gcn": ("Kipf and Welling", "2017")}
    text = ("(ch-x)=\n# Title\n\nSee {ref}`ch-task` and {ref}`the readings <app-readings>`; "
            "{cite:p}`liu2024cccl,kipf2017gcn` and {cite:t}`liu2024cccl`.\n\n"
            "```{admonition} Open question\n:class: note\nWhich reading?\n```\n\n"
            "````{solution} ex-a\n:class: dropdown\n\n```python\nsecret = 1\n```\n````\n\n"
            "```{exercise}\n:label: ex-a\n\nDo it.\n```")
    got = myst_to_markdown(text, titles, cites)
    assert got.startswith("# Title")
    assert "*1. The task*" in got and "the readings;" in got
    assert "(Liu et al., 2024; Kipf and Welling, 2017)" in got and "Liu et al. (2024)" in got
    assert "> **Open question**" in got and "> Which reading?" in got
    assert "secret" not in got and "dropdown" not in got
    assert "> **✍️ Exercise** (ex-a)" in got and "> Do it." in got


def test_command_line(tmp_path, capsys):
    def main(args):
        return cli_main(["student-edition", *args])
    assert main(["--out", str(tmp_path / "a"), "--chapter", "01_task"]) == 0
    assert (tmp_path / "a" / "01_task_empty.ipynb").is_file()
    assert main(["--out", str(tmp_path / "b"), "--chapter", "99_nothing"]) == 1
    assert main(["--out", str(tmp_path / "c"), "--book", str(tmp_path / "nowhere")]) == 1
    assert "error:" in capsys.readouterr().err
