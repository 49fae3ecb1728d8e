"""``python -m cccl_lite grade`` (cccl_lite.book.grade): student notebooks made by the
real student-edition code from a small synthetic chapter, filled in by hand
four ways (correct, wrong, partial, crashing) plus a run-away and a dying
kernel; every verdict is compared with the one we built in."""

import copy
import csv
import textwrap
from pathlib import Path

import nbformat
import pytest

from cccl_lite.cli import main as cli_main
from cccl_lite.book.exercises import solution_code
from cccl_lite.book.grade import WRITTEN, exercise_cells, grade_submissions
from cccl_lite.book.editions import make_student_edition

from helpers import myst_chapter

# A chapter with two checked exercises (their labels are registered for
# 01_task and 09_flickr30k; the file is named 01_task so ex-recall is the one
# the registry expects) and one written exercise.
CHAPTER = myst_chapter(textwrap.dedent('''
    # 1. A small chapter

    ```{code-cell} ipython3
    from cccl_lite.book.exercises import check_feature_size, check_recall
    ```

    ```{exercise}
    :label: ex-recall

    Write `my_recall`.
    ```

    ```{code-cell} ipython3
    # ✍️ ex-recall: write my_recall, then run this cell.
    def my_recall(sims):
        raise NotImplementedError


    check_recall(my_recall)
    ```

    ```{exercise}
    :label: ex-constant

    What R@1 does a constant score get?
    ```

    ```{exercise}
    :label: ex-flickr-disk

    Write `my_feature_gib`.
    ```

    ```{code-cell} ipython3
    # ✍️ ex-flickr-disk: write my_feature_gib, then run this cell.
    def my_feature_gib(n_images, n_regions, dim, bytes_per_number):
        raise NotImplementedError


    check_feature_size(my_feature_gib)
    ```

    ```{code-cell} ipython3
    print("the end")
    ```
    '''))

WRONG_RECALL = "def my_recall(sims):\n    return {k: 0.0 for k in ('i2t_r1', 'i2t_r5', " \
               "'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10', 'rsum')}\n"
WRONG_GIB = "def my_feature_gib(n, r, d, b):\n    return n * r * d * b / 1e9\n"


@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    book = tmp_path_factory.mktemp("book")
    (book / "01_task.md").write_text(CHAPTER, encoding="utf-8")
    [path] = make_student_edition(tmp_path_factory.mktemp("edition"), book)
    return nbformat.read(path, as_version=4)


def code_cell(nb, label):
    return next(nb.cells[i] for i, lb, kind in exercise_cells(nb) if lb == label)


def filled(blank, recall=None, gib=None, answer=None, insert=None):
    """A copy of the blank notebook with the stubs replaced (the checker call
    kept, as a student would), the written answer typed, and a cell put
    before the first exercise cell (``insert``: (source, after label))."""
    nb = copy.deepcopy(blank)
    for label, body, call in (("ex-recall", recall, "check_recall(my_recall)"),
                              ("ex-flickr-disk", gib, "check_feature_size(my_feature_gib)")):
        if body is not None:
            code_cell(nb, label).source = body + "\n\n" + call
    if answer is not None:
        cells = exercise_cells(nb)
        index = next(i for i, lb, kind in cells if kind == "written")
        assert index >= 0, "the student edition has no answer cell for ex-constant"
        nb.cells[index].source += "\n" + answer
    if insert is not None:
        source, after = insert
        at = nb.cells.index(code_cell(nb, after)) + 1
        nb.cells.insert(at, nbformat.v4.new_code_cell(source))
    return nb


def has_answer_cells(blank) -> bool:
    return any(kind == "written" and i >= 0 for i, _, kind in exercise_cells(blank))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_four_submissions_get_the_verdicts_built_in(blank, tmp_path, capsys):
    answers = has_answer_cells(blank)
    subs = tmp_path / "subs"
    (subs / "ann").mkdir(parents=True)  # a folder per student ...
    nbformat.write(filled(blank, solution_code("ex-recall"), solution_code("ex-flickr-disk"),
                          "Zero: every caption ties." if answers else None),
                   subs / "ann" / "01_task_empty.ipynb")
    # ... or files named per student
    nbformat.write(filled(blank, WRONG_RECALL, WRONG_GIB), subs / "bob__01_task.ipynb")
    nbformat.write(filled(blank, solution_code("ex-recall")), subs / "cat.ipynb")
    nbformat.write(filled(blank, solution_code("ex-recall"), solution_code("ex-flickr-disk"),
                          insert=("1 / 0", "ex-recall")), subs / "dan.ipynb")
    out = tmp_path / "grades"
    assert cli_main(["grade", str(subs), "--out", str(out), "--timeout", "120"]) == 0
    rows = {(r["student"], r["exercise"]): r for r in read_csv(out / "grades.csv")}
    verdicts = {key: r["verdict"] for key, r in rows.items()}
    assert verdicts == {
        ("ann", "ex-recall"): "passed", ("ann", "ex-flickr-disk"): "passed",
        ("ann", "ex-constant"): WRITTEN,
        ("bob", "ex-recall"): "wrong", ("bob", "ex-flickr-disk"): "wrong",
        ("bob", "ex-constant"): WRITTEN,
        ("cat", "ex-recall"): "passed", ("cat", "ex-flickr-disk"): "not implemented",
        ("cat", "ex-constant"): WRITTEN,
        ("dan", "ex-recall"): "passed", ("dan", "ex-flickr-disk"): "error",
        ("dan", "ex-constant"): WRITTEN}
    assert "that is GB" in rows["bob", "ex-flickr-disk"]["message"]  # the checker's own words
    raising = filled(blank, insert=("1 / 0", "ex-recall"))  # where dan's cell went
    number = 1 + next(k for k, c in enumerate(raising.cells) if c.source == "1 / 0")
    assert rows["dan", "ex-flickr-disk"]["message"] == (
        f"not reached: cell {number} raised ZeroDivisionError: division by zero")
    assert {r["notebook"] for r in rows.values()} == {"01_task"}
    if answers:
        assert rows["ann", "ex-constant"]["message"] == "answered (4 words)"
        assert rows["bob", "ex-constant"]["message"] == "not answered"
    summary = {(r["what"], r["name"]): r for r in read_csv(out / "summary.csv")}
    assert summary["exercise", "ex-recall"]["passed"] == "3"
    assert summary["exercise", "ex-recall"]["wrong"] == "1"
    assert summary["exercise", "ex-flickr-disk"]["passed"] == "1"
    assert summary["student", "cat"]["not implemented"] == "1"
    assert summary["student", "dan"]["error"] == "1"
    printed = capsys.readouterr()
    assert "dan dan.ipynb" in printed.out and "ZeroDivisionError" in printed.out
    assert "Traceback" not in printed.out + printed.err
    # An existing result is not replaced without --overwrite: one line.
    assert cli_main(["grade", str(subs), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--overwrite" in err and "grades.csv" in err


@pytest.mark.slow  # waits out a 20 s time limit on purpose
def test_a_run_away_and_a_dying_kernel_are_errors_and_grading_goes_on(blank, tmp_path, capsys):
    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(filled(blank, solution_code("ex-recall"),
                          "def my_feature_gib(*args):\n    while True:\n        pass\n"),
                   subs / "eve.ipynb")
    nbformat.write(filled(blank, solution_code("ex-recall"),
                          insert=("import os\nos._exit(1)", "ex-recall")), subs / "fay.ipynb")
    nbformat.write(filled(blank, "import sys\nsys.exit(3)\n"), subs / "gus.ipynb")
    # hal deleted the ex-recall cell (its chapter's, for the registry) and
    # wrote the function in a cell at the end.
    hal = filled(blank, gib=solution_code("ex-flickr-disk"))
    hal.cells.remove(code_cell(hal, "ex-recall"))
    hal.cells.append(nbformat.v4.new_code_cell(solution_code("ex-recall")))
    nbformat.write(hal, subs / "hal.ipynb")
    grades = grade_submissions(subs, tmp_path / "out", timeout=20)
    got = {(g.student, g.exercise): (g.verdict, g.message) for g in grades}
    assert got["eve", "ex-recall"][0] == "passed"
    assert got["eve", "ex-flickr-disk"][0] == "error"
    assert got["eve", "ex-flickr-disk"][1].startswith("the time limit (20 s) ran out in cell")
    assert got["fay", "ex-recall"][0] == "passed"
    assert got["fay", "ex-flickr-disk"][0] == "error"
    assert "kernel died" in got["fay", "ex-flickr-disk"][1]
    # sys.exit in an exercise cell fails that exercise only.
    assert got["gus", "ex-recall"][0] == "error" and "SystemExit" in got["gus", "ex-recall"][1]
    assert got["gus", "ex-flickr-disk"][0] == "not implemented"
    assert got["hal", "ex-recall"][0] == got["hal", "ex-flickr-disk"][0] == "passed"
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err and "ERROR" not in printed.err


@pytest.mark.parametrize("case", ["missing", "empty", "file"])
def test_bad_submissions_folder_is_one_line(tmp_path, capsys, case):
    target = tmp_path / "subs"
    if case == "empty":
        target.mkdir()
    elif case == "file":
        target.write_text("x")
    assert cli_main(["grade", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(target) in err
    assert ("no notebooks" in err) if case == "empty" else ("not a folder" in err)


def test_a_student_printing_the_grader_mark_cannot_crash_or_forge_the_record():
    """Found by hand (tests/RELIABILITY.md): a student's function printing a
    malformed 'CCCL-GRADE ' line stopped the whole grading run with a JSON
    error and no CSV. The grader's record is the last marked line that parses."""
    from cccl_lite.book.grade import _MARK, _record

    cell = {"outputs": [
        {"output_type": "stream", "text": f"{_MARK}{{bad json\n{_MARK}[1, 2]\n"},
        {"output_type": "stream", "text": f'{_MARK}{{"status": "todo", "message": "m"}}\n'},
    ]}
    assert _record(cell) == {"status": "todo", "message": "m"}
    assert _record({"outputs": [{"output_type": "stream", "text": f"{_MARK}{{bad\n"}]}) is None
