"""download() and fetch() against a local HTTP server on 127.0.0.1 (Range aware)."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import cccl_lite.data.download as dl
from cccl_lite.data.download import DownloadError, KnownFile, Remote, download, fetch

ROOT = Path(__file__).resolve().parent.parent
DATA = bytes(range(256)) * 40 + b"the end"  # 10247 bytes
SHA = hashlib.sha256(DATA).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves server.files; honours "Range: bytes=N-" unless the path is in
    server.ignore_range; /short/* sends half the body and hangs up."""

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        name = self.path.rsplit("/", 1)[-1]
        if name not in srv.files:
            self.send_error(404)
            return
        data = srv.files[name]
        rng = self.headers.get("Range")
        if rng and not self.path.startswith("/norange/"):
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/short/"):
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # A proxy from the environment must not see requests meant for 127.0.0.1.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files = {"file.bin": DATA}
    srv.log = []
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


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


def test_resume_sends_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(DATA[:1000])
    download([f"{server.base}/file.bin"], dest, sha256=SHA)
    assert server.log == [("/file.bin", "bytes=1000-")]
    assert dest.read_bytes() == DATA


def test_complete_part_is_finished_after_416(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(DATA)
    download([f"{server.base}/file.bin"], dest)
    assert server.log == [("/file.bin", f"bytes={len(DATA)}-")]
    assert dest.read_bytes() == DATA


def test_server_ignoring_range_restarts(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * 500)  # appending would corrupt
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
    download([f"{server.base}/file.bin"], dest, sha256=SHA)
    assert server.log[-1] == ("/file.bin", f"bytes={n}-")
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


def test_all_mirrors_fail_prints_manual_instructions(server, tmp_path, capsys):
    entry = KnownFile("a test file", "https://example.org/project-page",
                      (Remote("file.bin", (f"{server.base}/gone/nothing.bin",
                                           closed_port_url())),),
                      "run the next step")
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="every mirror failed"):
        fetch("test_file", dest, entry=entry)
    err = capsys.readouterr().err
    assert "cannot download test_file" in err
    assert "https://example.org/project-page" in err
    assert f"put them under {dest}/" in err and "file.bin" in err
    assert not dest.exists() or list(dest.iterdir()) == []


def test_registry_names_publishers_and_cli_says_where_to_get_it(tmp_path):
    pages = " ".join(e.page for e in dl.KNOWN_FILES.values())
    for publisher in ("kuanghuei/SCAN", "LgQu/CAMERA", "CrossmodalGroup/GSMN",
                      "cs.stanford.edu/people/karpathy/deepimagesent",
                      "peteanderson80/bottom-up-attention"):
        assert publisher in pages
    for e in dl.KNOWN_FILES.values():
        assert e.files and all(r.sha256 is None for r in e.files)
    res = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "download.py"),
                          "gsmn_boxes", "--dest", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "CrossmodalGroup/GSMN" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "d").exists()
    listing = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "download.py"),
                              "--list"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "karpathy_splits" in listing.stdout
