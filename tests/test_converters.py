"""SCAN precomp and bottom-up TSV converters on small fixtures written here in
the real formats; every field is compared with what the test wrote."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cccl_lite.data import check_file
from cccl_lite.data import precomp
from cccl_lite.data.precomp import InputError, convert_precomp
from cccl_lite.data.tsv import convert_tsv

from helpers import CPI, D, IDS, N, R, SIZES, caption, random_boxes, tokens, write_scan

ROOT = Path(__file__).resolve().parent.parent
N, R, D, CPI = 4, 36, 16, 5


def assert_split(path, split, truth, has_boxes=True):
    with check_file(path, split) as f:
        g = f[split]
        assert bool(f.attrs["has_boxes"]) == has_boxes
        np.testing.assert_allclose(g["images/features"][:], truth["features"], rtol=1e-3,
                                   atol=1e-3)
        assert g["images/features"].dtype == np.float16
        assert g["images/region_mask"][:].all() and g["images/region_mask"].shape == (N, R)
        if has_boxes:
            np.testing.assert_array_equal(g["images/boxes"][:], truth["boxes"])
            np.testing.assert_array_equal(g["images/size"][:], SIZES)
        else:
            assert "boxes" not in g["images"]
            np.testing.assert_array_equal(g["images/size"][:], np.ones((N, 2)))
            assert "placeholder" in g["images/size"].attrs
        assert g["captions/text"].asstr()[:].tolist() == [
            caption(i, j) for i in range(N) for j in range(CPI)]
        assert g["captions/tokens"].asstr()[:].tolist() == [
            tokens(i, j) for i in range(N) for j in range(CPI)]
        assert g["captions/image"][:].tolist() == [i for i in range(N) for _ in range(CPI)]
        assert g["images/id"][:].tolist() == IDS
        assert "heads" not in g["captions"]


def assert_nothing_written(out: Path):
    assert not out.exists()
    if out.parent.exists():
        assert list(out.parent.iterdir()) == [], "a temp file was left behind"


# ---------------------------------------------------------------------------
# SCAN precomp
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["image", "caption"])
@pytest.mark.parametrize("boxes", ["camera", "gsmn"])
def test_precomp_round_trip(tmp_path, layout, boxes):
    truth = write_scan(tmp_path / "src", layout=layout, boxes=boxes)
    out = tmp_path / "out" / "f30k.h5"
    info = convert_precomp(tmp_path / "src", "test", boxes, out)
    assert info == {"split": "test", "images": N, "captions": N * CPI, "layout": layout}
    assert_split(out, "test", truth)
    with h5py.File(out) as f:
        assert f.attrs["dataset"] == "flickr30k" and list(f) == ["test"]


def test_precomp_gsmn_pairs_and_string_ids(tmp_path):
    truth = write_scan(tmp_path, boxes="gsmn")
    sz = np.empty(N, dtype=object)
    for k, (w, h) in enumerate(SIZES):
        sz[k] = (float(w), float(h))  # (w, h) pairs instead of dicts
    np.save(tmp_path / "test_ims_size.npy", sz, allow_pickle=True)
    (tmp_path / "test_ids.txt").write_text("a1\nb2\nc3\nd4\n")
    out = tmp_path / "o.h5"
    convert_precomp(tmp_path, "test", "gsmn", out)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["test/images/size"][:], SIZES)
        np.testing.assert_array_equal(f["test/images/boxes"][:], truth["boxes"])
        assert f["test/images/id"].asstr()[:].tolist() == ["a1", "b2", "c3", "d4"]


def test_precomp_boxes_none_warns_and_has_no_boxes(tmp_path):
    truth = write_scan(tmp_path / "src", boxes=None)
    out = tmp_path / "o.h5"
    with pytest.warns(UserWarning, match="w/o POS"):
        convert_precomp(tmp_path / "src", "test", "none", out)
    assert_split(out, "test", truth, has_boxes=False)


def test_precomp_adds_split_and_keeps_first(tmp_path):
    t_test = write_scan(tmp_path / "src", "test", seed=0)
    t_dev = write_scan(tmp_path / "src", "dev", seed=1)
    out = tmp_path / "f30k.h5"
    convert_precomp(tmp_path / "src", "test", "camera", out, name="f30k")
    convert_precomp(tmp_path / "src", "dev", "camera", out)
    assert_split(out, "test", t_test)
    assert_split(out, "val", t_dev)
    with h5py.File(out) as f:
        assert sorted(f) == ["test", "val"] and f.attrs["dataset"] == "f30k"
    # the same split again: refused, then replaced with overwrite
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_precomp(tmp_path / "src", "test", "camera", out)
    convert_precomp(tmp_path / "src", "dev", "camera", out, as_split="test", overwrite=True)
    assert_split(out, "test", t_dev)
    assert_split(out, "val", t_dev)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f30k.h5", "src"]


def test_precomp_refuses_mixing_boxes_and_names(tmp_path):
    write_scan(tmp_path / "src", "test")
    write_scan(tmp_path / "src", "train")
    out = tmp_path / "f.h5"
    convert_precomp(tmp_path / "src", "test", "camera", out)
    before = out.read_bytes()
    with pytest.raises(InputError, match="has_boxes"):
        convert_precomp(tmp_path / "src", "train", "none", out)
    with pytest.raises(InputError, match="dataset is 'flickr30k'"):
        convert_precomp(tmp_path / "src", "train", "camera", out, name="coco")
    assert out.read_bytes() == before


def break_file(d: Path, case: str):
    """Damage one SCAN input; returns the expected error pattern."""
    if case == "truncated_npy":
        p = d / "test_ims.npy"
        p.write_bytes(p.read_bytes()[:-100])
        return r"test_ims\.npy: not a complete \.npy"
    if case == "captions_not_5x":
        p = d / "test_caps.txt"
        p.write_text("".join(p.read_text().splitlines(keepends=True)[:-1]))
        return r"test_caps\.txt: 19 captions is not 5 per image"
    if case == "captions_vs_rows":
        p = d / "test_caps.txt"
        p.write_text("".join(p.read_text().splitlines(keepends=True)[:-5]))
        return r"test_ims\.npy: 20 feature rows; expected 3 \(one per image\) or 15"
    if case == "rows_differ":
        f = np.load(d / "test_ims.npy")
        f[7] += 1.0
        np.save(d / "test_ims.npy", f)
        return r"rows 5 and 7 \(image 1\) differ"
    if case == "missing_boxes":
        (d / "test_boxes.npy").unlink()
        return r"test_boxes\.npy: no such file"
    if case == "empty_caption":
        p = d / "test_caps.txt"
        lines = p.read_text().split("\n")
        lines[2] = "  "
        p.write_text("\n".join(lines))
        return r"test_caps\.txt: line 3: empty caption"
    if case == "normalised_boxes":
        b = np.load(d / "test_boxes.npy")
        np.save(d / "test_boxes.npy", b / np.repeat(SIZES, CPI, 0)[:, None, [0, 1, 0, 1]])
        return r"boxes look normalised"
    if case == "boxes_outside":
        b = np.load(d / "test_boxes.npy")
        b[10:15, 3, 2] = 5000  # all 5 rows of image 2
        np.save(d / "test_boxes.npy", b)
        return r"lie outside their image, e\.g\. image 2 region 3"
    if case == "ids_count":
        (d / "test_ids.txt").write_text("1\n2\n3\n")
        return r"test_ids\.txt: 3 ids; expected 4"
    if case == "bad_size_element":
        np.save(d / "test_img_sizes.npy", np.zeros((N * CPI, 3), np.float32))
        return r"test_img_sizes\.npy: expected numeric \(rows, 2\)"
    raise AssertionError(case)


CASES = ["truncated_npy", "captions_not_5x", "captions_vs_rows", "rows_differ", "missing_boxes",
         "empty_caption", "normalised_boxes", "boxes_outside", "ids_count", "bad_size_element"]


@pytest.mark.parametrize("case", CASES)
def test_precomp_bad_input_is_one_clear_error(tmp_path, case):
    write_scan(tmp_path / "src", layout="caption")
    pattern = break_file(tmp_path / "src", case)
    out = tmp_path / "out" / "f.h5"
    with pytest.raises(InputError, match=pattern):
        convert_precomp(tmp_path / "src", "test", "camera", out)
    assert_nothing_written(out)


def test_per_image_rows_samples_big_arrays(monkeypatch):
    # Arrays over the full-check limit are compared on a spread of images that
    # includes the first and the last one.
    monkeypatch.setattr(precomp, "_FULL_CHECK_BYTES", 0)
    rows = np.repeat(np.arange(200, dtype=np.float32)[:, None], 3, axis=1)
    per_caption = np.repeat(rows, CPI, axis=0)
    np.testing.assert_array_equal(precomp.per_image_rows(per_caption, 200, "x"), rows)
    for bad_row in (1, 200 * CPI - 1):
        broken = per_caption.copy()
        broken[bad_row] = -1
        with pytest.raises(InputError, match="differ"):
            precomp.per_image_rows(broken, 200, "x")


def test_precomp_unknown_split_and_bad_gsmn_size(tmp_path):
    write_scan(tmp_path, boxes="gsmn")
    out = tmp_path / "out" / "f.h5"
    with pytest.raises(InputError, match="unknown SCAN split 'val'"):
        convert_precomp(tmp_path, "val", "gsmn", out)
    sz = np.empty(N, dtype=object)
    sz[:] = [{"h": 1, "w": 2}] * N
    np.save(tmp_path / "test_ims_size.npy", sz, allow_pickle=True)
    with pytest.raises(InputError, match=r"element 0 is .*expected a dict with keys image_w"):
        convert_precomp(tmp_path, "test", "gsmn", out)
    assert_nothing_written(out)


# ---------------------------------------------------------------------------
# bottom-up TSV + Karpathy JSON
# ---------------------------------------------------------------------------

TSV_IDS = [101, 102, 103, 104, 105]
TSV_SPLITS = ["train", "restval", "val", "test", "train"]
NUM_BOXES = [36, 10, 50, 36, 12]
TSV_SIZES = [(500, 375), (640, 480), (333, 500), (1024, 768), (800, 600)]


def b64(a) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def write_bottom_up(d: Path, coco=False, seed=0):
    """Two TSV files (rows shuffled between them) and a Karpathy JSON; returns the truth."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth, lines, images = {}, [], []
    for k, (iid, split, nb, (w, h)) in enumerate(zip(TSV_IDS, TSV_SPLITS, NUM_BOXES, TSV_SIZES)):
        feats = rng.normal(size=(nb, D)).astype(np.float32)
        boxes = random_boxes(rng, np.array([[w, h]], np.float32), nb)[0]
        truth[iid] = {"features": feats, "boxes": boxes, "size": (w, h)}
        lines.append(f"{iid}\t{w}\t{h}\t{nb}\t{b64(boxes)}\t{b64(feats)}\n")
        sents = [{"raw": f"Photo {iid}, sentence {j}!", "sentid": 10 * k + j, "imgid": k,
                  "tokens": ["photo", str(iid), "sentence", str(j)]} for j in range(CPI)]
        sents.append({"raw": "A sixth caption.", "tokens": ["a", "sixth", "caption"],
                      "sentid": 10 * k + 5, "imgid": k})  # COCO has 5-7; only 5 are kept
        if k == 1:
            sents[2]["tokens"] = []  # no tokens: simple_tokenize(raw) takes over
        img = {"filename": f"{iid}.jpg", "imgid": k, "split": split, "sentences": sents}
        if coco:
            img["filename"] = f"COCO_val2014_{iid:012d}.jpg"
            img["cocoid"] = iid
        images.append(img)
    (d / "a.tsv").write_text("".join(lines[3:] + lines[:1]))
    (d / "b.tsv").write_text("".join(lines[1:3]))
    (d / "karpathy.json").write_text(json.dumps({"images": images,
                                                 "dataset": "coco" if coco else "flickr30k"}))
    return truth


def expected_tokens(iid, j):
    return f"photo {iid} sentence {j}"


@pytest.mark.parametrize("coco", [False, True])
def test_tsv_round_trip(tmp_path, coco):
    truth = write_bottom_up(tmp_path, coco=coco)
    out = tmp_path / "out" / "d.h5"
    summary = convert_tsv([tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "karpathy.json",
                          out)
    assert summary == {"train": (3, 15), "val": (1, 5), "test": (1, 5)}
    split_ids = {"train": [101, 102, 105], "val": [103], "test": [104]}
    with check_file(out) as f:
        assert f.attrs["dataset"] == ("coco" if coco else "flickr30k")
        assert bool(f.attrs["has_boxes"])
        for split, ids in split_ids.items():
            g = f[split]
            assert g["images/id"][:].tolist() == ids
            assert g["images/features"].shape == (len(ids), R, D)
            for i, iid in enumerate(ids):
                t = truth[iid]
                m = min(len(t["boxes"]), R)
                np.testing.assert_allclose(g["images/features"][i, :m], t["features"][:m],
                                           rtol=1e-3, atol=1e-3)
                assert not g["images/features"][i, m:].any()
                np.testing.assert_array_equal(g["images/boxes"][i, :m], t["boxes"][:m])
                assert not g["images/boxes"][i, m:].any()
                assert g["images/region_mask"][i].tolist() == [True] * m + [False] * (R - m)
                assert g["images/size"][i].tolist() == list(t["size"])
            texts = g["captions/text"].asstr()[:].tolist()
            toks = g["captions/tokens"].asstr()[:].tolist()
            assert texts == [f"Photo {iid}, sentence {j}!" for iid in ids for j in range(CPI)]
            assert toks == [expected_tokens(iid, j) for iid in ids for j in range(CPI)]
            assert g["captions/image"][:].tolist() == [i for i in range(len(ids))
                                                       for _ in range(CPI)]


def test_tsv_num_regions_and_split_selection(tmp_path):
    truth = write_bottom_up(tmp_path)
    out = tmp_path / "d.h5"
    # only test: the TSV lines of train/val images are skipped, not an error
    convert_tsv([tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "karpathy.json", out,
                num_regions=8, splits=["test"])
    with h5py.File(out) as f:
        assert list(f) == ["test"]
        assert f["test/images/region_mask"][:].all()
        np.testing.assert_array_equal(f["test/images/boxes"][0], truth[104]["boxes"][:8])
    with pytest.raises(FileExistsError):
        convert_tsv(tmp_path / "a.tsv", tmp_path / "karpathy.json", out, splits=["test"])


def break_tsv(d: Path, case: str):
    if case == "id_not_in_json":
        with open(d / "b.tsv", "a") as fh:
            fh.write(f"999\t10\t10\t1\t{b64(np.zeros((1, 4)))}\t{b64(np.zeros((1, D)))}\n")
        return r"1 TSV image_ids are not in .*karpathy\.json: 999 \(.*b\.tsv:3\)"
    if case == "duplicate_id":
        line = (d / "b.tsv").read_text().splitlines(keepends=True)[0]
        with open(d / "a.tsv", "a") as fh:
            fh.write(line)
        return r"duplicate image_id in the TSV files: 102 \(.*a\.tsv:4 and .*b\.tsv:1\)"
    if case == "json_image_missing":
        (d / "b.tsv").write_text((d / "b.tsv").read_text().splitlines(keepends=True)[0])
        return r"1 images of .*karpathy\.json have no TSV line: \[103\]"
    if case == "empty_caption":
        data = json.loads((d / "karpathy.json").read_text())
        data["images"][2]["sentences"][1].update(raw=" ", tokens=[])
        (d / "karpathy.json").write_text(json.dumps(data))
        return r"image '103\.jpg': sentid 21: empty caption"
    if case == "unknown_split":
        data = json.loads((d / "karpathy.json").read_text())
        data["images"][0]["split"] = "dev"
        (d / "karpathy.json").write_text(json.dumps(data))
        return r"image '101\.jpg': unknown split 'dev'"
    if case == "normalised_boxes":
        lines = (d / "a.tsv").read_text().splitlines(keepends=True)
        f = lines[0].split("\t")
        f[4] = b64(np.full((int(f[3]), 4), 0.5))
        lines[0] = "\t".join(f)
        (d / "a.tsv").write_text("".join(lines))
        return r"a\.tsv:1 boxes: boxes look normalised"
    if case == "corrupt_features":
        # right length, invalid base64: found only when the features are decoded
        lines = (d / "b.tsv").read_text().splitlines(keepends=True)
        f = lines[1].split("\t")
        f[5] = "!" * 4 + f[5][4:]
        lines[1] = "\t".join(f)
        (d / "b.tsv").write_text("".join(lines))
        return r"b\.tsv:2: features field is not base64"
    if case == "five_fields":
        with open(d / "a.tsv", "a") as fh:
            fh.write("106\t10\t10\t1\tAAAA\n")
        return r"a\.tsv:4: 5 tab-separated fields; expected 6"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["id_not_in_json", "duplicate_id", "json_image_missing",
                                  "empty_caption", "unknown_split", "normalised_boxes",
                                  "corrupt_features", "five_fields"])
def test_tsv_bad_input_is_one_clear_error(tmp_path, case):
    write_bottom_up(tmp_path / "src")
    pattern = break_tsv(tmp_path / "src", case)
    out = tmp_path / "out" / "d.h5"
    with pytest.raises(InputError, match=pattern):
        convert_tsv([tmp_path / "src" / "a.tsv", tmp_path / "src" / "b.tsv"],
                    tmp_path / "src" / "karpathy.json", out)
    assert_nothing_written(out)


# ---------------------------------------------------------------------------
# the command lines
# ---------------------------------------------------------------------------


def run_script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "data_scripts" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_prepare_precomp(tmp_path):
    truth = write_scan(tmp_path / "src", "testall", boxes=None)
    out = tmp_path / "o.h5"
    ok = run_script("prepare_precomp.py", "--src", tmp_path / "src", "--split", "testall",
                    "--boxes", "none", "--out", out, "--name", "coco")
    assert ok.returncode == 0, ok.stderr
    assert "w/o POS" in ok.stderr and "Traceback" not in ok.stderr
    assert_split(out, "test", truth, has_boxes=False)
    bad = run_script("prepare_precomp.py", "--src", tmp_path / "src", "--split", "testall",
                     "--boxes", "camera", "--out", tmp_path / "p.h5")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and ": error: " in bad.stderr
    assert "testall_boxes.npy: no such file" in bad.stderr
    assert not (tmp_path / "p.h5").exists()


def test_cli_prepare_tsv(tmp_path):
    write_bottom_up(tmp_path)
    out = tmp_path / "d.h5"
    args = ["--tsv", tmp_path / "a.tsv", tmp_path / "b.tsv", "--karpathy",
            tmp_path / "karpathy.json", "--out", out]
    ok = run_script("prepare_tsv.py", *args)
    assert ok.returncode == 0, ok.stderr
    with h5py.File(out) as f:
        assert sorted(f) == ["test", "train", "val"]
    bad = run_script("prepare_tsv.py", *args[:2], *args[3:-1], tmp_path / "e.h5")  # no b.tsv
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "have no TSV line: [102, 103]" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "e.h5").exists()
