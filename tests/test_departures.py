"""How the lite preset differs from the paper as printed (cccl_lite.engine.recipes.DEPARTURES):
every differing field is listed, each piece of evidence is a recorded pair of rows
that differ in one thing, and the shipped record carries the list."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cccl_lite.studies import diagnose, sensitivity
from cccl_lite.model.cccl import CCCLConfig
from cccl_lite.engine.recipes import DEPARTURES, TrainOptions, departures, lite_options

from helpers import resolved_row

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "cccl_lite" / "results"
SHIPPED = ROOT / "cccl_lite" / "assets" / "lite-scenes-small-seed0.json"


def test_every_field_the_lite_preset_changes_is_listed():
    config = dataclasses.asdict(CCCLConfig.lite())
    options = lite_options().to_dict()
    # Independently, field by field: the paper's Table 1 config, and its recipe as
    # printed written out here (eq 33 from the start, image positives, random
    # batches, no early stopping, R@sum selection, no clipping).
    paper = dataclasses.asdict(CCCLConfig.paper())
    printed = {"warmup_epochs": 0, "positives": "image", "batching": "random",
               "patience": None, "select": "rsum", "sibling_weight": 1.0, "grad_clip": None}
    expected = {k for k in config if config[k] != paper[k]} | \
               {k for k, v in printed.items() if {**config, **options}[k] != v}
    listed = {f for d in departures(config, options) for f in d["fields"]}
    assert listed == expected
    # and the values each entry reports are the two sides
    for d in departures(config, options):
        for f, (was, now) in d["fields"].items():
            assert now == {**config, **options}[f]
            assert was == {**paper, **printed}.get(f, paper.get(f))


def test_a_change_no_entry_names_is_refused():
    config = dataclasses.asdict(CCCLConfig.lite(attention_temperature=5.0))
    with pytest.raises(ValueError, match="attention_temperature"):
        departures(config, lite_options().to_dict())


def test_the_paper_as_printed_has_no_departures():
    config = dataclasses.asdict(CCCLConfig.paper(grad_clip=None))
    options = TrainOptions(warmup_epochs=0).to_dict()
    assert departures(config, options) == []


def _merged(row, data, epochs=3):
    config, options = resolved_row(row, data, epochs)
    return {**config, **options}


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
    assert record["departures"] == departures(record["config"], record["options"])
    check = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "record_departures.py"),
                            "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
