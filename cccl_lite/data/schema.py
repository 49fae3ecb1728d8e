"""One HDF5 schema for every dataset (synthetic scenes, Flickr30K, COCO).

One file per dataset; one group per split (``train``, ``val``, ``test``)::

    /<split>/images/features      (N, n, d_F) float16   region features
    /<split>/images/boxes         (N, n, 4)   float32   pixel x1, y1, x2, y2
                                                        (absent when the file
                                                        has no boxes, see below)
    /<split>/images/size          (N, 2)      float32   width, height in pixels
                                                        (a (1, 1) placeholder,
                                                        attr ``placeholder``, when
                                                        the file has no boxes)
    /<split>/images/id            (N,) int64 or UTF-8   optional: source image ids
    /<split>/images/region_mask   (N, n)      bool      True = a real region
    /<split>/images/pixels        (N, H, W, 3) uint8    optional: rendered images
    /<split>/captions/text        (M,)  UTF-8           the caption as written
    /<split>/captions/image       (M,)  int64           index into images
    /<split>/captions/tokens      (M,)  UTF-8           words joined by one space
    /<split>/captions/heads       (M,)  vlen int32      one head per word,
                                                        1-based, 0 = root
                                                        (absent until parsed)
    /<split>/captions/word_vectors (W, d_E) float16     optional cache: one row
    /<split>/captions/word_offsets (M + 1,) int64       per word; caption k owns
                                                        rows offsets[k]:offsets[k+1]

File attributes: ``schema_version`` (1), ``dataset`` (a name), ``has_boxes``
(False when no boxes were available: the model must then run "w/o POS"; no
boxes are ever invented), and, once word vectors are cached,
``captions/word_vectors`` carries the attribute ``encoder`` (the model name).
Converted real datasets have no ``heads`` until the parse step writes them
(gold heads come with the synthetic scenes); a reader that needs them says
which step to run.

Writers go through :func:`atomic_h5` (a temp file renamed on success) and
:func:`write_split` (which validates every field); readers call
:func:`check_file` first. Taught in chapter 1 ("The task").
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "SPLITS",
    "SchemaError",
    "atomic_h5",
    "write_split",
    "write_heads",
    "check_heads",
    "check_file",
    "split_sizes",
]

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
_STR = h5py.string_dtype("utf-8")
_HEADS = h5py.vlen_dtype(np.dtype("int32"))


class SchemaError(ValueError):
    """A file or an array does not follow the schema; the message names the field."""


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, dataset: str, has_boxes: bool = True) -> Iterator[h5py.File]:
    """Open ``path`` for writing through a temp file that is renamed on success.

    Nothing half-written is ever left under the final name: on any error
    (or Ctrl-C) the temp file is removed and ``path`` is untouched.
    """
    from ..files import remove_stale_temps, temp_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)  # a killed writer's temp file (issue 14)
    tmp = temp_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["dataset"] = dataset
            f.attrs["has_boxes"] = bool(has_boxes)
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _final_name(filename: str) -> str:
    """The name a file written through :func:`atomic_h5` will have: messages
    name it, not the temp file ``.NAME.tmp-PID`` that is removed on error."""
    p = Path(filename)
    name, sep, pid = p.name.rpartition(".tmp-")
    if sep and name.startswith(".") and pid.isdigit():
        return str(p.with_name(name[1:]))
    return filename


def _fail(where: str, msg: str):
    raise SchemaError(f"{where}: {msg}")


def write_split(f: h5py.File, split: str, *, features, size, region_mask, text: Sequence[str],
                image: Sequence[int], tokens: Sequence[str],
                heads: Sequence[Sequence[int]] | None = None, boxes=None, pixels=None) -> None:
    """Validate one split's arrays and write them under ``/<split>``.

    Arguments are the fields of the module docstring (``boxes`` must be
    None exactly when the file was opened with ``has_boxes=False``).
    ``features`` may be an array or an (N, n, d_F) h5py dataset-like object;
    it is copied in chunks of images so that it never has to fit in memory.
    """
    where = f"{_final_name(f.filename)}:/{split}"
    if split not in SPLITS:
        _fail(where, f"unknown split {split!r}; expected one of {SPLITS}")
    if features.ndim != 3:
        _fail(f"{where}/images/features", f"expected (N, n, d_F), got shape {features.shape}")
    n_img, n_reg, _ = features.shape
    size = np.asarray(size, dtype=np.float32)
    region_mask = np.asarray(region_mask, dtype=bool)
    if size.shape != (n_img, 2) or not (size > 0).all():
        _fail(f"{where}/images/size", f"expected ({n_img}, 2) positive width, height; got {size.shape}")
    if region_mask.shape != (n_img, n_reg):
        _fail(f"{where}/images/region_mask", f"expected ({n_img}, {n_reg}), got {region_mask.shape}")
    has_boxes = bool(f.attrs["has_boxes"])
    if (boxes is not None) != has_boxes:
        _fail(f"{where}/images/boxes", "given for a file without boxes" if boxes is not None
              else "missing: pass boxes, or open the file with has_boxes=False")
    m = len(text)
    image = np.asarray(image, dtype=np.int64)
    for name, arr in (("image", image), ("tokens", tokens), ("heads", heads)):
        if arr is not None and len(arr) != m:
            _fail(f"{where}/captions/{name}", f"expected {m} entries (one per caption), got {len(arr)}")
    if m and (image.min() < 0 or image.max() >= n_img):
        _fail(f"{where}/captions/image", f"indices must lie in [0, {n_img}), got {image.min()}..{image.max()}")
    for k, tok in enumerate(tokens):
        if not tok or any(w == "" for w in tok.split(" ")):
            _fail(f"{where}/captions/tokens[{k}]", f"empty caption or empty word in {tok!r}")
        if heads is not None:
            check_heads(heads[k], len(tok.split(" ")), f"{where}/captions/heads[{k}]")

    g = f.create_group(split)
    im = g.create_group("images")
    feats = im.create_dataset("features", (n_img, n_reg, features.shape[2]), dtype=np.float16,
                              chunks=(1, n_reg, features.shape[2]))
    step = max(1, 2**27 // max(1, n_reg * features.shape[2] * 4))  # about 128 MiB of float32
    for s in range(0, n_img, step):
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, in one line
            block = np.asarray(features[s:s + step], dtype=np.float16)
        # After the cast: a finite float32 above 65504 becomes inf in float16.
        bad = ~np.isfinite(block).all(axis=(1, 2))
        if bad.any():
            i = s + int(np.nonzero(bad)[0][0])
            raw = np.asarray(features[i:i + 1], dtype=np.float32)
            what = ("non-finite values (NaN or inf)" if not np.isfinite(raw).all() else
                    f"values beyond float16's range (|x| up to {float(np.abs(raw).max()):.3g}"
                    f" > 65504)")
            _fail(f"{where}/images/features", f"image {i} has {what}; expected finite "
                  f"features (re-extract or re-download them)")
        feats[s:s + step] = block
    im.create_dataset("size", data=size)
    im.create_dataset("region_mask", data=region_mask)
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float32)
        if boxes.shape != (n_img, n_reg, 4):
            _fail(f"{where}/images/boxes", f"expected ({n_img}, {n_reg}, 4), got {boxes.shape}")
        im.create_dataset("boxes", data=boxes)
    if pixels is not None:
        pixels = np.asarray(pixels, dtype=np.uint8)
        if pixels.ndim != 4 or pixels.shape[0] != n_img or pixels.shape[3] != 3:
            _fail(f"{where}/images/pixels", f"expected ({n_img}, H, W, 3) uint8, got {pixels.shape}")
        im.create_dataset("pixels", data=pixels, compression="gzip")
    cap = g.create_group("captions")
    cap.create_dataset("text", data=list(text), dtype=_STR)
    cap.create_dataset("image", data=image)
    cap.create_dataset("tokens", data=list(tokens), dtype=_STR)
    if heads is not None:
        write_heads(cap, heads)


def check_heads(heads, num_words: int, where: str) -> None:
    """Raise SchemaError unless ``heads`` has one entry per word in [0, num_words]
    with exactly one root (0)."""
    hd = np.asarray(heads)
    if (hd.shape != (num_words,) or (hd < 0).any() or (hd > num_words).any()
            or (hd == 0).sum() != 1):
        _fail(where, f"expected {num_words} heads in [0, {num_words}] with one root (0), "
                     f"got {hd.tolist()}")


def write_heads(captions: h5py.Group, heads: Sequence[Sequence[int]]) -> None:
    """(Re)write ``captions/heads`` as one variable-length int32 row per caption."""
    if "heads" in captions:
        del captions["heads"]
    hd = captions.create_dataset("heads", (len(heads),), dtype=_HEADS)
    for k, h in enumerate(heads):
        hd[k] = np.asarray(h, dtype=np.int32)


def check_file(path: str | os.PathLike, split: str | None = None) -> h5py.File:
    """Open ``path`` read-only and check its schema; return the open file.

    Checks the version, the required fields of ``split`` (or of every split
    present) and their shapes, without reading the features. Raises
    :class:`SchemaError` naming the file and field, or FileNotFoundError.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SchemaError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        version = f.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            found = "missing (not a cccl_lite file?)" if version is None else str(version)
            _fail(str(path), f"schema_version {found}, expected {SCHEMA_VERSION}")
        splits = [split] if split else [s for s in SPLITS if s in f]
        for s in splits:
            if s not in SPLITS:
                _fail(str(path), f"unknown split {s!r}; expected one of {SPLITS}")
            if s not in f:
                _fail(str(path), f"no split {s!r}; the file has {[k for k in f if k in SPLITS]}")
            need = ["images/features", "images/size", "images/region_mask", "captions/text",
                    "captions/image", "captions/tokens"]
            if f.attrs["has_boxes"]:
                need.append("images/boxes")
            for name in need:
                if name not in f[s]:
                    _fail(f"{path}:/{s}/{name}", "missing")
            n_img, n_reg = f[s]["images/features"].shape[:2]
            if f[s]["images/region_mask"].shape != (n_img, n_reg):
                _fail(f"{path}:/{s}/images/region_mask", "does not match images/features")
            m = f[s]["captions/text"].shape[0]
            for name in ("captions/image", "captions/tokens", "captions/heads"):
                if name in f[s] and f[s][name].shape[0] != m:
                    _fail(f"{path}:/{s}/{name}", f"{f[s][name].shape[0]} entries, captions/text has {m}")
            # Small arrays, read whole: a bad index would otherwise surface
            # as an IndexError deep inside a batch.
            image = f[s]["captions/image"][:]
            if m and (image.min() < 0 or image.max() >= n_img):
                _fail(f"{path}:/{s}/captions/image", f"indices must lie in [0, {n_img}) (the "
                      f"split has {n_img} images), got {image.min()}..{image.max()}")
            cap = f[s]["captions"]
            if "word_vectors" in cap:
                _check_offsets(cap, m, f"{path}:/{s}/captions")
    except Exception:
        f.close()
        raise
    return f


def _check_offsets(cap: h5py.Group, m: int, where: str) -> None:
    """word_offsets must come with word_vectors: M + 1 non-decreasing row
    offsets from 0 to the number of vector rows."""
    if "word_offsets" not in cap:
        _fail(f"{where}/word_offsets", "missing (word_vectors needs it); run "
              "`python data_scripts/encode_words.py FILE` again")
    offsets = cap["word_offsets"][:]
    rows = cap["word_vectors"].shape[0]
    if offsets.shape != (m + 1,):
        _fail(f"{where}/word_offsets", f"expected {m + 1} entries (captions + 1), got "
              f"{offsets.shape[0] if offsets.ndim == 1 else offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != rows or (np.diff(offsets) < 0).any():
        _fail(f"{where}/word_offsets", f"expected non-decreasing offsets from 0 to {rows} (the "
              f"rows of word_vectors), got {offsets[0]}..{offsets[-1]}")


def split_sizes(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{split: (number of images, number of captions)} of a checked file."""
    with check_file(path) as f:
        return {s: (f[s]["images/features"].shape[0], f[s]["captions/text"].shape[0])
                for s in SPLITS if s in f}
