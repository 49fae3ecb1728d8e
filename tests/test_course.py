"""The teaching page's chapter table (cccl_lite.book.course): counts made from the
chapter sources, minutes by the stated rules, on a hand-made chapter and on the
book itself."""

import json
import re
from pathlib import Path

import pytest

from cccl_lite.book.course import (EXERCISE_MINUTES, EXPERIMENTS, MINUTES_PER_CELL, SESSIONS,
                                   WORDS_PER_MINUTE, chapter_stats, chapter_table, exercise_kind,
                                   execution_record, session_table)
from cccl_lite.book.exercises import EXERCISES

from helpers import myst_chapter

ROOT = Path(__file__).resolve().parent.parent

CHAPTER = myst_chapter("""
# 1. A chapter

one two three four five

$$
a + b = c \\\\ these words are math
$$

```{code-cell} ipython3
x = 1
```

```{exercise}
:label: ex-recall

six seven
```

````{solution} ex-recall
:class: dropdown

hidden words that do not count
````

```{exercise}
:label: ex-loss-sweep

eight
```

```{code-cell} ipython3
y = 2
```
""")


def test_counts_and_minutes_of_a_hand_made_chapter(tmp_path):
    md = tmp_path / "01_a.md"
    md.write_text(CHAPTER)
    stats = chapter_stats(md)
    # Prose words: "# 1. A chapter" (4), "one .. five" (5), the two exercise
    # blocks' fences, labels and bodies (```{exercise} :label: ex-recall six
    # seven ``` = 6; ```{exercise} :label: ex-loss-sweep eight ``` = 5): 20.
    assert stats["words"] == 20
    assert stats["code cells"] == 2
    assert (stats["exercises"], stats["checked"], stats["experiments"]) == (2, 1, 1)
    reading = 20 / WORDS_PER_MINUTE + 2 * MINUTES_PER_CELL  # 2.17 min
    assert stats["reading (min, est.)"] == 5 and reading <= 5
    assert stats["exercises (min, est.)"] == 50  # 20 (checked) + 30 (experiment)
    assert stats["chapter"] == "1. A chapter"


def test_exercise_kinds():
    assert all(exercise_kind(label) == "code" for label in EXERCISES)
    assert all(exercise_kind(label) == "experiment" for label in EXPERIMENTS)
    assert exercise_kind("ex-constant") == "question"
    assert set(EXERCISE_MINUTES) == {"code", "question", "experiment"}


def test_the_book_table_covers_every_chapter_and_exercise():
    table = chapter_table(ROOT / "book")
    chapters = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))
    assert list(table.index) == chapters + ["total"]
    assert table.loc["total", "checked"] == len(EXERCISES)
    labels = sum((ROOT / "book" / f"{c}.md").read_text().count("\n:label: ex-") for c in chapters)
    assert table.loc["total", "exercises"] == labels
    assert (table.drop(index="total")["reading (min, est.)"] > 0).all()
    assert set(EXPERIMENTS) <= {label for c in chapters for label in
                                (ROOT / "book" / f"{c}.md").read_text().split()
                                if label.startswith("ex-")}


def test_the_session_plan_as_data_is_the_teaching_page_table():
    """SESSIONS says what the page's plan table says: the chapters and the
    exercises of each session, in order."""
    page = (ROOT / "book" / "teaching.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| ([^|]+)\|[^|]*\| ([^|]*) \|", page, flags=re.M)
    assert [int(n) for n, _, _ in rows] == sorted(SESSIONS)
    for n, chapters, exercises in rows:
        stems, labels = SESSIONS[int(n)]
        chapters = re.findall(r"\d+", re.sub(r"\(.*?\)", "", chapters))  # "2 (to eq 7)"
        assert [int(s[:2]) for s in stems] == [int(c) for c in chapters]
        assert tuple(re.findall(r"ex-[\w-]+", exercises)) == labels
    # Every chapter is read once in all: shares add up to 1.
    shares = {}
    for stems, _ in SESSIONS.values():
        for stem, share in stems.items():
            shares[stem] = shares.get(stem, 0) + share
    assert shares == {p.stem: 1 for p in (ROOT / "book").glob("[0-9][0-9]_*.md")}


def test_session_minutes_from_a_record(tmp_path):
    """Two hand-made chapters and a record: reading, exercise and measured
    run minutes per session, computed here by hand."""
    book = tmp_path / "book"
    book.mkdir()
    (book / "01_a.md").write_text(CHAPTER)  # 20 words, 2 cells, ex-recall + ex-loss-sweep
    (book / "02_b.md").write_text(CHAPTER.replace("# 1. A chapter", "# 2. B"))  # 19 words
    record_file = tmp_path / "seconds.json"
    record_file.write_text(json.dumps({"mode": "smoke", "seconds": {
        "01_a.ipynb": 90.0, "02_b.ipynb": 30.0}}))
    record = execution_record(record_file)
    assert record["file"] == str(record_file) and record["seconds"]["01_a.ipynb"] == 90.0
    sessions = {1: ({"01_a": 1, "02_b": 0.5}, ("ex-recall",)),
                2: ({"02_b": 0.5}, ("ex-constant", "ex-loss-sweep"))}
    table = session_table(record, book, sessions)
    wpm, cell = WORDS_PER_MINUTE, MINUTES_PER_CELL
    assert table.loc[1, "reading (min, est.)"] == pytest.approx(
        20 / wpm + 2 * cell + 0.5 * (19 / wpm + 2 * cell))
    assert table.loc[2, "reading (min, est.)"] == pytest.approx(0.5 * (19 / wpm + 2 * cell))
    assert table.loc[1, "exercises (min, est.)"] == EXERCISE_MINUTES["code"]
    assert table.loc[2, "exercises (min, est.)"] == (EXERCISE_MINUTES["question"]
                                                     + EXERCISE_MINUTES["experiment"])
    assert table.loc[1, "run (min, measured)"] == pytest.approx(1.5 + 0.25)
    assert table.loc[2, "run (min, measured)"] == pytest.approx(0.25)
    # No record: the run column is empty, the estimates stay.
    empty = session_table(None, book, sessions)
    assert empty["run (min, measured)"].isna().all()
    assert execution_record(tmp_path / "absent.json") is None
    record_file.write_text(json.dumps({"mode": "smoke"}))
    with pytest.raises(ValueError, match="seconds"):
        execution_record(record_file)


def test_the_shipped_record_times_every_chapter(monkeypatch):
    """With no record in the checkout, the package's own is read; it has a
    time for every chapter's Colab notebook."""
    import cccl_lite.book.course as course

    monkeypatch.delenv("CCCL_EXECUTION_RECORD", raising=False)
    monkeypatch.setattr(course, "RECORDS", ("no/such/full.json", "no/such/smoke.json"))
    record = execution_record()
    assert Path(record["file"]).name == course.SHIPPED_RECORD
    chapters = {f"{p.stem}.ipynb" for p in (ROOT / "book").glob("[0-9][0-9]_*.md")}
    assert chapters <= set(record["seconds"])
    assert all(record["seconds"][c] > 0 for c in chapters)
