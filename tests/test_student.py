"""The student edition (cccl_lite.book.student): one plain notebook per chapter, built
from the book's sources, with every checked exercise a stub whose checker says
"not implemented yet", no solution text, and no MyST syntax left for Jupyter or
Colab to show raw."""

import base64
import json
import re
from pathlib import Path

import nbformat
import pytest

import cccl_lite.book.exercises as exercises
from cccl_lite.book.exercises import EXERCISES, _last_value, solution_code, solution_text
from cccl_lite.cli import main as cli_main
from cccl_lite.book.editions import make_student_edition
from cccl_lite.book.student import answer_placeholder, myst_to_markdown

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
    # Figures are embedded (a notebook uploaded alone shows them), not linked.
    assert not (out / "figures").exists()
    for n, stage in enumerate(("perceive", "reason", "align", "loss")):
        text = "".join(c.source for c in notebooks[f"0{n + 2}_{stage}"].cells)
        uris = re.findall(r"\]\((data:image/png;base64,[^)]+)\)", text)
        assert len(uris) == 1, stage
        assert base64.b64decode(uris[0].split(",", 1)[1]) == \
            (BOOK / "figures" / f"architecture-{stage}.png").read_bytes()


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


def test_stub_and_answer_cells_carry_the_graders_metadata(edition):
    # The convention H4's grader reads (cccl_lite.book.student's docstring): every
    # stub code cell and one answer cell per written exercise, by metadata.
    _, notebooks = edition
    for stem, nb in notebooks.items():
        assert nb.metadata["cccl"] == {"edition": "student", "source": f"book/{stem}.md"}
        marks = [(c.cell_type, c.metadata["cccl"]) for c in nb.cells if "cccl" in c.metadata]
        source = (BOOK / f"{stem}.md").read_text()
        stubs = re.findall(r"^# ✍️ (ex-[\w-]+):", source, flags=re.M)
        written = [label for label in labels_of(stem) if label not in stubs]
        assert [m["exercise"] for t, m in marks if m["kind"] == "code"] == stubs, stem
        assert [m["exercise"] for t, m in marks if m["kind"] == "written"] == written, stem
        for i, cell in enumerate(nb.cells):
            mark = cell.metadata.get("cccl", {})
            if mark.get("kind") == "code":
                assert cell.cell_type == "code" and cell.source.startswith(f"# ✍️ {mark['exercise']}:")
                ex = EXERCISES[mark["exercise"]]
                assert (mark["function"], mark["checker"]) == (ex.function, ex.checker)
            elif mark.get("kind") == "written":
                assert cell.cell_type == "markdown"
                assert cell.source == answer_placeholder(mark["exercise"])
                # right under its exercise's quote
                assert f"**✍️ Exercise** ({mark['exercise']})" in nb.cells[i - 1].source
    total_written = sum(len([m for m in (c.metadata.get("cccl", {}) for c in nb.cells)
                             if m.get("kind") == "written"]) for nb in notebooks.values())
    assert total_written >= 20  # most of the book's 40-odd exercises are written ones


def test_a_second_edition_does_not_overwrite_a_students_work(tmp_path, capsys):
    # Issue 29, defect 1: the second run used to replace the filled-in notebook.
    out = tmp_path / "class"
    assert cli_main(["student-edition", "--out", str(out), "--chapter", "01_task"]) == 0
    path = out / "01_task_empty.ipynb"
    work = json.loads(path.read_text())
    work["cells"][1]["source"] = "my answers"
    path.write_text(json.dumps(work))
    before = path.read_bytes()
    capsys.readouterr()
    assert cli_main(["student-edition", "--out", str(out), "--chapter", "01_task"]) == 1
    err = capsys.readouterr().err.strip()
    assert path.read_bytes() == before
    assert len(err.splitlines()) == 1 and "01_task_empty.ipynb" in err and "--overwrite" in err
    assert cli_main(["student-edition", "--out", str(out), "--chapter", "01_task",
                     "--overwrite"]) == 0
    assert path.read_bytes() != before


@pytest.mark.parametrize("inside", ["", "student"])
def test_the_book_folder_is_refused_before_anything_is_written(tmp_path, capsys, inside):
    # Issue 29, defect 21: `--out book` wrote ten notebooks into book/, then
    # failed with PosixPath reprs. A copy of the sources stands in for book/.
    book = tmp_path / "book"
    book.mkdir()
    for md in BOOK.glob("*.md"):
        (book / md.name).write_text(md.read_text())
    (book / "references.bib").write_text((BOOK / "references.bib").read_text())
    before = sorted(p.relative_to(book) for p in book.rglob("*"))
    out = book / inside if inside else book
    assert cli_main(["student-edition", "--book", str(book), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert sorted(p.relative_to(book) for p in book.rglob("*")) == before
    assert len(err.splitlines()) == 1 and "PosixPath" not in err
    assert err.startswith("error: --out ") and "book's source folder" in err
    # and the Colab edition's folder is not a student edition's either
    assert cli_main(["student-edition", "--book", str(book), "--out",
                     str(tmp_path / "colab")]) == 1
    assert "Colab edition's folder" in capsys.readouterr().err
    assert not (tmp_path / "colab").exists()
