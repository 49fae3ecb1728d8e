"""The README's results table is written from the results files
(data_scripts/readme_table.py) and fails here when the two disagree."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("readme_table", ROOT / "data_scripts" / "readme_table.py")
readme_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(readme_table)


def test_readme_table_matches_the_results_files():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_table.readme_table(text) == readme_table.table(), \
        "README.md's results table differs: run python data_scripts/readme_table.py --write"


def test_the_shipped_row_reads_the_shipped_record():
    # Independently of the script: the shipped model's record, read here.
    record = json.loads((ROOT / "cccl_lite" / "assets" / "lite-scenes-small-seed0.json").read_text())
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme_table.readme_table(text).splitlines()
               if "CCCL lite, shipped" in line)
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(record["test"]["rsum"], abs=0.05)
    assert float(cells[2]) == pytest.approx(record["truth"]["rsum"], abs=0.05)
    assert f"epoch {record['best_epoch']} of {record['epochs_trained']}" in cells[0]


def test_a_changed_number_is_caught(capsys, tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme_table.readme_table(text)
    edited = table.replace("| 107.2 |", "| 107.3 |")
    assert edited != table  # the floor's R@sum is in the table
    fake = tmp_path / "README.md"
    fake.write_text(text.replace(table, edited), encoding="utf-8")
    monkeypatch.setattr(readme_table, "README", fake)
    assert readme_table.main(["--check"]) == 1
    assert "differs" in capsys.readouterr().err
    assert readme_table.main(["--write"]) == 0
    assert readme_table.readme_table(fake.read_text(encoding="utf-8")) == table
    assert not (tmp_path / "README.md.part").exists()


def test_missing_markers_are_one_line(capsys, tmp_path, monkeypatch):
    fake = tmp_path / "README.md"
    fake.write_text("# no table here\n", encoding="utf-8")
    monkeypatch.setattr(readme_table, "README", fake)
    assert readme_table.main(["--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "markers" in err
