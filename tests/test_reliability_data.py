"""Issue 29, the data side: the simulated detector apart from the scenes, and
the data commands' numbered defects (#3, #5, #13, #15, #18, #19, #22). Each
test builds the situation the issue reports and checks what a user sees
against what the test itself computed or wrote, never against the code's
own output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cccl_lite.engine.checkpoint import data_identity
from cccl_lite.data.difficulty import hard_negative_pairs
from cccl_lite.data.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "cccl_lite" / "assets" / "lite-scenes-small-seed0.pt"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

pytestmark = pytest.mark.usefixtures("single_thread")


def _cli(*argv, cwd=None, pre: str = "", timeout: float = 600):
    """``python -m cccl_lite ARGV`` in a subprocess (``pre``: shell words run first,
    such as a ulimit); returns the completed process."""
    cmd = " ".join([sys.executable, "-m", "cccl_lite", *map(str, argv)])
    return subprocess.run(["bash", "-c", f"{pre} {cmd}"], capture_output=True, text=True,
                          env=ENV, cwd=cwd or ROOT, timeout=timeout)


def _one_line(proc, *needles) -> str:
    """A refusal: exit 1 or 2, stderr exactly one error line holding every needle."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode in (1, 2) and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "error" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---- the detector: fixed for the scenes, --seed varies the scenes only --------------


def _appearances(path) -> dict[tuple, np.ndarray]:
    """Least-squares estimate of each object type's appearance vector, from the
    file alone: every region's features are modelled, as chapter 1 states, as
    sum_o (fraction of object o inside the region) x appearance(o's type) +
    (uncovered fraction) x background + noise; the fractions are computed here
    from the stored boxes and scene JSON."""
    rows, feats, types = [], [], {}
    with h5py.File(path, "r") as f:
        for split in ("train", "val", "test"):
            im = f[split]["images"]
            scenes = [json.loads(s) for s in im["scene"].asstr()[:]]
            boxes, mask = im["boxes"][:].astype(np.float64), im["region_mask"][:]
            x = im["features"][:].astype(np.float64)
            for i, objects in enumerate(scenes):
                for r in np.nonzero(mask[i])[0]:
                    b = boxes[i, r]
                    area = (b[2] - b[0]) * (b[3] - b[1])
                    row, covered = {}, 0.0
                    for o in objects:
                        ob = o["box"]
                        w = max(0.0, min(b[2], ob[2]) - max(b[0], ob[0]))
                        h = max(0.0, min(b[3], ob[3]) - max(b[1], ob[1]))
                        key = (o["shape"], o["colour"], o["size"])
                        row[key] = row.get(key, 0.0) + w * h / ((ob[2] - ob[0]) * (ob[3] - ob[1]))
                        covered += w * h
                        types.setdefault(key, len(types))
                    row["bg"] = max(0.0, 1.0 - covered / area)
                    rows.append(row)
                    feats.append(x[i, r])
    cols = {**types, "bg": len(types)}
    a = np.zeros((len(rows), len(cols)))
    for k, row in enumerate(rows):
        for key, v in row.items():
            a[k, cols[key]] = v
    est = np.linalg.lstsq(a, np.asarray(feats), rcond=None)[0]
    return {key: est[j] for key, j in cols.items()}


def test_two_scene_seeds_are_seen_by_one_detector(tmp_path):
    """The issue: --seed 1 drew a new detector. Now the appearance of a red
    large circle is the same vector in the files of seeds 1 and 2 (up to the
    feature noise), and both files record the detector they were made with."""
    one = make_synthetic(tmp_path / "s1.h5", seed=1, size="tiny")
    two = make_synthetic(tmp_path / "s2.h5", seed=2, size="tiny")
    a, b = _appearances(one), _appearances(two)
    common = sorted(set(a) & set(b), key=str)
    assert len(common) > 20
    corr = [np.corrcoef(a[k], b[k])[0, 1] for k in common]
    # Independent tables (the defect) give correlations near 0; one detector
    # gives the same vector up to noise of 0.25 per entry against ~1.6.
    assert np.median(corr) > 0.9, np.round(corr, 2)
    for p in (one, two):
        with h5py.File(p, "r") as f:
            assert int(f.attrs["detector_seed"]) == 0
        assert data_identity(p)["detector"] == "synthetic-scenes detector 0"


def _other_detector(path: Path, how: str) -> Path:
    """Tiny scenes of another detector: written so (``attr``), or an old file of
    seed 3, whose tables came from its seed (``old``)."""
    if how == "attr":
        return make_synthetic(path, seed=0, size="tiny", detector_seed=5)
    make_synthetic(path, seed=3, size="tiny")
    with h5py.File(path, "r+") as f:
        del f.attrs["detector_seed"]
    return path


@pytest.mark.parametrize("how, named", [("attr", "detector 5"), ("old", "detector 3")])
def test_evaluate_refuses_scenes_of_another_detector(tmp_path, how, named):
    data = _other_detector(tmp_path / "other.h5", how)
    proc = _cli("evaluate", "--checkpoint", SHIPPED, "--data", data, "--split", "test")
    line = _one_line(proc, str(data), named, "detector 0", str(SHIPPED))
    assert "R@" not in proc.stdout, proc.stdout
    proc = _cli("retrieve", "--checkpoint", SHIPPED, "--data", data, "--split", "test",
                "--caption", 0)
    _one_line(proc, named, "detector 0")
    assert line


@pytest.mark.slow  # 8 s of scenes, a minute of MiniLM, the shipped model on 201 images
def test_the_shipped_model_reads_scenes_of_another_seed(tmp_path):
    """The held-out test of issue 29: fresh scenes of seed 7 (never seen in
    training) through the same detector; the issue measured binding 100 % and
    relation 99.6 % this way, and chance (50 %) with seed 7's own detector."""
    data = tmp_path / "seed7.h5"
    assert _cli("make-synthetic", "--out", data, "--seed", 7, "--size", "small").returncode == 0
    proc = _cli("encode-words", data)
    assert proc.returncode == 0, proc.stderr
    sims = tmp_path / "sims.npy"
    proc = _cli("evaluate", "--checkpoint", SHIPPED, "--data", data, "--split", "test",
                "--save-sims", sims)
    assert proc.returncode == 0, proc.stderr
    recalls = json.loads(proc.stdout.strip().splitlines()[-1])
    scores = np.load(sims)  # (images, captions)
    with h5py.File(data, "r") as f:
        own = f["test/captions/image"][:]
    acc = {}
    for kind, pairs in hard_negative_pairs(data, "test").items():
        k, j = np.array(pairs).T
        acc[kind] = 100 * np.mean(scores[own[k], k] > scores[j, k])
    print(f"seed-7 scenes, shipped model: R@sum {recalls['rsum']:.1f}, sibling accuracy {acc}")
    assert acc["binding"] >= 95.0 and acc["relation"] >= 95.0, (acc, recalls)
    assert recalls["rsum"] > 150, recalls  # chance is about 9 on 201 images


# ---- 15 and 5: a malformed or crafted HDF5 file is one line, read from its metadata ----


def _edit(src, dst, edit) -> Path:
    dst.write_bytes(Path(src).read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _replace(f, name, data, **kw):
    del f[name]
    f.create_dataset(name, data=data, **kw)


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "tiny.h5", seed=0, size="tiny")


@pytest.mark.parametrize("edit, field, expected", [
    (lambda f: f.attrs.__delitem__("has_boxes"), "has_boxes", "True or False"),
    (lambda f: _replace(f, "test/captions/tokens", np.arange(75)), "test/captions/tokens",
     "UTF-8 strings"),
    (lambda f: _replace(f, "test/images/region_mask", np.ones((15, 12), np.float32)),
     "test/images/region_mask", "bool"),
    (lambda f: _replace(f, "test/images/boxes", np.ones((15, 12, 3), np.float32)),
     "test/images/boxes", "(15, 12, 4)"),
    (lambda f: _replace(f, "test/captions/image", np.zeros(75, np.float64)),
     "test/captions/image", "integer"),
])
def test_a_malformed_file_is_one_line_naming_the_field(tiny_h5, tmp_path, edit, field, expected):
    bad = _edit(tiny_h5, tmp_path / "bad.h5", edit)
    proc = _cli("evaluate", "--checkpoint", SHIPPED, "--data", bad, "--split", "test")
    _one_line(proc, str(bad), field, expected)
    proc = _cli("difficulty", "--data", bad, "--split", "test")
    _one_line(proc, field)


def _crafted_images(f, n: int):
    """Declare n test images without storing them: chunked, never written."""
    for name, shape, dtype in (("features", (n, 12, 256), np.float16), ("size", (n, 2), np.float32),
                               ("region_mask", (n, 12), bool), ("boxes", (n, 12, 4), np.float32)):
        del f[f"test/images/{name}"]
        f["test/images"].create_dataset(name, shape, dtype=dtype,
                                        chunks=(1,) + shape[1:])


def test_a_file_declaring_millions_of_images_is_refused_before_reading(tiny_h5, tmp_path):
    """The issue's 3 MB file declaring 2e8 images took 4.2 GB (region_mask and
    size read whole). 2e7 here: the refusal must come from the metadata."""
    bad = _edit(tiny_h5, tmp_path / "big.h5", lambda f: _crafted_images(f, 20_000_000))
    assert bad.stat().st_size < 5_000_000
    proc = _cli("difficulty", "--data", bad, "--split", "test", pre="ulimit -v 4000000;")
    _one_line(proc, str(bad), "test/images/", "truncated or crafted")
    proc = _cli("evaluate", "--checkpoint", SHIPPED, "--data", bad, "--split", "test",
                pre="ulimit -v 4000000;")
    _one_line(proc, "truncated or crafted")


# ---- 22: a locked file, a dangling symbolic link ----------------------------------------


def test_a_file_another_process_writes_is_called_locked(tiny_h5, tmp_path):
    data = tmp_path / "busy.h5"
    data.write_bytes(Path(tiny_h5).read_bytes())
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; "
                               f"f = h5py.File({str(data)!r}, 'a'); print('open', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "open"
        line = _one_line(_cli("difficulty", "--data", data), str(data), "locked by another process")
        assert "not a readable HDF5" not in line
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("out", ["link", "gone/tiny.h5"])
def test_a_dangling_out_link_is_named_as_such(tmp_path, out):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "gone").symlink_to(tmp_path / "nodir" / "x")
    proc = _cli("make-synthetic", "--size", "tiny", "--out", tmp_path / out)
    line = _one_line(proc, "symbolic link", "does not exist")
    assert "File exists" not in line
    assert (tmp_path / "link").is_symlink() and not (tmp_path / "nowhere").exists()


# ---- 18: difficulty on data that are not the synthetic scenes ---------------------------


def test_difficulty_on_flickr_style_data_is_one_line(tmp_path):
    from cccl_lite.data.precomp import convert_precomp
    from helpers import write_scan

    write_scan(tmp_path, split="test")
    out = tmp_path / "f30k.h5"
    convert_precomp(tmp_path, "test", "camera", out)
    proc = _cli("difficulty", "--data", out, "--split", "test")
    _one_line(proc, str(out), "test/images/group", "synthetic scenes")


# ---- 13: a full disk or a file-size limit while writing ---------------------------------


_LIMITED = """
import resource, sys
from cccl_lite.cli import main
from cccl_lite.data import schema
if sys.argv[1] == "write":  # let the write itself meet the limit, not the check before it
    schema.check_room = lambda path, need: None
resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("where", ["check", "write"])
def test_make_synthetic_under_a_file_size_limit_is_one_line(tmp_path, where):
    """The issue: exit 139 (a segfault) under ``ulimit -f``; the limit here is set
    in the child, so only its writes meet it."""
    out = tmp_path / "tiny.h5"
    proc = subprocess.run([sys.executable, "-c", _LIMITED, where, "make-synthetic", "--size",
                           "tiny", "--out", str(out)], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=300)
    _one_line(proc, str(out), "limit" if where == "check" else "File too large")
    assert sorted(os.listdir(tmp_path)) == []  # neither the file nor a temp file


def test_prepare_precomp_under_ulimit_f_is_one_line(tmp_path):
    from helpers import write_scan

    write_scan(tmp_path, split="test")
    out = tmp_path / "out" / "f30k.h5"
    out.parent.mkdir()
    proc = _cli("prepare-precomp", "--src", tmp_path, "--split", "test", "--boxes", "camera",
                "--out", out, pre="ulimit -f 4;")
    _one_line(proc, str(out), "ulimit -f")
    assert os.listdir(out.parent) == []


# ---- 19: NaN word vectors or features are refused before training ------------------------


def _nan(field: str, row: int):
    def edit(f):
        ds = f[f"train/{field}"]
        if field.endswith("word_vectors"):
            row_ = int(f["train/captions/word_offsets"][row]) + 1  # the caption's second word
        else:
            row_ = row
        block = ds[row_]
        block.flat[5] = np.nan
        ds[row_] = block
    return edit


@pytest.mark.parametrize("field, row, named", [("images/features", 3, "image 3"),
                                               ("captions/word_vectors", 7, "caption 7")])
def test_nan_data_are_refused_before_training(tiny_words_h5, tmp_path, capsys, field, row, named):
    """The issue: a whole epoch on NaN, then only "sims must be finite". The
    command line's lite preset reads word ids, so word vectors go through a
    config that reads them (the paper's text side)."""
    from cccl_lite.cli import main
    from cccl_lite.data.schema import SchemaError
    from cccl_lite.engine.train import train
    from helpers import quick, small

    bad = _edit(tiny_words_h5, tmp_path / "nan.h5", _nan(field, row))
    needles = (f"{bad}:/train/{field}", named, "NaN")
    with pytest.raises(SchemaError) as e:
        train(*small(epochs=1), bad, tmp_path / "api", quick(max_steps=1))
    assert all(n in str(e.value) for n in needles), str(e.value)
    assert not (tmp_path / "api" / "last.pt").exists()
    if field == "images/features":
        out = tmp_path / "run"
        code = main(["train", "--data", str(bad), "--out", str(out), "--epochs", "1"])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
        assert all(n in lines[0] for n in needles), lines[0]
        assert not (out / "last.pt").exists()


# ---- 3: encode-words killed during its last split keeps the splits it finished ------------


_KILLED_ENCODER = """
import os, signal, sys, types
import numpy as np
from cccl_lite.data import vectors
calls = []
def fake_encoder(encoder, device):
    return None, types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=8))
def fake_encode(tokens, tokenizer, model, batch_size, device, start=0):
    calls.append(len(tokens))
    if len(calls) == 3:  # the third split, test: killed like kill -9
        os.kill(os.getpid(), signal.SIGKILL)
    return [np.full((len(t), 8), len(calls), np.float32) for t in tokens]
vectors.load_encoder, vectors.encode_words = fake_encoder, fake_encode
from cccl_lite.cli import main
sys.exit(main(["encode-words", sys.argv[1]]))
"""


def test_encode_words_killed_in_the_last_split_keeps_the_finished_ones(tmp_path):
    data = make_synthetic(tmp_path / "tiny.h5", seed=0, size="tiny")
    proc = subprocess.run([sys.executable, "-c", _KILLED_ENCODER, str(data)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == -9, proc.stderr
    with h5py.File(data, "r") as f:
        for k, split in enumerate(("train", "val"), 1):
            cap = f[split]["captions"]
            words = sum(len(t.split(" ")) for t in cap["tokens"].asstr()[:])
            assert cap["word_vectors"].shape == (words, 8), split
            assert (cap["word_vectors"][:] == k).all(), split  # the k-th call's vectors
            assert cap["word_offsets"][-1] == words
        assert "word_vectors" not in f["test"]["captions"]
    # A rerun encodes only what is missing (the test split).


# ---- found in this round's own attempts (H5-attacks.md) -----------------------------------


def test_a_fifo_or_folder_as_data_is_one_line_not_a_hang(tmp_path, tiny_h5):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _one_line(_cli("difficulty", "--data", fifo, timeout=120), str(fifo), "not a regular file")
    _one_line(_cli("evaluate", "--checkpoint", SHIPPED, "--data", tmp_path, timeout=120),
              str(tmp_path), "a folder")
    # --overwrite replaces files, never a FIFO or a device node (as root, /dev/full was).
    _one_line(_cli("make-synthetic", "--size", "tiny", "--out", fifo, "--overwrite"),
              "not a regular file")
    assert fifo.is_fifo()


def test_a_seed_beyond_int64_is_a_usage_error(tmp_path):
    proc = _cli("make-synthetic", "--size", "tiny", "--seed", 2**64, "--out", tmp_path / "x.h5")
    _one_line(proc, "--seed", "2**63")
    assert not (tmp_path / "x.h5").exists()


# ---- 20: messages name the file and the field --------------------------------------------


def _set(name, index, value):
    def edit(f):
        ds = f[name]
        if h5py.check_string_dtype(ds.dtype):
            v = list(ds.asstr()[:])
            v[index] = value
            _replace(f, name, v, dtype=h5py.string_dtype())
        else:
            a = ds[:]
            a[index] = value
            ds[...] = a
    return edit


@pytest.mark.parametrize("edit, command, field", [
    (_set("test/images/scene", 0, "{broken"), "difficulty", "test/images/scene[0]"),
    (_set("test/images/scene", 2, '[{"shape": "moon"}]'), "difficulty", "test/images/scene[2]"),
    (_set("test/captions/image", 0, 1), "evaluate", "test/captions/image"),
])
def test_data_errors_name_the_file_and_field(tiny_h5, tmp_path, edit, command, field):
    bad = _edit(tiny_h5, tmp_path / "bad.h5", edit)
    argv = (["difficulty", "--data", bad, "--bow-epochs", 1] if command == "difficulty" else
            ["evaluate", "--checkpoint", SHIPPED, "--data", bad])
    _one_line(_cli(*argv), f"{bad}:/{field}")


def test_prepare_tsv_under_ulimit_f_is_one_line(tmp_path):
    from test_converters import write_bottom_up

    write_bottom_up(tmp_path)
    out = tmp_path / "out" / "d.h5"
    out.parent.mkdir()
    proc = _cli("prepare-tsv", "--tsv", tmp_path / "a.tsv", tmp_path / "b.tsv", "--karpathy",
                tmp_path / "karpathy.json", "--out", out, pre="ulimit -f 2;")
    _one_line(proc, str(out), "ulimit -f")
    assert os.listdir(out.parent) == []
