"""The Table 6 runner: every row trained with its switch, results kept across reruns."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cccl_lite.studies import ablate
from cccl_lite.engine.metrics import KEYS
from cccl_lite.model.cccl import ABLATIONS

ROOT = Path(__file__).resolve().parent.parent


def test_rows_cover_table6_once():
    rows = ablate.row_names()
    names = [r[0] for r in rows]
    assert names[0] == "CCCL" and rows[0][1] is None
    # The lite CCCL reads words with the Bi-GRU already: "w/o BERT" is the full model.
    assert ablate.same_as_full("lite") == ("w/o BERT",)
    assert ablate.same_as_full("paper") == ()
    assert len(set(names)) == len(names) == len(ABLATIONS)
    assert [r[1] for r in rows if r[1]] == [a for a in ABLATIONS if a != "w/o BERT"]
    # The paper's table has exactly these rows, each with six recalls in percent.
    assert set(ablate.PAPER_TABLE6) == set(ABLATIONS) | {"CCCL"}
    assert all(len(v) == 6 and all(0 < x <= 100 for x in v) for v in ablate.PAPER_TABLE6.values())


def test_provenance_names_the_commit():
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    p = ablate.provenance()
    assert p["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert p["cpu_count"] >= 1 and p["torch"] and p["date"].endswith("+00:00")


@pytest.mark.slow  # trains every row and seed
def test_runs_rows_and_seeds_keeps_them_and_switches_each_off(tiny_words_h5, tmp_path):
    results = tmp_path / "res.json"
    logs = []
    kw = dict(epochs=1, max_steps=1, seeds=2, log=logs.append)
    out = ablate.run_ablations(tiny_words_h5, tmp_path / "runs", results,
                               only=["CCCL", "w/o POS"], **kw)
    # Seeds outermost: every row with seed 0 first.
    assert [(e["name"], e["seed"]) for e in out["entries"]] == [
        ("CCCL", 0), ("w/o POS", 0), ("CCCL", 1), ("w/o POS", 1)]
    assert json.loads(results.read_text()) == out
    for e in out["entries"]:
        t = e["test"]
        # eq 36: R@sum is the sum of the six recalls (rounded to 2 places each)
        six = sum(t[k] for k in KEYS[:-1])
        assert t["rsum"] == pytest.approx(six, abs=0.05)
        assert set(e["siblings"]) == {"binding", "relation", "random"}
    # The summary: mean and sample sd over the seeds, computed here by hand.
    for row in out["summary"]:
        runs = [e for e in out["entries"] if e["name"] == row["name"]]
        a, b = (e["test"]["rsum"] for e in runs)
        assert row["rsum"]["mean"] == pytest.approx((a + b) / 2, abs=0.01)
        assert row["rsum"]["sd"] == pytest.approx(abs(a - b) / 2 ** 0.5, abs=0.01)
        assert row["seeds"] == [0, 1]
    # Each run trained the model its row names: read back what the trainer saved.
    pos = json.loads((tmp_path / "runs" / "w-o-pos-seed1" / "config.json").read_text())
    full = json.loads((tmp_path / "runs" / "cccl-seed0" / "config.json").read_text())
    assert full["config"]["use_position"] and not pos["config"]["use_position"]
    assert pos["options"]["seed"] == 1 and pos["recipe"]["batching"] == "siblings"

    # A rerun with the same settings trains nothing it already holds.
    again = ablate.run_ablations(tiny_words_h5, tmp_path / "runs", results, **kw,
                                 only=["CCCL"])
    assert again["entries"] == out["entries"]
    # Other settings: refused without overwrite (the file is a result), and
    # with it the old entries are not mixed in.
    with pytest.raises(ValueError, match="other settings.*--overwrite"):
        ablate.run_ablations(tiny_words_h5, tmp_path / "runs", results,
                             only=["w/o B-2"], **{**kw, "epochs": 2})
    assert json.loads(results.read_text())["entries"] == out["entries"]
    other = ablate.run_ablations(tiny_words_h5, tmp_path / "runs", results,
                                 only=["w/o B-2"], overwrite=True, **{**kw, "epochs": 2,
                                                                      "seeds": 1})
    assert [e["name"] for e in other["entries"]] == ["w/o B-2"]
    assert other["summary"][0]["rsum"]["sd"] is None  # one seed: no spread
    assert any("other settings" in line for line in logs)


def test_unknown_row_is_refused(tiny_words_h5, tmp_path):
    with pytest.raises(ValueError, match="w/o NOTHING"):
        ablate.run_ablations(tiny_words_h5, tmp_path, tmp_path / "r.json", only=["w/o NOTHING"])


def _entry(name, seed, rsum, relation=100.0):
    return {"name": name, "seed": seed, "test": {"rsum": rsum}, "truth": {"rsum": 0.0},
            "siblings": {"binding": 100.0, "relation": relation}}


def test_versus_full_against_a_t_table():
    # Two samples of 3 with sd 1 each: Welch's df is exactly 4 and the
    # standard error sqrt(1/3 + 1/3). A difference of t * se with t = 2.7764,
    # the tabulated two-sided 5 % point of Student's t with 4 degrees of
    # freedom, must give p = 0.05.
    se = (2 / 3) ** 0.5
    d = 2.7764 * se
    entries = ([_entry("CCCL", s, 100.0 + s) for s in range(3)]
               + [_entry("w/o POS", s, 100.0 + d + s) for s in range(3)]      # p = 0.05
               + [_entry("w/o B-1", s, 100.0 - 2 * d + s) for s in range(3)]  # far below
               + [_entry("w/o B-2", s, 100.0 + 0.5 + s) for s in range(3)]    # close
               + [_entry("w/o B-3", 0, 50.0)])                                # one seed
    rows = {r["name"]: r for r in ablate.versus_full(entries)}
    assert rows["w/o POS"]["p"] == pytest.approx(0.05, abs=2e-4)
    assert rows["w/o POS"]["se"] == pytest.approx(se, abs=0.01)
    assert rows["w/o POS"]["delta"] == pytest.approx(d, abs=0.01)
    assert rows["w/o B-1"]["verdict"] == "lower" and rows["w/o B-1"]["p"] < 0.01
    assert rows["w/o B-2"]["verdict"] == "inside the noise"
    assert rows["w/o B-3"]["verdict"] == "too few seeds"
    assert rows["w/o B-3"]["delta"] == pytest.approx(50.0 - 101.0)
    assert rows["w/o VSF"]["verdict"] == "pending" and rows["w/o VSF"]["delta"] is None
    assert "CCCL" not in rows and "w/o BERT" not in rows  # the lite model is "w/o BERT"
    # No spread on either side (100 % in every seed): a difference is a difference.
    flat = ([_entry("CCCL", s, 0.0, relation=100.0) for s in range(3)]
            + [_entry("w/o POS", s, 0.0, relation=100.0) for s in range(3)]
            + [_entry("w/o B-1", s, 0.0, relation=50.0) for s in range(3)])
    rel = {r["name"]: r for r in ablate.versus_full(flat, "relation")}
    assert rel["w/o POS"]["verdict"] == "inside the noise"
    assert rel["w/o B-1"]["verdict"] == "lower"
    # Two pairs of 577 lost in both seeds: p is 0 (no spread anywhere), and
    # only a stated resolution keeps it from being read as "lower".
    tiny = flat + [_entry("w/o B-2", s, 0.0, relation=100.0 - 2 / 577 * 100) for s in range(2)]
    assert {r["name"]: r for r in ablate.versus_full(tiny, "relation")}["w/o B-2"]["verdict"] \
        == "lower"
    graded = {r["name"]: r for r in ablate.versus_full(tiny, "relation", min_delta=1.0)}
    assert graded["w/o B-2"]["verdict"] == "negligible"
    assert graded["w/o B-1"]["verdict"] == "lower"  # 50 points: far above the resolution
    assert graded["w/o POS"]["verdict"] == "negligible"  # equal means: no difference at all
    with pytest.raises(ValueError, match="key must be one of"):
        ablate.versus_full(flat, "r@1")


def test_seeds_reaching_counts_each_rows_seeds_at_the_level():
    # Written in seed order 2, 0, 1 so that "values" must be re-sorted by seed.
    entries = ([_entry("CCCL", s, 0.0, relation=100.0) for s in (2, 0, 1)]
               + [_entry("w/o POS", 2, 0.0, relation=100.0),
                  _entry("w/o POS", 0, 0.0, relation=49.0),
                  _entry("w/o POS", 1, 0.0, relation=90.0)]   # exactly the level: reached
               + [_entry("w/o MLP", 0, 0.0, relation=89.9)])
    rows = ablate.seeds_reaching(entries, "relation", level=90.0)
    assert [r["name"] for r in rows] == ["CCCL", "w/o POS", "w/o MLP"]  # Table 6 order
    got = {r["name"]: (r["reached"], r["seeds"], r["values"]) for r in rows}
    assert got["CCCL"] == (3, 3, [100.0, 100.0, 100.0])
    assert got["w/o POS"] == (2, 3, [49.0, 90.0, 100.0])
    assert got["w/o MLP"] == (0, 1, [89.9])
    assert ablate.seeds_reaching(entries, "binding", level=90.0)[1]["reached"] == 3
    with pytest.raises(ValueError, match="key must be one of"):
        ablate.seeds_reaching(entries, "r@1")


def test_welch_agrees_with_scipy_and_is_quiet_on_a_constant_side():
    import warnings

    from scipy.stats import ttest_ind

    rng = np.random.default_rng(0)
    for n_a, n_b in ((3, 3), (2, 5), (4, 3)):
        a, b = rng.normal(0, 1, n_a), rng.normal(0.5, 3, n_b)
        p, se = ablate.welch_p(a, b)
        assert p == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
        assert se == pytest.approx((a.var(ddof=1) / n_a + b.var(ddof=1) / n_b) ** 0.5)
    # One side constant (100 % in every seed): df is the other side's n - 1,
    # here 2, and t = 0.2 / (sd / sqrt(3)); Student's t with 2 df has the
    # closed form p = 1 - |t| / sqrt(2 + t^2).
    row, full = np.array([100.0, 99.6, 99.8]), np.array([100.0, 100.0, 100.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p, se = ablate.welch_p(row, full)
    t = 0.2 / (0.2 / 3 ** 0.5)
    assert se == pytest.approx(0.2 / 3 ** 0.5)
    assert p == pytest.approx(1 - t / (2 + t * t) ** 0.5, rel=1e-9)
    assert ablate.welch_p(full, full) == (1.0, 0.0)
    assert ablate.welch_p(full, full - 1)[0] == 0.0


@pytest.mark.slow  # four short trainings
def test_a_half_done_run_continues_from_its_last_epoch(tiny_words_h5, tmp_path):
    from cccl_lite.engine.checkpoint import resolve_config
    from cccl_lite.engine.recipes import RunOptions
    from cccl_lite.engine.train import train

    kw = dict(epochs=2, max_steps=1, seeds=1, only=["CCCL"])
    # The reference: the run done in one go.
    whole = ablate.run_ablations(tiny_words_h5, tmp_path / "a", tmp_path / "a.json", **kw)
    # A study killed after epoch 1: the same run's first epoch is on disk
    # (a config of 1 epoch continues as one of 2: only the length differs).
    def first_epoch(run_dir, ablation=None):
        config, recipe = resolve_config("lite", tiny_words_h5, ablation, epochs=1)
        train(config, recipe, tiny_words_h5, run_dir,
              RunOptions(seed=0, device="cpu", max_steps=1, quiet=True))
    first_epoch(tmp_path / "b" / "cccl-seed0")
    logs = []
    resumed = ablate.run_ablations(tiny_words_h5, tmp_path / "b", tmp_path / "b.json",
                                   log=logs.append, **kw)
    (w,), (r,) = whole["entries"], resumed["entries"]
    assert r["resumed_from_epoch"] == 1 and "resumed_from_epoch" not in w
    assert any("resuming from epoch 1" in line for line in logs)
    # Resuming is exact on the CPU: the same test recalls as the run in one go.
    assert (r["test"], r["truth"], r["siblings"]) == (w["test"], w["truth"], w["siblings"])
    assert (r["best_epoch"], r["last_epoch"]) == (w["best_epoch"], w["last_epoch"])
    # ... and the same weights, tensor by tensor (recalls alone could tie).
    a, b = (torch.load(tmp_path / d / "cccl-seed0" / "last.pt", weights_only=True)["model"]
            for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A last.pt of another run (another row's model) is not continued.
    first_epoch(tmp_path / "c" / "cccl-seed0", ablation="w/o POS")
    logs.clear()
    fresh = ablate.run_ablations(tiny_words_h5, tmp_path / "c", tmp_path / "c.json",
                                 log=logs.append, **kw)
    (f,) = fresh["entries"]
    assert any("training afresh" in line and "use_position" in line for line in logs)
    assert "resumed_from_epoch" not in f and f["test"] == w["test"]
