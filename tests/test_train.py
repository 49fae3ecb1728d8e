"""Training: the warm-up loss, outputs, lr schedule, exact resume, atomic
checkpoints, DDP on gloo, and the command line's expected failures."""

import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cccl_lite.data.dataset import CaptionDataset, SplitReader, collate, model_inputs
from cccl_lite.engine.evaluate import evaluate_split
from cccl_lite.engine.metrics import KEYS
from cccl_lite.model.cccl import CCCL
from cccl_lite.model.loss import hybrid_loss
from cccl_lite.engine.runtime import restore_rng, rng_states
from cccl_lite.engine.train import (Recipe, RunOptions, Trainer, alignment_term_all_negatives,
                                    load_checkpoint, load_model, train)

from helpers import WORD_DIM as D_E  # random word vectors in the tiny file (no MiniLM)
from helpers import quick, small, small_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_h5(tiny_words_h5):
    """The tiny scenes with random D_E-d word vectors (tests/conftest.py)."""
    return tiny_words_h5


@pytest.fixture
def one_thread():
    # Bit-exact comparisons need one reduction order: MKL may use fewer
    # threads than asked when the machine is busy, so use exactly one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- the warm-up loss ------------------------------------------------------

def test_all_negatives_term_equals_double_loop():
    g = torch.Generator().manual_seed(0)
    b, margin = 7, 0.2
    scores = torch.rand(b, b, generator=g, dtype=torch.float64)
    image = [0, 0, 1, 2, 2, 2, 3]  # pairs sharing an image are positives
    pos = torch.tensor([[image[i] == image[j] for j in range(b)] for i in range(b)])
    expected = 0.0
    for i in range(b):
        for j in range(b):
            if image[i] == image[j]:
                continue
            expected += max(0.0, margin - scores[i, i].item() + scores[i, j].item())  # i2t
            expected += max(0.0, margin - scores[j, j].item() + scores[i, j].item())  # t2i
    got = alignment_term_all_negatives(scores, margin, pos)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Without a mask only the diagonal is positive.
    plain = sum(max(0.0, margin - scores[i, i].item() + scores[i, j].item())
                + max(0.0, margin - scores[j, j].item() + scores[i, j].item())
                for i in range(b) for j in range(b) if i != j)
    assert alignment_term_all_negatives(scores, margin).item() == pytest.approx(plain, rel=1e-12)
    with pytest.raises(ValueError):
        alignment_term_all_negatives(scores, margin, ~pos)


# ---- a tiny run end to end -------------------------------------------------

def test_tiny_run_writes_its_outputs(tiny_h5, tmp_path):
    cfg, recipe = small()
    best = train(cfg, recipe, tiny_h5, tmp_path / "run", quick())
    out = tmp_path / "run"
    assert best == out / "best.pt"
    assert {p.name for p in out.iterdir()} == {"last.pt", "best.pt", "log.jsonl", "config.json"}

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [3, 6]
    assert [r["negatives"] for r in records] == ["all", "hardest"]  # one warm-up epoch
    for r in records:
        assert set(r) >= {"epoch", "losses", "lr", "val", "seconds"}
        assert set(r["losses"]) == {"total", "alignment", "coherence"}
        assert r["losses"]["total"] == pytest.approx(
            r["losses"]["alignment"] + recipe.coherence_weight * r["losses"]["coherence"])
        assert set(r["val"]) == set(KEYS)

    info = json.loads((out / "config.json").read_text())
    assert info["config"] == dataclasses.replace(cfg, num_regions=12).to_dict()
    assert info["recipe"] == recipe.to_dict() and info["recipe"]["warmup_epochs"] == 1
    assert info["options"]["max_steps"] == 3 and "warmup_epochs" not in info["options"]

    ckpt = torch.load(best, weights_only=True)  # no unpickling of code
    last = torch.load(out / "last.pt", weights_only=True)
    assert {"model", "config", "recipe", "vocab", "epoch", "best_rsum"} <= set(ckpt)
    assert {"optimizer", "scheduler", "rng", "step", "options"} <= set(last)
    assert set(last["rng"]) == {"torch", "cuda", "numpy", "python", "loader"}
    assert last["epoch"] == 2 and last["step"] == 6
    # best.pt holds the epoch whose val R@sum is the largest, and its model
    # scores that R@sum again when evaluated independently.
    best_record = max(records, key=lambda r: r["val"]["rsum"])
    assert ckpt["epoch"] == best_record["epoch"]
    model, config, vocab = load_model(best)
    assert config == dataclasses.replace(cfg, num_regions=12) and vocab is None
    recalls, _ = evaluate_split(model, SplitReader(tiny_h5, "val"))
    assert recalls["rsum"] == pytest.approx(best_record["val"]["rsum"])


def test_lr_is_cut_tenfold_at_the_decay_epoch(tiny_h5, tmp_path, monkeypatch):
    lrs = []
    original = Trainer._train_epoch

    def record(self):
        (group,) = self.optimizer.param_groups
        lrs.append(group["lr"])  # what Adam uses this epoch
        return original(self)

    monkeypatch.setattr(Trainer, "_train_epoch", record)
    trainer = Trainer(*small(epochs=4, lr_decay_epoch=2, lr=3e-3), tiny_h5, tmp_path / "run",
                      quick(max_steps=1))
    trainer.fit()
    assert lrs == pytest.approx([3e-3, 3e-3, 3e-4, 3e-4])
    assert [r["lr"] for r in trainer.history] == pytest.approx([3e-3, 3e-3, 3e-4, 3e-4])


# ---- which epoch is kept ----------------------------------------------------

def _brute_truth_rsum(sims, truth):
    """Truth-aware R@sum by loops: a query's rank is the number of items it is
    NOT true of that score at least as high as its best true item."""
    sims, truth = np.asarray(sims, dtype=float), np.asarray(truth, dtype=bool)
    total = 0.0
    for s, t in ((sims, truth), (sims.T, truth.T)):  # i2t, then t2i
        ranks = []
        for q in range(s.shape[0]):
            best = max(s[q, j] for j in range(s.shape[1]) if t[q, j])
            ranks.append(sum(1 for j in range(s.shape[1]) if not t[q, j] and s[q, j] >= best))
        total += sum(100.0 * np.mean([r < k for r in ranks]) for k in (1, 5, 10))
    return total


def test_truth_selection_logs_the_truth_aware_recall_of_the_model_it_keeps(
        tiny_words_h5, tmp_path, one_thread):
    from cccl_lite.data.truth import SplitTruth

    out = tmp_path / "run"
    t = Trainer(*small(epochs=1, select="truth_rsum", positives="truth"), tiny_words_h5, out, quick())
    t.fit()
    rec = t.history[0]
    assert rec["best"] and set(rec["val_truth"]) == set(KEYS)
    # Recompute from best.pt with the scenes' truth, by loops.
    model, config, vocab = load_model(out / "best.pt")
    _, sims = evaluate_split(model, SplitReader(tiny_words_h5, "val"))
    st = SplitTruth(tiny_words_h5, "val")
    truth = st.truth(np.arange(st.n_images), np.arange(st.n_captions))  # tested in test_truth
    assert rec["val_truth"]["rsum"] == pytest.approx(_brute_truth_rsum(sims.numpy(), truth),
                                                     abs=1e-6)
    assert t.best_rsum == pytest.approx(rec["val_truth"]["rsum"])
    logged = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert logged["val_truth"] == rec["val_truth"]
    with pytest.raises(ValueError, match="select"):
        Recipe(select="loss")


@pytest.mark.parametrize("select, best_epoch, epochs_run", [("rsum", 1, 3), ("truth_rsum", 4, 5)])
def test_select_picks_the_epoch_and_drives_patience(tiny_words_h5, tmp_path, monkeypatch,
                                                    select, best_epoch, epochs_run):
    # Standard R@sum peaks at epoch 1 while the truth-aware one rises until
    # epoch 4: the run keeps (and stops after) the peak of the measure it selects by.
    standard = iter([50.0, 40.0, 30.0, 20.0, 10.0])
    aware = iter([100.0, 110.0, 120.0, 130.0, 125.0])

    def fake_validate(self):
        base = {k: 0.0 for k in KEYS if k != "rsum"}
        truth = base | {"rsum": next(aware)}
        return base | {"rsum": next(standard)}, (truth if self.recipe.select == "truth_rsum"
                                                 else None)

    monkeypatch.setattr(Trainer, "_validate", fake_validate)
    t = Trainer(*small(epochs=5, select=select, patience=2), tiny_words_h5, tmp_path / select,
                quick())
    t.fit()
    assert t.best_epoch == best_epoch
    assert len(t.history) == epochs_run
    assert [r["best"] for r in t.history].index(True) == 0
    assert [r["epoch"] for r in t.history if r["best"]][-1] == best_epoch


# ---- resume ----------------------------------------------------------------

def test_resume_gives_identical_weights(tiny_h5, tmp_path, one_thread):
    straight = Trainer(*small(epochs=2), tiny_h5, tmp_path / "a", quick())
    straight.fit()
    train(*small(epochs=1), tiny_h5, tmp_path / "b", quick())
    resumed = Trainer(*small(epochs=2), tiny_h5, tmp_path / "b", quick(resume=True))
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... and they did train: the weights moved from their initialisation.
    torch.manual_seed(0)
    init = CCCL(small_config()).state_dict()
    assert not all(torch.equal(a[k], init[k]) for k in a)
    logs = [(tmp_path / d / "log.jsonl").read_text().splitlines() for d in "ab"]
    assert [json.loads(x)["losses"] for x in logs[0]] == [json.loads(x)["losses"] for x in logs[1]]


def test_resume_refuses_another_selection_or_sibling_weight(tmp_path):
    from cccl_lite.engine.checkpoint import check_resumable, migrate
    from cccl_lite.errors import InputError

    config, recipe = small(epochs=2)
    # A last.pt of format 1: the recipe's numbers inside its config, its
    # choices inside its options, written before `select` and
    # `sibling_weight` existed (they were "rsum" and 1.0 then).
    numbers = {k: getattr(recipe, k) for k in ("lr", "lr_decay_epoch", "epochs", "batch_size",
                                                "grad_clip", "margin", "coherence_weight",
                                                "coherence_reduction")}
    ckpt = migrate({"optimizer": {}, "scheduler": {}, "rng": {}, "epoch": 1, "step": 3,
                    "config": {**config.to_dict(), **numbers}, "data": None, "world_size": 1,
                    "options": {"warmup_epochs": 1, "seed": 0, "positives": "image",
                                "batching": "random", "patience": None}})
    kw = dict(world_size=1, data_path=tmp_path / "d.h5", data_ident=None)
    ck = check_resumable(ckpt, tmp_path / "last.pt", config, recipe, 0, **kw)
    assert ck is ckpt  # the same run: legacy values fill what the old checkpoint lacks
    for change, shown in ((dict(select="truth_rsum"), "select: 'rsum' -> 'truth_rsum'"),
                          (dict(sibling_weight=10.0), "sibling_weight: 1.0 -> 10.0"),
                          (dict(lr=1e-2), "lr: 0.001 -> 0.01")):
        with pytest.raises(InputError, match=shown.replace("(", r"\(")):
            check_resumable(ckpt, tmp_path / "last.pt", config, recipe.replace(**change), 0,
                            **kw)
    with pytest.raises(InputError, match="seed: 0 -> 1"):
        check_resumable(ckpt, tmp_path / "last.pt", config, recipe, 1, **kw)
    # epochs is the one recipe field a resumed run may change
    assert check_resumable(ckpt, tmp_path / "last.pt", config, recipe.replace(epochs=9), 0,
                           **kw) is ckpt


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    loader = torch.Generator()
    random.seed(1), np.random.seed(2), torch.manual_seed(3), loader.manual_seed(4)
    np.random.normal()  # numpy's state then holds a cached Gaussian too

    def draws():
        return (random.random(), np.random.normal(), torch.rand(3).tolist(),
                torch.rand(3, generator=loader).tolist())

    torch.save(rng_states(loader), tmp_path / "rng.pt")
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9), loader.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True), loader)
    assert draws() == expected


def test_interrupted_save_keeps_the_previous_last_pt(tiny_h5, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(*small(epochs=1), tiny_h5, out, quick())
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # the temp file is open and partly written
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        Trainer(*small(epochs=2), tiny_h5, out, quick(resume=True)).fit()
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt",
                                                      "log.jsonl"]  # no temp file left
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    # The log line of the unsaved epoch 2 is dropped when the run resumes.
    Trainer(*small(epochs=2), tiny_h5, out, quick(resume=True)).fit()
    epochs = [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_load_model_refuses_unknown_config_fields(tiny_h5, tmp_path):
    from cccl_lite.errors import InputError
    best = train(*small(epochs=1), tiny_h5, tmp_path / "run", quick(max_steps=1))
    ckpt = torch.load(best, weights_only=True)
    ckpt["config"]["use_quantum_pooling"] = True
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(InputError, match="use_quantum_pooling"):
        load_model(tmp_path / "future.pt")


# ---- DistributedDataParallel on gloo -----------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_STEPS = 3


def _ddp_worker(rank, world_size, port, data, out, config, recipe):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(config, recipe.replace(warmup_epochs=0), data, out,
                      quick(max_steps=DDP_STEPS))
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(out).parent / f"rank{rank}.pt")


@pytest.mark.slow  # two processes on gloo
def test_ddp_on_gloo_matches_one_process_on_the_mean_of_the_half_batch_losses(
        tiny_h5, tmp_path, one_thread):
    """Two gloo ranks, B = 8 captions each, 3 steps of hardest negatives.

    What holds: (1) both ranks end with identical parameters (DDP all-reduces
    the gradients, and each rank's Adam applies the same step); (2) they
    equal, within float tolerance, one process that, at each step, takes the
    same two local batches (DistributedSampler, rank 0 and 1, same seed and
    epoch), computes the loss of each on its own and minimises their MEAN:
    DDP averages the ranks' gradients, and the gradient of the mean is the
    mean of the gradients. Not the same thing: one process on the global
    batch of 16. Its hardest negative for a caption is searched among 15
    others, a rank's among its own 7, so that run would take other steps.
    """
    config, recipe = small(epochs=1)
    out = tmp_path / "ddp" / "run"
    out.parent.mkdir()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_h5), str(out),
                                                   config, recipe), nprocs=2, join=True)
    ranks = [torch.load(out.parent / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert (out / "last.pt").exists() and load_checkpoint(out / "last.pt")["world_size"] == 2

    # The single-process reference, written from the paper's recipe directly.
    torch.manual_seed(0)  # RunOptions' default seed: the same initial weights
    model = CCCL(config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    reader = SplitReader(tiny_h5, "train")
    dataset = CaptionDataset(reader)
    orders = []
    for r in (0, 1):
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=r,
                                                      shuffle=True, seed=0)
        sampler.set_epoch(0)
        orders.append(list(sampler))
    b = recipe.batch_size
    for step in range(DDP_STEPS):
        losses = []
        for order in orders:
            batch = collate(reader, [dataset[k] for k in order[step * b:(step + 1) * b]])
            _, scores = model(**model_inputs(batch))
            losses.append(hybrid_loss(*scores, recipe.margin, recipe.coherence_weight,
                                      batch["positive_mask"],
                                      coherence_reduction=recipe.coherence_reduction).total)
        optimizer.zero_grad()
        (sum(losses) / len(losses)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
    reference = model.state_dict()
    for k in reference:
        torch.testing.assert_close(ranks[0][k], reference[k], rtol=1e-4, atol=1e-5, msg=k)
    # The comparison has teeth: the steps moved the weights well past the tolerance.
    assert max((reference[k] - initial[k]).abs().max().item() for k in reference) > 1e-3


# ---- command line: expected failures -------------------------------------------

def _no_boxes_copy(src, dst):
    dst.write_bytes(Path(src).read_bytes())
    with h5py.File(dst, "a") as f:
        f.attrs["has_boxes"] = False
        for split in ("train", "val", "test"):
            del f[split]["images/boxes"]
    return dst


@pytest.mark.slow  # one command-line process per error
def test_cli_errors_exit_1_with_one_line(tiny_h5, tmp_path):
    resumable = tmp_path / "resumable"
    train(*small(epochs=1), tiny_h5, resumable, quick(max_steps=1))
    no_boxes = _no_boxes_copy(tiny_h5, tmp_path / "no_boxes.h5")
    base = ["--out", str(tmp_path / "out"), "--max-steps", "1", "--quiet"]
    cases = {
        "missing file": (["--data", str(tmp_path / "nope.h5")], "nope.h5"),
        "unknown config": (["--config", "huge", "--data", str(tiny_h5)], "lite, paper"),
        "unknown ablation": (["--ablation", "w/o FOO", "--data", str(tiny_h5)], "'w/o POS'"),
        "resume, other config": (["--data", str(tiny_h5), "--resume", "--out", str(resumable)],
                                 "another config"),
        "paper dims": (["--config", "paper", "--data", str(tiny_h5)], "2048"),
        "no boxes": (["--data", str(no_boxes)], "w/o POS"),
        "nothing to resume": (["--data", str(tiny_h5), "--resume"], "nothing to resume"),
    }
    if not torch.cuda.is_available():
        cases["cuda without CUDA"] = (["--data", str(tiny_h5), "--device", "cuda"], "CUDA")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*args):
        # One process at a time, and a timeout that only a hang reaches: ten
        # processes started at once with 60-120 s each failed on a busy
        # machine (issue 14), where importing torch alone can take a minute.
        return subprocess.run([sys.executable, "-m", "cccl_lite", "train", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=1800)

    for name, (args, needle) in cases.items():
        proc = cli(*base, *args)
        assert proc.returncode == 1, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert needle in lines[0], (name, lines[0])
    # Two runs that must succeed: the lite preset's default is one warm-up
    # epoch, then eq 33 (chapter 6's plateau study); --warmup-epochs all keeps
    # the sum over negatives in every epoch.
    for warmup in ("default", "all"):
        out = tmp_path / f"cli_{warmup}"
        proc = cli("--data", str(tiny_h5), "--out", str(out), "--epochs", "2", "--max-steps",
                   "2", "--batch-size", "8", "--quiet",
                   *([] if warmup == "default" else ["--warmup-epochs", warmup]))
        assert proc.returncode == 0, proc.stderr
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert [r["negatives"] for r in log] == (
            ["all", "hardest"] if warmup == "default" else ["all", "all"])
    # The no-boxes file does train under "w/o POS" (here: the checks pass).
    Trainer(*small().with_ablation("w/o POS"), no_boxes, tmp_path / "pos", quick())


# ---- the memory-saving mode (pair_chunk) -------------------------------------

@pytest.mark.slow  # trains the model twice
def test_pair_chunk_trains_the_same_model(tiny_h5, tmp_path, one_thread):
    """Checkpointed blocks of pairs change only the order of float sums."""
    plain = Trainer(*small(epochs=1), tiny_h5, tmp_path / "a", quick())
    plain.fit()
    chunked = Trainer(*small(epochs=1), tiny_h5, tmp_path / "b", quick(pair_chunk=5))
    chunked.fit()
    a, b = plain.model.state_dict(), chunked.model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    losses = [t.history[0]["losses"]["total"] for t in (plain, chunked)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_cli_pair_chunk_reaches_the_trainer(tiny_h5, tmp_path):
    from cccl_lite.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--data", str(tiny_h5), "--out", str(out), "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "8", "--quiet", "--pair-chunk", "16"]) == 0
    assert json.loads((out / "config.json").read_text())["options"]["pair_chunk"] == 16
    assert main(["train", "--data", str(tiny_h5), "--out", str(out), "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "8", "--quiet", "--overwrite",
                 "--coherence-weight", "0.75", "--margin", "0.1"]) == 0
    saved = json.loads((out / "config.json").read_text())["recipe"]
    assert (saved["coherence_weight"], saved["margin"]) == (0.75, 0.1)
    # A bad number is a usage error: one line, exit status 2 (test_reliability.py).
    assert main(["train", "--data", str(tiny_h5), "--out", str(tmp_path / "bad"),
                 "--pair-chunk", "0"]) == 2


def test_position_tuple_reaches_the_reader_and_the_cli(tiny_h5, tmp_path, capsys):
    from cccl_lite.cli import main
    from cccl_lite.engine.train import make_reader

    reader = make_reader(tiny_h5, "val", small_config(position_tuple="camera"))
    images = reader.images([0])
    box, (W, H) = reader.boxes[0, 0], reader.size[0]
    w_px, h_px = box[2] - box[0], box[3] - box[1]  # the synthetic boxes lie inside the image
    assert reader.position_tuple == "camera"
    assert torch.allclose(images["positions"][0, 0, 2:5].double(), torch.tensor(
        [w_px / W, h_px / H, w_px / h_px], dtype=torch.float64), atol=1e-5)
    assert make_reader(tiny_h5, "val", small_config()).position_tuple == "ours"
    out = tmp_path / "cli"
    assert main(["train", "--data", str(tiny_h5), "--out", str(out), "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "8", "--quiet",
                 "--position-tuple", "camera"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["position_tuple"] == "camera"
    out = tmp_path / "cli-sum"
    assert main(["train", "--data", str(tiny_h5), "--out", str(out), "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "8", "--quiet",
                 "--position-fusion", "sum"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["position_fusion"] == "sum"
    out = tmp_path / "cli-centre-siblings"
    assert main(["train", "--data", str(tiny_h5), "--out", str(out), "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "8", "--quiet", "--warmup-epochs", "all",
                 "--centre-scale", "12.5", "--sibling-weight", "4", "--word-gru",
                 "--select", "rsum"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["config"]["centre_scale"], saved["recipe"]["sibling_weight"],
            saved["config"]["word_gru"], saved["recipe"]["select"],
            saved["recipe"]["warmup_epochs"]) == (12.5, 4.0, True, "rsum", None)
    # Unset, the lite recipe's own selection (the truth-aware R@sum) applies.
    assert json.loads((tmp_path / "cli-sum" / "config.json").read_text()
                      )["recipe"]["select"] == "truth_rsum"


# ---- one reader rule for training and evaluation ----------------------------------


def test_a_model_that_reads_no_heads_trains_and_evaluates_on_unparsed_data(tiny_h5, tmp_path,
                                                                          capsys):
    """"w/o B-3" and "w/o S-NLP" never read dependency heads (eq 23), so their
    checkpoints must evaluate on a file without heads, as they trained on it.
    The evaluation loader once built its own reader that still asked for heads
    under "w/o B-3" (``syntax=config.use_syntax``): this is the case it failed."""
    from cccl_lite.engine.checkpoint import load_for_data, make_reader
    from cccl_lite.cli import main
    from cccl_lite.data.schema import SchemaError

    unparsed = tmp_path / "unparsed.h5"
    unparsed.write_bytes(Path(tiny_h5).read_bytes())
    with h5py.File(unparsed, "a") as f:
        for split in ("train", "val", "test"):
            del f[split]["captions/heads"]
    for ablation in ("w/o B-3", "w/o S-NLP"):
        config, recipe = small(epochs=1).with_ablation(ablation)
        assert not (config.use_syntax and config.use_branch3)  # the rule's input
        best = train(config, recipe, unparsed, tmp_path / ablation.replace("/", "_"),
                     quick(max_steps=1))
        model, loaded, reader = load_for_data(best, unparsed, "test")
        assert reader.heads is None and loaded == load_model(best)[1]
        assert main(["evaluate", "--checkpoint", str(best), "--data", str(unparsed)]) == 0
        capsys.readouterr()
    # The full model reads heads: the same file is refused, in one line.
    with pytest.raises(SchemaError, match="heads"):
        make_reader(unparsed, "test", small_config())
    full = train(*small(epochs=1), tiny_h5, tmp_path / "full", quick(max_steps=1))
    assert main(["evaluate", "--checkpoint", str(full), "--data", str(unparsed)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heads" in err[0]
