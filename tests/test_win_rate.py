"""eq 33's in-batch win rate (issue 28): the function, the trainer's log, the
diagnosis rows that measure it and their seeds."""

import json

import pytest
import torch

from cccl_lite.studies import diagnose
from cccl_lite.model.loss import alignment_term, hardest_negative_wins
from cccl_lite.engine.train import train

from helpers import quick, small, small_config


def brute_force(scores, positive):
    """Loop over rows and columns, independent of the tensor code."""
    s, p = scores.tolist(), positive.tolist()
    n = len(s)
    out = [0, 0, 0, 0]
    for i in range(n):  # image row i against its negative captions
        negs = [s[i][j] for j in range(n) if not p[i][j]]
        if negs:
            out[1] += 1
            out[0] += s[i][i] > max(negs)
    for j in range(n):  # caption column j against its negative images
        negs = [s[i][j] for i in range(n) if not p[i][j]]
        if negs:
            out[3] += 1
            out[2] += s[j][j] > max(negs)
    return out


def test_by_hand():
    # 3 x 3; items 0 and 1 are two captions of one image (positive both ways).
    scores = torch.tensor([[0.9, 0.95, 0.1],
                           [0.2, 0.5, 0.6],
                           [0.3, 0.4, 0.7]])
    positive = torch.eye(3, dtype=torch.bool)
    positive[0, 1] = positive[1, 0] = True
    # row 0: only negative 0.1 -> wins; row 1: 0.5 vs 0.6 -> loses; row 2: 0.7 vs 0.4 -> wins.
    # column 0: only negative 0.3 -> 0.9 wins; column 1: 0.5 vs 0.4 -> wins;
    # column 2: 0.7 vs max(0.1, 0.6) -> wins.
    assert hardest_negative_wins(scores, positive).tolist() == [2, 3, 3, 3]


def test_tie_loses_and_rows_without_negatives_do_not_count():
    scores = torch.full((2, 2), 0.5)  # a flat batch: every positive ties
    assert hardest_negative_wins(scores).tolist() == [0, 2, 0, 2]
    everything = torch.ones(2, 2, dtype=torch.bool)
    assert hardest_negative_wins(scores, everything).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("seed", range(5))
def test_against_a_loop_and_against_eq_33(seed):
    g = torch.Generator().manual_seed(seed)
    b = 7
    scores = (torch.rand(b, b, generator=g) * 4).round() / 4  # coarse: many ties
    image = torch.randint(0, 4, (b,), generator=g)
    positive = image[:, None] == image[None, :]  # captions of the same image
    assert hardest_negative_wins(scores, positive).tolist() == brute_force(scores, positive)
    # The hardest negative eq 33 uses: the hinge of alignment_term, summed over
    # image rows, is 0 exactly when every row wins by more than Δ; row by row,
    # positives shifted down by Δ win exactly where the row's hinge is 0.
    margin = 0.25
    negs = scores.masked_fill(positive, float("-inf"))
    row_hinge = (margin - scores.diagonal() + negs.amax(1)).clamp(min=0)
    has_neg = torch.isfinite(negs.amax(1))
    wins = hardest_negative_wins(scores - margin * torch.eye(b), positive)
    assert int(wins[0]) == int(((row_hinge == 0) & has_neg).sum()) - int(
        ((margin - scores.diagonal() + negs.amax(1)) == 0).sum())
    assert alignment_term(scores, margin, positive) >= float(row_hinge.sum())


def test_trainer_logs_the_epoch_win_rate(tiny_words_h5, tmp_path):
    train(*small(), tiny_words_h5, tmp_path / "run", quick())
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        w = r["win_rate"]
        assert set(w) == {"images", "captions", "both"}
        assert all(0 <= v <= 100 for v in w.values())
        lo, hi = sorted((w["images"], w["captions"]))
        assert lo - 1e-9 <= w["both"] <= hi + 1e-9  # a weighted mean of the two


def _effective(row):
    # What run_row trains: the config overrides on top of its fixed base, and
    # the paper's recipe with the row's options on top.
    config = {"coherence_reduction": "sum", "centre_scale": 0.0, "word_gru": False,
              "use_bert": True, **row.config}
    return config, {**diagnose._row_options(row), "oracle": row.oracle,
                    "fit_steps": row.fit_steps}


def test_rows_with_against_change_exactly_one_thing():
    by_name = {r.name: r for r in diagnose.ROWS}
    with_against = [r for r in diagnose.ROWS if r.against is not None]
    assert {r.name for r in with_against} >= {
        "warm-up 1, hardest", "warm-up 1, hardest, λ 0", "warm-up 1, hardest, L_c per item",
        "hardest, B 8", "hardest, λ 0, B 8"}
    for row in with_against:
        base = by_name[row.against]
        (c1, o1), (c0, o0) = _effective(row), _effective(base)
        changed = ({k for k in c1.keys() | c0.keys() if c1.get(k) != c0.get(k)}
                   | {k for k in o1.keys() | o0.keys() if o1.get(k) != o0.get(k)})
        assert len(changed) == 1, (row.name, changed)
    expected = {"warm-up 1, hardest": ("warmup_epochs", 1),
                "warm-up 1, hardest, λ 0": ("warmup_epochs", 1),
                "warm-up 1, hardest, L_c per item": ("warmup_epochs", 1),
                "hardest, B 8": ("batch_size", 8), "hardest, λ 0, B 8": ("batch_size", 8)}
    for name, (key, value) in expected.items():
        c, o = _effective(by_name[name])
        assert {**c, **o}[key] == value


def test_other_seeds_are_their_own_entries(tmp_path, monkeypatch):
    data = tmp_path / "scenes.h5"
    data.write_bytes(b"x" * 10)
    calls = []

    def fake_row(row, data, out_dir, epochs, seed=0, max_steps=None, cache=None,
                 study_seed=None):
        calls.append((row.name, seed))
        return {"name": row.name, **({} if seed == study_seed else {"seed": seed}),
                "val_rsum": 1.0, "test": {"rsum": float(seed)}, "truth": {"rsum": 0.0},
                "siblings": {}, "win_rate": {"both": [50.0]}, "seconds": 0.0}

    monkeypatch.setattr(diagnose, "run_row", fake_row)
    monkeypatch.setattr(diagnose, "baselines", lambda data, seed=0: {"floor": 1})
    results = tmp_path / "diagnosis.json"
    quiet = dict(log=lambda *a: None)
    diagnose.run_diagnosis(data, tmp_path / "runs", results, only=["hardest", "λ 0"], **quiet)
    before = json.loads(results.read_text())["rows"]
    assert calls == [("hardest", 0), ("λ 0", 0)]
    # Seeds 0 and 1 of one row: seed 0 is already there, only seed 1 runs.
    out = diagnose.run_diagnosis(data, tmp_path / "runs", results, only=["hardest"],
                                 seeds=[0, 1], **quiet)
    assert calls[2:] == [("hardest", 1)]
    rows = [(r["name"], r.get("seed")) for r in out["rows"]]
    assert rows == [("λ 0", None), ("hardest", None), ("hardest", 1)]  # ROWS' order
    assert [r for r in out["rows"] if "seed" not in r] == before  # untouched
    assert out["settings"]["seed"] == 0
    # And nothing runs again.
    diagnose.run_diagnosis(data, tmp_path / "runs", results, only=["hardest"], seeds=[1, 0],
                           **quiet)
    assert len(calls) == 3


def test_records_of_rows_this_code_does_not_know_are_kept(tmp_path, monkeypatch):
    # A later commit's runner wrote a row this ROWS lacks: rewriting the file keeps it.
    data = tmp_path / "scenes.h5"
    data.write_bytes(b"x" * 10)
    results = tmp_path / "diagnosis.json"
    settings = diagnose._settings(data, 3, None, 0)
    foreign = {"name": "a row of a later commit", "test": {"rsum": 1.0}}
    results.write_text(json.dumps({"settings": settings, "baselines": {"floor": 1},
                                   "rows": [foreign]}))
    monkeypatch.setattr(diagnose, "run_row", lambda row, *a, **k: {
        "name": row.name, "val_rsum": 1.0, "test": {"rsum": 2.0}, "truth": {"rsum": 0.0},
        "siblings": {}, "win_rate": {"both": [50.0]}, "seconds": 0.0})
    out = diagnose.run_diagnosis(data, tmp_path / "runs", results, only=["hardest"],
                                 log=lambda *a: None)
    assert [r["name"] for r in out["rows"]] == ["hardest", "a row of a later commit"]
