"""Issue 14: nothing lost, nothing hangs, no code from data files, every bad
input one clear line. One section per point of the issue; each test builds
the situation the issue reports (a killed build's lock, a crafted pickle, a
second run into one folder, ...) and checks what a user sees against what
the test itself wrote, never against the code's own output."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cccl_lite.studies import ablate
from cccl_lite import errors
from cccl_lite.cli import main
from cccl_lite.data.dataset import SplitReader
from cccl_lite.data.precomp import InputError, convert_precomp, read_captions
from cccl_lite.data.schema import SchemaError, atomic_h5, check_file
from cccl_lite.model.fast import fused
from cccl_lite.files import OutputError, RunLock, remove_stale_temps
from cccl_lite.data.text import simple_tokenize
from cccl_lite.engine.train import Trainer, load_checkpoint, train

from helpers import one_error_line, quick, small, small_config, write_scan

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_thread")


def _script(name: str):
    """A data script of data_scripts/ as a module (its main(argv) in this process)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}",
                                                  ROOT / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dead_pid() -> int:
    """The PID of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def run_dir(tiny_words_h5, tmp_path_factory):
    """A finished one-epoch run of the tiny config (last.pt, best.pt)."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    train(*small(epochs=1), tiny_words_h5, out, quick(max_steps=1))
    return out


# ---- 1 and 6: the fused kernels' build cache and its locks ---------------------------


def _fake_load(calls, give_up_s=20.0):
    """torch.utils.cpp_extension.load as far as its lock goes: torch's
    FileBaton (``BUILD_DIR/lock``, created exclusively, waited on while it
    exists: forever, in torch). Here the wait gives up after ``give_up_s`` so
    that a regression fails the test instead of hanging it."""
    from torch.utils.cpp_extension import _get_build_directory
    from torch.utils.file_baton import FileBaton

    def load(name, sources, extra_cflags=None, build_directory=None, verbose=False, **kw):
        folder = build_directory or _get_build_directory(name, verbose)
        calls.append({"name": name, "sources": list(sources), "flags": extra_cflags,
                      "folder": folder})
        baton = FileBaton(os.path.join(folder, "lock"))
        if baton.try_acquire():
            baton.release()
            return "the module"
        start = time.monotonic()
        while os.path.exists(baton.lock_file_path):
            if time.monotonic() - start > give_up_s:
                raise AssertionError(f"hung on {baton.lock_file_path}")
            time.sleep(0.05)
        return "the module"

    return load


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp

    calls = []
    monkeypatch.delenv(fused.ENV, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(cpp, "load", _fake_load(calls))
    monkeypatch.setattr(fused, "_state", {})
    return calls


def test_a_killed_builds_lock_is_taken_over_not_waited_on_forever(fake_build, tmp_path):
    """Point 1: a first evaluate killed while compiling leaves torch's lock
    file; every later load waited for it forever."""
    stale = tmp_path / "ext" / fused._build_name() / "lock"
    stale.parent.mkdir(parents=True)
    stale.write_text("")  # what a kill -9 during the build leaves
    with pytest.warns(RuntimeWarning, match="interrupted build"):
        module = fused.kernel()
    # The fake load gives up (None here) where torch would wait forever.
    assert module == "the module" and len(fake_build) == 1
    assert not stale.exists()


def _hold_build_lock(folder: Path, beat_every: float | None, beats: int | None = None):
    """Another process's build lock as fused takes it: flock + PID, its
    mtime touched every ``beat_every`` s (None: never, a stopped process),
    released after ``beats`` beats or when the returned event is set."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / fused._LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"424242\n")
    os.utime(path, (time.time() - 3600, time.time() - 3600))  # last touched long ago
    stop, released = threading.Event(), threading.Event()

    def run():
        n = 0
        while not stop.wait(beat_every or 0.05) and (beats is None or n < beats):
            if beat_every:
                os.utime(path)
                n += 1
        released.set()  # before the close: whoever gets the lock next sees it set
        os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stop, released


def test_a_stopped_builders_lock_is_detected_within_seconds(fake_build, tmp_path,
                                                            monkeypatch):
    """Point 1: a lock whose holder no longer makes progress (its heartbeat
    stopped) is not waited on: the PyTorch path runs, with one warning."""
    monkeypatch.setattr(fused, "_ABANDONED_S", 1.5)
    monkeypatch.setattr(fused, "_MAX_WAIT_S", 3600.0)  # only the stopped heartbeat may end it
    holder, stop, _ = _hold_build_lock(tmp_path / "ext" / fused._build_name(), None)
    try:
        with pytest.warns(RuntimeWarning) as caught:
            assert fused.kernel() is None
    finally:
        stop.set()
        holder.join()
    assert len(caught) == 1 and "process 424242" in str(caught[0].message)
    assert "has not touched it" in str(caught[0].message)
    assert "PyTorch code" in str(caught[0].message)
    assert fake_build == []  # never reached torch's own lock
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused.kernel() is None  # no second warning


def test_a_live_builder_is_waited_for(fake_build, tmp_path, monkeypatch):
    """Point 1: another process that is building (its heartbeat goes on) is
    waited for, and then its build is used."""
    holder, _, released = _hold_build_lock(tmp_path / "ext" / fused._build_name(), 0.1,
                                           beats=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused.kernel() == "the module"
    assert released.is_set()  # it got the lock only once the holder let go
    assert len(fake_build) == 1
    holder.join()


def test_the_build_cache_key_covers_source_flags_and_torch(fake_build, tmp_path,
                                                           monkeypatch):
    """Point 6: two checkouts rebuilt each other's kernels (the key was the
    CPU only, and the build read the source from the checkout's path)."""
    checkout_a, checkout_b = tmp_path / "a", tmp_path / "b"
    for d in (checkout_a, checkout_b):
        d.mkdir()
        shutil.copy(fused._SOURCE, d / fused._SOURCE.name)
    monkeypatch.setattr(fused, "_SOURCE", checkout_a / fused._SOURCE.name)
    name_a = fused._build_name()
    monkeypatch.setattr(fused, "_SOURCE", checkout_b / fused._SOURCE.name)
    assert fused._build_name() == name_a  # the same source elsewhere: the same build

    # ... and the build reads a copy inside its own folder, not the checkout.
    assert fused.kernel() == "the module"
    (call,) = fake_build
    assert call["name"] == name_a
    assert [Path(s).parent for s in call["sources"]] == [Path(call["folder"])]
    assert Path(call["sources"][0]).read_bytes() == fused._SOURCE.read_bytes()

    (checkout_b / fused._SOURCE.name).write_text(fused._SOURCE.read_text() + "\n// edited\n")
    assert fused._build_name() != name_a  # another source: another build
    monkeypatch.setattr(fused, "_SOURCE", checkout_a / fused._SOURCE.name)
    monkeypatch.setattr(fused, "_FLAGS", fused._FLAGS + ["-DNDEBUG"])
    assert fused._build_name() != name_a  # other flags
    monkeypatch.setattr(fused, "_FLAGS", fused._FLAGS[:-1])
    assert fused._build_name() == name_a
    monkeypatch.setattr(torch, "__version__", "0.0.1+other")
    assert fused._build_name() != name_a  # another torch


# ---- 2: ablate writes where --out says ---------------------------------------------


def test_ablate_never_touches_the_books_table(tiny_words_h5, tmp_path, monkeypatch, capsys):
    """Point 2: a smoke run with --out elsewhere replaced the committed
    book/results/ablations.json (relative to the current folder; now cccl_lite/results/)."""
    book = tmp_path / "book" / "results" / "ablations.json"
    book.parent.mkdir(parents=True)
    book.write_text('{"rows": ["the committed table"]}\n')
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "smoke"
    args = ["ablate", "--data", str(tiny_words_h5), "--out", str(out), "--epochs", "1",
            "--max-steps", "1", "--seeds", "1", "--only", "w/o POS"]
    assert main(args) == 0
    assert book.read_text() == '{"rows": ["the committed table"]}\n'
    written = json.loads((out / "ablations.json").read_text())
    assert [e["name"] for e in written["entries"]] == ["w/o POS"]
    capsys.readouterr()

    # Other settings never replace a results file without --overwrite ...
    assert main([*args[:6], "2", *args[7:]]) == 1
    one_error_line(capsys, str(out / "ablations.json"), "--overwrite")
    assert json.loads((out / "ablations.json").read_text()) == written
    # ... nor does a results file given explicitly.
    assert main([*args, "--results", str(book)]) == 1
    one_error_line(capsys, "--overwrite")
    assert book.read_text() == '{"rows": ["the committed table"]}\n'


# ---- 3: make_synthetic.py --out EXISTING --------------------------------------------


def test_make_synthetic_never_replaces_a_file_without_overwrite(tmp_path, capsys):
    script = _script("make_synthetic")
    precious = tmp_path / "f30k.h5"
    precious.write_bytes(b"a converted Flickr30K file")
    assert script.main(["--out", str(precious), "--size", "tiny"]) == 1
    one_error_line(capsys, str(precious), "--overwrite")
    assert precious.read_bytes() == b"a converted Flickr30K file"
    assert script.main(["--out", str(precious), "--size", "tiny", "--overwrite"]) == 0
    check_file(precious).close()
    capsys.readouterr()
    assert script.main(["--out", str(tmp_path), "--size", "tiny"]) == 1  # a folder
    one_error_line(capsys, "is a folder")


# ---- 4: no pickle from data files ------------------------------------------------


class _Payload:
    """What a crafted GSMN size file carries: a call, run when unpickled
    (here a harmless one: it copies a file to ``marker``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (shutil.copyfile, (__file__, self.marker))


def test_a_crafted_gsmn_size_file_runs_no_code(tmp_path):
    src = tmp_path / "src"
    write_scan(src, boxes="gsmn")
    marker = tmp_path / "code-ran"
    sizes = np.empty(4, dtype=object)
    sizes[:] = [{"image_w": 500, "image_h": 375}] * 3 + [_Payload(marker)]
    np.save(src / "test_ims_size.npy", sizes, allow_pickle=True)
    out = tmp_path / "out.h5"
    with pytest.raises(InputError, match="refusing to unpickle") as e:
        convert_precomp(src, "test", "gsmn", out)
    assert not marker.exists(), "the data file ran code"
    assert not out.exists()
    message = str(e.value)
    assert "test_ims_size.npy" in message and "shutil.copyfile" in message  # what it names
    assert "np.save" in message  # the safe conversion


def test_gsmn_sizes_still_read_from_their_pickled_formats(tmp_path):
    """The restricted reader keeps what GSMN's files hold: dicts of numpy or
    Python numbers, (w, h) pairs, Python 2 style (protocol 2) pickles."""
    import pickle

    from cccl_lite.data.precomp import load_object_npy

    sizes = np.empty(3, dtype=object)
    sizes[:] = [{"image_w": np.int64(500), "image_h": np.float32(375)}, (640, 480.0),
                [333, np.int32(500)]]
    np.save(tmp_path / "p3.npy", sizes, allow_pickle=True)
    with open(tmp_path / "p2.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": (3,)})
        pickle.dump(sizes, f, protocol=2)
    for name in ("p3.npy", "p2.npy"):
        got = load_object_npy(tmp_path / name)
        assert got.shape == (3,) and got[0] == {"image_w": 500, "image_h": 375}
        assert tuple(got[1]) == (640, 480.0) and list(got[2]) == [333, 500]


# ---- 5: a run directory is one run's, and resume checks the data ----------------------


def test_resume_refuses_other_data(tiny_words_h5, run_dir, tmp_path, capsys):
    """Point 5: --resume --data OTHER.h5 was accepted, and best.pt then
    compared R@sum across two validation sets."""
    from cccl_lite.data.synthetic import make_synthetic

    other = make_synthetic(tmp_path / "other.h5", seed=7, size="tiny")
    with h5py.File(tiny_words_h5, "r") as src, h5py.File(other, "a") as f:
        for split in ("train", "val", "test"):  # the same word vectors: only the seed differs
            for k in ("word_vectors", "word_offsets"):
                src.copy(src[split]["captions"][k], f[split]["captions"], name=k)
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    with pytest.raises(errors.InputError, match="other data.*seed 0 -> 7"):
        Trainer(*small(epochs=2), other, out, quick(max_steps=1, resume=True))
    # The same dataset, copied elsewhere, resumes (with a note).
    copy = tmp_path / "copy.h5"
    shutil.copy(tiny_words_h5, copy)
    Trainer(*small(epochs=2), copy, out, quick(max_steps=1, resume=True)).fit()
    assert "the run started on" in capsys.readouterr().out
    epochs = [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_two_runs_never_write_one_folder_at_once(tiny_words_h5, tmp_path):
    """Point 5: two trainings into one --out both ran (log.jsonl read epochs
    1, 1, 2, 2). The second now fails at once, naming the first's PID."""
    out = tmp_path / "run"
    first = Trainer(*small(epochs=1), tiny_words_h5, out, quick(max_steps=1))
    second = Trainer(*small(epochs=1), tiny_words_h5, out, quick(max_steps=1))
    with RunLock(out):  # the first run, as it holds the folder during fit
        with pytest.raises(OutputError, match=f"another run \\(process {os.getpid()}\\)"):
            second.fit()
        assert not (out / "log.jsonl").exists()
    first.fit()
    epochs = [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == [1]
    assert not (out / RunLock.NAME).exists()  # released


def test_a_killed_runs_lock_is_taken_over_with_a_message(tiny_words_h5, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = _dead_pid()
    (out / RunLock.NAME).write_text(f"{dead} somehost\n")  # what kill -9 leaves
    Trainer(*small(epochs=1), tiny_words_h5, out, quick(max_steps=1)).fit()
    printed = capsys.readouterr().out
    assert f"taking over the lock of process {dead}" in printed
    assert (out / "last.pt").exists() and not (out / RunLock.NAME).exists()


def test_a_second_process_is_refused_while_a_run_holds_the_folder(tmp_path):
    """The lock holds across processes, not only within one."""
    out = tmp_path / "run"
    with RunLock(out):
        code = ("import sys; from cccl_lite.files import RunLock, OutputError\n"
                f"try:\n    RunLock({str(out)!r}).acquire()\nexcept OutputError as e:\n"
                "    print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=600, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr
    assert f"process {os.getpid()}" in proc.stdout


# ---- 7: NaN / inf features; Unicode captions ----------------------------------------


@pytest.mark.parametrize("bad, what", [(np.nan, "non-finite values"),
                                       (-np.inf, "non-finite values"),
                                       (1e6, "values beyond float16's range")])
def test_precomp_refuses_features_that_are_not_finite_in_float16(tmp_path, bad, what):
    src = tmp_path / "src"
    write_scan(src, boxes="camera")
    feats = np.load(src / "test_ims.npy")
    feats[2, 5, 3] = bad  # image 2
    np.save(src / "test_ims.npy", feats)
    out = tmp_path / "out.h5"
    with pytest.raises(ValueError, match=f"images/features.*image 2 has {what}"):
        convert_precomp(src, "test", "camera", out)
    assert not out.exists() and not list(tmp_path.glob(".out.h5.tmp-*"))


def test_captions_keep_accented_letters(tmp_path):
    """Point 7: simple_tokenize turned "café", "São Paulo", "jalapeño" into
    caf, s o paulo, jalape o. Flickr30K-style captions, tokens by hand."""
    cases = {
        "A man drinks coffee at a café in São Paulo.":
            ["a", "man", "drinks", "coffee", "at", "a", "café", "in", "são", "paulo"],
        "Two women eat jalapeño poppers.": ["two", "women", "eat", "jalapeño", "poppers"],
        "Naïve tourists pose by the Zürich piñata": ["naïve", "tourists", "pose", "by", "the",
                                                     "zürich", "piñata"],
        # "e" + a combining acute accent: the same word as "é"
        "A cafe\u0301 on the corner.": ["a", "café", "on", "the", "corner"],
        "A dog\u2019s ball, red.": ["a", "dog's", "ball", "red"],
        "A dog's ball, red (take 3).": ["a", "dog's", "ball", "red", "take", "3"],
    }
    for text, words in cases.items():
        assert simple_tokenize(text) == words, text
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(t + "\n" for t in cases), encoding="utf-8")
    texts, tokens = read_captions(caps)
    assert tokens == [" ".join(w) for w in cases.values()]


# ---- 8: tracebacks that are now one line ------------------------------------------------


def test_an_empty_checkpoint_is_one_clear_line(tmp_path, capsys, tiny_words_h5):
    empty = tmp_path / "best.pt"
    empty.write_bytes(b"")
    with pytest.raises(errors.InputError, match="empty file"):
        load_checkpoint(empty)
    assert main(["evaluate", "--checkpoint", str(empty), "--data", str(tiny_words_h5)]) == 1
    one_error_line(capsys, str(empty), "empty")


def test_resume_from_a_best_pt_is_one_clear_line(tiny_words_h5, run_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    shutil.copy(out / "best.pt", out / "last.pt")
    with pytest.raises(errors.InputError, match="holds no training state.*best.pt"):
        Trainer(*small(epochs=2), tiny_words_h5, out, quick(max_steps=1, resume=True))


def test_out_under_a_file_is_one_clear_line(tiny_words_h5, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert main(["train", "--data", str(tiny_words_h5), "--out", str(a_file / "run"),
                 "--max-steps", "1", "--quiet", "--epochs", "1", "--batch-size", "8"]) == 1
    one_error_line(capsys, str(a_file), "is a file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_out_is_one_clear_line(tiny_words_h5, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["train", "--data", str(tiny_words_h5), "--out", str(ro), "--max-steps", "1",
                     "--quiet", "--epochs", "1", "--batch-size", "8"]) == 1
        one_error_line(capsys, str(ro), "not writable")
    finally:
        ro.chmod(0o700)


def test_save_sims_to_a_folder_fails_before_scoring(run_dir, tiny_words_h5, tmp_path, capsys,
                                                    monkeypatch):
    from cccl_lite.engine import evaluate

    def no_scoring(*a, **k):
        raise AssertionError("scored before checking --save-sims")

    monkeypatch.setattr(evaluate, "evaluate_split", no_scoring)
    base = ["evaluate", "--checkpoint", str(run_dir / "best.pt"), "--data", str(tiny_words_h5)]
    assert main([*base, "--save-sims", str(tmp_path)]) == 1
    one_error_line(capsys, str(tmp_path), "is a folder")
    existing = tmp_path / "sims.npy"
    existing.write_bytes(b"an earlier result")
    assert main([*base, "--save-sims", str(existing)]) == 1
    one_error_line(capsys, str(existing), "--overwrite")
    assert existing.read_bytes() == b"an earlier result"
    monkeypatch.undo()
    assert main([*base, "--save-sims", str(existing), "--overwrite"]) == 0
    with h5py.File(tiny_words_h5, "r") as f:  # every image x every caption of the split
        shape = (f["test/images/features"].shape[0], f["test/captions/text"].shape[0])
    assert np.load(existing).shape == shape


def test_download_dest_under_a_file_is_one_clear_line(tmp_path, capsys):
    a_file = tmp_path / "data"
    a_file.write_text("x")
    script = _script("download")
    assert script.main(["karpathy_splits", "--dest", str(a_file / "sub")]) == 1
    one_error_line(capsys, str(a_file), "is a file")


def _copy_h5(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


def test_missing_word_offsets_and_bad_caption_images_are_schema_errors(tiny_words_h5,
                                                                        tmp_path):
    def drop_offsets(f):
        del f["val/captions/word_offsets"]

    with h5py.File(tiny_words_h5, "r") as f:
        n_img, n_cap = f["val/images/features"].shape[0], f["val/captions/text"].shape[0]

    def bad_image(f):
        image = f["val/captions/image"][:]
        image[7] = n_img + 5  # one past the split's images and more
        f["val/captions/image"][:] = image

    def short_offsets(f):
        offsets = f["val/captions/word_offsets"][:]
        del f["val/captions/word_offsets"]
        f["val/captions"].create_dataset("word_offsets", data=offsets[:-1])

    for edit, match in ((drop_offsets, "val/captions/word_offsets: missing"),
                        (bad_image, fr"val/captions/image: indices must lie in \[0, {n_img}\)"
                                    fr".*{n_img + 5}"),
                        (short_offsets, f"val/captions/word_offsets: expected {n_cap + 1} "
                                        f"entries")):
        bad = _copy_h5(tiny_words_h5, tmp_path / f"{edit.__name__}.h5", edit)
        with pytest.raises(SchemaError, match=match):
            SplitReader(bad, "val")


# ---- 9: numeric options are checked at the command line ------------------------------


@pytest.mark.parametrize("option, value", [
    ("--margin", "-1"), ("--lr-decay-epoch", "-5"), ("--coherence-weight", "-5"),
    ("--lr", "0"), ("--lr", "nan"), ("--epochs", "0"), ("--batch-size", "-2"),
    ("--seed", "-1"), ("--max-steps", "0"), ("--warmup-epochs", "-1"),
    ("--num-workers", "-1"), ("--eval-batch-size", "0"), ("--pair-chunk", "0"),
    ("--margin", "inf")])
def test_train_refuses_bad_numbers_in_one_line(option, value, tiny_words_h5, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_words_h5), "--out", str(out), option, value])
    assert code == 2
    one_error_line(capsys, option, value)
    assert not out.exists()


@pytest.mark.parametrize("argv", [["ablate", "--epochs", "0"], ["ablate", "--seeds", "0"],
                                  ["evaluate", "--checkpoint", "x.pt", "--fold-size", "0"],
                                  ["diagnose", "--results", "r.json", "--max-steps", "0"],
                                  ["diagnose", "--results", "r.json", "--seed", "-3"]])
def test_other_commands_refuse_bad_numbers_in_one_line(argv, tiny_words_h5, capsys):
    assert main([*argv, "--data", str(tiny_words_h5)]) == 2
    one_error_line(capsys, argv[-2])


# ---- 10: temp files of killed writers are cleaned up -----------------------------------


def test_a_rerun_removes_the_temp_files_of_a_killed_run(tiny_words_h5, run_dir, tmp_path,
                                                         capsys):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    dead = _dead_pid()
    leftovers = [out / f".{name}.tmp-{dead}" for name in ("last.pt", "best.pt", "log.jsonl")]
    for p in leftovers:
        p.write_bytes(b"half a file")
    alive = out / f".last.pt.tmp-{os.getppid()}"  # a live writer's: not ours to remove
    alive.write_bytes(b"in progress")
    Trainer(*small(epochs=2), tiny_words_h5, out, quick(max_steps=1, resume=True)).fit()
    assert not any(p.exists() for p in leftovers)
    assert alive.exists()
    assert "left by an interrupted run" in capsys.readouterr().out

    h5 = tmp_path / "x.h5"
    stale_h5 = tmp_path / f".x.h5.tmp-{dead}"
    stale_h5.write_bytes(b"56 MB, once")
    with atomic_h5(h5, "test") as f:
        f.attrs["n"] = 1
    assert h5.exists() and not stale_h5.exists()
    assert remove_stale_temps(out / "last.pt") == []  # the live one stays


# ---- 11: a "w/o B-3" checkpoint needs no parse heads --------------------------------------


def test_a_checkpoint_without_branch3_evaluates_unparsed_data(tiny_words_h5, tmp_path, capsys):
    best = train(*small(epochs=1).with_ablation("w/o B-3"), tiny_words_h5, tmp_path / "run", quick(max_steps=1))

    def drop_heads(f):
        for split in ("train", "val", "test"):
            del f[split]["captions/heads"]

    unparsed = _copy_h5(tiny_words_h5, tmp_path / "unparsed.h5", drop_heads)
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(unparsed)]) == 0, \
        capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rsum"] >= 0


# ---- 12: no advice to load code ---------------------------------------------------------


def test_a_random_bytes_checkpoint_never_advises_weights_only_false(tmp_path, capsys,
                                                                     tiny_words_h5):
    junk = tmp_path / "best.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(errors.InputError) as e:
        load_checkpoint(junk)
    assert "weights_only" not in str(e.value) and "False" not in str(e.value)
    assert str(junk) in str(e.value)
    assert main(["evaluate", "--checkpoint", str(junk), "--data", str(tiny_words_h5)]) == 1
    line = one_error_line(capsys, str(junk))
    assert "weights_only" not in line


# ---- 13: one front door ------------------------------------------------------------------


def test_every_data_script_is_a_command_of_the_package(tmp_path, capsys):
    """`python -m cccl_lite --help` lists the data commands, and a command and its
    data_scripts/ wrapper do the same work (here: the same bytes, the same refusal)."""
    from cccl_lite.cli.data import COMMANDS

    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name, script in (("make-synthetic", "make_synthetic"), ("encode-words", "encode_words"),
                         ("parse", "parse_captions"), ("prepare-precomp", "prepare_precomp"),
                         ("prepare-tsv", "prepare_tsv"), ("download", "download"),
                         ("difficulty", "difficulty")):
        assert name in listed and COMMANDS[name].script == f"{script}.py"
        assert f'script_main("{name}"' in (ROOT / "data_scripts" / f"{script}.py").read_text()
    via_command, via_script = tmp_path / "a.h5", tmp_path / "b.h5"
    assert main(["make-synthetic", "--out", str(via_command), "--size", "tiny"]) == 0
    assert _script("make_synthetic").main(["--out", str(via_script), "--size", "tiny"]) == 0
    assert via_command.read_bytes() == via_script.read_bytes()
    capsys.readouterr()
    assert main(["make-synthetic", "--out", str(via_command), "--size", "tiny"]) == 1
    line = one_error_line(capsys, str(via_command), "--overwrite")
    assert line.startswith("make-synthetic: error: ")


def test_slug_names_run_folders_by_hand():
    from cccl_lite.files import slug
    assert slug("w/o B-3") == "w-o-b-3"
    assert slug("siblings, L_c per item") == "siblings-l-c-per-item"
    assert slug("λ 0") == "λ-0"  # letters of any script stay
    assert slug("  CCCL  ") == "cccl"
