"""Issue 29, the engine's side: train, ship, diagnose, ablate and the fused
kernels' cache (downloads: test_reliability_download.py). Each test builds the situation the issue reports (a
folder holding a run's record but no checkpoint, a train --overwrite killed
before its first epoch ends, a ship killed between its two renames, a full
disk under a checkpoint, a hand-edited results file, ...) and checks
what a user sees against what the test itself wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cccl_lite.studies import pretrained
from cccl_lite.cli import main
from cccl_lite.errors import InputError
from cccl_lite.engine.train import Trainer, train

from helpers import one_error_line, quick, small, small_config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def run_dir(tiny_words_h5, tmp_path_factory):
    """A finished one-epoch run on the tiny scenes (read only: copy it to change it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(*small(epochs=1), tiny_words_h5, out, quick(max_steps=2))
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
        Trainer(*small(epochs=1), tiny_words_h5, out, quick(max_steps=1))
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
        Trainer(*small(epochs=1), tiny_words_h5, out, quick(max_steps=1, overwrite=True)).fit()
    monkeypatch.undo()
    # The old run is gone as a whole: resume finds nothing to continue and
    # says so, instead of "already trained for 1 epochs" with an empty log.
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    with pytest.raises(InputError, match="nothing to resume"):
        Trainer(*small(epochs=1), tiny_words_h5, out, quick(max_steps=1, resume=True))


# ---- #12: --batch-size 1 ------------------------------------------------------------


def test_batch_size_one_is_refused_with_one_line(tiny_words_h5, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_words_h5), "--out", str(tmp_path / "r"),
                 "--batch-size", "1", "--epochs", "1", "--max-steps", "1", "--quiet"])
    assert code == 1
    one_error_line(capsys, "--batch-size", "1", "at least 2")
    assert not (tmp_path / "r" / "log.jsonl").exists()


# ---- ship: #6 a ship killed between its renames, #7 other data, #17 bad run files -----


@pytest.fixture(scope="module")
def other_run_dir(tiny_words_h5, tmp_path_factory):
    """Another finished run on the same data (seed 1: other weights)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(*small(epochs=1), tiny_words_h5, out, quick(max_steps=2, seed=1))
    return out


def test_a_ship_killed_between_its_renames_is_caught_on_load(tiny_words_h5, run_dir,
                                                               other_run_dir, tmp_path,
                                                               monkeypatch):
    from cccl_lite import files

    folder = tmp_path / "assets"
    pretrained.ship(run_dir, tiny_words_h5, folder, name="m")
    old_record = (folder / "m.json").read_text()

    def killed(*a, **k):  # kill -9 after the model's rename, before the record's
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "write_text_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrained.ship(other_run_dir, tiny_words_h5, folder, name="m", overwrite=True)
    monkeypatch.undo()
    new_weights = torch.load(other_run_dir / "best.pt", weights_only=True)["model"]
    shipped = torch.load(folder / "m.pt", weights_only=True)["model"]
    # The new model beside the old record (what the issue found): loading
    # either must say so rather than report the old recalls for it.
    assert (folder / "m.json").read_text() == old_record
    assert all(torch.equal(shipped[k], new_weights[k]) for k in new_weights)
    with pytest.raises(InputError, match="m.json"):
        pretrained.load_pretrained(name="m", folder=folder)
    with pytest.raises(InputError, match="m.pt"):
        pretrained.provenance(name="m", folder=folder)
    # Shipping again repairs the pair.
    pretrained.ship(other_run_dir, tiny_words_h5, folder, name="m", overwrite=True)
    model, _, _ = pretrained.load_pretrained(name="m", folder=folder)
    assert all(torch.equal(v, new_weights[k]) for k, v in model.state_dict().items())


def test_ship_refuses_data_the_run_was_not_trained_on(run_dir, tmp_path, capsys):
    from cccl_lite.data.synthetic import make_synthetic
    from helpers import add_word_vectors

    other = make_synthetic(tmp_path / "other.h5", seed=1, size="tiny")
    add_word_vectors(other)
    code = main(["ship", "--run-dir", str(run_dir), "--data", str(other),
                 "--folder", str(tmp_path / "assets"), "--name", "m"])
    assert code == 1
    one_error_line(capsys, "--data", str(other), "trained on")
    assert not (tmp_path / "assets" / "m.pt").exists()


@pytest.mark.parametrize("case", ["empty log", "log line without val", "config not json",
                                  "config without options"])
def test_ship_on_bad_run_files_is_one_line(tiny_words_h5, run_dir, tmp_path, capsys, case):
    run = _copy_run(run_dir, tmp_path / "run")
    name, needle = {"empty log": ("log.jsonl", "no epoch"),
                    "log line without val": ("log.jsonl", "val"),
                    "config not json": ("config.json", "JSON"),
                    "config without options": ("config.json", "options")}[case]
    if case == "empty log":
        (run / "log.jsonl").write_text("")
    elif case == "log line without val":
        rec = json.loads((run / "log.jsonl").read_text().splitlines()[0])
        del rec["val"]
        (run / "log.jsonl").write_text(json.dumps(rec) + "\n")
    elif case == "config not json":
        (run / "config.json").write_text('{"config": ')
    else:
        info = json.loads((run / "config.json").read_text())
        del info["options"]
        (run / "config.json").write_text(json.dumps(info))
    code = main(["ship", "--run-dir", str(run), "--data", str(tiny_words_h5),
                 "--folder", str(tmp_path / "assets"), "--name", "m"])
    assert code == 1
    one_error_line(capsys, str(run / name), needle)
    assert not (tmp_path / "assets").exists() or not any((tmp_path / "assets").iterdir())


# ---- #14: a full disk while saving a checkpoint ---------------------------------------


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tiny_words_h5, tmp_path):
    """The file-size limit (ulimit -f, SIGXFSZ ignored) stands in for a full
    disk: every write past 1 MB fails with EFBIG, as ENOSPC would."""
    out = tmp_path / "run"
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
            "from cccl_lite.cli import main\n"
            f"sys.exit(main(['train', '--data', {str(tiny_words_h5)!r}, '--out', {str(out)!r},"
            " '--epochs', '1', '--max-steps', '1', '--quiet']))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CCCL_LITE_FUSED": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "best.pt" in lines[0] and "disk" in lines[0], lines[0]
    # Nothing half-written under a final name, no temp file left.
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()
    assert [p.name for p in out.iterdir() if ".tmp-" in p.name] == []


# ---- #4: one environment reached through two paths builds the kernels once ------------

_NINJA_FILE = """
import sys
from torch.utils import cpp_extension as c
c._run_ninja_build = lambda *a, **k: None            # no compiler run: the test reads
c._import_module_from_library = lambda *a, **k: "m"  # the build file torch would run
from cccl_lite.model.fast import fused
fused._load()
sys.stdout.write((fused._build_dir(fused._build_name()) / "build.ninja").read_text())
"""


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs a virtual environment")
def test_the_kernel_build_does_not_depend_on_the_path_to_the_environment(tmp_path):
    """ninja rebuilds when a build command changes; torch writes its include
    and library folders into the command as Python reached them. Through two
    symlinks to one venv the same cache folder then got two commands, and
    every command alternately rebuilt the kernels (33-38 s each)."""
    link = tmp_path / "venv-link"
    link.symlink_to(Path(sys.prefix), target_is_directory=True)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "OMP_NUM_THREADS": "1"}
    env.pop("CCCL_LITE_FUSED", None)
    files = []
    for python in (Path(sys.prefix) / "bin" / "python", link / "bin" / "python"):
        proc = subprocess.run([str(python), "-c", _NINJA_FILE], capture_output=True, text=True,
                              env=env, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        files.append(proc.stdout)
    assert str(link) not in files[1], "the build command names the symlinked path"
    assert files[0] == files[1]


# ---- #8 diagnose --overwrite keeps its baselines, #16 hand-edited results files --------


def test_diagnose_overwrite_writes_the_baselines_again(tiny_words_h5, tmp_path):
    from cccl_lite.studies.diagnose import run_diagnosis

    results = tmp_path / "diagnosis.json"
    other = {"settings": {"data": "another.h5"}, "provenance": {},
             "baselines": {"bag of words": {"rsum": -1.0}}, "rows": []}
    results.write_text(json.dumps(other))
    out = run_diagnosis(tiny_words_h5, tmp_path / "runs", results, epochs=1, max_steps=1,
                        only=["reference"], overwrite=True, log=lambda s: None)
    written = json.loads(results.read_text())
    assert written["settings"]["data"] == Path(tiny_words_h5).name
    # Measured on these data: neither null nor the other settings' numbers.
    assert isinstance(written["baselines"], dict) and written["baselines"]
    assert written["baselines"] != other["baselines"]
    assert out["baselines"] == written["baselines"]


def _entry(name="CCCL", seed=0):
    """An ablate entry as run_ablations writes it (the fields it reads back)."""
    return {"name": name, "seed": seed, "seconds": 1.0, "test": {"rsum": 100.0},
            "truth": {"rsum": 120.0}, "siblings": {"binding": 90.0, "relation": 60.0}}


@pytest.mark.parametrize("edit, needle", [
    (lambda e: e.pop("seed"), "'seed'"),
    (lambda e: e["test"].pop("rsum"), "'rsum'"),
    (lambda e: e.update(name="no such row"), "no such row"),
    (lambda e: e.update(seed="zero"), "'seed'"),
])
def test_a_hand_edited_ablate_results_file_is_one_line(tiny_words_h5, tmp_path, capsys,
                                                        edit, needle):
    from cccl_lite.studies import ablate

    results = tmp_path / "ablations.json"
    entry = _entry()
    edit(entry)
    results.write_text(json.dumps({"settings": ablate._settings(tiny_words_h5, 1, 1),
                                   "entries": [entry]}))
    code = main(["ablate", "--data", str(tiny_words_h5), "--out", str(tmp_path / "runs"),
                 "--results", str(results), "--epochs", "1", "--max-steps", "1",
                 "--seeds", "1"])
    assert code == 1
    one_error_line(capsys, str(results), needle)


@pytest.mark.parametrize("rows, needle", [
    ([{"val_rsum": 1.0}], "'name'"),
    (5, "'rows'"),
    ([{"name": "reference", "seed": "zero"}], "'seed'"),
])
def test_a_hand_edited_diagnose_results_file_is_one_line(tiny_words_h5, tmp_path, capsys,
                                                          rows, needle):
    from cccl_lite.studies import diagnose

    results = tmp_path / "diagnosis.json"
    results.write_text(json.dumps({"settings": diagnose._settings(tiny_words_h5, 1, 1, 0),
                                   "baselines": {"bag of words": {}}, "rows": rows}))
    code = main(["diagnose", "--data", str(tiny_words_h5), "--out", str(tmp_path / "runs"),
                 "--results", str(results), "--epochs", "1", "--max-steps", "1",
                 "--only", "reference"])
    assert code == 1
    one_error_line(capsys, str(results), needle)


@pytest.mark.parametrize("command", ["ablate", "diagnose"])
def test_a_results_file_that_is_not_json_is_one_line(tiny_words_h5, tmp_path, capsys,
                                                      command):
    results = tmp_path / "results.json"
    results.write_text('{"settings": ')
    code = main([command, "--data", str(tiny_words_h5), "--out", str(tmp_path / "runs"),
                 "--results", str(results), "--epochs", "1", "--max-steps", "1"]
                + (["--seeds", "1"] if command == "ablate" else ["--only", "reference"]))
    assert code == 1
    one_error_line(capsys, str(results), "--overwrite")
    assert results.read_text() == '{"settings": '


# ---- #20: errors that named neither the file nor the field ------------------------------


def _edited_checkpoint(src, dest, edit):
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dest)
    return dest


@pytest.fixture(scope="module")
def cli_run_dir(tiny_words_h5, tmp_path_factory):
    """A one-epoch run of `python -m cccl_lite train` (the lite preset), to resume."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(tiny_words_h5), "--out", str(out), "--epochs", "1",
                 "--max-steps", "1", "--quiet"]) == 0
    return out


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.pop("best_rsum"), "best_rsum"),
    (lambda c: c.update(epoch="one"), "epoch"),
    (lambda c: c.update(optimizer={"state": {}, "param_groups": []}), "optimizer"),
])
def test_resume_from_a_damaged_last_pt_is_one_line_naming_it(tiny_words_h5, cli_run_dir,
                                                              tmp_path, capsys, edit, needle):
    run = _copy_run(cli_run_dir, tmp_path / "run")
    argv = ["train", "--data", str(tiny_words_h5), "--out", str(run), "--resume",
            "--epochs", "2", "--max-steps", "1", "--quiet"]
    intact = [("1" if a == "2" else a) for a in argv]  # --epochs 1: already done
    assert main(intact) == 0, capsys.readouterr().err  # the intact last.pt resumes
    capsys.readouterr()
    _edited_checkpoint(run / "last.pt", run / "last.pt", edit)
    code = main(argv)
    assert code == 1
    one_error_line(capsys, str(run / "last.pt"), needle)


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.update(vocab=5), "vocab"),
    (lambda c: c.update(model={k: v for k, v in list(c["model"].items())[1:]}), "Missing key"),
])
def test_evaluate_a_damaged_checkpoint_is_one_line_naming_file_and_field(tiny_words_h5, run_dir,
                                                                         tmp_path, capsys,
                                                                         edit, needle):
    ckpt = _edited_checkpoint(run_dir / "best.pt", tmp_path / "best.pt", edit)
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(tiny_words_h5)])
    assert code == 1
    one_error_line(capsys, str(ckpt), needle)


def test_ship_into_a_folder_that_is_a_file_names_it(tiny_words_h5, run_dir, tmp_path, capsys):
    folder = tmp_path / "assets"
    folder.write_text("a file")
    code = main(["ship", "--run-dir", str(run_dir), "--data", str(tiny_words_h5),
                 "--folder", str(folder), "--name", "m"])
    assert code == 1
    line = one_error_line(capsys, str(folder), "not a folder")
    assert "File exists" not in line


@pytest.mark.parametrize("flag, value", [("--config", "huge"), ("--ablation", "w/o X")])
def test_an_unknown_config_or_ablation_names_its_option(tiny_words_h5, tmp_path, capsys,
                                                        flag, value):
    code = main(["train", "--data", str(tiny_words_h5), "--out", str(tmp_path / "r"),
                 flag, value])
    assert code == 1
    one_error_line(capsys, f"{flag} {value!r}" if flag == "--config" else flag, value)


# ---- found by this round's own attacks (tests/H6 notes) ----------------------------------


@pytest.mark.parametrize("name", ["../escaped", "sub/m", ".."])
def test_ship_name_is_a_plain_file_name(tiny_words_h5, run_dir, tmp_path, capsys, name):
    folder = tmp_path / "box" / "assets"
    code = main(["ship", "--run-dir", str(run_dir), "--data", str(tiny_words_h5),
                 "--folder", str(folder), "--name", name])
    assert code == 1
    one_error_line(capsys, "--name")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written


def test_diagnose_results_that_is_a_folder_is_named_as_such(tiny_words_h5, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    code = main(["diagnose", "--data", str(tiny_words_h5), "--out", str(tmp_path / "runs"),
                 "--results", str(tmp_path / "results"), "--epochs", "1", "--only",
                 "reference"])
    assert code == 1
    one_error_line(capsys, str(tmp_path / "results"), "folder")


@pytest.mark.parametrize("key, value", [("embed_dim", "big"), ("use_mlp", "yes"),
                                        ("attention_temperature", None)])
def test_a_checkpoint_config_field_of_the_wrong_kind_is_named(tiny_words_h5, run_dir, tmp_path,
                                                              capsys, key, value):
    ckpt = _edited_checkpoint(run_dir / "best.pt", tmp_path / "best.pt",
                              lambda c: c["config"].update({key: value}))
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(tiny_words_h5)])
    assert code == 1
    one_error_line(capsys, str(ckpt), f"'{key}'")


def test_a_last_batch_of_one_pair_is_not_trained_on(tiny_words_h5, tmp_path, monkeypatch):
    """300 training captions in batches of 13: the last batch holds one pair,
    whose alignment term (eq 33) is identically zero (#12's case, reached by
    the split's size instead of --batch-size 1). It is skipped, not trained."""
    from cccl_lite.model.loss import HybridObjective

    sizes, loss = [], HybridObjective.__call__

    def recording(self, scores, positive, **kw):
        sizes.append(positive.shape[0])
        return loss(self, scores, positive, **kw)

    monkeypatch.setattr(HybridObjective, "__call__", recording)
    import h5py
    with h5py.File(tiny_words_h5, "r") as f:
        n = f["train/captions/text"].shape[0]
    assert n % 13 == 1, n  # the premise: the last batch has one pair
    train(*small(epochs=1, batch_size=13), tiny_words_h5, tmp_path / "r", quick(max_steps=None))
    assert sizes and min(sizes) >= 2, sorted(set(sizes))
    assert len(sizes) == n // 13


def test_ship_reads_no_log_line_past_the_run_s_checkpoints(tiny_words_h5, run_dir, tmp_path):
    """train writes an epoch's log line before its checkpoints (resume trims
    the line when they never came: a full disk, a kill). ship must trim it
    too, or it records an epoch that no checkpoint holds."""
    run = _copy_run(run_dir, tmp_path / "run")
    line = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({**line, "epoch": line["epoch"] + 1, "best": True}) + "\n")
    rec = pretrained.ship(run, tiny_words_h5, tmp_path / "assets", name="m")
    assert rec["epochs_trained"] == line["epoch"]
    assert [r["epoch"] for r in rec["curve"]] == [line["epoch"]]
