"""Sizes of the book's chapters for planning a course ("Teaching with this book").

:func:`chapter_table` counts, from the chapter sources themselves, what a
student reads and does in each chapter, and turns the counts into minutes
with stated rules of thumb. The minutes are *estimates*, not measurements:
no student has been timed. What the rules assume:

* reading: :data:`WORDS_PER_MINUTE` words of prose a minute (technical text
  with equations, read carefully), plus :data:`MINUTES_PER_CELL` a minute
  per code cell to run it and look at its output;
* exercises: :data:`EXERCISE_MINUTES` by kind: ``"code"`` for a "write it
  yourself" stub with a checker (:data:`cccl_lite.book.exercises.EXERCISES`),
  ``"experiment"`` for one that trains or retrains a model
  (:data:`EXPERIMENTS`, plus the CPU time the run takes), ``"question"``
  for the rest (a short computation or an argument).

Counting from the sources keeps the table current as chapters change. The
execution time of each chapter is *measured*: the Colab-like check
(``.ci/colab_check.py --record``) records each notebook's seconds from
kernel start to last cell, and :func:`execution_record` reads that record.
:data:`SESSIONS` is the teaching page's plan of seven sessions as data, and
:func:`session_table` adds up, per session, the estimated reading and
exercise minutes and the measured run time.
"""

from __future__ import annotations

import re
from pathlib import Path

from cccl_lite.book.exercises import EXERCISES
from cccl_lite.book.student import chapter_sources, default_book_dir

__all__ = ["WORDS_PER_MINUTE", "MINUTES_PER_CELL", "EXERCISE_MINUTES", "EXPERIMENTS",
           "exercise_kind", "chapter_stats", "chapter_table", "SESSIONS", "RECORDS",
           "SHIPPED_RECORD", "execution_record", "session_table"]

WORDS_PER_MINUTE = 120
MINUTES_PER_CELL = 1.0
EXERCISE_MINUTES = {"code": 20, "question": 10, "experiment": 30}
# Exercises that train a model: their minutes exclude the run itself.
EXPERIMENTS = ("ex-loss-sweep", "ex-train-resume", "ex-train-hardest", "ex-abl-run")


def exercise_kind(label: str) -> str:
    """"code" (a checked stub), "experiment" (trains a model) or "question"."""
    if label in EXERCISES:
        return "code"
    return "experiment" if label in EXPERIMENTS else "question"


def chapter_stats(md_path) -> dict:
    """Counts and estimated minutes of one chapter source (a jupytext MyST
    notebook): prose words outside solutions and display math, code cells,
    exercises by kind, reading and exercise minutes (rounded up to 5)."""
    import jupytext

    md_path = Path(md_path)
    nb = jupytext.read(md_path)
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    prose = re.sub(r"^(`{3,})\{solution\}.*?^\1$", " ", prose, flags=re.S | re.M)
    prose = re.sub(r"\$\$.*?\$\$", " ", prose, flags=re.S)
    words = len(prose.split())
    cells = sum(c.cell_type == "code" for c in nb.cells)
    labels = re.findall(r"^:label: (ex-[\w-]+)$", md_path.read_text(encoding="utf-8"),
                        flags=re.M)
    kinds = [exercise_kind(label) for label in labels]
    reading = words / WORDS_PER_MINUTE + MINUTES_PER_CELL * cells
    doing = sum(EXERCISE_MINUTES[k] for k in kinds)
    title = next((line.lstrip("#").strip() for line in md_path.read_text(
        encoding="utf-8").splitlines() if line.startswith("# ")), md_path.stem)
    return {"chapter": title, "words": words, "code cells": cells,
            "exercises": len(labels), "checked": kinds.count("code"),
            "experiments": kinds.count("experiment"),
            "reading (min, est.)": _round5(reading), "exercises (min, est.)": _round5(doing)}


def _round5(minutes: float) -> int:
    return int(-(-minutes // 5) * 5)


def chapter_table(book_dir=None):
    """:func:`chapter_stats` of every chapter (``book/NN_*.md``) as a pandas
    DataFrame indexed by file name, with a total row."""
    import pandas as pd

    book_dir = Path(book_dir) if book_dir is not None else default_book_dir()
    rows = {md.stem: chapter_stats(md) for md in chapter_sources(book_dir)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    total = table.drop(columns="chapter").sum()
    table.loc["total"] = {"chapter": "all chapters", **total.to_dict()}
    return table


# ---- measured execution times and the session plan --------------------------------

# Where the Colab-like check writes its records: `.ci/colab_check.py --full`
# (the sizes a student runs) and .ci/run's smoke pass (CCCL_SMOKE=1, tiny data:
# only a lower bound for a student, so read last).
RECORDS = ("_build/colab-check/seconds-full.json", "_build/colab-check/seconds-smoke.json")
# A full-size record shipped with the package (package data), read before the
# checkout's smoke record: a clean clone or a pip install shows measured times.
SHIPPED_RECORD = "colab-seconds-full.json"

# The teaching page's plan: session -> ({chapter: share of it read}, exercises).
# Chapter 2 is split at eq 7 between sessions 1 and 2 (counted half each).
# tests/test_course.py checks this against the page's table.
SESSIONS = {
    1: ({"01_task": 1, "02_perceive": 0.5}, ("ex-recall", "ex-constant", "ex-perceive-cpc")),
    2: ({"02_perceive": 0.5, "03_reason": 1},
        ("ex-perceive-sdpa", "ex-perceive-position", "ex-reason-gcn", "ex-reason-steps")),
    3: ({"04_align": 1}, ("ex-align-vsf", "ex-align-p1", "ex-align-temperature")),
    4: ({"05_loss": 1}, ("ex-loss-triplet", "ex-loss-flat", "ex-loss-scale")),
    5: ({"06_training": 1, "07_ablations": 1},
        ("ex-train-pairwise", "ex-train-pool", "ex-abl-noise", "ex-abl-params")),
    6: ({"08_inside": 1}, ("ex-inside-rank", "ex-inside-mu", "ex-inside-word")),
    7: ({"09_flickr30k": 1, "10_faster": 1, "11_diagnosis": 1},
        ("ex-flickr-disk", "ex-flickr-coco", "ex-faster-vsf", "ex-faster-shortlist")),
}


def execution_record(path=None) -> dict | None:
    """The Colab-like check's record (``.ci/colab_check.py --record``): a dict
    with ``"seconds"`` (notebook file name, e.g. "01_task.ipynb" -> seconds
    from kernel start to its last cell, or None), ``"mode"``, ``"date"``,
    ``"machine"`` and ``"file"`` (where it was read). Read from ``path``,
    else ``$CCCL_EXECUTION_RECORD``, else this checkout's full-size record
    (:data:`RECORDS`), else the package's ``results/`` :data:`SHIPPED_RECORD`,
    else this checkout's smoke record;
    None when there is none."""
    import json
    import os
    from importlib.resources import files

    root = Path(__file__).resolve().parents[2]
    shipped = Path(str(files("cccl_lite") / "results" / SHIPPED_RECORD))
    candidates = ([Path(path)] if path is not None else
                  [Path(os.environ["CCCL_EXECUTION_RECORD"])]
                  if os.environ.get("CCCL_EXECUTION_RECORD") else
                  [root / RECORDS[0], shipped, root / RECORDS[1]])
    for candidate in candidates:
        if candidate.is_file():
            record = json.loads(candidate.read_text(encoding="utf-8"))
            if not isinstance(record.get("seconds"), dict):
                raise ValueError(f"{candidate}: no 'seconds' object (notebook -> seconds); "
                                 f"expected the record of .ci/colab_check.py --record")
            return {**record, "file": str(candidate)}
    return None


def session_table(record: dict | None = None, book_dir=None, sessions=None):
    """Minutes per session of :data:`SESSIONS` (or ``sessions``), as a pandas
    DataFrame: reading (estimated: words at :data:`WORDS_PER_MINUTE` plus
    :data:`MINUTES_PER_CELL` per code cell, times the share of the chapter),
    exercises (estimated: :data:`EXERCISE_MINUTES` by kind, experiments'
    runs not included), and the chapters' run time from ``record``
    (measured, minutes; NaN where not recorded), unrounded."""
    import pandas as pd

    book_dir = Path(book_dir) if book_dir is not None else default_book_dir()
    stats, rows = {}, {}
    for n, (chapters, labels) in (sessions or SESSIONS).items():
        reading = run = 0.0
        for stem, share in chapters.items():
            if stem not in stats:
                stats[stem] = chapter_stats(book_dir / f"{stem}.md")
            s = stats[stem]
            reading += share * (s["words"] / WORDS_PER_MINUTE + MINUTES_PER_CELL * s["code cells"])
            seconds = (record or {}).get("seconds", {}).get(f"{stem}.ipynb")
            run += share * seconds / 60 if seconds is not None else float("nan")
        rows[n] = {"chapters": ", ".join(c[:2].lstrip("0") for c in chapters),
                   "reading (min, est.)": reading,
                   "exercises (min, est.)": sum(EXERCISE_MINUTES[exercise_kind(lb)]
                                                for lb in labels),
                   "run (min, measured)": run}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "session"
    return table
