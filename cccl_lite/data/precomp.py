"""SCAN's precomputed Flickr30K / COCO features → the HDF5 schema.

Input: one folder of SCAN's ``data.zip`` (``f30k_precomp`` or ``coco_precomp``),
per SCAN split name ``S`` (train, dev, test, testall = COCO 5K):

* ``S_ims.npy``  float32 (R, 36, 2048) bottom-up region features. R is the
  number of images N (one row per image) or 5N (one row per caption, each
  image repeated 5 times): the layout is decided from the caption count,
  never assumed, and the 5 rows of an image must be identical.
* ``S_caps.txt`` one caption per line, 5 per image, in image order (5N lines).
* ``S_ids.txt``  one image id per line, N (per image) or 5N (per caption) lines.

SCAN carries no boxes and no image sizes. Two peers publish them for the same
rows (``--boxes``):

* ``camera`` (CAMERA): ``S_boxes.npy`` (R, 36, 4) pixel x1, y1, x2, y2 and
  ``S_img_sizes.npy`` (R, 2) width, height.
* ``gsmn`` (GSMN): ``S_ims_bbx.npy`` (R, 36, 4) pixel x1, y1, x2, y2 and
  ``S_ims_size.npy``, a *pickled* numpy object array: one element per row,
  a dict ``{"image_w": w, "image_h": h}`` or a (w, h) pair. A pickle can run
  any code, so it is never read with ``np.load(allow_pickle=True)``: a
  restricted unpickler (:func:`load_object_npy`) rebuilds numpy arrays,
  numbers, strings and plain containers and refuses anything else, naming
  a safe conversion to a plain (R, 2) array, which is accepted too.
* ``none``: no boxes; the file gets ``has_boxes=False`` and the model must run
  "w/o POS". ``images/size`` is then a placeholder of (1, 1) (the schema wants
  positive sizes; nothing reads them without boxes) and says so in its
  ``placeholder`` attribute.

Output: the split ``train``/``val``/``test`` (SCAN ``dev`` → ``val``,
``testall`` → ``test``; ``as_split`` overrides) of one schema file, plus
``images/id`` (N,) int64 (or UTF-8 when an id is not an integer). Other splits
already in the file are kept. Bad input raises :class:`InputError` naming the
file, the field and what was expected; nothing is written then.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import h5py
import numpy as np

from cccl_lite.errors import InputError
from cccl_lite.data.npyload import load_object_npy
from cccl_lite.data.text import simple_tokenize
from cccl_lite.data.schema import SPLITS, atomic_h5, check_file, write_split

__all__ = ["InputError", "SCAN_SPLITS", "BOX_SOURCES", "CAPTIONS_PER_IMAGE", "convert_precomp",
           "read_captions", "per_image_rows", "check_boxes", "parse_gsmn_sizes",
           "load_object_npy"]

CAPTIONS_PER_IMAGE = 5
SCAN_SPLITS = {"train": "train", "dev": "val", "test": "test", "testall": "test"}
BOX_SOURCES = ("camera", "gsmn", "none")
BOX_FILES = {"camera": ("{}_boxes.npy", "{}_img_sizes.npy"),
             "gsmn": ("{}_ims_bbx.npy", "{}_ims_size.npy")}
_SAMPLE = 64  # images whose 5 rows are compared when an array is too big to compare all
_FULL_CHECK_BYTES = 1 << 26  # arrays up to 64 MiB are compared in full
_INT = re.compile(r"-?\d+")


# An input file that does not have the published format raises the package's
# one InputError (cccl_lite.errors); the message names the file and field.


# ---------------------------------------------------------------------------
# readers shared with the TSV converter
# ---------------------------------------------------------------------------


def read_captions(path: Path) -> tuple[list[str], list[str]]:
    """(texts, tokens) of a caption file: one caption per line, UTF-8.

    texts are the lines stripped of surrounding whitespace; tokens are
    :func:`simple_tokenize` words joined by single spaces. An empty line or
    a line without words is an error naming the line.
    """
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not UTF-8 text ({e.reason})") from None
    # split("\n"), not splitlines(): the latter also breaks at \x1c, \u2028, ...
    # which may sit inside a caption and would shift every later caption.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    texts, tokens = [], []
    for k, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            raise InputError(f"{path}: line {k}: empty caption (expected one caption per line)")
        words = simple_tokenize(line)
        if not words:
            raise InputError(f"{path}: line {k}: no words in caption {line!r}")
        texts.append(line)
        tokens.append(" ".join(words))
    if not texts:
        raise InputError(f"{path}: no captions (expected one caption per line)")
    return texts, tokens


def per_image_rows(arr, n_img: int, where: str, what: str = "rows"):
    """``arr`` with one row per image: (N, ...) as is, or every 5th row of
    (5N, ...) after checking that the 5 rows of each image are identical (all
    images for arrays up to 64 MiB, else 64 images spread over the array).

    Works on memory-mapped arrays without reading them whole (the result is a
    strided view). Raises InputError for any other row count.
    """
    n_rows = arr.shape[0]
    cpi = CAPTIONS_PER_IMAGE
    if n_rows == n_img:
        return arr
    if n_rows != cpi * n_img:
        raise InputError(f"{where}: {n_rows} {what}; expected {n_img} (one per image) or "
                         f"{cpi * n_img} (one per caption) for {n_img} images x {cpi} captions")
    if arr.nbytes <= _FULL_CHECK_BYTES:
        images = np.arange(n_img)
    else:
        images = np.unique(np.linspace(0, n_img - 1, min(n_img, _SAMPLE)).astype(np.int64))
    for i in images:
        block = np.asarray(arr[cpi * i:cpi * (i + 1)])
        same = block == block[:1]
        if block.dtype.kind == "f":
            same |= np.isnan(block) & np.isnan(block[:1])
        if not same.all():
            k = int(np.nonzero(~same.reshape(cpi, -1).all(axis=1))[0][0])
            raise InputError(f"{where}: one row per caption, but rows {cpi * i} and "
                             f"{cpi * i + k} (image {i}) differ; expected the {cpi} rows of an "
                             f"image to be identical copies")
    return arr[::cpi]


def check_boxes(boxes: np.ndarray, size: np.ndarray, where: str) -> np.ndarray:
    """Validate pixel boxes against image sizes; return them clipped to the image.

    boxes (N, n, 4) x1, y1, x2, y2 in pixels; size (N, 2) width, height.
    A box may stick out by a detector's rounding (up to 2 % of the side or
    2 px, clipped); anything further out, boxes with x2 < x1, boxes that look
    normalised to [0, 1], and non-finite values are errors.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    size = np.asarray(size, dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise InputError(f"{where}: expected boxes (N, n, 4), got shape {boxes.shape}")
    if size.shape != (boxes.shape[0], 2):
        raise InputError(f"{where}: expected sizes ({boxes.shape[0]}, 2), got {size.shape}")
    if not np.isfinite(size).all() or not (size > 0).all():
        i = int(np.nonzero(~(np.isfinite(size) & (size > 0)).all(axis=1))[0][0])
        raise InputError(f"{where}: image {i} has size {size[i].tolist()}; expected positive "
                         f"width, height")
    if not np.isfinite(boxes).all():
        i = int(np.nonzero(~np.isfinite(boxes).all(axis=(1, 2)))[0][0])
        raise InputError(f"{where}: image {i} has non-finite box coordinates")
    if boxes.size == 0:
        return boxes
    if boxes.max() <= 1.0 and size.max() > 1.0:
        raise InputError(f"{where}: boxes look normalised (all coordinates in [0, 1], max "
                         f"{float(boxes.max()):.3g}); expected pixel x1, y1, x2, y2")
    w, h = size[:, None, 0], size[:, None, 1]
    tol_w, tol_h = np.maximum(2.0, 0.02 * w), np.maximum(2.0, 0.02 * h)
    x1, y1, x2, y2 = (boxes[..., c] for c in range(4))
    flipped = (x2 < x1 - tol_w) | (y2 < y1 - tol_h)
    if flipped.any():
        i, j = (int(v) for v in np.argwhere(flipped)[0])
        raise InputError(f"{where}: image {i} region {j} box {boxes[i, j].tolist()} has "
                         f"x2 < x1 or y2 < y1; expected x1, y1, x2, y2 (not x, y, w, h)")
    outside = ((x1 < -tol_w) | (x2 > w + tol_w) | (y1 < -tol_h) | (y2 > h + tol_h))
    if outside.any():
        i, j = (int(v) for v in np.argwhere(outside)[0])
        hint = ""
        # Would the boxes fit with width and height swapped? Then say so.
        sw, sh = size[i, 1], size[i, 0]
        b = boxes[i]
        if (b[:, [0, 2]].max() <= sw * 1.02 + 2) and (b[:, [1, 3]].max() <= sh * 1.02 + 2):
            hint = " (they would fit if the sizes were height, width: check the order)"
        raise InputError(f"{where}: {int(outside.sum())} boxes lie outside their image, e.g. "
                         f"image {i} region {j} box {boxes[i, j].tolist()} in an image of "
                         f"width, height {size[i].tolist()}{hint}")
    out = boxes.copy()
    out[..., 0::2] = np.clip(out[..., 0::2], 0.0, w[..., None])
    out[..., 1::2] = np.clip(out[..., 1::2], 0.0, h[..., None])
    return out


def parse_gsmn_sizes(arr, where: str) -> np.ndarray:
    """GSMN's ``*_ims_size.npy`` object array → (R, 2) float32 width, height.

    Elements are dicts with keys ``image_w``/``image_h`` or (w, h) pairs; a
    plain numeric (R, 2) array is accepted as (w, h) rows too.
    """
    arr = np.asarray(arr)
    if arr.dtype != object:
        if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype.kind in "iuf":
            return arr.astype(np.float32)
        raise InputError(f"{where}: expected an object array of {{image_w, image_h}} dicts or "
                         f"(w, h) pairs, got {arr.dtype} {arr.shape}")
    if arr.ndim != 1:
        raise InputError(f"{where}: expected a 1-D object array (one element per row), got "
                         f"shape {arr.shape}")
    out = np.empty((len(arr), 2), dtype=np.float32)
    for k, e in enumerate(arr):
        try:
            if isinstance(e, dict):
                out[k] = float(e["image_w"]), float(e["image_h"])
            elif not isinstance(e, (str, bytes)) and len(e) == 2:
                out[k] = float(e[0]), float(e[1])
            else:
                raise TypeError
        except (KeyError, TypeError, ValueError):
            shown = repr(e)[:80]
            raise InputError(f"{where}: element {k} is {shown}; expected a dict with keys "
                             f"image_w, image_h or a (w, h) pair") from None
    return out


# ---------------------------------------------------------------------------
# the converter
# ---------------------------------------------------------------------------


def convert_precomp(src, split: str, boxes: str, out, *, name: str | None = None,
                    as_split: str | None = None, overwrite: bool = False) -> dict:
    """Convert SCAN split ``split`` of folder ``src`` into a split of ``out``.

    boxes: "camera", "gsmn" or "none" (see the module docstring).
    name: the file's ``dataset`` attribute; default the existing file's, else
    "flickr30k". as_split: the schema split to write (default from
    :data:`SCAN_SPLITS`). An existing split is replaced only with
    ``overwrite``; a file's ``has_boxes`` and ``dataset`` never change.
    Returns {"split", "images", "captions", "layout"}.
    Raises InputError (bad input) or FileExistsError (split already there).
    """
    src, out = Path(src), Path(out)
    if boxes not in BOX_SOURCES:
        raise InputError(f"--boxes {boxes!r}: expected one of {BOX_SOURCES}")
    target = as_split if as_split is not None else SCAN_SPLITS.get(split)
    if target is None:
        raise InputError(f"unknown SCAN split {split!r}: expected one of {sorted(SCAN_SPLITS)} "
                         f"(or name the schema split with --as)")
    if target not in SPLITS:
        raise InputError(f"--as {target!r}: expected one of {SPLITS}")
    has_boxes = boxes != "none"
    name = _check_existing(out, target, boxes, name, overwrite)

    texts, tokens = read_captions(src / f"{split}_caps.txt")
    n_cap = len(texts)
    cpi = CAPTIONS_PER_IMAGE
    if n_cap % cpi:
        raise InputError(f"{src / f'{split}_caps.txt'}: {n_cap} captions is not {cpi} per image "
                         f"(SCAN lists {cpi} captions per image, in image order)")
    n_img = n_cap // cpi

    ims_path = src / f"{split}_ims.npy"
    feats_all = _load_npy(ims_path, mmap=True)
    if feats_all.ndim != 3 or feats_all.dtype.kind != "f":
        raise InputError(f"{ims_path}: expected float (rows, regions, dims) features, got "
                         f"{feats_all.dtype} {feats_all.shape}")
    layout = "image" if feats_all.shape[0] == n_img else "caption"
    feats = per_image_rows(feats_all, n_img, f"{ims_path}", "feature rows")
    n_reg = feats.shape[1]

    ids = _read_ids(src / f"{split}_ids.txt", n_img)

    box_arr = None
    if has_boxes:
        box_name, size_name = (p.format(split) for p in BOX_FILES[boxes])
        box_arr, size = _read_boxes(src / box_name, src / size_name, boxes, n_img, n_reg)
    else:
        warnings.warn(f"--boxes none: {out} gets no boxes (has_boxes=False); the model will run "
                      f"without position features ('w/o POS')", UserWarning, stacklevel=2)
        size = np.ones((n_img, 2), dtype=np.float32)

    caption_image = np.repeat(np.arange(n_img, dtype=np.int64), cpi)
    need = (feats.shape[0] * n_reg * (2 * feats.shape[2] + 18) + 2 * sum(map(len, texts))  # about
            + (out.stat().st_size if out.exists() else 0) + 2**20)
    with atomic_h5(out, name, has_boxes=has_boxes, expected_bytes=need) as f:
        write_split(f, target, features=feats, size=size,
                    region_mask=np.ones((n_img, n_reg), dtype=bool), text=texts,
                    image=caption_image, tokens=tokens, boxes=box_arr)
        _write_ids(f[target]["images"], ids)
        if not has_boxes:
            f[target]["images/size"].attrs["placeholder"] = (
                "image sizes unknown (no boxes): (1, 1) stands in; nothing reads it")
        _copy_other_splits(out, f, target)
    return {"split": target, "images": n_img, "captions": n_cap, "layout": layout}


def _check_existing(out: Path, target: str, boxes: str, name: str | None,
                    overwrite: bool) -> str:
    """The dataset name to write; refuse what would change an existing file wrongly."""
    has_boxes = boxes != "none"
    if not out.exists():
        return name or "flickr30k"
    with check_file(out) as f:
        old_name = str(f.attrs["dataset"])
        old_boxes = bool(f.attrs["has_boxes"])
        present = [s for s in SPLITS if s in f]
    if old_boxes != has_boxes:
        raise InputError(f"{out}: has_boxes is {old_boxes}, but --boxes {boxes} would "
                         f"{'write' if has_boxes else 'leave out'} boxes; one file cannot mix "
                         f"splits with and without boxes (use another --out)")
    if name is not None and name != old_name:
        raise InputError(f"{out}: dataset is {old_name!r}, not {name!r} (use another --out)")
    if target in present and not overwrite:
        raise FileExistsError(f"{out}: split {target!r} exists; pass --overwrite to replace it")
    return old_name


def _copy_other_splits(out: Path, f: h5py.File, target: str) -> None:
    """Copy every group of the existing ``out`` except ``target`` into ``f``."""
    if not out.exists():
        return
    with h5py.File(out, "r") as old:
        for key in old:
            if key != target:
                old.copy(old[key], f, name=key)
        for key, value in old.attrs.items():
            if key not in ("schema_version", "dataset", "has_boxes"):
                f.attrs[key] = value


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None


def _load_npy(path: Path, mmap: bool = False, pickled: bool = False):
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        if pickled:
            # GSMN stored its sizes as a pickled object array: read it without
            # executing anything (load_object_npy), never with allow_pickle.
            return load_object_npy(path)
        return np.load(path, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a complete .npy array ({e}); re-download it") from None


def _read_ids(path: Path, n_img: int) -> np.ndarray:
    """Image ids, one per image (N lines, or 5N with 5 equal lines per image)."""
    raw = _read_bytes(path)
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln.strip() for ln in lines]
    if "" in lines:
        raise InputError(f"{path}: line {lines.index('') + 1}: empty id (expected one per line)")
    ids = np.array(lines, dtype=object)
    ids = per_image_rows(ids, n_img, str(path), "ids")
    if all(_INT.fullmatch(s) for s in ids):
        ids = ids.astype(np.int64)
    else:
        ids = ids.astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise InputError(f"{path}: duplicate image ids {dup}; expected one distinct id per image")
    return ids


def _write_ids(images: h5py.Group, ids: np.ndarray) -> None:
    if ids.dtype.kind == "i":
        images.create_dataset("id", data=ids.astype(np.int64))
    else:
        images.create_dataset("id", data=ids.tolist(), dtype=h5py.string_dtype("utf-8"))


def _read_boxes(box_path: Path, size_path: Path, source: str, n_img: int,
                n_reg: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, n, 4), size (N, 2)) from CAMERA's or GSMN's files, validated."""
    hint = f"--boxes {source} needs {box_path.name} and {size_path.name} in {box_path.parent}"
    for p in (box_path, size_path):
        if not p.exists():
            raise InputError(f"{p}: no such file ({hint}; see `python data_scripts/download.py "
                             f"--list`)")
    boxes = _load_npy(box_path, mmap=True)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or boxes.dtype.kind not in "iuf":
        raise InputError(f"{box_path}: expected numeric boxes (rows, {n_reg}, 4), got "
                         f"{boxes.dtype} {boxes.shape}")
    if boxes.shape[1] != n_reg:
        raise InputError(f"{box_path}: {boxes.shape[1]} boxes per row, but the features have "
                         f"{n_reg} regions")
    boxes = np.asarray(per_image_rows(boxes, n_img, str(box_path), "box rows"), np.float32)
    if source == "gsmn":
        size = parse_gsmn_sizes(_load_npy(size_path, pickled=True), str(size_path))
    else:
        size = _load_npy(size_path)
        if size.ndim != 2 or size.shape[1] != 2 or size.dtype.kind not in "iuf":
            raise InputError(f"{size_path}: expected numeric (rows, 2) width, height, got "
                             f"{size.dtype} {size.shape}")
        size = size.astype(np.float32)
    size = np.asarray(per_image_rows(size, n_img, str(size_path), "size rows"), np.float32)
    return check_boxes(boxes, size, str(box_path)), size
