"""Write the README's results table ("### Results on the synthetic scenes") from
the files that hold the results, so no number in it is typed by hand.

    python data_scripts/readme_table.py            # print the table
    python data_scripts/readme_table.py --check    # exit 1 if README.md's table differs
    python data_scripts/readme_table.py --write    # rewrite it between the markers

Sources, all shipped with the package: the shipped model's record
(``cccl_lite/assets/lite-scenes-small-seed0.json``), the first recipe's
(``...-recipe1.json``), the Table 6 study's three seeds of the full model
(``cccl_lite/results/ablations.json``, its ``summary`` row "CCCL"), the
plateau study's two recipes over their seeds (``cccl_lite/results/plateau.json``)
and the floor and ceiling of chapter 11's diagnosis
(``cccl_lite/results/diagnosis.json``, ``baselines``); a missing one is one
line naming it. The table sits in README.md between :data:`BEGIN` and
:data:`END`; ``tests/test_readme_table.py`` fails when the two disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cccl_lite"
README = ROOT / "README.md"
BEGIN = "<!-- results-table: written by `python data_scripts/readme_table.py --write`; do not edit -->"
END = "<!-- /results-table -->"

SHIPPED = PACKAGE / "assets" / "lite-scenes-small-seed0.json"
FIRST_RECIPE = PACKAGE / "assets" / "lite-scenes-small-seed0-recipe1.json"
STUDY = PACKAGE / "results" / "ablations.json"
DIAGNOSIS = PACKAGE / "results" / "diagnosis.json"
PLATEAU = PACKAGE / "results" / "plateau.json"
# The plateau study's rows the table shows, with their labels.
PLATEAU_ROWS = (("lite recipe", "CCCL lite, sum over negatives, patience 3 (cap 30)"),
                ("lite, warm-up 1, eq 33", "CCCL lite, lite recipe: eq 33 after a one-epoch "
                                           "warm-up, patience 3 (cap 30)"))


class TableError(Exception):
    """A source file missing or without a field the table needs (one line)."""


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TableError(f"{path.relative_to(ROOT)}: not found") from None
    except json.JSONDecodeError as e:
        raise TableError(f"{path.relative_to(ROOT)}: not JSON ({e})") from None


def _field(record: dict, path: Path, *keys):
    value = record
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise TableError(f"{path.relative_to(ROOT)}: no field {'.'.join(map(str, keys))}")
        value = value[key]
    return value


def _num(value: float) -> str:
    """One decimal, without a trailing .0 (100 %, not 100.0 %)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _measured(record: dict, path: Path) -> list[str]:
    return [_num(_field(record, path, "test", "rsum")), _num(_field(record, path, "truth", "rsum")),
            _num(_field(record, path, "siblings", "binding")) + " %",
            _num(_field(record, path, "siblings", "relation")) + " %"]


def _model_row(path: Path, label: str) -> list[str]:
    record = _read(path)
    kept = f"epoch {_field(record, path, 'best_epoch')} of {_field(record, path, 'epochs_trained')} kept"
    return [label.format(kept=kept, seed=_field(record, path, "options", "seed")),
            *_measured(record, path)]


def _plateau_rows() -> list[tuple[list[str], bool]]:
    """Mean ± sd (sample, n - 1) over the seeds of each of :data:`PLATEAU_ROWS`
    (the plateau study, chapter 6)."""
    study = _read(PLATEAU)
    out = []
    for name, label in PLATEAU_ROWS:
        runs = [r for r in _field(study, PLATEAU, "rows") if r.get("name") == name]
        if not runs:
            continue
        cells = []
        for keys, unit in ((("test", "rsum"), ""), (("truth", "rsum"), ""),
                           (("siblings", "binding"), " %"), (("siblings", "relation"), " %")):
            values = [float(_field(r, PLATEAU, *keys)) for r in runs]
            sd = f" ± {_num(statistics.stdev(values))}" if len(values) > 1 else ""
            cells.append(f"{_num(statistics.mean(values))}{sd}{unit}")
        seeds = ", ".join(str(r.get("seed", study["settings"]["seed"])) for r in runs)
        out.append(([f"{label}, seeds {seeds} (mean ± sd; plateau study)", *cells], False))
    return out


def rows() -> list[tuple[list[str], bool]]:
    """The table's rows, each (cells, bold), in the README's order."""
    diagnosis = _read(DIAGNOSIS)
    study = _read(STUDY)
    full = [r for r in _field(study, STUDY, "summary") if r.get("name") == "CCCL"]
    if not full:
        raise TableError(f"{STUDY.relative_to(ROOT)}: no summary row named CCCL")
    full = full[0]

    def mean_sd(key, unit=""):
        m = _field(full, STUDY, key, "mean")
        sd = _field(full, STUDY, key, "sd")
        return f"{_num(m)} ± {_num(sd)}{unit}"

    seeds = ", ".join(str(s) for s in _field(full, STUDY, "seeds"))
    floor = _field(diagnosis, DIAGNOSIS, "baselines", "bag of words")
    ceiling = _field(diagnosis, DIAGNOSIS, "baselines", "structure probe")
    return [
        (["bag-of-words dual encoder (floor)", *_measured(floor, DIAGNOSIS)], False),
        (_model_row(FIRST_RECIPE, "CCCL lite, first recipe (MiniLM vectors, eq 8 as printed; "
                                  "{kept})"), False),
        (_model_row(SHIPPED, "CCCL lite, shipped (lite recipe, seed {seed}: {kept})"), True),
        ([f"CCCL lite, sum over negatives, at most 10 epochs, seeds {seeds} "
          "(mean ± sd; Table 6 study)",
          mean_sd("rsum"), mean_sd("truth_rsum"), mean_sd("binding", " %"),
          mean_sd("relation", " %")], False),
        *_plateau_rows(),
        (["gold syntax + position probe", *_measured(ceiling, DIAGNOSIS)], False),
    ]


def table() -> str:
    """The Markdown table with its markers, as README.md holds it."""
    lines = [BEGIN, "| model | R@sum | truth R@sum | binding | relation |", "|---|---|---|---|---|"]
    for cells, bold in rows():
        shown = [f"**{c}**" for c in cells] if bold else cells
        lines.append("| " + " | ".join(shown) + " |")
    lines.append(END)
    return "\n".join(lines)


def readme_table(text: str) -> str:
    """The marked table of a README's text; TableError if the markers are not there once each."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise TableError("README.md: expected the results-table markers once each "
                         f"({BEGIN!r} ... {END!r})")
    start = text.index(BEGIN)
    return text[start:text.index(END) + len(END)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="exit 1 if README.md's table differs")
    what.add_argument("--write", action="store_true", help="rewrite README.md's table")
    args = parser.parse_args(argv)
    try:
        new = table()
        if not (args.check or args.write):
            print(new)
            return 0
        text = README.read_text(encoding="utf-8")
        old = readme_table(text)
    except TableError as e:
        print(f"readme_table: {e}", file=sys.stderr)
        return 2
    if args.check:
        if old != new:
            print("readme_table: README.md's results table differs from the results files; "
                  "run python data_scripts/readme_table.py --write", file=sys.stderr)
            return 1
        print("README.md's results table matches the results files")
        return 0
    if old != new:
        part = README.with_name(README.name + ".part")
        part.write_text(text.replace(old, new), encoding="utf-8")
        os.replace(part, README)  # whole, or not at all
    print("README.md's results table written" if old != new else "README.md: table unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
