"""Issue 29, downloads: a body cut short by a server that sends no
Content-Length is never kept as the file nor pinned by --record (#10), and a
partial download is continued only from the mirror that served it (#11).
The mirrors are a local HTTP server whose two files differ, so a splice of
the two is told apart from either by its bytes."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from http.server import BaseHTTPRequestHandler

import pytest

from helpers import local_server, no_proxies, send_range


# ---- #10 a download cut short with no Content-Length, #11 a resume from another mirror --

A_BYTES = bytes(range(256)) * 40          # mirror A's file.bin (10240 bytes)
B_BYTES = bytes(range(255, -1, -1)) * 40  # mirror B's: another file of the same size


class _Mirrors(BaseHTTPRequestHandler):
    """/{a,b}/[MODE/]file.bin: mirror A's or B's bytes. MODE: "short" sends half
    of a whole-file response and hangs up; "nolen" sends no Content-Length
    (the end of the body is where the connection closes); "norange" ignores
    Range. Modes combine with "-" ("nolen-short-norange")."""

    def do_GET(self):
        self.server.log.append((self.path, self.headers.get("Range")))
        parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
        data = {"a": A_BYTES, "b": B_BYTES}[parts[0]]
        mode = set(parts[1].split("-")) if len(parts) == 3 else set()
        sent = send_range(self, data, honour_range="norange" not in mode)
        if sent is None:  # a 416: the whole file is there already
            return
        body, whole = sent
        if "nolen" not in mode:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if "short" in mode and whole else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def mirrors(monkeypatch):
    no_proxies(monkeypatch)
    with local_server(_Mirrors) as srv:
        yield srv


def test_a_download_cut_short_without_content_length_is_not_kept(mirrors, tmp_path):
    from cccl_lite.data.download import DownloadError, download

    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError):
        download([f"{mirrors.base}/a/nolen-short-norange/file.bin"], dest)
    assert not dest.exists()


def test_a_download_without_content_length_is_completed_and_confirmed(mirrors, tmp_path):
    from cccl_lite.data.download import download

    # Cut short: the Range request that checks the end gets the rest.
    download([f"{mirrors.base}/a/nolen-short/file.bin"], tmp_path / "file.bin")
    assert (tmp_path / "file.bin").read_bytes() == A_BYTES
    # Whole: the server confirms the end (416 for bytes past it).
    download([f"{mirrors.base}/a/nolen/file.bin"], tmp_path / "again" / "file.bin")
    assert (tmp_path / "again" / "file.bin").read_bytes() == A_BYTES


def test_record_never_pins_a_download_cut_short(mirrors, tmp_path):
    from cccl_lite.data.download import DownloadError, KnownFile, Source, fetch

    sums = tmp_path / "sums.json"
    source = Source("https", f"{mirrors.base}/a/nolen-short-norange/file.bin", "test")
    entry = KnownFile("a test file", "https://example.org", ("file.bin",), "", (source,))
    with pytest.raises(DownloadError):
        fetch("t", tmp_path / "d", entry=entry, checksums=sums, record=True, quiet=True,
              file=open(os.devnull, "w"))
    assert not sums.exists() or source.id not in json.loads(sums.read_text())
    assert not (tmp_path / "d" / "file.bin").exists()


def test_a_partial_download_is_resumed_only_from_its_own_mirror(mirrors, tmp_path):
    from cccl_lite.data.download import DownloadError, download

    dest = tmp_path / "file.bin"
    # In one call: A hangs up half way, B is tried next.
    download([f"{mirrors.base}/a/short/file.bin", f"{mirrors.base}/b/file.bin"], dest)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(B_BYTES).digest()
    # Across two calls: A's partial file, then a rerun with B only.
    dest2 = tmp_path / "two" / "file.bin"
    with pytest.raises(DownloadError):
        download([f"{mirrors.base}/a/short/file.bin"], dest2)
    assert (tmp_path / "two" / "file.bin.part").exists()
    mirrors.log.clear()
    download([f"{mirrors.base}/b/file.bin"], dest2)
    assert dest2.read_bytes() == B_BYTES
    assert mirrors.log[0] == ("/b/file.bin", None)  # asked B for the whole file
