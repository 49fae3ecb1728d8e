"""The Table 6 runner: every row trained with its switch, results kept across reruns."""

import json
import subprocess
from pathlib import Path

import pytest

from cccl_lite import ablate
from cccl_lite.model import ABLATIONS

ROOT = Path(__file__).resolve().parent.parent


def test_rows_cover_table6_once():
    rows = ablate.row_names(noise_seeds=2)
    names = [r[0] for r in rows]
    assert names[0] == "CCCL" and rows[0][1] is None
    assert len(set(names)) == len(names) == 1 + 2 + len(ABLATIONS)
    assert [r[1] for r in rows if r[1]] == list(ABLATIONS)
    assert [r[2] for r in rows[:3]] == [0, 1, 2]
    # The paper's table has exactly these rows, each with six recalls in percent.
    assert set(ablate.PAPER_TABLE6) == set(ABLATIONS) | {"CCCL"}
    assert all(len(v) == 6 and all(0 < x <= 100 for x in v) for v in ablate.PAPER_TABLE6.values())


def test_provenance_names_the_commit():
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    p = ablate.provenance()
    assert p["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert p["cpu_count"] >= 1 and p["torch"] and p["date"].endswith("+00:00")


def test_runs_rows_keeps_them_and_switches_each_off(tiny_words_h5, tmp_path):
    results = tmp_path / "res.json"
    logs = []
    kw = dict(epochs=1, max_steps=1, noise_seeds=0, log=logs.append)
    out = ablate.run_ablations(tiny_words_h5, tmp_path / "runs", results,
                               only=["CCCL", "w/o POS"], **kw)
    assert [r["name"] for r in out["rows"]] == ["CCCL", "w/o POS"]
    assert json.loads(results.read_text()) == out
    for row in out["rows"]:
        t = row["test"]
        # eq 36: R@sum is the sum of the six recalls (rounded to 2 places each)
        six = sum(t[k] for k in ablate.RECALL_KEYS[:-1])
        assert t["rsum"] == pytest.approx(six, abs=0.05)
    # Each run trained the model its row names: read back what the trainer saved.
    pos = json.loads((tmp_path / "runs" / "w-o-pos" / "config.json").read_text())["config"]
    full = json.loads((tmp_path / "runs" / "cccl" / "config.json").read_text())["config"]
    assert full["use_position"] and not pos["use_position"]

    # A rerun with the same settings retrains only what `only` names.
    first = {r["name"]: r for r in out["rows"]}
    again = ablate.run_ablations(tiny_words_h5, tmp_path / "runs", results,
                                 only=["w/o POS"], **kw)
    assert {r["name"]: r for r in again["rows"]}["CCCL"] == first["CCCL"]
    # Other settings: refused without overwrite (the file is a result), and
    # with it the old rows are not mixed in.
    with pytest.raises(ValueError, match="other settings.*--overwrite"):
        ablate.run_ablations(tiny_words_h5, tmp_path / "runs", results,
                             only=["w/o B-2"], **{**kw, "epochs": 2})
    assert json.loads(results.read_text())["rows"] == again["rows"]
    other = ablate.run_ablations(tiny_words_h5, tmp_path / "runs", results,
                                 only=["w/o B-2"], overwrite=True, **{**kw, "epochs": 2})
    assert [r["name"] for r in other["rows"]] == ["w/o B-2"]
    assert any("other settings" in line for line in logs)


def test_unknown_row_is_refused(tiny_words_h5, tmp_path):
    with pytest.raises(ValueError, match="w/o NOTHING"):
        ablate.run_ablations(tiny_words_h5, tmp_path, tmp_path / "r.json", only=["w/o NOTHING"])
