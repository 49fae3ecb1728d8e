"""The trainer's collapse guard on a forced collapse: a model whose scores are
the same for every pair (F constant), so that eq 33's hinge sits at exactly
2·B·Δ, as it does when hardest negatives flatten a real model."""

from __future__ import annotations

import json

import pytest
import torch

import cccl_lite.model.cccl as model_module
from helpers import small
from cccl_lite.cli import main
from cccl_lite.model.cccl import CCCLConfig
from cccl_lite.engine.train import CollapseGuard, RunOptions, Trainer, load_checkpoint

B, MARGIN = 8, 0.2


def config(**kw):
    """(model, recipe): the small run at B and Δ of these tests; ``kw``: fields of either."""
    return small(**{**dict(word_dim=16, embed_dim=8, sim_dim=8, batch_size=B, epochs=2, lr=5e-4,
                           lr_decay_epoch=7,
                           margin=MARGIN), **kw})


def flatten_scores_from(monkeypatch, trainer_box: dict, from_epoch: int):
    """From ``from_epoch`` on (0-based), every branch score is the MLP of a zero
    vector: the same for all pairs, yet with gradients (the MLP's biases)."""
    real = model_module.CCCL.score

    def score(self, img, txt, **kw):
        f, scores = real(self, img, txt, **kw)
        trainer = trainer_box.get("trainer")
        if trainer is None or trainer.epoch < from_epoch:
            return f, scores
        flat = self.mlp(torch.zeros(*f.shape, self.mlp.net[0].in_features))
        return flat, (flat, flat, flat)

    monkeypatch.setattr(model_module.CCCL, "score", score)


def test_guard_counts_flat_batches_in_a_row_and_reports_once():
    guard = CollapseGuard(steps=3)
    eye = torch.eye(4, dtype=torch.bool)
    flat = torch.full((4, 4), 0.5)
    lively = torch.eye(4) * 0.5 + 0.25  # positives well above negatives
    l_flat = torch.tensor(2 * 4 * MARGIN)  # what eq 33 gives for constant scores, by hand
    l_lively = torch.tensor(0.0)
    seq = [(flat, l_flat), (flat, l_flat), (lively, l_lively), (flat, l_flat), (flat, l_flat)]
    assert [guard.update(f, l, eye, "hardest", MARGIN, s) for s, (f, l) in enumerate(seq)] == \
        [False] * 5  # a lively batch resets the count
    assert guard.update(flat, l_flat, eye, "hardest", MARGIN, 5) is True
    assert guard.report["flat_alignment"] == pytest.approx(2 * 4 * MARGIN)
    assert guard.report["spread"] == 0.0 and guard.report["step"] == 5
    assert guard.update(flat, l_flat, eye, "hardest", MARGIN, 6) is False  # once only
    # L_t at the flat value with some spread left (as a real collapse: 0.003) counts too
    g2 = CollapseGuard(steps=1)
    spread = flat + torch.linspace(0, 0.01, 16).view(4, 4)
    assert g2.update(spread, torch.tensor(2 * 4 * MARGIN * (1 + 5e-4)), eye, "hardest",
                     MARGIN, 0)
    # the sum over negatives: Δ for each of the 12 negative pairs, both ways
    g3 = CollapseGuard(steps=1)
    assert g3.update(spread, torch.tensor(2 * 12 * MARGIN), eye, "all", MARGIN, 0)
    assert g3.report["flat_alignment"] == pytest.approx(2 * 12 * MARGIN)


def test_forced_collapse_warns_once_with_the_numbers(tiny_words_h5, tmp_path, monkeypatch,
                                                     capsys):
    box = {}
    flatten_scores_from(monkeypatch, box, from_epoch=0)
    trainer = Trainer(*config(epochs=1, warmup_epochs=0), tiny_words_h5, tmp_path / "run",
                      RunOptions(device="cpu", collapse_steps=4, max_steps=10, quiet=True))
    box["trainer"] = trainer
    trainer.fit()
    out = capsys.readouterr().out
    assert out.count("the score scale looks collapsed") == 1
    report = trainer.collapse
    assert report["step"] == 4 and report["spread"] == 0.0
    assert report["flat_alignment"] == pytest.approx(2 * B * MARGIN)  # 3.2: eq 33, by hand
    assert report["alignment"] == pytest.approx(2 * B * MARGIN, rel=1e-6)
    assert "--warmup-epochs all" in out
    assert (tmp_path / "run" / "last.pt").exists()  # without --stop-on-collapse it goes on


def test_stop_on_collapse_keeps_the_last_finished_epoch(tiny_words_h5, tmp_path, monkeypatch,
                                                        capsys):
    box = {}
    flatten_scores_from(monkeypatch, box, from_epoch=1)  # epoch 1 trains, epoch 2 collapses
    out = tmp_path / "run"
    trainer = Trainer(*config(epochs=3, warmup_epochs=0), tiny_words_h5, out,
                      RunOptions(device="cpu", collapse_steps=3, max_steps=6, quiet=True,
                                 stop_on_collapse=True))
    box["trainer"] = trainer
    trainer.fit()
    assert trainer.collapse["step"] == 6 + 3  # 6 batches of epoch 1, then 3 flat ones
    assert trainer.epoch == 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]
    last = load_checkpoint(out / "last.pt")  # weights_only=True inside
    assert (last["epoch"], last["step"]) == (1, 6)
    assert (out / "best.pt").exists()
    assert "stopped: training collapsed at step 9" in capsys.readouterr().out


def test_cli_stop_on_collapse_is_one_line_and_exit_1(tiny_words_h5, tmp_path, monkeypatch,
                                                     capsys):
    import cccl_lite.engine.train as train_module

    real_init = train_module.Trainer.__init__
    box = {}

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        box["trainer"] = self

    monkeypatch.setattr(train_module.Trainer, "__init__", init)
    flatten_scores_from(monkeypatch, box, from_epoch=0)
    code = main(["train", "--data", str(tiny_words_h5), "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--batch-size", str(B), "--max-steps", "5", "--quiet",
                 "--warmup-epochs", "0", "--collapse-steps", "2", "--stop-on-collapse"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "collapsed at step 2" in err[0] and "Traceback" not in err[0]
    with pytest.raises(ValueError, match="collapse_steps"):
        RunOptions(collapse_steps=0)
