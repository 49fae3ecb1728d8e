"""Sizes of the book's chapters for planning a course ("Teaching with this book").

:func:`chapter_table` counts, from the chapter sources themselves, what a
student reads and does in each chapter, and turns the counts into minutes
with stated rules of thumb. The minutes are *estimates*, not measurements:
no student has been timed. What the rules assume:

* reading: :data:`WORDS_PER_MINUTE` words of prose a minute (technical text
  with equations, read carefully), plus :data:`MINUTES_PER_CELL` a minute
  per code cell to run it and look at its output;
* exercises: :data:`EXERCISE_MINUTES` by kind: ``"code"`` for a "write it
  yourself" stub with a checker (:data:`cccl_lite.exercises.EXERCISES`),
  ``"experiment"`` for one that trains or retrains a model
  (:data:`EXPERIMENTS`, plus the CPU time the run takes), ``"question"``
  for the rest (a short computation or an argument).

Counting from the sources keeps the table current as chapters change; the
execution time of each chapter is measured by the book build itself (its
``nb-exec-table``).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["WORDS_PER_MINUTE", "MINUTES_PER_CELL", "EXERCISE_MINUTES", "EXPERIMENTS",
           "exercise_kind", "chapter_stats", "chapter_table"]

WORDS_PER_MINUTE = 120
MINUTES_PER_CELL = 1.0
EXERCISE_MINUTES = {"code": 20, "question": 10, "experiment": 30}
# Exercises that train a model: their minutes exclude the run itself.
EXPERIMENTS = ("ex-loss-sweep", "ex-train-resume", "ex-train-hardest", "ex-abl-run")


def exercise_kind(label: str) -> str:
    """"code" (a checked stub), "experiment" (trains a model) or "question"."""
    from .exercises import EXERCISES

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

    from .student import chapter_sources, default_book_dir

    book_dir = Path(book_dir) if book_dir is not None else default_book_dir()
    rows = {md.stem: chapter_stats(md) for md in chapter_sources(book_dir)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    total = table.drop(columns="chapter").sum()
    table.loc["total"] = {"chapter": "all chapters", **total.to_dict()}
    return table
