"""The dual encoder (cccl_lite.engine.dual) and its study's refusals (cccl_lite.studies.dual_study)."""

import json
import math

import pytest
import torch

from cccl_lite.engine.dual import MAX_SCALE, DualEncoder, box_centres, info_nce
from cccl_lite.files import OutputError


def test_info_nce_matches_the_hand_formula_with_one_positive_each():
    sims = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    # by hand, scale 10: rows (image -> captions), then columns (caption -> images)
    rows = [-math.log(math.exp(9) / (math.exp(9) + math.exp(1))),
            -math.log(math.exp(8) / (math.exp(2) + math.exp(8)))]
    cols = [-math.log(math.exp(9) / (math.exp(9) + math.exp(2))),
            -math.log(math.exp(8) / (math.exp(1) + math.exp(8)))]
    want = (sum(rows) / 2 + sum(cols) / 2) / 2
    assert float(info_nce(sims, 10.0)) == pytest.approx(want, rel=1e-6)
    # CLIP's pseudocode: cross-entropy against the diagonal, both ways, averaged
    labels = torch.arange(2)
    clip = (torch.nn.functional.cross_entropy(sims * 10, labels)
            + torch.nn.functional.cross_entropy(sims.T * 10, labels)) / 2
    assert float(info_nce(sims, 10.0)) == pytest.approx(float(clip), rel=1e-6)


def test_info_nce_sums_the_probabilities_of_several_positives():
    # rows 0 and 1 are the same image (two captions of it in the batch)
    sims = torch.tensor([[0.5, 0.4, 0.0], [0.5, 0.4, 0.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    pos = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    e = [[math.exp(2 * v) for v in row] for row in sims.tolist()]
    rows = [-math.log((e[i][0] * pos[i, 0] + e[i][1] * pos[i, 1] + e[i][2] * pos[i, 2])
                      / sum(e[i])) for i in range(3)]
    cols = [-math.log(sum(e[i][j] for i in range(3) if pos[i, j])
                      / sum(e[i][j] for i in range(3))) for j in range(3)]
    want = (sum(rows) / 3 + sum(cols) / 3) / 2
    assert float(info_nce(sims, 2.0, pos)) == pytest.approx(want, rel=1e-6)


def test_temperature_starts_at_clip_s_and_is_clamped_at_100():
    model = DualEncoder(vocab_size=5, region_dim=4, dim=8, word_dim=4)
    assert float(model.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.log_scale.fill_(math.log(1000.0))
    assert float(model.scale().detach()) == pytest.approx(MAX_SCALE, rel=1e-6)
    with torch.no_grad():
        model.log_scale.fill_(math.log(50.0))
    assert float(model.scale().detach()) == pytest.approx(50.0, rel=1e-6)


def test_box_centres_are_the_middles_of_the_boxes():
    pos = torch.tensor([[0.1, 0.2, 0.5, 0.6, 0.16, 0.5]])
    assert box_centres(pos)[0].tolist() == pytest.approx([0.3, 0.4])


def _images(n=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(2, n, d, generator=g)
    positions = torch.rand(2, n, 6, generator=g)
    mask = torch.ones(2, n, dtype=torch.bool)
    return regions, positions, mask


def test_a_padded_region_changes_nothing():
    torch.manual_seed(0)
    model = DualEncoder(vocab_size=5, region_dim=4, dim=8, word_dim=4).eval()
    regions, positions, mask = _images()
    mask[0, 2] = False
    base = model.encode_images(regions, positions, mask)
    regions2, positions2 = regions.clone(), positions.clone()
    regions2[0, 2] += 100.0
    positions2[0, 2] = 0.9
    assert torch.allclose(model.encode_images(regions2, positions2, mask), base, atol=1e-6)
    # and it equals the image encoded without that region at all
    alone = model.encode_images(regions[:1, :2], positions[:1, :2], mask[:1, :2])
    assert torch.allclose(alone, base[:1], atol=1e-6)
    # a valid region does count
    mask[0, 2] = True
    assert not torch.allclose(model.encode_images(regions2, positions2, mask), base, atol=1e-3)


def test_shapes_unit_length_and_padded_words_change_nothing():
    torch.manual_seed(0)
    model = DualEncoder(vocab_size=6, region_dim=4, dim=8, word_dim=4).eval()
    regions, positions, mask = _images()
    words = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [2, 2, 2, 2, 1]])
    wmask = words > 0
    v = model.encode_images(regions, positions, mask)
    t = model.encode_texts(words, wmask)
    assert v.shape == (2, 8) and t.shape == (3, 8)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2)) and torch.allclose(t.norm(dim=-1),
                                                                          torch.ones(3))
    sims = model(regions, positions, mask, words, wmask)
    assert sims.shape == (2, 3)
    assert torch.allclose(sims, v @ t.T)
    # the same captions with less padding: the same embeddings
    assert torch.allclose(model.encode_texts(words[:2, :3], wmask[:2, :3]), t[:2], atol=1e-6)


def test_the_study_refuses_a_results_file_of_other_settings(tiny_words_h5, tmp_path):
    from cccl_lite.studies.dual_study import run_dual_study

    out = tmp_path / "dual.json"
    out.write_text(json.dumps({"settings": {"max_epochs": 1}, "seeds": []}))
    with pytest.raises(OutputError, match="--overwrite"):
        run_dual_study(tiny_words_h5, out, seeds=(0,))
    assert json.loads(out.read_text()) == {"settings": {"max_epochs": 1}, "seeds": []}
    ckpt = tmp_path / "dual.pt"
    ckpt.write_bytes(b"old")
    with pytest.raises(OutputError, match="--overwrite"):
        run_dual_study(tiny_words_h5, tmp_path / "new.json", seeds=(0,), checkpoint=ckpt)
    assert ckpt.read_bytes() == b"old"


def test_two_stage_takes_another_first_stage():
    """scoring.two_stage_scores(first_stage=...): the hand-made shortlist of
    tests/test_perf.py's hand case, given as scores instead of Branch 1's."""
    from helpers import MemoryReader, tiny_config

    from cccl_lite.engine import evaluate as ev
    from cccl_lite.model.cccl import CCCL

    first = torch.tensor([[.80, .10, .90, .05, .70, .00],
                          [.20, .60, .30, .90, .10, .20],
                          [.10, .05, .20, .30, .95, .40]])
    cfg = tiny_config()
    torch.manual_seed(0)
    model = CCCL(cfg).eval()
    reader = MemoryReader(cfg, n_img=3, cpi=2, seed=3)
    images, texts = ev.encode_all_images(model, reader), ev.encode_all_texts(model, reader)
    two = ev.two_stage_scores(model, images, texts, 1, first_stage=first)
    kept = {(0, 2), (1, 3), (2, 4), (0, 0), (1, 1), (2, 5)}
    assert {tuple(p) for p in (two.i2t | two.t2i).nonzero().tolist()} == kept
    full = ev.score_matrix(model, images, texts)
    for i, j in kept:
        assert float(two.sims[i, j]) == pytest.approx(float(full[i, j]), abs=1e-5)
    with pytest.raises(ValueError, match="first_stage must be"):
        ev.two_stage_scores(model, images, texts, 1, first_stage=first[:2])


@pytest.mark.usefixtures("single_thread")
def test_the_study_writes_its_rows_resumes_and_ships_a_loadable_checkpoint(
        tiny_words_h5, tmp_path, monkeypatch):
    from cccl_lite.studies import dual_study
    from cccl_lite.engine.dual import load_dual

    monkeypatch.setitem(dual_study.SETTINGS, "max_epochs", 1)
    monkeypatch.setitem(dual_study.SETTINGS, "bag_of_words_epochs", 1)
    out, ckpt = tmp_path / "dual.json", tmp_path / "dual.pt"
    result = dual_study.run_dual_study(tiny_words_h5, out, seeds=(0,), checkpoint=ckpt,
                                       log=lambda *a: None)
    on_disk = json.loads(out.read_text())
    assert on_disk["seeds"] == result["seeds"] and [r["seed"] for r in on_disk["seeds"]] == [0]
    assert on_disk["settings"]["max_epochs"] == 1 and "commit" in on_disk["provenance"]
    for rec in (on_disk["cccl"], on_disk["seeds"][0]["dual_encoder"],
                on_disk["seeds"][0]["bag_of_words"]):
        assert set(rec["siblings"]) == {"binding", "relation", "random"}
        assert rec["pairs"] == 15 * 75  # the tiny test split
        # seconds are rounded to 5 decimals, the rate computed before rounding
        assert rec["pairs"] / rec["pairs_per_second"] == pytest.approx(rec["seconds"], abs=6e-6)
    model, vocab = load_dual(ckpt)
    assert model.config["dim"] == dual_study.SETTINGS["dim"] and len(vocab) > 1
    # A rerun with the same settings trains nothing for a seed it holds.
    monkeypatch.setattr(dual_study, "run_seed", lambda *a, **k: pytest.fail("retrained"))
    assert dual_study.run_dual_study(tiny_words_h5, out, seeds=(0,))["seeds"] == result["seeds"]
    # The CCCL row names the shipped model it measured, and is measured again
    # only when the package ships another one.
    from cccl_lite.studies.pretrained import provenance
    assert on_disk["cccl"]["model_sha256"] == provenance()["model_sha256"]
    monkeypatch.setattr(dual_study, "measure_cccl", lambda *a, **k: pytest.fail("remeasured"))
    dual_study.run_dual_study(tiny_words_h5, out, seeds=(0,))
    stale = json.loads(out.read_text())
    stale["cccl"]["model_sha256"] = "0" * 64  # as if another model had been shipped since
    out.write_text(json.dumps(stale))
    new = {"model_sha256": "new", "test": {"rsum": 0.0}, "pairs_per_second": 1.0}
    monkeypatch.setattr(dual_study, "measure_cccl", lambda *a, **k: new)
    assert dual_study.run_dual_study(tiny_words_h5, out, seeds=(0,),
                                     log=lambda *a: None)["cccl"] == new
