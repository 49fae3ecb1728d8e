"""Bottom-up-attention TSV features + Karpathy split JSON → the HDF5 schema.

TSV (``tools/generate_tsv.py`` of peteanderson80/bottom-up-attention): no
header, one image per line, 6 tab-separated fields::

    image_id  image_w  image_h  num_boxes  boxes  features

``boxes`` and ``features`` are base64 of float32 arrays of shape
(num_boxes, 4) pixel x1, y1, x2, y2 and (num_boxes, d_F) (d_F = 2048).
num_boxes is 36 in the fixed files and 10-100 in the adaptive ones. A line
holds ~0.4 MB of base64, more than the csv module's default field limit;
lines are split on tabs directly here (base64 has no tabs or quotes), which
also gives each line's byte offset for the second pass.

Karpathy JSON (``dataset_flickr30k.json`` / ``dataset_coco.json``):
``images[]`` with ``filename``, ``imgid``, ``split`` (train, val, test, and
restval = more training images in COCO), ``sentences[]`` of ``{raw, tokens,
imgid, sentid}``; COCO images also carry ``cocoid``. A TSV image_id is the
``cocoid`` (COCO) or the numeric stem of ``filename`` (Flickr30K:
"1000092795.jpg" → 1000092795).

Output: one schema file with splits train (train + restval), val, test.
Images keep the Karpathy JSON order; each has exactly ``captions_per_image``
captions (its first ones; the metrics assume a fixed count), so caption k
belongs to image k // captions_per_image. Regions: the first
``num_regions`` boxes of a line (generate_tsv.py writes them in detector-score
order), the rest padded with ``region_mask`` False and zero boxes/features.
``images/id`` (N,) int64 holds the image ids. Features are streamed: one pass
indexes the lines, a second decodes only the rows being written.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cccl_lite.data.text import simple_tokenize
from cccl_lite.data.precomp import InputError, check_boxes
from cccl_lite.data.schema import SPLITS, atomic_h5, write_split

__all__ = ["KARPATHY_SPLITS", "FIELDS", "convert_tsv", "read_karpathy"]

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
_STEM = re.compile(r"\d+")


@dataclass
class _Image:
    """One Karpathy image: where it goes and its captions."""
    image_id: int
    split: str
    texts: list[str]
    tokens: list[str]


@dataclass
class _Row:
    """One TSV line, indexed in the first pass (features stay on disk)."""
    file: int
    offset: int
    line: int
    num_boxes: int
    size: tuple[float, float]
    boxes: np.ndarray  # (min(num_boxes, n), 4) float32, checked and clipped


def read_karpathy(path, captions_per_image: int = 5) -> tuple[str | None, list[_Image]]:
    """(the JSON's ``dataset`` name or None, images in file order) of a split JSON.

    Each image keeps its first ``captions_per_image`` sentences: text = ``raw``
    stripped, tokens = ``tokens`` lower-cased and joined by spaces (or
    simple_tokenize(raw) when ``tokens`` is empty). Fewer sentences, an empty
    caption, an unknown split or a missing field is an InputError.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path}: expected an object with an 'images' list (Karpathy split JSON)")
    images, seen = [], {}
    for k, img in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(img, dict):
            raise InputError(f"{where}: expected an object, got {type(img).__name__}")
        for key in ("filename", "split", "sentences"):
            if key not in img:
                raise InputError(f"{where}: missing field {key!r}")
        where = f"{path}: image {img['filename']!r}"
        if "cocoid" in img:
            image_id = img["cocoid"]
            if not isinstance(image_id, int):
                raise InputError(f"{where}: cocoid {image_id!r} is not an integer")
        else:
            stem = Path(str(img["filename"])).stem
            if not _STEM.fullmatch(stem):
                raise InputError(f"{where}: no cocoid and the file name is not numeric; "
                                 f"expected e.g. '1000092795.jpg' (Flickr30K)")
            image_id = int(stem)
        if image_id in seen:
            raise InputError(f"{where}: image id {image_id} also used by images[{seen[image_id]}]")
        seen[image_id] = k
        split = KARPATHY_SPLITS.get(img["split"])
        if split is None:
            raise InputError(f"{where}: unknown split {img['split']!r}; expected one of "
                             f"{sorted(KARPATHY_SPLITS)}")
        sents = img["sentences"]
        if not isinstance(sents, list) or len(sents) < captions_per_image:
            n = len(sents) if isinstance(sents, list) else sents
            raise InputError(f"{where}: {n} sentences; expected at least {captions_per_image}")
        texts, tokens = [], []
        for s in sents[:captions_per_image]:
            t, tok = _sentence(s, where)
            texts.append(t)
            tokens.append(tok)
        images.append(_Image(image_id, split, texts, tokens))
    name = data.get("dataset")
    return (str(name) if name else None), images


def _sentence(s, where: str) -> tuple[str, str]:
    if not isinstance(s, dict) or "raw" not in s:
        raise InputError(f"{where}: sentence {s!r:.80} has no 'raw' field")
    sid = s.get("sentid", "?")
    raw = str(s["raw"]).strip()
    words = s.get("tokens") or []
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise InputError(f"{where}: sentid {sid}: 'tokens' is not a list of strings")
    # Karpathy's tokens are lower-case already; lower() keeps any odd one in
    # the same vocabulary as simple_tokenize's words.
    words = [w.lower() for w in words] if words else simple_tokenize(raw)
    if not raw or not words:
        raise InputError(f"{where}: sentid {sid}: empty caption (raw {raw!r})")
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise InputError(f"{where}: sentid {sid}: tokens {bad[:3]!r} are empty or hold spaces; "
                         f"expected one word per token")
    return raw, " ".join(words)


def _b64_len(field: bytes) -> int:
    """Decoded length of a base64 field, without decoding it."""
    if len(field) % 4:
        return -1
    return len(field) // 4 * 3 - (len(field) - len(field.rstrip(b"=")))


def _index_tsv(paths: Sequence[Path], wanted: set[int], num_regions: int):
    """First pass: {image_id: _Row} for ``wanted`` ids, all ids seen, feature dim."""
    rows: dict[int, _Row] = {}
    where_of: dict[int, str] = {}
    duplicates: list[str] = []
    dim = None
    for fi, path in enumerate(paths):
        if not path.exists():
            raise InputError(f"{path}: no such file")
        with open(path, "rb") as fh, tqdm(desc=f"index {path.name}", unit="B", unit_scale=True,
                                          total=path.stat().st_size, disable=None) as bar:
            lineno = 0
            while True:
                offset = fh.tell()
                line = fh.readline()
                if not line:
                    break
                lineno += 1
                bar.update(len(line))
                where = f"{path}:{lineno}"
                fields = line.rstrip(b"\r\n").split(b"\t")
                if len(fields) != len(FIELDS):
                    raise InputError(f"{where}: {len(fields)} tab-separated fields; expected "
                                     f"{len(FIELDS)} ({', '.join(FIELDS)})")
                try:
                    image_id = int(fields[0])
                    w, h = float(fields[1]), float(fields[2])
                    nb = int(fields[3])
                except ValueError:
                    raise InputError(f"{where}: image_id, image_w, image_h, num_boxes = "
                                     f"{[f.decode(errors='replace')[:20] for f in fields[:4]]}; "
                                     f"expected numbers") from None
                if image_id in where_of:
                    duplicates.append(f"{image_id} ({where_of[image_id]} and {where})")
                    continue
                where_of[image_id] = where
                if nb < 1 or not (w > 0 and h > 0):
                    raise InputError(f"{where}: num_boxes {nb}, size {w} x {h}; expected "
                                     f"num_boxes >= 1 and a positive size")
                n_feat = _b64_len(fields[5])
                if n_feat <= 0 or n_feat % (4 * nb):
                    raise InputError(f"{where}: features field holds {n_feat} bytes; expected "
                                     f"base64 of float32 (num_boxes={nb}, d_F)")
                d = n_feat // (4 * nb)
                if dim is None:
                    dim = d
                elif d != dim:
                    raise InputError(f"{where}: features have {d} dims per box; earlier lines "
                                     f"have {dim}")
                if image_id not in wanted:
                    continue
                try:
                    raw = base64.b64decode(fields[4], validate=True)
                except binascii.Error as e:
                    raise InputError(f"{where}: boxes field is not base64 ({e})") from None
                if len(raw) != nb * 16:
                    raise InputError(f"{where}: boxes field holds {len(raw)} bytes; expected "
                                     f"{nb * 16} (float32 ({nb}, 4))")
                boxes = np.frombuffer(raw, dtype=np.float32).reshape(nb, 4)[:num_regions]
                boxes = check_boxes(boxes[None], np.array([[w, h]]), f"{where} boxes")[0]
                rows[image_id] = _Row(fi, offset, lineno, nb, (w, h), boxes)
    if duplicates:
        raise InputError(f"duplicate image_id in the TSV files: {', '.join(duplicates[:5])}"
                         + (f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""))
    if dim is None:
        raise InputError(f"{', '.join(map(str, paths))}: no lines")
    return rows, set(where_of), where_of, dim


class _TsvFeatures:
    """(N, n, d_F) features of one split, decoded from the TSVs on slicing.

    Duck-types the array that :func:`write_split` copies in chunks of images:
    only the rows of the requested slice are read (in file order) and decoded.
    """

    def __init__(self, paths: Sequence[Path], rows: list[_Row], n: int, dim: int, desc: str):
        self.paths, self.rows, self.n, self.dim = paths, rows, n, dim
        self.shape = (len(rows), n, dim)
        self.ndim = 3
        self._files: dict[int, object] = {}
        self._bar = tqdm(total=len(rows), desc=desc, unit="img", disable=None)

    def __getitem__(self, sl: slice) -> np.ndarray:
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise TypeError("only contiguous slices are supported")
        chunk = self.rows[sl]
        out = np.zeros((len(chunk), self.n, self.dim), dtype=np.float32)
        for k in sorted(range(len(chunk)), key=lambda k: (chunk[k].file, chunk[k].offset)):
            r = chunk[k]
            fh = self._files.get(r.file)
            if fh is None:
                fh = self._files[r.file] = open(self.paths[r.file], "rb")
            fh.seek(r.offset)
            field = fh.readline().rstrip(b"\r\n").split(b"\t")[5]
            where = f"{self.paths[r.file]}:{r.line}"
            try:
                raw = base64.b64decode(field, validate=True)
            except binascii.Error as e:
                raise InputError(f"{where}: features field is not base64 ({e})") from None
            if len(raw) != r.num_boxes * self.dim * 4:
                raise InputError(f"{where}: features changed since the first pass")
            feats = np.frombuffer(raw, dtype=np.float32).reshape(r.num_boxes, self.dim)
            if not np.isfinite(feats).all():
                raise InputError(f"{where}: non-finite feature values")
            m = min(r.num_boxes, self.n)
            out[k, :m] = feats[:m]
        self._bar.update(len(chunk))
        return out

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        self._bar.close()


def convert_tsv(tsv, karpathy, out, *, num_regions: int = 36, name: str | None = None,
                splits: Sequence[str] = SPLITS, captions_per_image: int = 5,
                overwrite: bool = False) -> dict[str, tuple[int, int]]:
    """Write ``splits`` of the Karpathy JSON with features from the TSV files.

    tsv: one path or a list (e.g. the parts of a split-up TSV). name: the
    file's ``dataset`` attribute (default the JSON's ``dataset`` field, else
    "flickr30k"). Every Karpathy image of a written split must have exactly
    one TSV line, and every TSV line must belong to a Karpathy image (lines of
    images in splits not written are skipped). Returns {split: (images,
    captions)}. Raises InputError (bad input) or FileExistsError (``out``
    exists and not ``overwrite``).
    """
    paths = [Path(tsv)] if isinstance(tsv, (str, Path)) else [Path(p) for p in tsv]
    out = Path(out)
    if num_regions < 1:
        raise InputError(f"--num-regions {num_regions}: expected >= 1")
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise InputError(f"splits {list(splits)}: expected some of {SPLITS}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists; pass --overwrite to replace it")
    json_name, images = read_karpathy(karpathy, captions_per_image)
    by_split = {s: [im for im in images if im.split == s] for s in SPLITS if s in splits}
    wanted = {im.image_id for ims in by_split.values() for im in ims}
    if not wanted:
        raise InputError(f"{karpathy}: no images in splits {list(splits)}")

    rows, seen, where_of, dim = _index_tsv(paths, wanted, num_regions)
    in_json = {im.image_id for im in images}
    extra = sorted(seen - in_json)
    if extra:
        shown = ", ".join(f"{i} ({where_of[i]})" for i in extra[:5])
        raise InputError(f"{len(extra)} TSV image_ids are not in {karpathy}: {shown}"
                         + (" ..." if len(extra) > 5 else ""))
    missing = sorted(wanted - rows.keys())
    if missing:
        raise InputError(f"{len(missing)} images of {karpathy} have no TSV line: "
                         f"{missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    truncated = sum(rows[i].num_boxes > num_regions for i in wanted)
    if truncated:
        print(f"note: {truncated} images have more than {num_regions} boxes; kept the first "
              f"{num_regions} of each (--num-regions)")

    summary = {}
    # About the file's size (float16 features, boxes, masks, 1 KiB of captions
    # an image), refused at once when the disk or ulimit -f cannot take it.
    need = len(wanted) * (num_regions * (2 * dim + 17) + 1024) + 2**20
    with atomic_h5(out, name or json_name or "flickr30k", has_boxes=True,
                   expected_bytes=need) as f:
        for split, ims in by_split.items():
            if not ims:
                print(f"note: {karpathy} has no {split} images; no {split!r} split written")
                continue
            split_rows = [rows[im.image_id] for im in ims]
            n = len(ims)
            boxes = np.zeros((n, num_regions, 4), dtype=np.float32)
            mask = np.zeros((n, num_regions), dtype=bool)
            for i, r in enumerate(split_rows):
                boxes[i, :len(r.boxes)] = r.boxes
                mask[i, :len(r.boxes)] = True
            feats = _TsvFeatures(paths, split_rows, num_regions, dim, f"write {split}")
            try:
                write_split(f, split, features=feats,
                            size=np.array([r.size for r in split_rows], dtype=np.float32),
                            region_mask=mask, boxes=boxes,
                            text=[t for im in ims for t in im.texts],
                            image=np.repeat(np.arange(n, dtype=np.int64), captions_per_image),
                            tokens=[t for im in ims for t in im.tokens])
            finally:
                feats.close()
            f[split]["images"].create_dataset(
                "id", data=np.array([im.image_id for im in ims], dtype=np.int64))
            summary[split] = (n, n * captions_per_image)
    return summary
