"""The downloader against a local HTTP server on 127.0.0.1 (Range aware, with a
Drive-style confirm redirect and HTML pages served with status 200), Google
Drive through the real gdown pointed at that server, Kaggle through a fake
client, the checksum registry (--record, then enforced), and SCAN-layout
extraction from archives of different layouts."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import types
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

import cccl_lite.data.download as dl
from cccl_lite.data.download import DownloadError, KnownFile, Source, download, fetch

from helpers import local_server, no_proxies, send_range

ROOT = Path(__file__).resolve().parent.parent
DATA = bytes(range(256)) * 40 + b"the end"  # 10247 bytes
SHA = hashlib.sha256(DATA).hexdigest()
HTML = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
        b"<body><form id=\"download-form\" action=\"/download\"><input name=\"confirm\" "
        b"value=\"t\"></form></body></html>")


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


ZIP = zip_bytes({"data/f30k_precomp/test_caps.txt": b"a dog\n" * 5})


class Handler(BaseHTTPRequestHandler):
    """Serves server.files; honours "Range: bytes=N-" unless the path is in
    server.ignore_range; /short/* sends half the body and hangs up."""

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/uc":  # Drive: a confirm redirect for big files, or a page
            page = srv.pages.get(query.get("id"))
            if page is not None:
                return self._send(200, page, "text/html; charset=utf-8")
            self.send_response(303)
            self.send_header("Location", f"/download?id={query.get('id')}&confirm=t")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/download":
            name = srv.drive.get(query.get("id"))
            if name is None or query.get("confirm") != "t":
                return self._send(404, b"", "text/plain")
            return self._send(200, srv.files[name], "application/octet-stream",
                              {"Content-Disposition": f'attachment; filename="{name}"'})
        name = self.path.rsplit("/", 1)[-1]
        if name in srv.pages:  # an error page served with status 200
            return self._send(200, srv.pages[name], "text/html")
        if name not in srv.files:
            self.send_error(404)
            return
        sent = send_range(self, srv.files[name], honour_range=not self.path.startswith("/norange/"))
        if sent is None:  # a 416: the whole file is there already
            return
        body = sent[0]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/short/") and getattr(srv, "short", True):
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send(self, status, body, ctype, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in dict(headers).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    no_proxies(monkeypatch)


@pytest.fixture
def server():
    with local_server(Handler, files={"file.bin": DATA, "scan.zip": ZIP},
                      # names and Drive ids that get HTML
                      pages={"page.bin": HTML, "quota": HTML},
                      drive={"GOODID": "scan.zip"}) as srv:  # Drive ids that lead to a file
        yield srv


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/file.bin"


def test_full_download_with_sha(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    assert download([f"{server.base}/file.bin"], dest, sha256=SHA) == dest
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "sub" / "file.bin.part").exists()
    assert server.log == [("/file.bin", None)]
    download([f"{server.base}/file.bin"], dest, sha256=SHA)  # already there: no request
    assert len(server.log) == 1


def partial(tmp_path, data, url):
    """file.bin.part holding ``data``, as a download from ``url`` left it (a
    .part is resumed only from the URL that served it: its origin file)."""
    (tmp_path / "file.bin.part").write_bytes(data)
    dl._origin_path(tmp_path / "file.bin.part").write_text(json.dumps({"url": url}))


def test_resume_sends_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    partial(tmp_path, DATA[:1000], f"{server.base}/file.bin")
    download([f"{server.base}/file.bin"], dest, sha256=SHA)
    assert server.log == [("/file.bin", "bytes=1000-")]
    assert dest.read_bytes() == DATA


def test_complete_part_is_finished_after_416(server, tmp_path):
    dest = tmp_path / "file.bin"
    partial(tmp_path, DATA, f"{server.base}/file.bin")
    download([f"{server.base}/file.bin"], dest)
    assert server.log == [("/file.bin", f"bytes={len(DATA)}-")]
    assert dest.read_bytes() == DATA


def test_server_ignoring_range_restarts(server, tmp_path):
    dest = tmp_path / "file.bin"
    partial(tmp_path, b"x" * 500, f"{server.base}/norange/file.bin")  # appending would corrupt
    download([f"{server.base}/norange/file.bin"], dest, sha256=SHA)
    assert server.log == [("/norange/file.bin", "bytes=500-")]
    assert dest.read_bytes() == DATA


def test_sha_mismatch_leaves_nothing(server, tmp_path):
    dest = tmp_path / "file.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=f"expected {wrong}, got {SHA}"):
        download([f"{server.base}/file.bin"], dest, sha256=wrong)
    assert list(tmp_path.iterdir()) == []


def test_first_mirror_404_then_second(server, tmp_path):
    dest = tmp_path / "file.bin"
    download([f"{server.base}/missing/nothing.bin", closed_port_url(),
              f"{server.base}/mirror/file.bin"], dest, sha256=SHA)
    assert [p for p, _ in server.log] == ["/missing/nothing.bin", "/mirror/file.bin"]
    assert dest.read_bytes() == DATA


def test_dropped_connection_keeps_part_then_resumes(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="every mirror failed"):
        download([f"{server.base}/short/file.bin"], dest)
    part = tmp_path / "file.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(DATA)
    n = part.stat().st_size
    assert part.read_bytes() == DATA[:n]
    server.short = False  # the same mirror, whole again: continued where it stopped
    download([f"{server.base}/short/file.bin"], dest, sha256=SHA)
    assert server.log[-1] == ("/short/file.bin", f"bytes={n}-")
    assert dest.read_bytes() == DATA and not part.exists()


def test_ctrl_c_keeps_part(server, tmp_path, monkeypatch):
    class Interrupting(dl.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(dl, "tqdm", Interrupting)
    dest = tmp_path / "file.bin"
    with pytest.raises(KeyboardInterrupt):
        download([f"{server.base}/file.bin"], dest, chunk=1000)
    monkeypatch.undo()
    part = tmp_path / "file.bin.part"
    assert not dest.exists() and part.read_bytes() == DATA[:1000]
    download([f"{server.base}/file.bin"], dest, sha256=SHA)
    assert server.log[-1] == ("/file.bin", "bytes=1000-")
    assert dest.read_bytes() == DATA


def entry_of(*sources, files=("file.bin",)) -> KnownFile:
    return KnownFile("a test input", "https://example.org/project-page", files,
                     "run the next step", sources)


def test_every_source_fails_prints_reasons_and_manual_instructions(server, tmp_path, capsys):
    entry = entry_of(Source("https", f"{server.base}/gone/nothing.bin", "test: a 404"),
                     Source("https", closed_port_url(), "test: nothing listens"))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="every source failed"):
        fetch("test_file", dest, entry=entry, checksums=tmp_path / "sums.json")
    err = capsys.readouterr().err
    assert "cannot download test_file" in err and "https://example.org/project-page" in err
    assert "1. https" in err and "404" in err and "2. https" in err
    assert f"put them under {dest}/" in err and "file.bin" in err
    assert not (dest / "file.bin").exists()


# ---- refusing what is not the file ----------------------------------------------


def test_html_page_with_status_200_is_refused_and_the_next_mirror_used(server, tmp_path):
    dest = tmp_path / "page.bin"
    with pytest.raises(DownloadError, match="refused: the server sent an HTML page.*deleted"):
        download([f"{server.base}/page.bin"], dest)
    assert list(tmp_path.iterdir()) == []  # nothing kept, not even a .part to resume
    server.files["page.bin"] = DATA
    server.pages.pop("page.bin")
    download([f"{server.base}/x/page.bin"], dest, sha256=SHA)  # now the file itself
    assert dest.read_bytes() == DATA


def test_html_mirror_then_good_mirror(server, tmp_path):
    dest = tmp_path / "file.bin"
    server.pages["file.bin"] = HTML
    server.files["other.bin"] = DATA
    download([f"{server.base}/a/file.bin", f"{server.base}/b/other.bin"], dest, sha256=SHA)
    assert dest.read_bytes() == DATA


def test_wrong_format_and_too_small_are_refused(server, tmp_path):
    server.files["data.zip"] = DATA  # not a zip
    with pytest.raises(DownloadError, match=r"not a \.zip file"):
        download([f"{server.base}/data.zip"], tmp_path / "data.zip")
    with pytest.raises(DownloadError, match="10,247 bytes, far below the 1,000,000"):
        download([f"{server.base}/file.bin"], tmp_path / "file.bin", min_bytes=10**6)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="10,247 bytes, expected 10,248"):
        download([f"{server.base}/file.bin"], tmp_path / "file.bin", size=len(DATA) + 1)
    assert list(tmp_path.iterdir()) == []


# ---- Google Drive through gdown ---------------------------------------------------


@pytest.fixture
def drive(server, monkeypatch):
    pytest.importorskip("gdown")
    monkeypatch.setattr(dl, "_DRIVE_FILE_URL", f"{server.base}/uc?id={{id}}")
    return server


def test_drive_confirm_redirect_is_followed(drive, tmp_path):
    entry = entry_of(Source("gdrive", "GOODID", "test: Drive-style"))
    paths = fetch("t", tmp_path, entry=entry, checksums=tmp_path / "sums.json", quiet=True)
    # Drive's own name comes from drive.google.com only; here: the id, and .zip as it is one
    assert paths == [tmp_path / "GOODID.zip"]
    assert paths[0].read_bytes() == ZIP
    assert [p.split("?")[0] for p, _ in drive.log] == ["/uc", "/download"]
    assert "confirm=t" in drive.log[1][0]


def test_drive_html_page_is_refused_and_deleted(drive, tmp_path, capsys):
    entry = entry_of(Source("gdrive", "quota", "test: a quota page"))
    with pytest.raises(DownloadError, match="every source failed"):
        fetch("t", tmp_path / "d", entry=entry, checksums=tmp_path / "sums.json", quiet=True)
    err = capsys.readouterr().err
    assert "refused: the server sent an HTML page" in err and "deleted" in err
    left = [p for p in (tmp_path / "d").rglob("*") if p.is_file()]
    assert left == []


def test_missing_gdown_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown raises ImportError
    entry = entry_of(Source("gdrive", "GOODID", "test"))
    with pytest.raises(DownloadError):
        fetch("t", tmp_path, entry=entry, checksums=tmp_path / "sums.json", quiet=True)
    assert "pip install 'cccl_lite[download]'" in capsys.readouterr().err


# ---- Kaggle ----------------------------------------------------------------------


def no_kaggle_token(monkeypatch, tmp_path):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_kaggle_without_a_token_says_so(tmp_path, monkeypatch, capsys):
    no_kaggle_token(monkeypatch, tmp_path)
    assert dl.kaggle_token_location() is None
    entry = entry_of(Source("kaggle", "someone/some-data", "test"))
    with pytest.raises(DownloadError):
        fetch("t", tmp_path / "d", entry=entry, checksums=tmp_path / "sums.json", quiet=True)
    err = capsys.readouterr().err
    assert "Kaggle downloads need an API token" in err
    assert "https://www.kaggle.com/settings/api" in err and "kaggle.json" in err


def test_kaggle_client_download_lands_checked(tmp_path, monkeypatch):
    no_kaggle_token(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    calls = []

    class FakeApi:  # the two calls the downloader makes, as kaggle's KaggleApi has them
        def authenticate(self):
            calls.append("auth")

        def dataset_download_files(self, dataset, path=None, force=False, quiet=True,
                                   unzip=False):
            calls.append((dataset, unzip))
            Path(path, dataset.split("/")[1] + ".zip").write_bytes(ZIP)

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FakeApi
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    entry = entry_of(Source("kaggle", "someone/scan-features", "test"))
    paths = fetch("t", tmp_path / "d", entry=entry, checksums=tmp_path / "sums.json", quiet=True)
    assert paths == [tmp_path / "d" / "scan-features.zip"]
    assert calls == ["auth", ("someone/scan-features", False)]
    assert paths[0].read_bytes() == ZIP


# ---- the checksum registry: recorded once, enforced afterwards -------------------------


def test_record_then_enforce(server, tmp_path, capsys):
    sums = tmp_path / "sums.json"
    entry = entry_of(Source("https", f"{server.base}/file.bin", "test"))
    fetch("t", tmp_path / "a", entry=entry, checksums=sums, quiet=True)
    assert "no sha256 recorded" in capsys.readouterr().err  # not yet: said, not hidden
    fetch("t", tmp_path / "b", entry=entry, checksums=sums, record=True, quiet=True)
    rec = json.loads(sums.read_text())[f"https:{server.base}/file.bin"]
    assert rec["files"] == {"file.bin": {"sha256": SHA, "size": len(DATA)}}  # hashlib, here
    assert fetch("t", tmp_path / "c", entry=entry, checksums=sums, quiet=True)
    server.files["file.bin"] = DATA[:-1] + b"!"  # the host now serves other bytes
    with pytest.raises(DownloadError, match="every source failed"):
        fetch("t", tmp_path / "d", entry=entry, checksums=sums, quiet=True)
    assert "the registry recorded" in capsys.readouterr().err
    assert not (tmp_path / "d" / "file.bin").exists()


def test_only_one_source_and_an_unknown_one(server, tmp_path, capsys):
    entry = entry_of(Source("https", closed_port_url(), "test"),
                     Source("https", f"{server.base}/file.bin", "test"))
    assert fetch("t", tmp_path, entry=entry, only="2", checksums=tmp_path / "s.json",
                 quiet=True) == [tmp_path / "file.bin"]
    with pytest.raises(DownloadError, match="no source 'kaggle'"):
        fetch("t", tmp_path, entry=entry, only="kaggle", checksums=tmp_path / "s.json")


# ---- SCAN's layout out of any archive -------------------------------------------------


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("prefix", ["data/f30k_precomp/", "f30k/precomp/", "data/f30k/precomp/"])
def test_extract_finds_the_dataset_in_any_layout(tmp_path, prefix):
    ims = npy_bytes(np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({prefix + "test_ims.npy": ims,
                                   prefix + "test_caps.txt": b"x\n" * 5,
                                   "data/coco_precomp/test_ims.npy": b"not this one",
                                   prefix + "vocab.json": b"{}"}))
    out = tmp_path / "f30k_precomp"
    got = dl.extract_scan_files([archive], "f30k", out)
    assert sorted(p.name for p in got) == ["test_caps.txt", "test_ims.npy"]
    assert np.load(out / "test_ims.npy").tolist() == [[[0, 1, 2], [3, 4, 5]]]
    assert sorted(p.name for p in out.iterdir()) == ["test_caps.txt", "test_ims.npy"]


def test_extract_gsmn_boxes_from_a_folder_and_says_when_nothing_fits(tmp_path):
    folder = tmp_path / "cmcan_f30k_precomp"
    folder.mkdir()
    (folder / "dev_ims_bbx.npy").write_bytes(npy_bytes(np.zeros((1, 36, 4))))
    (folder / "dev_precaps_stan.txt").write_text("x\n")
    got = dl.extract_scan_files([folder], "f30k", tmp_path / "out", ("gsmn",))
    assert [p.name for p in got] == ["dev_ims_bbx.npy"]
    with pytest.raises(DownloadError, match="no coco file of gsmn.*found: cmcan_f30k_precomp/dev_ims_bbx.npy"):
        dl.extract_scan_files([folder], "coco", tmp_path / "out2", ("gsmn",))
    (folder / "test_ims_bbx.npy").write_bytes(HTML)
    with pytest.raises(DownloadError, match="HTML page"):
        dl.extract_scan_files([folder], "f30k", tmp_path / "out3", ("gsmn",))
    assert not (tmp_path / "out3" / "test_ims_bbx.npy").exists()


# ---- the registry and the command line -----------------------------------------------


def test_registry_cites_where_every_live_source_was_found():
    pages = " ".join(e.page for e in dl.KNOWN_FILES.values())
    for publisher in ("kuanghuei/SCAN", "LgQu/CAMERA", "CrossmodalGroup/GSMN",
                      "cs.stanford.edu/people/karpathy/deepimagesent",
                      "peteanderson80/bottom-up-attention"):
        assert publisher in pages
    refs = {s.ref: s for e in dl.KNOWN_FILES.values() for s in e.sources}
    # The live sources issue 13 names, each with the place it was found.
    assert "woodfrog/vse_infty issue 8" in refs["1iY6S-w-vG-4T_v9OvlFkZ1GDPzX5YVtl"].cited
    assert refs["kuanghueilee/scan-features"].kind == "kaggle"
    assert "iudata" in " ".join(refs)
    assert "CMCAN" in refs["1kuLiCLb5luJdorJuKMVhT7BMVhJSybT-"].cited
    assert all(s.cited for s in refs.values())
    # The dead host is nowhere a source.
    assert not any("scanproject" in s.ref for s in refs.values())
    scan = [s.kind for s in dl.KNOWN_FILES["scan_precomp"].sources]
    assert {"https", "gdrive", "kaggle"} <= set(scan)


def test_cli_lists_live_sources_and_refuses_an_unknown_source(tmp_path):
    listing = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "download.py"),
                              "--list"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0
    out = listing.stdout
    for needle in ("scan_precomp", "1iY6S-w-vG-4T_v9OvlFkZ1GDPzX5YVtl",
                   "kaggle.com/datasets/kuanghueilee/scan-features", "gsmn_boxes_f30k",
                   "1kuLiCLb5luJdorJuKMVhT7BMVhJSybT-", "camera_boxes", "sha256 not recorded"):
        assert needle in out
    res = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "download.py"),
                          "scan_precomp", "--dest", str(tmp_path / "d"), "--source", "9"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "no source '9'" in res.stderr


def test_https_follows_a_drive_style_confirm_redirect(server, tmp_path):
    dest = tmp_path / "scan.zip"
    download([f"{server.base}/uc?id=GOODID"], dest)
    assert dest.read_bytes() == ZIP
    assert [p.split("?")[0] for p, _ in server.log] == ["/uc", "/download"]


def test_cli_downloads_then_extracts_the_dataset(server, tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("download_script",
                                                  ROOT / "data_scripts" / "download.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    entry = dl.KNOWN_FILES["scan_precomp"]
    monkeypatch.setitem(dl.KNOWN_FILES, "scan_precomp", KnownFile(
        entry.description, entry.page, entry.files, entry.then,
        (Source("https", f"{server.base}/scan.zip", "test"),)))
    dest = tmp_path / "work"
    assert script.main(["scan_precomp", "--dest", str(dest), "--extract", "f30k"]) == 0
    assert (dest / "f30k_precomp" / "test_caps.txt").read_bytes() == b"a dog\n" * 5
    assert "1 f30k file(s)" in capsys.readouterr().out
    assert script.main(["scan_precomp", "--dest", str(dest), "--extract", "coco"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("download.py: error: no coco file") and len(err[-1]) < 400
