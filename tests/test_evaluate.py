"""Evaluation (eqs 32, 35-36) checked against independent computations.

References: the training forward ``model(...)[0]`` on the full batch (for the
chunked score matrix and retrieval), and ranks counted by a Python loop over
queries (for the protocols). CLI runs go through ``python -m cccl_lite`` on a
tiny synthetic file with random word vectors written here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cccl_lite.engine import evaluate as ev
from cccl_lite.data.dataset import SplitReader
from cccl_lite.data.synthetic import make_synthetic
from cccl_lite.engine.metrics import KEYS
from cccl_lite.model.cccl import CCCL, CCCLConfig

from helpers import WORD_DIM, MemoryReader, add_word_vectors, brute_force_recalls, synthetic_config, lite_vectors

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 30
TOL = dict(atol=1e-10, rtol=1e-9)


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(**kw) -> CCCLConfig:
    return lite_vectors(region_dim=10, word_dim=8, embed_dim=6, sim_dim=12,
                           vocab_size=VOCAB, **kw)


def build(cfg, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return CCCL(cfg).to(dtype).eval()


# ---- chunked scoring == the training forward --------------------------------

CONFIGS = [None, "w/o C-GRU", "w/o B-3", "w/o BERT", "w/o S-NLP", "w/o B-1", "w/o B-2"]


@pytest.mark.parametrize("ablation", CONFIGS)
def test_chunked_scores_equal_the_training_forward(ablation):
    cfg = tiny_config() if ablation is None else tiny_config().with_ablation(ablation)
    model, reader = build(cfg), MemoryReader(cfg, n_img=5, cpi=2)
    expected = reader.forward(model)
    images = ev.encode_all_images(model, reader, batch_size=2)
    texts = ev.encode_all_texts(model, reader, batch_size=3)
    assert texts.t.shape[1] == reader.words.shape[1]  # batches padded to the longest
    for image_chunk, text_chunk in [(None, None), (1, 1), (2, 3), (5, 10), (3, 4), (4, 1)]:
        got = ev.score_matrix(model, images, texts, image_chunk, text_chunk, dtype=torch.float64)
        torch.testing.assert_close(got, expected, **TOL)


def test_scoring_reuses_the_per_item_gru_parts():
    """Eq 26's node projections and cross states are computed at encoding, never per block."""
    cfg = tiny_config()
    model, reader = build(cfg), MemoryReader(cfg)
    images = ev.encode_all_images(model, reader, batch_size=2)
    texts = ev.encode_all_texts(model, reader, batch_size=2)
    assert images.gru_input is not None and texts.cross_state is not None
    calls = []
    for gru in (model.visual_gru, model.text_gru):
        for name in ("input_projection", "cross_state"):
            setattr(gru, name, lambda *a, _n=name: calls.append(_n))
    got = ev.score_matrix(model, images, texts, 2, 3, dtype=torch.float64)
    assert calls == []
    for gru in (model.visual_gru, model.text_gru):
        del gru.input_projection, gru.cross_state
    torch.testing.assert_close(got, reader.forward(model), **TOL)


def test_bf16_autocast_stays_close_and_returns_float32():
    cfg = tiny_config()
    model, reader = build(cfg, dtype=torch.float32), MemoryReader(cfg)
    reader.regions, reader.positions, reader.words = (
        reader.regions.float(), reader.positions.float(), reader.words.float())
    images = ev.encode_all_images(model, reader, amp=True)
    texts = ev.encode_all_texts(model, reader, amp=True)
    got = ev.score_matrix(model, images, texts, 2, 3, amp=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reader.forward(model), atol=0.05, rtol=0)


# ---- protocols == brute-force ranks -----------------------------------------


def random_sims(n_img, cpi, seed):
    """Scores with some signal on the ground truth and ties (rounded to 0.1)."""
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(n_img), cpi)
    s = rng.normal(size=(n_img, n_img * cpi)) + 1.5 * (owner[None, :] == np.arange(n_img)[:, None])
    return np.round(s, 1), owner


def assert_recalls(got, expected):
    assert set(got) == set(KEYS)
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


@pytest.mark.parametrize("protocol", [None, "f30k", "coco5k"])
def test_all_image_protocols_equal_brute_force(protocol):
    sims, owner = random_sims(20, 5, seed=1)
    recalls, note = ev.protocol_recalls(sims, 5, protocol, fold_size=4)
    assert_recalls(recalls, brute_force_recalls(sims, owner))
    # 20 images are 5 folds of 4 (coco5k's size) but not one fold (f30k's).
    assert (note is None) == (protocol in (None, "coco5k"))
    if protocol == "f30k":
        assert "all 20 images" in note
    _, note = ev.protocol_recalls(sims, 5, protocol, fold_size=20)
    assert (note is None) == (protocol in (None, "f30k"))


def test_coco1k_is_the_mean_over_five_folds_of_brute_force():
    sims, owner = random_sims(20, 5, seed=2)
    recalls, _ = ev.protocol_recalls(sims, 5, "coco1k", fold_size=4)
    folds = [brute_force_recalls(sims[f * 4:(f + 1) * 4, f * 20:(f + 1) * 20], owner[:20] % 4)
             for f in range(5)]
    expected = {k: float(np.mean([r[k] for r in folds])) for k in KEYS[:-1]}
    expected["rsum"] = sum(expected.values())
    assert_recalls(recalls, expected)
    with pytest.raises(ValueError, match="5 folds of 3 images = 15 images; this split has 20"):
        ev.protocol_recalls(sims, 5, "coco1k", fold_size=3)


@pytest.mark.parametrize("protocol", [None, "coco1k"])
def test_evaluate_split_equals_brute_force_on_the_forward(protocol):
    cfg = tiny_config()
    model = build(cfg)
    # Captions not grouped by image in the file: ownership comes from captions/image.
    owner = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 2))
    reader = MemoryReader(cfg, n_img=10, caption_image=owner)
    forward = reader.forward(model)
    model.train()
    recalls, sims = ev.evaluate_split(model, reader, batch_size=4, protocol=protocol,
                                      fold_size=2)
    assert model.training  # restored
    torch.testing.assert_close(sims.double(), forward, atol=1e-6, rtol=0)
    if protocol is None:
        expected = brute_force_recalls(sims.numpy(), owner)
    else:
        folds = []
        for f in range(5):
            cols = np.flatnonzero(owner // 2 == f)
            folds.append(brute_force_recalls(sims.numpy()[2 * f:2 * f + 2][:, cols],
                                             owner[cols] - 2 * f))
        expected = {k: float(np.mean([r[k] for r in folds])) for k in KEYS[:-1]}
        expected["rsum"] = sum(expected.values())
    assert_recalls(recalls, expected)


def test_protocol_errors_come_before_any_scoring(tmp_path):
    cfg = tiny_config()
    model, reader = build(cfg), MemoryReader(cfg, n_img=5)
    reader.fail = True
    with pytest.raises(ValueError, match="coco1k needs 5 folds of 1000 images"):
        ev.evaluate_split(model, reader, protocol="coco1k")
    with pytest.raises(ValueError, match="unknown protocol"):
        ev.evaluate_split(model, reader, protocol="f8k")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ev.evaluate_split(model, reader, save_sims=tmp_path / "no" / "sims.npy")
    uneven = MemoryReader(cfg, n_img=3, caption_image=[0, 0, 1, 2, 2, 1, 1])
    uneven.fail = True
    with pytest.raises(ValueError, match="same number of captions"):
        ev.evaluate_split(model, uneven)


def test_save_sims_round_trip(tmp_path):
    cfg = tiny_config()
    model, reader = build(cfg), MemoryReader(cfg)
    out = tmp_path / "sims.npy"
    out.write_bytes(b"old")  # replaced, not appended to
    _, sims = ev.evaluate_split(model, reader, save_sims=out)
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.shape == (5, 10)
    np.testing.assert_array_equal(saved, sims.numpy())
    np.testing.assert_allclose(saved, reader.forward(model).numpy(), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sims.npy"]  # no temp file left


# ---- a tiny synthetic file with random word vectors ---------------------------


def save_checkpoint(path, cfg, seed=0):
    torch.manual_seed(seed)
    torch.save({"model": CCCL(cfg).state_dict(), "config": cfg.to_dict(), "vocab": None,
                "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = make_synthetic(root / "tiny.h5", seed=0, size="tiny")
    add_word_vectors(data)
    return root, data


def test_retrieve_top_k_equals_argsort_of_the_forward(synthetic):
    _, data = synthetic
    reader = SplitReader(data, "test")
    cfg = synthetic_config()
    model = build(cfg)
    batch = {**reader.images(np.arange(reader.n_images)),
             **reader.captions(np.arange(reader.n_captions))}
    with torch.no_grad():
        forward = model(**{k: v.double() if v is not None and v.is_floating_point() else v
                           for k, v in batch.items()})[0]
    with h5py.File(data) as f:
        texts = f["test/captions/text"].asstr()[:]
    owner = reader.caption_image
    for image in (0, 7, 14):
        hits = ev.retrieve(model, reader, image=image, k=6)
        order = torch.argsort(forward[image], descending=True)[:6].tolist()
        assert [h.index for h in hits] == order
        np.testing.assert_allclose([h.score for h in hits], forward[image, order].numpy(),
                                   atol=1e-10)
        assert [h.text for h in hits] == [texts[j] for j in order]
        assert [h.match for h in hits] == [owner[j] == image for j in order]
    for caption in (0, 38, 74):
        hits = ev.retrieve(model, reader, caption=caption, k=4)
        order = torch.argsort(forward[:, caption], descending=True)[:4].tolist()
        assert [h.index for h in hits] == order
        np.testing.assert_allclose([h.score for h in hits], forward[order, caption].numpy(),
                                   atol=1e-10)
        assert [h.match for h in hits] == [owner[caption] == i for i in order]
        for h in hits:  # one of the image's own captions, not the query
            assert h.text in {texts[j] for j in np.flatnonzero(owner == h.index) if j != caption}
    assert len(ev.retrieve(model, reader, image=0, k=500)) == reader.n_captions
    own = [h for h in ev.retrieve(model, reader, caption=35, k=500) if h.match]
    assert len(own) == 1 and own[0].index == owner[35]  # 35: the first caption of image 7
    assert own[0].text != texts[35]
    with pytest.raises(ValueError, match="image index 15 out of range"):
        ev.retrieve(model, reader, image=15)
    with pytest.raises(ValueError, match="exactly one"):
        ev.retrieve(model, reader, image=1, caption=2)


# ---- command line --------------------------------------------------------------


def cli(*args):
    """Start ``python -m cccl_lite ARGS`` (a Popen; several run side by side)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cccl_lite", *map(str, args)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def main_in_process(capsys, *args):
    """``cccl_lite.cli.main`` in this process (no interpreter start): (code, out, err).
    An exception it does not turn into one line propagates and fails the test."""
    from cccl_lite.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def checkpoints(synthetic):
    root, _ = synthetic
    return {name: save_checkpoint(root / f"{name}.pt", cfg) for name, cfg in [
        ("good", synthetic_config()),
        ("region", synthetic_config(region_dim=32)),
        ("word", synthetic_config(word_dim=24)),
    ]}


def fold_mean(per_fold):
    out = {k: float(np.mean([r[k] for r in per_fold])) for k in KEYS[:-1]}
    return {**out, "rsum": sum(out.values())}


def result_rows(out):
    """The numbered result lines of ``retrieve``."""
    return [line for line in out.splitlines() if line.split(".")[0].strip().isdigit()]


@pytest.mark.slow  # trains, then several command-line processes
def test_cli_evaluate_and_retrieve_end_to_end(synthetic, checkpoints, capsys):
    root, data = synthetic
    sims_path = root / "cli_sims.npy"
    common = ["--checkpoint", checkpoints["good"], "--data", data, "--split", "test"]
    runs = [cli("evaluate", *common, "--save-sims", sims_path),
            cli("retrieve", *common, "--image", 4, "--k", 3)]
    (c1, out1, err1), (c2, out2, err2) = map(finish, runs)
    assert (c1, c2) == (0, 0), err1 + err2

    model = build(synthetic_config(), dtype=torch.float32)
    model.load_state_dict(torch.load(checkpoints["good"])["model"])
    reader = SplitReader(data, "test")
    with torch.no_grad():
        forward = model(**reader.images(np.arange(15)), **reader.captions(np.arange(75)))[0]
    forward = forward.numpy()
    with h5py.File(data) as f:
        texts = f["test/captions/text"].asstr()[:]

    # evaluate: the table, then LAST one JSON line with exactly the keys of recall_at_k.
    saved = np.load(sims_path)
    np.testing.assert_allclose(saved, forward, atol=1e-5)
    assert out1.endswith("}\n")  # the JSON line is the very last one
    recalls = json.loads(out1.splitlines()[-1])
    assert list(recalls) == list(KEYS)
    assert_recalls(recalls, brute_force_recalls(saved, reader.caption_image))
    assert "R@1" in out1 and "rsum" in out1 and "note: " not in out1

    # retrieve: the top-k captions of image 4 with their text and score, best first.
    order = np.argsort(-forward[4], kind="stable")[:3]
    rows = result_rows(out2)
    assert len(rows) == 3
    for row, j in zip(rows, order):
        assert f"caption {j:>6}" in row and texts[j] in row and f"{forward[4, j]:+.4f}" in row

    # The same entry point in this process: coco1k over 5 folds of 3 images, f30k's
    # note, and a caption query.
    code, out, _ = main_in_process(capsys, "evaluate", *common, "--protocol", "coco1k",
                                   "--fold-size", 3)
    assert code == 0
    assert_recalls(json.loads(out.strip().splitlines()[-1]), fold_mean(
        [brute_force_recalls(saved[3 * f:3 * f + 3, 15 * f:15 * f + 15],
                             reader.caption_image[:15]) for f in range(5)]))
    code, out, _ = main_in_process(capsys, "evaluate", *common, "--protocol", "f30k")
    assert code == 0 and "note: f30k: expected 1000 images x 5000 captions" in out
    assert_recalls(json.loads(out.strip().splitlines()[-1]), recalls)
    code, out, _ = main_in_process(capsys, "retrieve", *common, "--caption", 11)
    assert code == 0 and texts[11] in out.splitlines()[0]
    order = np.argsort(-forward[:, 11], kind="stable")[:5]
    assert [int(r.split("image")[1].split()[0]) for r in result_rows(out)] == list(order)


@pytest.mark.slow  # one command-line process per error
def test_cli_errors_are_one_line_without_traceback(synthetic, checkpoints, capsys):
    root, data = synthetic
    bad = root / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["schema_version"] = 99
    good = checkpoints["good"]
    cases = {
        "no such checkpoint": ("evaluate", "--checkpoint", root / "nope.pt", "--data", data),
        "no such data file": ("evaluate", "--checkpoint", good, "--data", root / "nope.h5"),
        "schema_version": ("evaluate", "--checkpoint", good, "--data", bad),
        "unknown split 'dev'": ("evaluate", "--checkpoint", good, "--data", data,
                                "--split", "dev"),
        "image 15 out of range": ("retrieve", "--checkpoint", good, "--data", data,
                                  "--image", 15),
        "caption -1 out of range": ("retrieve", "--checkpoint", good, "--data", data,
                                    "--caption", -1),
        "exactly one of --image": ("retrieve", "--checkpoint", good, "--data", data),
        "coco1k needs 5 folds of 1000 images = 5000 images; this split has 15": (
            "evaluate", "--checkpoint", good, "--data", data, "--protocol", "coco1k"),
        "region_dim is 32, ": ("evaluate", "--checkpoint", checkpoints["region"],
                               "--data", data),
        "word_dim is 24, ": ("evaluate", "--checkpoint", checkpoints["word"], "--data", data),
    }
    # A real process for one case of each kind of error (CLIError before and after
    # loading the model, SchemaError, ValueError), side by side; the rest in-process.
    real = ["no such checkpoint", "schema_version", "region_dim is 32, ",
            "coco1k needs 5 folds of 1000 images = 5000 images; this split has 15"]
    runs = {expect: cli(*cases[expect]) for expect in real}
    errors = {}
    for expect in cases:
        if expect in runs:
            code, out, err = finish(runs[expect])
        else:
            code, out, err = main_in_process(capsys, *cases[expect])
        errors[expect] = err
        assert code == 1, (expect, out, err)
        assert "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert expect in err, (expect, err)
    # Both numbers of a mismatch are named.
    assert "256-d region features" in errors["region_dim is 32, "]
    assert f"{WORD_DIM}-d word vectors" in errors["word_dim is 24, "]


def test_cli_shortlist(synthetic, checkpoints, capsys):
    """--shortlist with every candidate gives the plain recalls; errors are one line."""
    _, data = synthetic
    common = ["--checkpoint", checkpoints["good"], "--data", data, "--split", "test"]
    code, out, _ = main_in_process(capsys, "evaluate", *common)
    plain = json.loads(out.strip().splitlines()[-1])
    code, out, _ = main_in_process(capsys, "evaluate", *common, "--shortlist", 75)
    assert code == 0 and "two-stage" in out
    assert json.loads(out.strip().splitlines()[-1]) == plain
    code, out, _ = main_in_process(capsys, "evaluate", *common, "--shortlist", 2)
    small = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and list(small) == list(KEYS)
    code, out, _ = main_in_process(capsys, "retrieve", *common, "--image", 4, "--k", 3,
                                   "--shortlist", 75)
    code2, out2, _ = main_in_process(capsys, "retrieve", *common, "--image", 4, "--k", 3)
    assert code == code2 == 0 and result_rows(out) == result_rows(out2)
    for args, message in (
            (("evaluate", *common, "--protocol", "coco1k", "--fold-size", 3, "--shortlist", 2),
             "coco1k"),
            (("retrieve", *common, "--image", 4, "--k", 3, "--shortlist", 2), "must be >= --k")):
        code, out, err = main_in_process(capsys, *args)
        assert code == 1 and out == ""
        assert len(err.strip().splitlines()) == 1 and message in err, err
