"""Resumable downloads from mirrors, and where to get Flickr30K / COCO inputs.

:func:`download` fetches one file with ``urllib``: mirrors are tried in
order; bytes go to ``dest + ".part"`` and a rerun continues it with an HTTP
``Range: bytes=<size>-`` request (a server that ignores Range and answers
200 gets the .part restarted from zero); the sha256 is checked when known;
only a complete, verified file is renamed to ``dest``. Ctrl-C keeps the
.part for the next run.

:data:`KNOWN_FILES` lists the published inputs of the two converters
(``precomp.py``: SCAN features + CAMERA or GSMN boxes; ``tsv.py``:
bottom-up-attention TSVs + Karpathy split JSON): a description, the project
page that publishes them, the expected file names, and download URLs only
where the publisher's own instructions give one (else none: such files are
fetched by hand). sha256 values are not published, so they are None.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

__all__ = ["DownloadError", "Remote", "KnownFile", "KNOWN_FILES", "download", "fetch",
           "manual_instructions"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A file could not be downloaded or failed its checksum."""


class _Incomplete(Exception):
    """A response ended early or did not continue where the .part stops."""


@dataclass(frozen=True)
class Remote:
    """One file: its name under the destination folder, mirrors, sha256."""
    name: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None


@dataclass(frozen=True)
class KnownFile:
    """A published input: what it is, who publishes it, its files, what next."""
    description: str
    page: str
    files: tuple[Remote, ...]
    then: str


def _names(folder: str, splits: Sequence[str], patterns: Sequence[str]) -> tuple[Remote, ...]:
    return tuple(Remote(f"{folder}/{s}_{p}") for s in splits for p in patterns)


_F30K, _COCO = ("train", "dev", "test"), ("train", "dev", "test", "testall")
_BU = "https://github.com/peteanderson80/bottom-up-attention"

KNOWN_FILES: dict[str, KnownFile] = {
    "scan_precomp": KnownFile(
        "SCAN's precomputed data: bottom-up features (36 regions x 2048), captions and image "
        "ids of Flickr30K (f30k_precomp) and COCO (coco_precomp), split as Karpathy's",
        "https://github.com/kuanghuei/SCAN (README, 'Download data')",
        (Remote("data.zip", ("https://scanproject.blob.core.windows.net/scan-data/data.zip",)),),
        "unzip data.zip; then run data_scripts/prepare_precomp.py with --src set to its "
        "f30k_precomp or coco_precomp folder"),
    "camera_boxes": KnownFile(
        "CAMERA's boxes and image sizes for SCAN's rows: {split}_boxes.npy (pixel x1, y1, x2, "
        "y2) and {split}_img_sizes.npy (width, height)",
        "https://github.com/LgQu/CAMERA (README, data section)",
        _names("f30k_precomp", _F30K, ("boxes.npy", "img_sizes.npy"))
        + _names("coco_precomp", _COCO, ("boxes.npy", "img_sizes.npy")),
        "move each file into the SCAN folder of its dataset (next to {split}_ims.npy) and "
        "run data_scripts/prepare_precomp.py --boxes camera"),
    "gsmn_boxes": KnownFile(
        "GSMN's boxes and image sizes for SCAN's rows: {split}_ims_bbx.npy (pixel x1, y1, x2, "
        "y2) and {split}_ims_size.npy (pickled image_w/image_h dicts)",
        "https://github.com/CrossmodalGroup/GSMN (README, data section)",
        _names("f30k_precomp", _F30K, ("ims_bbx.npy", "ims_size.npy"))
        + _names("coco_precomp", _COCO, ("ims_bbx.npy", "ims_size.npy")),
        "move each file into the SCAN folder of its dataset (next to {split}_ims.npy) and "
        "run data_scripts/prepare_precomp.py --boxes gsmn"),
    "karpathy_splits": KnownFile(
        "Karpathy's split JSONs (dataset_flickr30k.json, dataset_coco.json, "
        "dataset_flickr8k.json) in caption_datasets.zip",
        "https://cs.stanford.edu/people/karpathy/deepimagesent/",
        (Remote("caption_datasets.zip", (
            "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
            "http://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip")),),
        "unzip caption_datasets.zip; pass dataset_flickr30k.json or dataset_coco.json to "
        "data_scripts/prepare_tsv.py --karpathy"),
    "bottomup_coco_36": KnownFile(
        "bottom-up-attention features of COCO train2014 + val2014, 36 boxes per image (TSV)",
        f"{_BU} (README, 'Pretrained features')",
        (Remote("trainval_36.zip",
                ("https://imagecaption.blob.core.windows.net/imagecaption/trainval_36.zip",)),),
        "unzip trainval_36.zip; pass its .tsv to data_scripts/prepare_tsv.py --tsv with "
        "--karpathy dataset_coco.json"),
    "bottomup_coco_adaptive": KnownFile(
        "bottom-up-attention features of COCO train2014 + val2014, 10-100 boxes per image "
        "(TSV files)",
        f"{_BU} (README, 'Pretrained features')",
        (Remote("trainval.zip",
                ("https://imagecaption.blob.core.windows.net/imagecaption/trainval.zip",)),),
        "unzip trainval.zip; pass all its .tsv files to data_scripts/prepare_tsv.py --tsv with "
        "--karpathy dataset_coco.json (--num-regions keeps the first boxes of each image)"),
    "bottomup_flickr30k": KnownFile(
        "bottom-up-attention features of the Flickr30K images (TSV); not published as a "
        "download: extract them with tools/generate_tsv.py of bottom-up-attention from the "
        "Flickr30K images (distributed by the Flickr30K authors on request)",
        f"{_BU} (README, 'Demo' and tools/generate_tsv.py)",
        (Remote("flickr30k_resnet101_faster_rcnn_genome.tsv"),),
        "pass the .tsv file(s) to data_scripts/prepare_tsv.py --tsv with "
        "--karpathy dataset_flickr30k.json"),
}


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(chunk):
            h.update(buf)
    return h.hexdigest()


def _fetch(url: str, part: Path, chunk: int, timeout: float) -> None:
    """Append ``url``'s remaining bytes to ``part`` (or rewrite it from zero)."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "cccl_lite-download/1"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        # A fresh opener reads the proxy settings of the environment now,
        # not those of the first urlopen() call in this process.
        resp = urllib.request.build_opener().open(urllib.request.Request(url, headers=headers),
                                                  timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            # Range not satisfiable: the .part holds the whole file already, or
            # more than the file (another version): then start over.
            m = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
            e.close()
            if m and int(m.group(1)) == start:
                return
            part.unlink()
            return _fetch(url, part, chunk, timeout)
        raise
    with resp:
        if start and resp.status == 206:
            cr = resp.headers.get("Content-Range", "")
            m = _CONTENT_RANGE.fullmatch(cr)
            if not m or int(m.group(1)) != start:
                raise _Incomplete(f"asked for bytes {start}- and got Content-Range {cr!r}")
            mode, total = "ab", (int(m.group(3)) if m.group(3) != "*" else None)
        else:
            # 200 to a Range request: the server sends the whole file, so the
            # .part restarts from zero rather than getting it appended.
            mode, start, total = "wb", 0, None
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if total is None and expected is not None:
            total = start + expected
        got = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, mode) as out, tqdm(total=total, initial=start, unit="B",
                                           unit_scale=True, desc=part.name[:-5],
                                           disable=None) as bar:
            while buf := resp.read(chunk):
                out.write(buf)
                got += len(buf)
                bar.update(len(buf))
    if expected is not None and got < expected:
        raise _Incomplete(f"connection closed after {start + got} of {start + expected} bytes")


def download(urls: Sequence[str], dest, sha256: str | None = None, chunk: int = 1 << 20, *,
             timeout: float = 60.0) -> Path:
    """Download ``dest`` from the first mirror in ``urls`` that works; return ``dest``.

    Resumes ``dest.part`` with a Range request; checks ``sha256`` (hex) when
    given, deleting the .part on a mismatch; renames to ``dest`` only when
    complete and verified. An existing ``dest`` is kept (checked against
    ``sha256`` when given). Raises DownloadError when every mirror fails
    (the .part stays for a rerun) or on a checksum mismatch.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        if sha256 is None:
            return dest  # only complete, verified downloads ever get this name
        actual = _sha256_file(dest)
        if actual == sha256.lower():
            return dest
        raise DownloadError(f"{dest}: exists with sha256 {actual}, expected {sha256.lower()}; "
                            f"delete it to download again")
    if not urls:
        raise DownloadError(f"{dest.name}: no download URL is known")
    errors = []
    for url in urls:
        try:
            _fetch(url, part, chunk, timeout)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError, _Incomplete) as e:
            # Network trouble only: a local error (disk full) propagates.
            why = e.reason if type(e) is urllib.error.URLError else e
            errors.append(f"{url}: {why}")
    else:
        kept = f" ({part.stat().st_size} bytes kept in {part} for a rerun)" if part.exists() else ""
        raise DownloadError(f"{dest.name}: every mirror failed: {'; '.join(errors)}{kept}")
    if sha256 is not None:
        actual = _sha256_file(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(f"{dest.name}: sha256 mismatch: expected {sha256.lower()}, got "
                                f"{actual} (from {url}); the partial file was deleted")
    os.replace(part, dest)
    return dest


def manual_instructions(key: str, entry: KnownFile, dest_dir, reason: str = "") -> str:
    """The message telling a user where to get ``entry`` by hand and where to put it."""
    names = ", ".join(r.name for r in entry.files[:6])
    more = f" (and {len(entry.files) - 6} more like them)" if len(entry.files) > 6 else ""
    return (f"cannot download {key}{': ' + reason if reason else ''}\n"
            f"  what:  {entry.description}\n"
            f"  get it by hand from {entry.page}\n"
            f"  files: {names}{more}\n"
            f"  put them under {Path(dest_dir)}/ (same names); then {entry.then}")


def fetch(key: str, dest_dir, *, entry: KnownFile | None = None, timeout: float = 60.0,
          file=None) -> list[Path]:
    """Download every file of ``KNOWN_FILES[key]`` (or ``entry``) under ``dest_dir``.

    When a file cannot be downloaded (no URL, or every mirror failed) the
    manual instructions are printed to ``file`` (stderr) and DownloadError is
    raised.
    """
    entry = entry or KNOWN_FILES[key]
    dest_dir = Path(dest_dir)
    done = []
    for remote in entry.files:
        try:
            done.append(download(remote.urls, dest_dir / remote.name, remote.sha256,
                                 timeout=timeout))
        except DownloadError as e:
            print(manual_instructions(key, entry, dest_dir, str(e)), file=file or sys.stderr)
            raise
    return done
