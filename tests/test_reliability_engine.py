"""Issue 29, the engine's side: train, ship, diagnose, ablate, download and the
fused kernels' cache. Each test builds the situation the issue reports (a
folder holding a run's record but no checkpoint, a train --overwrite killed
before its first epoch ends, a ship killed between its two renames, a
download cut short by a server that sends no Content-Length, ...) and checks
what a user sees against what the test itself wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cccl_lite import pretrained
from cccl_lite.cli import main
from cccl_lite.errors import InputError
from cccl_lite.train import Trainer, train

from helpers import quick, small_config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_thread")


def _one_error_line(capsys, *needles):
    """stderr holds exactly one line, an error, containing every needle."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tiny_words_h5, tmp_path_factory):
    """A finished one-epoch run on the tiny scenes (read only: copy it to change it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(small_config(epochs=1), tiny_words_h5, out, quick(max_steps=2))
    return out


def _copy_run(run_dir, dest):
    import shutil
    shutil.copytree(run_dir, dest)
    return dest


# ---- #2: a folder with a run's record but no checkpoint ---------------------------


def test_train_refuses_a_folder_with_config_and_log_but_no_checkpoint(tiny_words_h5, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    config_text, log_text = '{"mine": 1}\n', '{"epoch": 1, "mine": true}\n'
    (out / "config.json").write_text(config_text)
    (out / "log.jsonl").write_text(log_text)
    with pytest.raises(InputError, match="--overwrite"):
        Trainer(small_config(epochs=1), tiny_words_h5, out, quick(max_steps=1))
    assert (out / "config.json").read_text() == config_text
    assert (out / "log.jsonl").read_text() == log_text


# ---- #9: a killed train --overwrite must not leave the old checkpoints ------------


def test_a_killed_overwrite_leaves_no_old_checkpoint_for_resume(tiny_words_h5, run_dir,
                                                                   tmp_path, monkeypatch):
    out = _copy_run(run_dir, tmp_path / "run")
    assert (out / "last.pt").exists()

    def killed(self):  # the first epoch of the new run dies (kill -9 stands in)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(small_config(epochs=1), tiny_words_h5, out, quick(max_steps=1,
                                                                  overwrite=True)).fit()
    monkeypatch.undo()
    # The old run is gone as a whole: resume finds nothing to continue and
    # says so, instead of "already trained for 1 epochs" with an empty log.
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    with pytest.raises(InputError, match="nothing to resume"):
        Trainer(small_config(epochs=1), tiny_words_h5, out, quick(max_steps=1, resume=True))


# ---- #12: --batch-size 1 ------------------------------------------------------------


def test_batch_size_one_is_refused_with_one_line(tiny_words_h5, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_words_h5), "--out", str(tmp_path / "r"),
                 "--batch-size", "1", "--epochs", "1", "--max-steps", "1", "--quiet"])
    assert code == 1
    _one_error_line(capsys, "--batch-size", "1", "at least 2")
    assert not (tmp_path / "r" / "log.jsonl").exists()
