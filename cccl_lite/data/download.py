"""Where to get Flickr30K / COCO inputs today, and a downloader that checks what it got.

The registry :data:`KNOWN_FILES` (in :mod:`cccl_lite.data.sources`,
re-exported here) lists the published inputs of the two converters
(``precomp.py``: SCAN's features + CAMERA's or GSMN's boxes; ``tsv.py``:
bottom-up-attention TSVs + Karpathy's split JSON). Each entry has the files
a converter needs and its :class:`Source` s, tried in order: plain HTTPS, a
Google Drive file or folder (through ``gdown``), a Kaggle dataset (through
the ``kaggle`` client, which needs an API token). Every source says where we
found it (``cited``: repository + file or issue), because none of these is
the original publisher's link any more: SCAN's
``scanproject.blob.core.windows.net`` has not answered since 2021 (see
kuanghuei/SCAN issues 40, 45, 58).

Why over 500 lines: it does one job, getting a file
and proving it is the file, and its parts share that job's private state
(the exceptions that say "try the next source", the staging folder, the
manifest, the checks every path runs before a rename). The registry, the
part that changes as hosts die, is already its own module; cutting the
fetch paths (HTTPS with resume, Drive, Kaggle) from the checks and from
:func:`fetch`, which tries them in turn, would only move those private names
across modules.

What a download must pass before it gets its final name (else it is deleted
and the next source is tried, with one line saying why):

* not an HTML page: a web page served with status 200 (Google Drive's quota
  or virus-scan page, a login page) instead of the file;
* the format its name says (``.zip``: ``PK`` magic, ``.npy``: NumPy magic);
* not far below the size expected (``min_bytes``, when the entry knows one);
* the sha256 and size recorded in the registry's checksum file
  (:data:`CHECKSUMS`, ``checksums.json`` next to this module), when recorded.

No checksums are recorded yet (this project's machines cannot reach these
hosts). ``python data_scripts/download.py NAME --record`` writes the sha256
and size of every file it fetched to that file: run it once, check the
numbers, commit ``checksums.json``; every later download is then held to them.

:func:`download` is the HTTPS part: mirrors tried in order, bytes to
``dest + ".part"``, a rerun continues it with ``Range: bytes=<size>-`` (a
server that ignores Range and answers 200 restarts the .part from zero),
redirects followed; only a complete, checked file is renamed to ``dest``.
A .part is continued only from the URL that served it (recorded beside it
in ``dest + ".origin.part"``, with the server's ETag for ``If-Range``):
another mirror starts from zero, never splicing two files (issue 29 #11).
A response without Content-Length is complete only once the server confirms
its end (a ``Range`` request past it answered 416, or with the rest of the
file), or once the expected size or sha256 is checked: a body cut short is
never renamed to ``dest`` nor recorded by ``--record`` (issue 29 #10).
Ctrl-C keeps the .part. :func:`extract_scan_files` then copies SCAN-layout
files of one dataset out of whatever came (a zip, a folder, zips in a folder)
into one folder, as ``prepare_precomp.py --src`` reads them.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import inspect
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from cccl_lite.errors import one_line
from cccl_lite.files import atomic_path, write_text_atomic
from cccl_lite.data.sources import (DATASET_TAGS, KINDS, KNOWN_FILES, SCAN_NAMES, SCAN_SPLITS,
                                    KnownFile, Source)

__all__ = ["DownloadError", "Source", "KnownFile", "KNOWN_FILES", "CHECKSUMS", "KINDS",
           "download", "fetch", "manual_instructions", "load_checksums", "check_payload",
           "extract_scan_files", "SCAN_NAMES", "kaggle_token_location"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
CHECKSUMS = Path(__file__).with_name("checksums.json")
_STAGING = ".cccl-download"  # per-source partial downloads under --dest, for resume
_MANIFEST = "fetched.json"   # which files each finished source left under --dest
# Google Drive's download endpoint for one file (a module global so that the
# tests can point it at a local server).
_DRIVE_FILE_URL = "https://drive.google.com/uc?id={id}"
_EXTRA = "pip install 'cccl_lite[download]'"


class DownloadError(RuntimeError):
    """A file could not be downloaded, or what came is not the file."""


class _Incomplete(Exception):
    """A response ended early or did not continue where the .part stops."""


class _NotTheFile(Exception):
    """What arrived is not the expected file (HTML page, wrong format or size)."""


class _SourceFailed(Exception):
    """One source could not deliver; the message says why in one line."""


# ---- checks on what arrived ----------------------------------------------------

_MAGIC = {".zip": (b"PK\x03\x04", b"PK\x05\x06"), ".npy": (b"\x93NUMPY",)}


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")) or \
        b"<html" in text[:1024]


def check_payload(path, min_bytes: int | None = None, head: bytes | None = None) -> None:
    """Raise _NotTheFile unless ``path`` can be the file its name says.

    Refused: an HTML page (whatever its name; the first KiB is read), a
    ``.zip`` or ``.npy`` without its magic bytes, fewer than ``min_bytes``.
    ``head``: the first bytes when already read (the file need not exist).
    """
    path = Path(path)
    if head is None:
        with open(path, "rb") as f:
            head = f.read(1024)
    if _looks_like_html(head):
        start = " ".join(head[:60].decode("utf-8", "replace").split())
        raise _NotTheFile(f"the server sent an HTML page, not the file (it starts {start!r})")
    magic = _MAGIC.get(path.suffix.lower())
    if magic and len(head) >= 4 and not head.startswith(magic):
        raise _NotTheFile(f"not a {path.suffix} file (it starts {head[:8]!r})")
    if min_bytes is not None and path.exists():
        size = path.stat().st_size
        if size < min_bytes:
            raise _NotTheFile(f"{size:,} bytes, far below the {min_bytes:,} expected at least")


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(chunk):
            h.update(buf)
    return h.hexdigest()


def load_checksums(path=None) -> dict:
    """The recorded sha256 and sizes: {source id: {"files": {name: {"sha256",
    "size"}}, "recorded": date}}; {} when the file does not exist."""
    path = Path(path or CHECKSUMS)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DownloadError(f"{path}: not a readable checksum file ({e})") from None
    if not isinstance(data, dict):
        raise DownloadError(f"{path}: expected a JSON object of sources")
    return data


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                      path)


def _verify_recorded(source: Source, root: Path, files: list[Path], recorded: dict,
                     full: bool) -> None:
    """Hold ``files`` (under ``root``) to the sizes and sha256 recorded for
    ``source``; a mismatching file is deleted. ``full=False``: sizes only."""
    expected = recorded.get(source.id, {}).get("files", {})
    for path in files:
        name = path.relative_to(root).as_posix()
        want = expected.get(name)
        if want is None:
            continue
        size = path.stat().st_size
        if size != want["size"]:
            path.unlink()
            raise _NotTheFile(f"{name}: {size:,} bytes, the registry recorded {want['size']:,} "
                              f"(deleted)")
        if full:
            got = _sha256_file(path)
            if got != want["sha256"]:
                path.unlink()
                raise _NotTheFile(f"{name}: sha256 {got}, the registry recorded "
                                  f"{want['sha256']} (deleted)")


# ---- HTTPS ----------------------------------------------------------------------


def _origin_path(part: Path) -> Path:
    """Where the URL (and ETag) that served ``part`` is recorded; its name
    ends in .part, so the files of a finished download never include it."""
    return part.with_name(part.name[:-5] + ".origin.part")


def _drop_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _origin_path(part).unlink(missing_ok=True)


def _origin(part: Path) -> dict:
    try:
        origin = json.loads(_origin_path(part).read_text())
        return origin if isinstance(origin, dict) else {}
    except (OSError, ValueError):
        return {}


def _fetch(url: str, part: Path, chunk: int, timeout: float, probe: bool = False) -> bool:
    """Append ``url``'s remaining bytes to ``part`` (or rewrite it from zero);
    return whether the file is known complete: the bytes the server declared
    (Content-Length, or Content-Range's total) all arrived, or it answered
    416 for bytes past the end. ``probe``: only ask for bytes past ``part``'s
    end, and give up (False) rather than download the whole file again when
    the server ignores Range.

    ``part`` is continued only if ``url`` served it (:func:`_origin`); else
    it is deleted first: bytes of another mirror never get spliced on. The
    first bytes of a fresh response are checked before anything is written:
    an HTML page raises _NotTheFile at once (no gigabytes of it).
    """
    origin = _origin(part)
    if part.exists() and origin.get("url") != url:
        _drop_part(part)
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "cccl_lite-download/2"}
    if start:
        headers["Range"] = f"bytes={start}-"
        if origin.get("etag"):  # the same version, or the whole (new) file
            headers["If-Range"] = origin["etag"]
    try:
        # A fresh opener reads the proxy settings of the environment now,
        # not those of the first urlopen() call in this process. It follows
        # redirects (Drive-style 302/303 hops to the file's real host).
        resp = urllib.request.build_opener().open(urllib.request.Request(url, headers=headers),
                                                  timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            # Range not satisfiable: the .part holds the whole file already, or
            # more than the file (another version): then start over.
            m = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
            e.close()
            if m and int(m.group(1)) == start:
                return True
            _drop_part(part)
            return False if probe else _fetch(url, part, chunk, timeout)
        raise
    with resp:
        if start and resp.status == 206:
            cr = resp.headers.get("Content-Range", "")
            m = _CONTENT_RANGE.fullmatch(cr)
            if not m or int(m.group(1)) != start:
                raise _Incomplete(f"asked for bytes {start}- and got Content-Range {cr!r}")
            mode, total = "ab", (int(m.group(3)) if m.group(3) != "*" else None)
        elif probe:
            return False  # the server ignores Range: it cannot confirm the end
        else:
            # 200 to a Range request: the server sends the whole file, so the
            # .part restarts from zero rather than getting it appended.
            mode, start, total = "wb", 0, None
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if total is None and expected is not None:
            total = start + expected
        first = resp.read(chunk)
        if mode == "wb":
            check_payload(part.with_name(part.name[:-5]), None, head=first[:1024])
        got = len(first)
        part.parent.mkdir(parents=True, exist_ok=True)
        if mode == "wb":  # who serves this .part, recorded before its first byte
            _origin_path(part).write_text(json.dumps(
                {"url": url, "etag": resp.headers.get("ETag")}))
        with open(part, mode) as out, tqdm(total=total, initial=start, unit="B",
                                           unit_scale=True, desc=part.name[:-5],
                                           disable=None) as bar:
            buf = first
            while buf:
                out.write(buf)
                bar.update(len(buf))
                buf = resp.read(chunk)
                got += len(buf)
    if expected is not None and got < expected:
        raise _Incomplete(f"connection closed after {start + got} of {start + expected} bytes")
    return total is not None and start + got >= total


def _confirm_end(url: str, part: Path, chunk: int, timeout: float) -> None:
    """A body that came without Content-Length ends where the connection
    closed, cut short or not: ask ``url`` for the bytes past it (a few
    times, appending what comes) until the server confirms the end. Raises
    _Incomplete when it cannot (it ignores Range): the .part stays, never
    renamed to the file."""
    for _ in range(3):
        if _fetch(url, part, chunk, timeout, probe=True):
            return
    size = part.stat().st_size if part.exists() else 0
    raise _Incomplete(f"sent no Content-Length and does not confirm the end by a Range "
                      f"request, so the {size:,} bytes received may be cut short; not kept as "
                      f"the file (pass the expected size or sha256 to accept it)")


def download(urls: Sequence[str], dest, sha256: str | None = None, chunk: int = 1 << 20, *,
             timeout: float = 60.0, size: int | None = None,
             min_bytes: int | None = None) -> Path:
    """Download ``dest`` from the first mirror in ``urls`` that works; return ``dest``.

    Resumes ``dest.part`` with a Range request; refuses (deletes the .part,
    tries the next mirror) an HTML page, a file whose name's format does not
    match its bytes (:func:`check_payload`) or that is smaller than
    ``min_bytes``; checks ``size`` and ``sha256`` (hex) when given, deleting
    the .part on a mismatch; renames to ``dest`` only when complete and
    checked. An existing ``dest`` is kept (checked against ``size`` and
    ``sha256`` when given). Raises DownloadError when every mirror fails (a
    partial .part stays for a rerun) or on a checksum mismatch.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        if size is not None and dest.stat().st_size != size:
            raise DownloadError(f"{dest}: exists with {dest.stat().st_size:,} bytes, expected "
                                f"{size:,}; delete it to download again")
        if sha256 is None:
            return dest  # only complete, checked downloads ever get this name
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
            complete = _fetch(url, part, chunk, timeout)
            if not complete and size is None and sha256 is None:
                _confirm_end(url, part, chunk, timeout)
            check_payload(dest, None, head=_head(part))  # dest's name: its format
            if min_bytes is not None and part.stat().st_size < min_bytes:
                raise _NotTheFile(f"{part.stat().st_size:,} bytes, far below the "
                                  f"{min_bytes:,} expected at least")
            break
        except _NotTheFile as e:
            _drop_part(part)  # not a beginning of the file: never resume it
            errors.append(f"{url}: refused: {e}; deleted")
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError, _Incomplete) as e:
            # Network trouble only: a local error (disk full) propagates.
            why = e.reason if type(e) is urllib.error.URLError else e
            errors.append(f"{url}: {why}")
    else:
        kept = f" ({part.stat().st_size} bytes kept in {part} for a rerun)" if part.exists() else ""
        raise DownloadError(f"{dest.name}: every mirror failed: {'; '.join(errors)}{kept}")
    if size is not None and part.stat().st_size != size:
        got = part.stat().st_size
        _drop_part(part)
        raise DownloadError(f"{dest.name}: {got:,} bytes, expected {size:,} (from {url}); the "
                            f"partial file was deleted")
    if sha256 is not None:
        actual = _sha256_file(part)
        if actual != sha256.lower():
            _drop_part(part)
            raise DownloadError(f"{dest.name}: sha256 mismatch: expected {sha256.lower()}, got "
                                f"{actual} (from {url}); the partial file was deleted")
    # Not files.atomic_path: the .part is kept on purpose when a download stops
    # (a rerun resumes it, from the mirror recorded beside it), where atomic_path
    # would delete it; it gets its final name here, whole and checked.
    os.replace(part, dest)
    _origin_path(part).unlink(missing_ok=True)
    return dest


def _head(path: Path, n: int = 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


# ---- Google Drive and Kaggle -------------------------------------------------------


def _gdown():
    try:
        import gdown
    except ImportError:
        raise _SourceFailed(f"Google Drive downloads need the gdown package: {_EXTRA} "
                            f"(or pip install gdown)") from None
    return gdown


def _call(fn, **kwargs):
    """``fn(**kwargs)`` with only the keywords this version of ``fn`` accepts
    (gdown's signature grew over versions; these are all optional)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(**kwargs)


def _one_line(e: BaseException) -> str:
    return one_line(e)[:300]


def _fetch_gdrive(source: Source, staging: Path, timeout: float, quiet: bool) -> Path:
    """One Drive file into ``staging`` (gdown resumes its own partial file there);
    returns its path, named as Drive names it unless ``source.saves_as``."""
    gdown = _gdown()
    staging.mkdir(parents=True, exist_ok=True)
    output = str(staging / source.saves_as) if source.saves_as else str(staging) + os.sep
    try:
        # use_cookies=False: gdown would otherwise keep Drive's cookies under ~/.cache.
        got = _call(gdown.download, url=_DRIVE_FILE_URL.format(id=source.ref), output=output,
                    quiet=quiet, resume=True, timeout=timeout, use_cookies=False)
    except Exception as e:  # gdown's errors (quota, permissions) and requests' alike
        raise _SourceFailed(f"gdown: {_one_line(e)}") from None
    if not got or not Path(got).is_file():
        raise _SourceFailed("gdown: no file came back (a private file, or Drive's quota)")
    got = Path(got)
    if not source.saves_as and not re.fullmatch(r"[\w][\w .+-]*", got.name):
        # No usable name from the server (gdown fell back to the URL's last part):
        # the file id, with .zip when it is one.
        named = got.with_name(source.ref + (".zip" if zipfile.is_zipfile(got) else ""))
        os.replace(got, named)  # a rename inside the staging folder: no final name yet
        got = named
    return got


def _fetch_gdrive_folder(source: Source, staging: Path, timeout: float, quiet: bool) -> Path:
    """Every file of a Drive folder into ``staging`` (kept as the folder)."""
    gdown = _gdown()
    staging.mkdir(parents=True, exist_ok=True)
    try:
        got = _call(gdown.download_folder, id=source.ref, output=str(staging), quiet=quiet,
                    resume=True, timeout=timeout, use_cookies=False)
    except Exception as e:
        raise _SourceFailed(f"gdown: {_one_line(e)}") from None
    if not got:
        raise _SourceFailed("gdown: the folder gave no files (private, or Drive's quota)")
    return staging


def kaggle_token_location() -> str | None:
    """Where the Kaggle client would find an API token, or None: the
    environment (KAGGLE_API_TOKEN, or KAGGLE_USERNAME + KAGGLE_KEY) or a file
    in $KAGGLE_CONFIG_DIR, ~/.kaggle or ~/.config/kaggle."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    folders = [os.environ.get("KAGGLE_CONFIG_DIR"), Path.home() / ".kaggle",
               Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"]
    for folder in filter(None, folders):
        for name in ("kaggle.json", "access_token"):
            if (Path(folder) / name).is_file():
                return str(Path(folder) / name)
    return None


_KAGGLE_HOWTO = ("Kaggle downloads need an API token: create one at "
                 "https://www.kaggle.com/settings/api, save it as ~/.kaggle/kaggle.json (or set "
                 "KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN), then rerun")


def _fetch_kaggle(source: Source, staging: Path, timeout: float, quiet: bool) -> Path:
    """The dataset's zip into ``staging`` with the kaggle client (it resumes)."""
    if kaggle_token_location() is None:
        raise _SourceFailed(_KAGGLE_HOWTO)
    try:
        # Not "import kaggle": that authenticates at import and exits without a token.
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise _SourceFailed(f"Kaggle downloads need the kaggle client: {_EXTRA} "
                            f"(or pip install kaggle)") from None
    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as e:  # the client calls exit(1) on a bad token
        raise _SourceFailed(f"kaggle: the API token was refused ({_one_line(e)}); "
                            f"{_KAGGLE_HOWTO}") from None
    staging.mkdir(parents=True, exist_ok=True)
    try:
        api.dataset_download_files(source.ref, path=str(staging), quiet=quiet, unzip=False)
    except (Exception, SystemExit) as e:
        raise _SourceFailed(f"kaggle: {_one_line(e)}") from None
    got = staging / (source.saves_as or source.ref.split("/")[-1] + ".zip")
    if not got.is_file():
        made = sorted(p.name for p in staging.iterdir())
        raise _SourceFailed(f"kaggle: expected {got.name}, the client wrote {made}")
    return got


# ---- fetch: every source of an entry, checked ----------------------------------------


def _staging_dir(dest_dir: Path, source: Source) -> Path:
    return dest_dir / _STAGING / hashlib.sha1(source.id.encode()).hexdigest()[:12]


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".part"))


def _manifest(dest_dir: Path) -> dict:
    path = dest_dir / _STAGING / _MANIFEST
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def _fetch_source(source: Source, dest_dir: Path, timeout: float, quiet: bool) -> Path:
    """Download one source under ``dest_dir`` and check it; return the final
    path (a file, or a folder for a Drive folder)."""
    staging = _staging_dir(dest_dir, source)
    if source.kind == "https":
        name = source.saves_as or source.ref.rstrip("/").rsplit("/", 1)[-1]
        try:
            return download([source.ref], dest_dir / name, timeout=timeout,
                            min_bytes=source.min_bytes)
        except DownloadError as e:
            raise _SourceFailed(_one_line(e).removeprefix(f"{name}: every mirror failed: "))
    fetcher = {"gdrive": _fetch_gdrive, "gdrive_folder": _fetch_gdrive_folder,
               "kaggle": _fetch_kaggle}[source.kind]
    got = fetcher(source, staging, timeout, quiet)
    for path in _files_under(got):
        try:
            check_payload(path, source.min_bytes if got.is_file() else None)
        except _NotTheFile as e:
            path.unlink()
            raise _SourceFailed(f"{path.name}: refused: {e}; deleted") from None
    final = dest_dir / (source.saves_as or source.ref if got.is_dir() else got.name)
    if final.exists():
        raise _SourceFailed(f"{final} exists already and was not made by this source; move "
                            f"it away or use another --dest")
    # A move, not a write: the staging folder keeps gdown's and Kaggle's partial
    # files for a rerun to resume, and ``got`` (a file or a whole Drive folder)
    # is complete and checked by now.
    os.replace(got, final)
    if got.is_relative_to(staging) and staging.exists() and not any(staging.iterdir()):
        staging.rmdir()
    return final


def fetch(key: str, dest_dir, *, entry: KnownFile | None = None, timeout: float = 60.0,
          file=None, record: bool = False, verify: bool = False, only: str | None = None,
          checksums=None, quiet: bool = False) -> list[Path]:
    """Get ``KNOWN_FILES[key]`` (or ``entry``) under ``dest_dir`` from its first
    source that works; return the paths it left there (files; a Drive folder's
    files inside its folder).

    A source whose files are there already (a finished earlier run) is not
    downloaded again: their sizes are checked against the checksum file
    (and their sha256 with ``verify``). Fresh downloads are checked in full.
    ``record``: write the sha256 and size of every file of the source that
    delivered to ``checksums`` (default :data:`CHECKSUMS`) instead of
    enforcing them. ``only``: a source kind or 1-based number to use alone.
    When no source delivers, the reasons and the manual instructions are
    printed to ``file`` (stderr) and DownloadError is raised.
    """
    entry = entry or KNOWN_FILES[key]
    dest_dir = Path(dest_dir)
    checksums_path = Path(checksums or CHECKSUMS)
    recorded = load_checksums(checksums_path)
    sources = list(enumerate(entry.sources, 1))
    if only is not None:
        sources = [(k, s) for k, s in sources if only in (s.kind, str(k))]
        if not sources:
            have = ", ".join(f"{k} {s.kind}" for k, s in enumerate(entry.sources, 1)) or "none"
            message = f"{key}: no source {only!r}; it has: {have}"
            print(f"error: {message}", file=file or sys.stderr)
            raise DownloadError(message)
    errors = []
    for k, source in sources:
        done = _manifest(dest_dir).get(source.id)
        try:
            if done and all((dest_dir / p).exists() for p in done["files"]):
                root, fresh = dest_dir / done["root"], False
                paths = [dest_dir / p for p in done["files"]]
            else:
                if not quiet:
                    print(f"{key}: source {k} of {len(entry.sources)}, {source.kind} "
                          f"{source.ref} ({source.cited})", file=file or sys.stderr)
                dest_dir.mkdir(parents=True, exist_ok=True)
                final = _fetch_source(source, dest_dir, timeout, quiet)
                root = final if final.is_dir() else final.parent
                paths, fresh = _files_under(final), True
            if not record:
                _verify_recorded(source, root, paths, recorded, full=fresh or verify)
        except (_SourceFailed, _NotTheFile) as e:
            errors.append(f"{k}. {source.kind} {source.ref}: {e}")
            continue
        manifest = _manifest(dest_dir)
        manifest[source.id] = {"root": root.relative_to(dest_dir).as_posix(),
                               "files": [p.relative_to(dest_dir).as_posix() for p in paths]}
        _write_json_atomic(dest_dir / _STAGING / _MANIFEST, manifest)
        if record:
            _record(source, root, paths, checksums_path, file)
        elif source.id not in recorded:
            print(f"note: {key}: no sha256 recorded for {source.kind} {source.ref} yet; "
                  f"checked only that it is no web page and has its format. Record them "
                  f"once with --record", file=file or sys.stderr)
        return paths
    reason = " | ".join(errors) or "no source is known"
    print(f"every source of {key} failed:\n" + "\n".join(f"  {e}" for e in errors),
          file=file or sys.stderr)
    print(manual_instructions(key, entry, dest_dir), file=file or sys.stderr)
    raise DownloadError(f"{key}: every source failed: {reason}")


def _record(source: Source, root: Path, paths: list[Path], checksums_path: Path, file) -> None:
    data = load_checksums(checksums_path)
    files = {p.relative_to(root).as_posix(): {"sha256": _sha256_file(p),
                                               "size": p.stat().st_size} for p in paths}
    data[source.id] = {"files": files, "recorded": datetime.date.today().isoformat(),
                       "cited": source.cited}
    _write_json_atomic(checksums_path, data)
    print(f"recorded sha256 and size of {len(files)} file(s) of {source.kind} {source.ref} "
          f"in {checksums_path}", file=file or sys.stderr)


def manual_instructions(key: str, entry: KnownFile, dest_dir, reason: str = "") -> str:
    """The message telling a user where to get ``entry`` by hand and where to put it."""
    names = ", ".join(entry.files[:6])
    more = f" (and {len(entry.files) - 6} more like them)" if len(entry.files) > 6 else ""
    links = "".join(f"\n  or {s.link}  ({s.cited})" for s in entry.sources)
    return (f"cannot download {key}{': ' + reason if reason else ''}\n"
            f"  what:  {entry.description}\n"
            f"  get it by hand from {entry.page}{links}\n"
            f"  files: {names}{more}\n"
            f"  put them under {Path(dest_dir)}/ (same names); then {entry.then}")


# ---- from an archive or a folder to SCAN's layout -------------------------------------


def _members(path: Path) -> Iterable[tuple[str, object]]:
    """(path, opener) of every file in a zip, a folder, or zips in a folder; the
    path starts with the zip's or folder's own name (it may name the dataset)."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and zipfile.is_zipfile(p):
                yield from ((f"{path.name}/{p.parent.relative_to(path).as_posix()}/{name}",
                             opener) for name, opener in _members(p))
            elif p.is_file():
                yield f"{path.name}/{p.relative_to(path).as_posix()}", (lambda p=p: open(p, "rb"))
    elif zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        for info in archive.infolist():
            if not info.is_dir():
                yield f"{path.name}/{info.filename}", (lambda i=info: archive.open(i))
    else:
        yield path.name, (lambda: open(path, "rb"))


def extract_scan_files(sources: Sequence, dataset: str, out_dir, kinds=("features",)) -> list[Path]:
    """Copy the SCAN-layout files of ``dataset`` ("f30k" or "coco") out of
    ``sources`` (zips, folders, files) into ``out_dir``; return their paths.

    A file is taken when its name is ``{split}_{name}`` for a split of the
    dataset and a name of ``kinds`` (:data:`SCAN_NAMES`: "features",
    "camera", "gsmn"), and its path names the dataset (a folder such as
    ``f30k_precomp``, ``f30k/precomp`` or ``data/flickr30k``): archives hold
    both datasets under the same file names. Each file is written to a temp
    name and renamed (nothing half-written under a final name); a file
    already in ``out_dir`` with the same size is kept. Raises DownloadError
    naming the sources when nothing matched.
    """
    if dataset not in DATASET_TAGS:
        raise DownloadError(f"dataset must be one of {', '.join(DATASET_TAGS)}, got {dataset!r}")
    wanted = {f"{s}_{n}" for s in SCAN_SPLITS[dataset] for k in kinds for n in SCAN_NAMES[k]}
    out_dir = Path(out_dir)
    found: dict[str, tuple[str, object]] = {}
    seen = []
    for src in map(Path, sources):
        for rel, opener in _members(src):
            seen.append(rel)
            parts = rel.lower().split("/")
            if parts[-1] in wanted and any(tag in part for part in parts[:-1]
                                           for tag in DATASET_TAGS[dataset]):
                found.setdefault(parts[-1], (rel, opener))
    if not found:
        sample = ", ".join(seen[:8]) + (" ..." if len(seen) > 8 else "")
        raise DownloadError(f"no {dataset} file of {', '.join(kinds)} in "
                            f"{', '.join(map(str, sources))} (expected names like "
                            f"{sorted(wanted)[0]} under a folder naming {dataset}; found: "
                            f"{sample or 'nothing'})")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (rel, opener) in sorted(found.items()):
        final = out_dir / name
        try:
            with atomic_path(final) as tmp:
                with opener() as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 22)
                check_payload(final, None, head=_head(tmp))
                if final.exists() and final.stat().st_size == tmp.stat().st_size:
                    tmp.unlink()  # the file there is kept: atomic_path renames nothing
        except _NotTheFile as e:
            raise DownloadError(f"{rel}: {e}") from None
        written.append(final)
    return written
