"""The diagnosis runner and the training options it switches (truth positives,
sibling batches, early stopping)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cccl_lite.studies import diagnose
from cccl_lite.model.cccl import CCCLConfig
from cccl_lite.engine.recipes import Recipe, recipe_fields
from cccl_lite.engine.train import RunOptions, Trainer, _Collate
from cccl_lite.data.dataset import SplitReader
from cccl_lite.data.truth import SplitTruth

from helpers import WORD_DIM, small


def small_run(**kw):
    """(model, recipe) of a small run (helpers.small at P = 8); ``kw``: fields of either."""
    return small(sim_dim=8, **kw)


def test_rows_are_unique_and_change_something():
    names = [r.name for r in diagnose.ROWS]
    assert len(set(names)) == len(names)
    assert names[0] == "reference"
    ref = diagnose.ROWS[0]
    for r in diagnose.ROWS[1:]:
        assert (r.config, r.options) != (ref.config, ref.options), r.name
        Recipe(**r.options)  # every option is a valid recipe choice
        for k in r.config:
            assert k == "ablation" or hasattr(CCCLConfig(), k) or k in recipe_fields(), k


def test_hardest_true_rate_by_hand():
    # Two images, four captions; captions 0, 1 belong to image 0, captions 2, 3 to image 1.
    caption_image = np.array([0, 0, 1, 1])
    truth = np.array([[1, 1, 0, 1], [0, 0, 1, 1]], bool)  # caption 3 is true of both
    sims = np.array([[0.9, 0.8, 0.1, 0.7], [0.2, 0.1, 0.9, 0.8]])
    # With all four captions in the batch, each caption's only negative image is
    # the other image: true of it only for caption 3 (image 0 is true of it).
    rate = diagnose.hardest_true_rate(sims, truth, caption_image, batch_size=4, batches=3)
    assert rate == pytest.approx(25.0)


def test_truth_collate_marks_every_true_pair_positive(tiny_words_h5):
    reader = SplitReader(tiny_words_h5, "train")
    truth = SplitTruth(tiny_words_h5, "train")
    items = [(int(reader.caption_image[k]), k) for k in range(0, 40, 3)]
    plain = _Collate(reader)(items)["positive_mask"]
    batch = _Collate(reader, truth)(items)
    want = truth.truth([i for i, _ in items], [k for _, k in items])
    for a, (i, _) in enumerate(items):
        for b, (j, k) in enumerate(items):
            assert bool(batch["positive_mask"][a, b]) == (i == j or bool(want[a, b]))
    assert batch["positive_mask"].sum() > plain.sum()  # some captions are true of others


def test_patience_stops_a_run_and_resume_keeps_it_stopped(tiny_words_h5, tmp_path, monkeypatch):
    val = iter([10.0, 12.0, 11.0, 9.0, 50.0, 60.0])

    def fake_validate(self):
        return {k: 0.0 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                 "t2i_r10")} | {"rsum": next(val)}, None

    monkeypatch.setattr(Trainer, "_validate", fake_validate)
    opts = dict(device="cpu", max_steps=1, quiet=True)
    config, recipe = small_run(epochs=6, warmup_epochs=None, patience=2)
    t = Trainer(config, recipe, tiny_words_h5, tmp_path / "run", RunOptions(**opts))
    t.fit()
    # Best at epoch 2 (12.0); epochs 3 and 4 do not improve: stop before epoch 5.
    assert [r["epoch"] for r in t.history] == [1, 2, 3, 4]
    assert t.best_epoch == 2
    again = Trainer(config, recipe, tiny_words_h5, tmp_path / "run",
                    RunOptions(**opts, resume=True))
    again.fit()
    assert again.epoch == 4  # nothing more was trained


def test_sibling_batches_with_truth_train(tiny_words_h5, tmp_path):
    opts = RunOptions(device="cpu", max_steps=2, quiet=True)
    t = Trainer(*small_run(epochs=1, coherence_reduction="per_item", warmup_epochs=0,
                           positives="truth", batching="siblings"),
                tiny_words_h5, tmp_path / "run", opts)
    t.fit()
    assert t.history[0]["negatives"] == "hardest"
    assert np.isfinite(t.history[0]["losses"]["total"])
    with pytest.raises(ValueError, match="batching"):
        Recipe(batching="groups")
    with pytest.raises(ValueError, match="positives"):
        Recipe(positives="all")
    with pytest.raises(ValueError, match="patience"):
        Recipe(patience=0)


def test_diagnosis_rows_are_recorded_and_kept(tiny_words_h5, tmp_path, monkeypatch):
    monkeypatch.setattr(diagnose, "ROWS", (
        diagnose.Row("reference", "r", options={"warmup_epochs": None}),
        diagnose.Row("λ 0", "l", {"coherence_weight": 0.0}, {"warmup_epochs": None})))
    monkeypatch.setattr(diagnose, "resolve_config",
                        lambda name, data, ablation=None, **kw: small_run(**kw))
    results = tmp_path / "d.json"
    out = diagnose.run_diagnosis(tiny_words_h5, tmp_path / "runs", results, epochs=1,
                                 max_steps=1, log=lambda s: None)
    assert [r["name"] for r in out["rows"]] == ["reference", "λ 0"]
    row = out["rows"][0]
    assert set(row["siblings"]) == {"binding", "relation", "random"}
    assert all(0 <= v <= 100 for v in row["siblings"].values())
    assert 0 <= row["truth"]["rsum"] <= 600 and row["val_curve"]
    assert row["truth"]["rsum"] >= row["test"]["rsum"]  # more matches, never fewer hits
    # A rerun keeps the rows; other settings are refused unless --overwrite.
    before = results.read_text()
    diagnose.run_diagnosis(tiny_words_h5, tmp_path / "runs", results, epochs=1, max_steps=1,
                           log=lambda s: None)
    assert json.loads(results.read_text())["rows"] == json.loads(before)["rows"]
    with pytest.raises(ValueError, match="other settings"):
        diagnose.run_diagnosis(tiny_words_h5, tmp_path / "runs", results, epochs=2,
                               max_steps=1, log=lambda s: None)
    with pytest.raises(ValueError, match="unknown row"):
        diagnose.run_diagnosis(tiny_words_h5, tmp_path / "runs", results, epochs=1,
                               only=["nope"], log=lambda s: None)


def test_sibling_exposure_counts_captions_that_meet_a_false_sibling(tiny_words_h5):
    truth = SplitTruth(tiny_words_h5, "train")
    # Independently: with one batch holding the whole split, a caption is
    # exposed iff some sibling image of its own makes it false.
    whole = truth.n_captions
    want = 0
    for k in range(truth.n_captions):
        own = truth.caption_image[k]
        sibs = [i for i in range(truth.n_images) if i != own and truth.group[i] == truth.group[own]]
        want += bool(sibs) and not all(truth.truth([i], [k])[0, 0] for i in sibs)
    for batching in ("random", "siblings"):
        got = diagnose.sibling_exposure(tiny_words_h5, batching, batch_size=whole)
        assert got == pytest.approx(100 * want / truth.n_captions)
    # In batches of 9 captions, sibling batches expose far more captions than a shuffle.
    assert (diagnose.sibling_exposure(tiny_words_h5, "siblings", 9)
            > 3 * diagnose.sibling_exposure(tiny_words_h5, "random", 9))
    with pytest.raises(ValueError, match="batching"):
        diagnose.sibling_exposure(tiny_words_h5, "groups", 9)


def test_sibling_gap_by_hand():
    from cccl_lite.data.difficulty import sibling_gap

    sims = np.array([[0.9, 0.2, 0.5], [0.4, 0.8, 0.6]])  # 2 images x 3 captions
    caption_image = np.array([0, 1, 0])
    pairs = {"relation": [(0, 1), (2, 1)], "binding": [(1, 0)], "random": []}
    got = sibling_gap(sims, pairs, caption_image)
    # caption 0: 0.9 - 0.4 = 0.5; caption 2: 0.5 - 0.6 = -0.1; caption 1: 0.8 - 0.2 = 0.6
    assert got["relation"] == pytest.approx({"mean_abs": 0.3, "mean": 0.2})
    assert got["binding"] == pytest.approx({"mean_abs": 0.6, "mean": 0.6})
    assert "random" not in got


@pytest.mark.slow  # encodes captions with MiniLM
@pytest.mark.parametrize("inputs", ["vectors", "ids"])
def test_reversed_relations_scores_each_caption_against_its_reversal(tmp_path, inputs):
    """The caption and its reversal, scored through the model's full forward
    pass (every image x every caption, then the diagonal), independently of
    score_pairs; the pairs counted by hand from the scene grammar."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cccl_lite.data.synthetic import build_caption, caption_holds
    from cccl_lite.data.truth import parse_caption
    from cccl_lite.engine.checkpoint import load_model
    from cccl_lite.studies.pretrained import FIRST_RECIPE, NAME, checkpoint_path
    from cccl_lite.data.vectors import cache_word_vectors, encode_words, load_encoder
    from cccl_lite.data.synthetic import make_synthetic

    path = make_synthetic(tmp_path / "tiny.h5", seed=2, size="tiny")
    tok, enc = load_encoder()
    cache_word_vectors(path, splits=["test"])
    # The first recipe's model reads MiniLM vectors, the shipped one word ids.
    model, config, vocab = load_model(checkpoint_path(FIRST_RECIPE if inputs == "vectors" else NAME))
    model.eval()
    assert config.use_bert == (inputs == "vectors")
    got = diagnose.reversed_relations(model, path, "test", tok, enc, vocab=vocab)

    reader = SplitReader(path, "test", words=inputs, vocab=vocab)
    truth = SplitTruth(path, "test")
    import h5py
    with h5py.File(path) as f:
        kinds = f["test/captions/kind"].asstr()[:]
    keep, rev = [], []
    for k in range(reader.n_captions):
        if kinds[k] != "relation":
            continue
        cap = parse_caption(reader.tokens[k], "relation")
        i = int(reader.caption_image[k])
        words, heads = build_caption("relation", cap.nps[::-1], cap.rel)
        scene = truth._scenes[i]
        if caption_holds(cap, scene) and not caption_holds(parse_caption(words, "relation"), scene):
            keep.append(k)
            rev.append((words, heads))
    assert got["pairs"] == len(keep) > 0
    from cccl_lite.data.parsing import heads_to_adjacency
    imgs = reader.images(reader.caption_image[keep])
    own = reader.captions(keep)
    m = max(len(w) for w, _ in rev)
    if inputs == "vectors":
        vecs = encode_words([w for w, _ in rev], tok, enc)
        words = torch.zeros(len(rev), m, vecs[0].shape[1])
    else:  # each reversed word's id in the model's vocabulary (1 = unknown)
        vecs = [[vocab.get(t, 1) for t in w] for w, _ in rev]
        words = torch.zeros(len(rev), m, dtype=torch.int64)
    mask = torch.zeros(len(rev), m, dtype=torch.bool)
    adj = torch.zeros(len(rev), m, m, dtype=torch.bool)
    for b, ((w, h), v) in enumerate(zip(rev, vecs)):
        words[b, :len(w)] = torch.as_tensor(np.asarray(v), dtype=words.dtype)
        mask[b, :len(w)] = True
        adj[b] = torch.from_numpy(heads_to_adjacency(h, size=m))
    with torch.no_grad():
        f_own = model(**imgs, **own)[0].diagonal()
        f_rev = model(**imgs, words=words, word_mask=mask, word_adjacency=adj)[0].diagonal()
    d = (f_own - f_rev).double().numpy()
    assert got["F"]["wins"] == pytest.approx(100 * np.mean(d > 0) + 50 * np.mean(d == 0))
    assert got["F"]["mean"] == pytest.approx(d.mean(), abs=1e-5)
    assert got["F"]["mean_abs"] == pytest.approx(np.abs(d).mean(), abs=1e-5)


@pytest.mark.slow
def test_an_oracle_row_trains_and_tests_on_the_oracle_copy(tiny_words_h5, tmp_path, monkeypatch):
    import h5py
    monkeypatch.setattr(diagnose, "ROWS", (
        diagnose.Row("side oracle", "o", options={"warmup_epochs": None}, oracle="side"),))
    seen = []

    def resolve(name, data, ablation=None, **kw):
        with h5py.File(data, "r") as f:
            word_dim = f["train/captions/word_vectors"].shape[1]
        seen.append((Path(data).name, word_dim))
        return small_run(**{**kw, "word_dim": word_dim})
    monkeypatch.setattr(diagnose, "resolve_config", resolve)
    out = diagnose.run_diagnosis(tiny_words_h5, tmp_path / "runs", tmp_path / "d.json",
                                 epochs=1, max_steps=1, log=lambda s: None)
    assert seen == [("oracle-side.h5", WORD_DIM + 4)]
    assert out["rows"][0]["oracle"] == "side"
    assert set(out["rows"][0]["siblings"]) == {"binding", "relation", "random"}


@pytest.mark.slow
def test_a_fit_row_fits_the_relation_pairs_of_each_split(tiny_words_h5, tmp_path, monkeypatch):
    from cccl_lite.data.difficulty import hard_negative_pairs
    monkeypatch.setattr(diagnose, "ROWS", (
        diagnose.Row("fit", "f", options={"warmup_epochs": None}, fit_steps=2),))
    monkeypatch.setattr(diagnose, "resolve_config", lambda name, data, ablation=None, **kw:
                        small_run(**kw))
    real, seen = diagnose.fit_sibling_pairs, []

    def spy(model, train, test, steps, **kw):
        seen.append(([list(map(int, p)) for p in train[1]], [list(map(int, p)) for p in test[1]],
                     train[0].split, test[0].split, steps))
        return real(model, train, test, steps, every=1, **kw)
    monkeypatch.setattr(diagnose, "fit_sibling_pairs", spy)
    out = diagnose.run_diagnosis(tiny_words_h5, tmp_path / "runs", tmp_path / "d.json",
                                 epochs=1, max_steps=1, log=lambda s: None)
    want = {s: [list(p) for p in hard_negative_pairs(tiny_words_h5, s)["relation"]]
            for s in ("train", "test")}
    assert seen == [(want["train"], want["test"], "train", "test", 2)]
    fit = out["rows"][0]["relation_fit"]
    assert fit["steps"] == 2 and [c["step"] for c in fit["curve"]] == [0, 1, 2]
    assert set(fit["curve"][0]["test"]) == {"F", "S", "O", "R"}
    assert set(fit["after"]) == {"test", "truth", "siblings"}
    assert fit["after"]["siblings"]["relation"] == pytest.approx(
        fit["curve"][-1]["test"]["F"], abs=0.06)  # both count F wins on all test pairs
