"""The teaching page's chapter table (cccl_lite.course): counts made from the
chapter sources, minutes by the stated rules, on a hand-made chapter and on the
book itself."""

from pathlib import Path

from cccl_lite.course import (EXERCISE_MINUTES, EXPERIMENTS, MINUTES_PER_CELL,
                              WORDS_PER_MINUTE, chapter_stats, chapter_table, exercise_kind)
from cccl_lite.exercises import EXERCISES

ROOT = Path(__file__).resolve().parent.parent

CHAPTER = """\
---
jupytext:
  formats: md:myst,ipynb
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

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
"""


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
