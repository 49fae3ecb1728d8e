"""How the lite preset differs from the paper as printed (cccl_lite.engine.departures.DEPARTURES):
every differing field is listed, each piece of evidence is a recorded pair of rows
that differ in one thing, and the shipped record carries the list."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cccl_lite.studies import diagnose, sensitivity
from cccl_lite.model.cccl import CCCLConfig
from cccl_lite.engine.departures import DEPARTURES, departures
from cccl_lite.engine.recipes import PRESETS, Recipe, settings_of

from helpers import resolved_row

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "cccl_lite" / "results"
SHIPPED = ROOT / "cccl_lite" / "assets" / "lite-scenes-small-seed0.json"


def test_every_field_the_lite_preset_changes_is_listed():
    config, recipe = PRESETS["lite"]
    lite = {**config.to_dict(), **recipe.to_dict()}
    # Independently, field by field: the paper's Table 1 written out here (sizes,
    # Adam at 2e-4 cut at 15, 30 epochs, B 128, Δ 0.2, λ 0.5 summed over the
    # B² pairs, d_E 768 BERT words, eq 8 as printed) and its recipe as printed
    # (eq 33 from the start, image positives, random batches, no early
    # stopping, R@sum selection, no clipping).
    paper = {**CCCLConfig().to_dict(),
             "region_dim": 2048, "num_regions": 36, "word_dim": 768, "embed_dim": 1024,
             "sim_dim": 256, "use_bert": True, "centre_scale": 0.0, "word_gru": False,
             "lr": 2e-4, "lr_decay_epoch": 15, "epochs": 30, "batch_size": 128, "margin": 0.2,
             "coherence_weight": 0.5, "coherence_reduction": "sum",
             "warmup_epochs": 0, "positives": "image", "batching": "random",
             "patience": None, "select": "rsum", "sibling_weight": 1.0, "grad_clip": None}
    expected = {k for k in lite if lite[k] != paper[k]}
    listed = {f for d in departures(config, recipe) for f in d["fields"]}
    assert listed == expected
    # and the values each entry reports are the two sides
    for d in departures(config, recipe):
        for f, (was, now) in d["fields"].items():
            assert (was, now) == (paper[f], lite[f])


def test_a_change_no_entry_names_is_refused():
    config, recipe = PRESETS["lite"].replace(attention_temperature=5.0)
    with pytest.raises(ValueError, match="attention_temperature"):
        departures(config, recipe)


def test_the_paper_as_printed_has_no_departures():
    assert departures(*PRESETS["as printed"]) == []
    assert departures(CCCLConfig(), Recipe(grad_clip=None, warmup_epochs=0)) == []
    # the paper preset departs from it by its clipping and its warm-up epoch
    assert [d["what"] for d in departures(*PRESETS["paper"])] == ["gradient clipping",
                                                                  "one warm-up epoch"]


def _merged(row, data, epochs=3):
    config, recipe = resolved_row(row, data, epochs)
    return {**config, **recipe}


def test_each_piece_of_evidence_is_a_recorded_one_change_pair(tiny_words_h5):
    rows = {r.name: r for r in (*diagnose.ROWS, *sensitivity.ROWS)}
    for d in DEPARTURES:
        if d.evidence is None:
            continue
        file, row, against = d.evidence
        recorded = {r["name"] for r in json.loads((RESULTS / file).read_text())["rows"]
                    if "seed" not in r}
        assert {row, against} <= recorded, (d.what, file)
        a, b = _merged(rows[row], tiny_words_h5), _merged(rows[against], tiny_words_h5)
        changed = {k for k in a if a[k] != b[k]}
        if "ablation" in changed:
            # One change: Table 6's "w/o BERT", which sets use_bert (and the word
            # width to the Bi-GRU's, from the data): the Bi-GRU words' evidence.
            assert a["ablation"] == "w/o BERT" and changed <= {"ablation", "use_bert", "word_dim"}
            assert "use_bert" in d.fields, d.what
            continue
        assert len(changed) == 1, (d.what, changed)
        # and the one change is a field this departure names
        (key,) = changed
        assert key in d.fields, (d.what, key)


def test_the_shipped_record_lists_its_departures():
    record = json.loads(SHIPPED.read_text())
    config, recipe, _ = settings_of(record)  # a record of the format before the Recipe
    assert record["departures"] == departures(config, recipe)
    check = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "record_departures.py"),
                            "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
