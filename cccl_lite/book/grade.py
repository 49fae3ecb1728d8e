"""Grade submitted student notebooks: ``python -m cccl_lite grade SUBMISSIONS/``.

An instructor hands out the student edition (``python -m cccl_lite
student-edition``, :mod:`cccl_lite.book.student`), collects the notebooks the
students filled in, and runs this on the folder. The layout of
``SUBMISSIONS/`` (hidden files and ``.ipynb_checkpoints`` are skipped):

* ``SUBMISSIONS/<student>/<any name>.ipynb``: one folder per student, holding
  one notebook per chapter (any number of chapters); or
* ``SUBMISSIONS/<student>.ipynb`` or ``SUBMISSIONS/<student>__<any>.ipynb``:
  files named per student (the name up to the first ``__``), as a course
  platform's "download all submissions" often writes them.

Which chapter a notebook is comes from its metadata (``cccl.source``), else
its first cell ("Student edition of ``book/NN_*.md``"), else its file name.
One student may hand in each chapter once.

Each notebook is executed in a fresh ``python3`` kernel (nbclient) in an
empty temporary folder, cell by cell, under a time limit for the whole
notebook (kernel start not counted). After every code-exercise cell (found
by the cell metadata ``{"cccl": {"exercise": label, "kind": "code"}}`` of
the student edition, else by its ``# ✍️ <label>`` first line) the grader
runs, in the same kernel, the exercise's checker
(:data:`cccl_lite.book.exercises.EXERCISES`) on the student's function and reads
its status back as one JSON line; the cell's printed output is not parsed,
so a student who edits the checker call or prints more is graded the same.
Verdicts (:data:`VERDICTS`):

* ``passed`` / ``wrong`` / ``not implemented``: the checker's "pass", "fail"
  and "todo" (the stub still raises ``NotImplementedError``, or the function
  is not defined);
* ``error``: the exercise cell raised, the checker itself raised, the time
  limit ran out in it, or it was not reached because an earlier cell raised,
  the kernel died or the time ran out;
* ``written (not auto-graded)``: a written exercise; the message says
  whether its answer cell (``kind: "written"``) was filled in.

An error in an exercise cell fails that exercise and execution goes on; an
error in any other cell (unless tagged ``raises-exception``) stops the
notebook as it would stop "Run all". The grader then goes on with the next
notebook, printing one line per notebook, never a traceback. Messages
number cells from 1, Markdown cells included. An exercise whose cell the
student deleted is checked after the last cell, on whatever function of
that name the notebook defined.

The checks run in the student's own kernel, after the student's code: they
catch honest mistakes, not a student set on fooling them (one who replaces
the checker, say). The teaching page grades checked exercises as practice
for that reason.

Written under ``--out`` (atomically; existing files only with
``--overwrite``): ``grades.csv`` (one row per student, notebook and
exercise) and ``summary.csv`` (per exercise: how many students got each
verdict; per student: totals), printed as a short table too.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from cccl_lite.book.exercises import EXERCISES
from cccl_lite.book.student import answer_placeholder
from cccl_lite.errors import InputError
from cccl_lite.files import check_output_dir, check_output_file, write_text_atomic

__all__ = ["VERDICTS", "WRITTEN", "Grade", "find_submissions", "exercise_cells",
           "grade_notebook", "grade_submissions", "summary_rows"]

VERDICTS = ("passed", "wrong", "not implemented", "error")
WRITTEN = "written (not auto-graded)"
_STATUS = {"pass": "passed", "fail": "wrong", "todo": "not implemented",
           "missing": "not implemented", "error": "error"}
_MARK = "CCCL-GRADE "
_STUB = re.compile(r"^#\s*✍️\s*(ex-[\w-]+)")
_WRITTEN_QUOTE = re.compile(r"\*\*✍️ Exercise\*\* \((ex-[\w-]+)\)")
_ANSWER = re.compile(r"^✍️ \*\*Your answer\*\* \([\w-]+\):\s*")
# Defined once in each kernel; prints one JSON line the grader reads back.
_HELPER = '''
def __cccl_grade(label, function):
    import json
    from cccl_lite.book.exercises import EXERCISES
    fn = globals().get(function)
    if fn is None:
        rec = {"status": "missing", "message": f"{function} is not defined"}
    else:
        try:
            r = EXERCISES[label].check(fn)
            rec = {"status": r.status, "message": r.message}
        except BaseException as e:
            rec = {"status": "error", "message": f"the checker raised {type(e).__name__}: {e}"}
    print("%s" + json.dumps(rec))
''' % _MARK


# nbclient logs a time-out or a dead kernel as ERROR; the grader says it in its
# own one line per notebook instead.
_QUIET = logging.getLogger("cccl_lite.book.grade.nbclient")
_QUIET.setLevel(logging.CRITICAL)
_QUIET.propagate = False


@dataclass
class Grade:
    """One row of ``grades.csv``: a student's verdict on one exercise."""

    student: str
    notebook: str
    exercise: str
    kind: str
    verdict: str
    message: str


# ---- finding submissions and their exercises -------------------------------------


def _visible(path: Path) -> bool:
    return not any(part.startswith(".") for part in path.parts)


def find_submissions(folder) -> list[tuple[str, Path]]:
    """``(student, notebook path)`` of every submission under ``folder`` (the
    layout in the module docstring), sorted by student then path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; expected SUBMISSIONS/ holding one folder "
                         f"per student or files named <student>.ipynb")
    found = []
    for path in sorted(folder.iterdir()):
        if not _visible(path.relative_to(folder)):
            continue
        if path.is_dir():
            found += [(path.name, nb) for nb in sorted(path.rglob("*.ipynb"))
                      if _visible(nb.relative_to(folder))]
        elif path.suffix == ".ipynb":
            found.append((path.stem.split("__")[0], path))
    if not found:
        raise InputError(f"{folder}: no notebooks (*.ipynb) to grade; expected "
                         f"{folder}/<student>/<chapter>.ipynb or {folder}/<student>.ipynb")
    return sorted(found)


def chapter_of(nb, path: Path) -> str:
    """The chapter stem ("02_perceive") of a student notebook, or its file stem."""
    source = nb.metadata.get("cccl", {}).get("source", "")
    m = re.search(r"(\d\d_[A-Za-z0-9]+)\.md", source)
    if not m and nb.cells:
        m = re.search(r"book/(\d\d_[A-Za-z0-9]+)\.md", nb.cells[0].source)
    if not m:
        m = re.search(r"(\d\d_[A-Za-z0-9]+)", path.name)
    return m[1] if m else path.stem


def exercise_cells(nb) -> list[tuple[int, str, str]]:
    """``(cell index, label, kind)`` of every exercise cell: code stubs
    ("code") and written answers ("written"), by the cell metadata of the
    student edition, else (an edition without it) by a code cell's ``# ✍️
    <label>`` first line and a Markdown "✍️ Exercise (label)" quote of an
    exercise with no stub (index -1: it has no answer cell)."""
    found = []
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("cccl", {})
        if meta.get("exercise") and meta.get("kind") in ("code", "written"):
            found.append((i, meta["exercise"], meta["kind"]))
        elif cell.cell_type == "code" and _STUB.match(cell.source):
            found.append((i, _STUB.match(cell.source)[1], "code"))
    labels = {label for _, label, _ in found}
    for cell in nb.cells:  # written exercises of an edition without answer cells
        if cell.cell_type == "markdown":
            for label in _WRITTEN_QUOTE.findall(cell.source):
                if label not in labels and label not in EXERCISES:
                    found.append((-1, label, "written"))
                    labels.add(label)
    return found


def _written(nb, index: int) -> str:
    """"answered (N words)" or "not answered": the answer cell at ``index``
    without its "✍️ Your answer (label):" lead and the placeholder."""
    if index < 0:
        return "no answer cell (a student edition made before answer cells)"
    placeholder = _ANSWER.sub("", answer_placeholder("ex-x"))  # the prompt's own words
    text = _ANSWER.sub("", nb.cells[index].source.strip(), count=1)
    words = len(text.replace(placeholder.strip(), "").split())
    return f"answered ({words} words)" if words else "not answered"


# ---- running one notebook ----------------------------------------------------------


def _error_of(cell) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out.get("ename", "Error"), " ".join(str(out.get("evalue", "")).split())
    return None


def _record(cell) -> dict | None:
    """The grader's own record: the LAST marked line that parses as a record,
    since the helper prints it after the student's code ran (a student's
    function may print marked lines too, malformed or not)."""
    record = None
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            for line in out.get("text", "").splitlines():
                if line.startswith(_MARK):
                    try:
                        parsed = json.loads(line[len(_MARK):])
                    except ValueError:
                        continue
                    if isinstance(parsed, dict) and "status" in parsed:
                        record = parsed
    return record


def _n(index) -> str:
    """A cell's number as a reader counts: from 1, Markdown cells included."""
    return "after the last" if index is None else str(index + 1)


def _short(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


def grade_notebook(path, student: str = "", timeout: float = 600,
                   kernel: str = "python3") -> tuple[list[Grade], str]:
    """Execute one student notebook and grade its exercises (module
    docstring): its :class:`Grade` rows and a one-line account of the run
    ("ran all 31 cells in 12 s", or why it stopped)."""
    import nbformat
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # any unreadable file: one row, then the next notebook
        why = f"not a readable notebook ({type(e).__name__}: {_short(str(e), 120)})"
        return [Grade(student, path.stem, "-", "-", "error", why)], why
    chapter = chapter_of(nb, path)
    cells = exercise_cells(nb)
    grades: dict[str, Grade] = {}
    for index, label, kind in cells:
        if kind == "written":
            grades[label] = Grade(student, chapter, label, kind, WRITTEN, _written(nb, index))
    code_at = {i: label for i, label, kind in cells if kind == "code"}
    expected = [e.label for e in EXERCISES.values() if e.chapter == chapter]
    expected += [lb for lb in code_at.values() if lb not in expected]

    def record(label, verdict, message):
        grades[label] = Grade(student, chapter, label, "code", verdict, _short(message))

    # nbclient stores each executed cell at its index in the client's
    # notebook: the grader's own cells go to a scratch slot past the end.
    work = copy.deepcopy(nb)
    work.cells.append(nbformat.v4.new_code_cell(""))
    scratch = len(work.cells) - 1

    def check(client, label):
        probe = nbformat.v4.new_code_cell(
            f"__cccl_grade({label!r}, {EXERCISES[label].function!r})")
        try:
            client.execute_cell(probe, scratch, store_history=False)
        except CellTimeoutError:
            record(label, "error", f"the time limit ({timeout:g} s) ran out while its checker "
                                   f"ran the function")
            raise
        rec = _record(probe) or {"status": "error", "message": "the checker printed no result"}
        record(label, _STATUS.get(rec["status"], "error"), rec["message"])

    stopped, n_run, i = None, 0, None
    folder = tempfile.mkdtemp(prefix="cccl-grade-")  # the kernel's working folder
    client = NotebookClient(work, timeout=timeout, kernel_name=kernel, allow_errors=True,
                            shutdown_kernel="immediate", log=_QUIET,
                            resources={"metadata": {"path": folder}})
    try:
        # The kernel's own stderr (its start-up warnings) is noise here; what
        # the student's code prints reaches the cells through the kernel.
        with client.setup_kernel(stderr=subprocess.DEVNULL):
            helper = nbformat.v4.new_code_cell(_HELPER)
            client.execute_cell(helper, scratch, store_history=False)
            start = time.monotonic()
            code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
            for i in code + [None]:  # None: exercises whose cell is not in the notebook
                left = timeout - (time.monotonic() - start)
                if left <= 0:
                    stopped = f"the time limit ({timeout:g} s) ran out before cell {_n(i)}"
                    break
                client.timeout = max(1, int(left + 0.999))
                if i is None:
                    for label in expected:
                        if label not in grades and label in EXERCISES:
                            check(client, label)
                            if label in grades and grades[label].verdict == "not implemented":
                                grades[label].message += " (its cell is not in the notebook)"
                    break
                cell = work.cells[i]
                try:
                    client.execute_cell(cell, i)
                except CellTimeoutError:
                    stopped = f"the time limit ({timeout:g} s) ran out in cell {_n(i)}"
                    if i in code_at:
                        record(code_at[i], "error", stopped)
                    break
                n_run += 1
                error = _error_of(cell)
                if i in code_at and code_at[i] in EXERCISES:
                    if error and error[0] == "NotImplementedError":
                        record(code_at[i], "not implemented", "the cell raises "
                               "NotImplementedError outside the function")
                    elif error:
                        record(code_at[i], "error", f"the cell raised {error[0]}: {error[1]}")
                    else:
                        check(client, code_at[i])
                elif error and "raises-exception" not in cell.metadata.get("tags", []):
                    stopped = f"cell {_n(i)} raised {error[0]}: {_short(error[1], 120)}"
                    break
    except DeadKernelError:
        stopped = f"the kernel died (in cell {_n(i)}: os._exit, or out of memory?)"
    except CellTimeoutError:
        stopped = f"the time limit ({timeout:g} s) ran out checking cell {_n(i)}"
    except (NoSuchKernel, RuntimeError) as e:  # the kernel did not start
        raise InputError(f"{path}: the {kernel!r} kernel did not start ({_short(str(e), 120)})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for label in expected:
        if label not in grades:
            record(label, "error", f"not reached: {stopped}" if stopped else
                   "no checker for this exercise in cccl_lite.book.exercises")
    rows = list(grades.values())
    order = {label: k for k, (_, label, _) in enumerate(cells)}
    rows.sort(key=lambda g: order.get(g.exercise, len(order)))
    summary = stopped or f"ran all {n_run} code cells"
    return rows, summary


# ---- a folder of submissions -------------------------------------------------------


def summary_rows(grades: list[Grade]) -> list[dict]:
    """Per exercise, in the book's order (how many students got each
    verdict), then per student, by name (how many exercises got each), as
    rows of ``summary.csv``."""
    out = []
    for what, key in (("exercise", lambda g: g.exercise), ("student", lambda g: g.student)):
        names = list(dict.fromkeys(key(g) for g in sorted(grades, key=lambda g: g.notebook)))
        for name in (names if what == "exercise" else sorted(names)):  # exercises in book order
            mine = [g for g in grades if key(g) == name]
            row = {"what": what, "name": name}
            row.update({v: sum(g.verdict == v for g in mine) for v in VERDICTS})
            row["written answered"] = sum(g.verdict == WRITTEN and g.message.startswith(
                "answered") for g in mine)
            row["written"] = sum(g.verdict == WRITTEN for g in mine)
            out.append(row)
    return out


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _table(rows: list[dict]) -> str:
    cols = ["name", *VERDICTS, "written answered", "written"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = []
    for what in ("exercise", "student"):
        mine = [r for r in rows if r["what"] == what]
        head = {**{c: c for c in cols}, "name": what}
        lines += ["  ".join(str(r[c]).ljust(widths[c]) if c == "name" else
                            str(r[c]).rjust(widths[c]) for c in cols) for r in [head, *mine]]
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def grade_submissions(submissions, out=None, timeout: float = 600, overwrite: bool = False,
                      kernel: str = "python3", log=print) -> list[Grade]:
    """Grade every notebook under ``submissions`` (layout: module docstring);
    write ``grades.csv`` and ``summary.csv`` into ``out`` (default: a
    ``<SUBMISSIONS>-grades`` folder beside it) and print a table. Returns
    the rows of ``grades.csv``."""
    submissions = Path(submissions)
    found = find_submissions(submissions)
    if timeout <= 0:
        raise InputError(f"--timeout must be positive, got {timeout:g}")
    out = Path(out) if out is not None else submissions.resolve().with_name(
        submissions.resolve().name + "-grades")
    check_output_dir(out)
    targets = [check_output_file(out / name, overwrite, f"grades file {name}")
               for name in ("grades.csv", "summary.csv")]
    grades, seen = [], {}
    for student, path in found:
        try:
            import nbformat
            chapter = chapter_of(nbformat.read(path, as_version=4), path)
        except Exception:  # graded below as unreadable
            chapter = path.stem
        if (student, chapter) in seen:
            raise InputError(f"{student} handed in {chapter} twice: {seen[student, chapter]} and "
                             f"{path}; keep one")
        seen[student, chapter] = path
    for student, path in found:
        began = time.monotonic()
        rows, how = grade_notebook(path, student, timeout, kernel)
        counts = ", ".join(f"{sum(g.verdict == v for g in rows)} {v}" for v in VERDICTS)
        log(f"{student} {path.name}: {counts}; {how} ({time.monotonic() - began:.0f} s)")
        grades += rows
    if not grades:
        raise InputError(f"{submissions}: the notebooks hold no exercises to grade")
    check_output_dir(out, create=True)
    write_text_atomic(_csv([dict(zip([f.name for f in fields(Grade)], astuple(g)))
                            for g in grades]), targets[0])
    summary = summary_rows(grades)
    write_text_atomic(_csv(summary), targets[1])
    log(_table(summary))
    log(f"wrote {targets[0]} ({len(grades)} rows) and {targets[1]}")
    return grades
