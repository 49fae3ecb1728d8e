"""Issue 29, defect 5: small hostile files never take gigabytes. A GSMN sizes
file whose pickle asks for a huge bytearray or array, a checkpoint whose config
declares a million words, a zip-bomb checkpoint record: each is refused, in one
line, before anything large is allocated (measured, not assumed). The rest of
the issue's data side is in test_reliability_data.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_reliability_data import ENV, ROOT, SHIPPED

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- 5: small hostile files never take gigabytes ------------------------------------------


def _npy_with_pickle(path: Path, shape: tuple, body: bytes) -> Path:
    """A .npy file: an object-array header announcing ``shape``, then ``body``."""
    header = {"descr": "|O", "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(body)
    return path


class _Calls:
    """Pickles to ``fn(*args)``: what a crafted file can ask the unpickler to call."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _crafted(fn, *args) -> bytes:
    import pickle

    return pickle.dumps(_Calls(fn, *args), protocol=2)


# bytearray(300_000_000): a 50-byte pickle asking for 300 MB (the issue: 1.7 GB);
# the same through numpy's array constructor; a header announcing 1e9 objects.
_BYTEARRAY = _crafted(bytearray, 300_000_000)
_NDARRAY = _crafted(np.ndarray, (300_000_000,), np.dtype("i1"))


@pytest.mark.parametrize("body, shape", [(_BYTEARRAY, (4,)), (_NDARRAY, (4,)), (b".", (10**9,))])
def test_a_tiny_gsmn_sizes_file_never_takes_hundreds_of_megabytes(tmp_path, body, shape):
    import tracemalloc

    from cccl_lite.data.precomp import InputError, load_object_npy

    path = _npy_with_pickle(tmp_path / "test_ims_size.npy", shape, body)
    assert path.stat().st_size < 300
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as e:
            load_object_npy(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB for a {path.stat().st_size}-byte file"
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def _rss_after(code: str) -> tuple[int, str]:
    """(peak resident MiB, stderr) of a child that runs ``code`` after importing torch."""
    script = ("import resource, sys, torch\n" + code +
              "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)
    return int(proc.stdout.split()[-1]), proc.stdout + proc.stderr


def test_a_checkpoint_declaring_a_million_words_is_refused_before_allocating(tmp_path):
    import torch

    ckpt = torch.load(SHIPPED, weights_only=True)
    ckpt["config"]["vocab_size"] = 1_000_000  # 1.2 GB of embedding (the issue: 6e6, 7.3 GB)
    bad = tmp_path / "vocab.pt"
    torch.save(ckpt, bad)
    load = ("from cccl_lite.engine.checkpoint import load_model\nfrom cccl_lite.errors import InputError\n"
            "try:\n    load_model(sys.argv[1] if len(sys.argv) > 1 else {p!r})\n"
            "except InputError as e:\n    print('refused:', e)\n")
    base, _ = _rss_after("pass")
    peak, out = _rss_after(load.format(p=str(bad)))
    assert "refused:" in out and "vocab_size 1000000" in out, out
    assert peak - base < 300, f"{peak - base} MiB to refuse it"


def test_a_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path):
    import zipfile

    import torch

    from cccl_lite.engine.checkpoint import load_checkpoint
    from cccl_lite.errors import InputError

    plain = tmp_path / "plain.pt"
    torch.save({"format": 1, "config": {}, "model": {"w": torch.zeros(50_000_000)}}, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert bomb.stat().st_size < plain.stat().st_size / 100  # 200 MB in well under 2 MB
    with pytest.raises(InputError, match="compressed") as e:
        load_checkpoint(bomb)
    assert str(bomb) in str(e.value)
