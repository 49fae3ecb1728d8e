"""Sec. 4.4's sensitivity grid (cccl_lite.studies.sensitivity): each row changes one thing
of the centre point, the centre is the lite preset, and the runner goes seed by seed."""

import json

import pytest

from cccl_lite.studies import diagnose, sensitivity
from cccl_lite.engine.checkpoint import resolve_config

from helpers import resolved_row, small

EPOCHS = 3


def _resolved(row, data):
    return resolved_row(row, data, EPOCHS)


def test_the_centre_is_the_lite_preset_at_the_budget(tiny_words_h5):
    config, recipe = _resolved(sensitivity.CENTRE, tiny_words_h5)
    # Independently: the lite preset as `train --config lite` builds it, with
    # only the study's budget changed (EPOCHS epochs, no learning-rate drop).
    lite = resolve_config("lite", tiny_words_h5, epochs=EPOCHS, lr_decay_epoch=EPOCHS)
    assert config == lite.model.to_dict()
    assert (config["sim_dim"], recipe["coherence_weight"]) == (64, 0.5)
    assert recipe["coherence_reduction"] == "per_item" and config["use_bert"] is False
    # the lite recipe as the study was recorded: the sum over negatives in every epoch
    assert recipe == lite.recipe.replace(warmup_epochs=None).to_dict()


def test_each_row_changes_exactly_one_thing_of_the_centre(tiny_words_h5):
    centre = {k: v for half in _resolved(sensitivity.CENTRE, tiny_words_h5) for k, v in half.items()}
    seen = {"sim_dim": set(), "coherence_weight": set()}
    for row in sensitivity.ROWS[1:]:
        config = {k: v for half in _resolved(row, tiny_words_h5) for k, v in half.items()}
        changed = {k for k in centre if config[k] != centre[k]}
        assert len(changed) == 1, (row.name, changed)
        (key,) = changed
        assert key in seen, (row.name, key)
        # The name says the value: "P 16" or "λ 0.25".
        label, value = row.name.split(" ")
        assert (label, float(value)) == ({"sim_dim": "P", "coherence_weight": "λ"}[key],
                                         config[key])
        seen[key].add(config[key])
        assert row.against == sensitivity.CENTRE.name
    # The paper's grids, P around its chosen 256 = 64 here, λ plus 0.
    assert seen["sim_dim"] | {64} == {1, 16, 32, 64, 128}
    assert seen["coherence_weight"] | {0.5} == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert len({r.name for r in sensitivity.ROWS}) == len(sensitivity.ROWS) == 9


def test_sweep_collects_each_axis_with_the_centre_in_both():
    def rec(p, lam, seed=None):
        return {"name": "x", "config": {"sim_dim": p, "coherence_weight": lam},
                **({} if seed is None else {"seed": seed})}
    rows = [rec(64, 0.5), rec(64, 0.5, 1), rec(16, 0.5), rec(64, 0.0), rec(64, 1.0, 1)]
    P = sensitivity.sweep({"rows": rows}, "P")
    lam = sensitivity.sweep({"rows": rows}, "λ")
    assert [(v, len(r)) for v, r in P] == [(16, 1), (64, 2)]
    assert [(v, len(r)) for v, r in lam] == [(0.0, 1), (0.5, 2), (1.0, 1)]
    with pytest.raises(ValueError, match="axis"):
        sensitivity.sweep({"rows": rows}, "d")


def test_the_runner_goes_seed_by_seed_into_its_own_file(tiny_words_h5, tmp_path, monkeypatch):
    rows = (sensitivity.CENTRE, sensitivity.ROWS[1])
    monkeypatch.setattr(sensitivity, "ROWS", rows)
    monkeypatch.setattr(diagnose, "resolve_config", lambda name, data, ablation=None, **kw:
                        small(**kw))
    monkeypatch.setattr(diagnose, "baselines", lambda data, seed=0: {"stub": True})
    lines = []
    results = tmp_path / "s.json"
    out = sensitivity.run_sensitivity(tiny_words_h5, tmp_path / "runs", results, epochs=1,
                                      seeds=[0, 1], max_steps=1, log=lines.append)
    ran = [line.split(":")[0] for line in lines if "(seed" in line]
    assert ran == [f"{r.name} (seed {s})" for s in (0, 1) for r in rows]
    assert out["settings"]["study"] == "sensitivity"
    assert [(r["name"], r.get("seed", 0)) for r in out["rows"]] == \
        [(rows[0].name, 0), (rows[0].name, 1), (rows[1].name, 0), (rows[1].name, 1)]
    assert [sensitivity.point(r) for r in out["rows"]][2] == (rows[1].config["sim_dim"], 0.5)
    # A rerun skips what is done; the diagnosis refuses the file (other settings).
    lines.clear()
    sensitivity.run_sensitivity(tiny_words_h5, tmp_path / "runs", results, epochs=1,
                                seeds=[0, 1], max_steps=1, log=lines.append)
    assert not [line for line in lines if "(seed" in line]
    assert json.loads(results.read_text())["rows"] == out["rows"]
    with pytest.raises(ValueError, match="other settings"):
        diagnose.run_diagnosis(tiny_words_h5, tmp_path / "runs", results, epochs=1,
                               max_steps=1, log=lambda s: None)
