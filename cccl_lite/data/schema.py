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
import errno
import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from cccl_lite.files import atomic_path, remove_stale_temps

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


# A file expected to be at most this large is built in memory and written
# with plain file I/O: HDF5 itself, meeting a full disk or a file-size limit,
# spews errors and then crashes (exit 139, issue 29, 13).
IN_MEMORY_LIMIT = 2**29


def _no_room(code: int | None, message: str) -> OSError:
    e = OSError(message)  # str(e) is the message alone: one line on the command line
    e.errno = code
    return e


def check_room(path: Path, need: int) -> None:
    """Raise OSError, one line, if ``need`` bytes cannot be written at ``path``:
    more than the file-size limit (``ulimit -f``) or the free disk space."""
    import resource
    import shutil

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and need > limit:
        raise _no_room(errno.EFBIG, f"{path}: needs about {need / 2**20:,.1f} MiB, more than the "
                                   f"file-size limit of {limit / 2**20:,.1f} MiB (ulimit -f)")
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise _no_room(errno.ENOSPC, f"{path}: needs about {need / 2**20:,.1f} MiB, but its disk "
                                    f"has {free / 2**20:,.1f} MiB free")


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, dataset: str, has_boxes: bool = True,
              expected_bytes: int | None = None) -> Iterator[h5py.File]:
    """Open ``path`` for writing through a temp file that is renamed on success.

    Nothing half-written is ever left under the final name: on any error
    (or Ctrl-C) the temp file is removed and ``path`` is untouched.
    ``expected_bytes`` (an estimate of the file's size): up to
    :data:`IN_MEMORY_LIMIT` the file is built in memory (HDF5's core driver,
    the same bytes) and written with Python's file I/O once its exact size is
    checked (:func:`check_room`), so a full disk is an OSError, not a crash;
    a larger file is refused at once when the estimate does not fit.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)  # a killed writer's temp file (issue 14), before room is counted
    in_memory = expected_bytes is not None and expected_bytes <= IN_MEMORY_LIMIT
    if expected_bytes is not None and not in_memory:
        check_room(path, expected_bytes)
    kw = dict(driver="core", backing_store=False) if in_memory else {}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", **kw) as f:  # in memory: nothing at tmp until written below
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["dataset"] = dataset
            f.attrs["has_boxes"] = bool(has_boxes)
            yield f
            if in_memory:
                f.flush()
                image = f.id.get_file_image()
        if in_memory:
            check_room(path, len(image))  # the exact size, now that it is known
            try:
                with open(tmp, "wb") as out:
                    out.write(image)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as e:
                raise _no_room(e.errno, f"{path}: cannot write it ({e.strerror or e}); nothing "
                                       f"was written") from None


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
    if not path.is_file():  # a FIFO would block the open for ever
        _fail(str(path), "a folder; expected an HDF5 file" if path.is_dir() else
              "not a regular file (a device, FIFO or socket); expected an HDF5 file")
    f = _open(path)
    try:
        version = f.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            found = "missing (not a cccl_lite file?)" if version is None else str(version)
            _fail(str(path), f"schema_version {found}, expected {SCHEMA_VERSION}")
        has_boxes = f.attrs.get("has_boxes")
        if not isinstance(has_boxes, (bool, np.bool_)):
            found = "missing" if has_boxes is None else f"{has_boxes!r}"
            _fail(f"{path}: attribute has_boxes", f"{found}; expected True or False")
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
            _check_kinds(f[s], f"{path}:/{s}")
            n_img, n_reg = f[s]["images/features"].shape[:2]
            if f[s]["images/region_mask"].shape != (n_img, n_reg):
                _fail(f"{path}:/{s}/images/region_mask", "does not match images/features")
            _check_shapes(f[s], n_img, n_reg, f"{path}:/{s}")
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


def _open(path: Path) -> h5py.File:
    """h5py.File(path, "r"), its failures said as what they are: a file another
    process holds locked for writing is not "not a readable HDF5 file" (issue 29)."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        text = str(e)
        if "lock" in text.lower():
            raise SchemaError(f"{path}: locked by another process that is writing it (HDF5 "
                              f"file locking); wait for it to finish, or set "
                              f"HDF5_USE_FILE_LOCKING=FALSE if it only reads") from None
        if isinstance(e, PermissionError) or "Permission denied" in text:
            raise SchemaError(f"{path}: permission denied (cannot read it)") from None
        raise SchemaError(f"{path}: not a readable HDF5 file ({text})") from None


# What each field must hold (numpy dtype kinds), checked before any read:
# a token that is a number or a mask that is a float would otherwise be a
# traceback deep inside a batch (issue 29, 15).
_KINDS = {"images/features": ("f", "floating-point"), "images/size": ("fiu", "numeric"),
          "images/boxes": ("fiu", "numeric"), "images/region_mask": ("b", "bool"),
          "captions/image": ("iu", "integer"), "captions/word_vectors": ("f", "floating-point"),
          "captions/word_offsets": ("iu", "integer")}
_TEXT = ("captions/text", "captions/tokens", "images/variant", "images/scene", "captions/kind")
# Arrays a reader holds in memory whole (masks, sizes, boxes, caption tables):
# their declared size is refused above this before anything is read, and so is
# any field that declares more data than the file stores (issue 29, 5).
READ_WHOLE_LIMIT = 2**30


def _check_kinds(g: h5py.Group, where: str) -> None:
    for name in _KINDS.keys() | set(_TEXT) | {"captions/heads"}:
        if name not in g:
            continue
        ds = g[name]
        if not isinstance(ds, h5py.Dataset):
            _fail(f"{where}/{name}", "a group; expected a dataset")
        if name in _TEXT:
            if h5py.check_string_dtype(ds.dtype) is None:
                _fail(f"{where}/{name}", f"{ds.dtype} values; expected UTF-8 strings")
        elif name == "captions/heads":
            base = h5py.check_vlen_dtype(ds.dtype)
            if base is None or base.kind not in "iu":
                _fail(f"{where}/{name}", f"{ds.dtype} values; expected variable-length integers "
                      f"(one head per word)")
        elif ds.dtype.kind not in _KINDS[name][0]:
            _fail(f"{where}/{name}", f"{ds.dtype} values; expected {_KINDS[name][1]}")


def _check_shapes(g: h5py.Group, n_img: int, n_reg: int, where: str) -> None:
    """Shapes the readers rely on, and declared sizes against what the file
    stores, from the metadata only."""
    if g["images/features"].ndim != 3:
        _fail(f"{where}/images/features", f"shape {g['images/features'].shape}; expected "
              f"(N, n, d_F)")
    size = g["images/size"]
    if size.shape != (n_img, 2) and not (size.attrs.get("placeholder") and size.shape == (1, 1)):
        _fail(f"{where}/images/size", f"shape {size.shape}; expected ({n_img}, 2)")
    if "boxes" in g["images"] and g["images/boxes"].shape != (n_img, n_reg, 4):
        _fail(f"{where}/images/boxes", f"shape {g['images/boxes'].shape}; expected "
              f"({n_img}, {n_reg}, 4)")
    whole = 0
    for name in ("images/features", "images/size", "images/boxes", "images/region_mask",
                 "captions/image", "captions/text", "captions/tokens", "captions/heads",
                 "captions/word_vectors", "captions/word_offsets"):
        if name not in g:
            continue
        ds = g[name]
        stored = ds.id.get_storage_size()
        if not ds._filters and stored < ds.nbytes:  # compressed data may be smaller
            _fail(f"{where}/{name}", f"declares shape {ds.shape} ({ds.nbytes:,} bytes) but the "
                  f"file stores {stored:,} bytes of it: truncated or crafted; re-create the file")
        if name not in ("images/features", "captions/word_vectors", "captions/text"):
            whole += ds.nbytes
    if whole > READ_WHOLE_LIMIT:
        _fail(where, f"its masks, sizes, boxes and caption tables declare {whole:,} bytes, more "
              f"than the {READ_WHOLE_LIMIT:,} a reader holds in memory: crafted, or too large "
              f"for cccl_lite")


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
