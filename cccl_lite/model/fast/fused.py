"""Fused CPU kernels for the per-pair work of scoring (chapter 10, benchmarks/).

``csrc/fused_cpu.cpp`` holds two C++ functions, each the same arithmetic as a
regrouped PyTorch path of :mod:`cccl_lite.model.fast`, regrouped further so that a
tile of pairs is finished while its numbers are in cache:

* ``cross_gru_recur``: eq 26's per-pair recurrence, the loop of
  :func:`cccl_lite.model.fast.relation_recur` (per step one GEMM for a tile
  of pairs, then its gates in one pass; no step for an item's padded nodes).
* ``local_branch``: Branch 2's sim^O (eqs 17-20), the rest of
  :func:`cccl_lite.model.fast.local_similarity` after the cosines (per
  pair the attention weights and (u - x)^2 rows, per tile one GEMM with W,
  then the masked mean of the unit vectors).

Both are used only where their PyTorch path would run on the CPU without
autograd, in float32 or float64: scoring and evaluation, not training (they
have no backward). float64 gives the PyTorch path's numbers to rounding
(the tests compare them to 1e-12); float32 uses a polynomial exp with
relative error about 1e-7.

They are compiled on first use with ``torch.utils.cpp_extension.load``
(about 30 s with the system's C++ compiler, then cached under
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). Where
they cannot be built (no compiler, e.g. on Windows without MSVC), one warning
says so and scoring runs the PyTorch paths: the same scores, slower.
``CCCL_LITE_FUSED=0`` turns them off.

The build cache (issue 14):

* Its folder is named by a key of everything the binary depends on: the
  source's hash, the compiler flags, torch's version and location, Python's
  ABI and the CPU (``-march=native``). Two checkouts or environments on one
  machine then never rebuild each other's kernels; the source is copied into
  that folder, so the build does not depend on where the checkout lies, and
  torch's folders are named by their resolved paths in the build command, so
  it does not depend on the path that reached the environment either.
* torch's own build lock is a file that a killed build leaves behind, and
  every later ``load`` then waits for it forever. So a build first takes our
  lock, ``cccl_lite.lock`` in the same folder: an ``flock``, which the kernel
  drops when its process dies, holding the builder's PID, its file touched
  every second while the build runs. Holding it, a torch lock file can only
  be a killed build's: it is removed (one warning) and the build runs. A
  build that another process runs is waited for while its heartbeat goes on;
  a lock whose heartbeat stopped for :data:`_ABANDONED_S` seconds (a stopped
  process), or a wait longer than :data:`_MAX_WAIT_S`, makes this process run
  the PyTorch code instead, with one warning.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import platform
import shutil
import sys
import sysconfig
import threading
import time
import warnings
from pathlib import Path

import torch

from cccl_lite.files import write_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: torch's lock alone, as before
    fcntl = None

__all__ = ["kernel", "available", "usable", "ENV"]

ENV = "CCCL_LITE_FUSED"
_SOURCE = Path(__file__).parent / "csrc" / "fused_cpu.cpp"
# Compiled for the machine it runs on (-march=native): the cache is per machine.
# -fopenmp: without it at::parallel_for compiles to a serial loop.
_FLAGS = ["-O3", "-march=native", "-fopenmp"]
_state: dict = {}
_LOCK_NAME = "cccl_lite.lock"
_HEARTBEAT_S = 1.0  # how often a builder touches its lock file
_ABANDONED_S = 10.0  # a lock untouched this long belongs to a stopped process
_MAX_WAIT_S = 600.0  # the longest wait for another process's build


class _Unavailable(Exception):
    """The kernels cannot be had in this process; the message says why."""


def _disabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}


def _cpu_fingerprint() -> str:
    # -march=native code must not be loaded on another CPU that shares the
    # cache (a shared home folder).
    cpu = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(sorted({x for x in f if x.startswith(("model name", "flags"))}))
    except OSError:
        pass
    return cpu


def _build_name() -> str:
    """The extension's name: ``cccl_lite_fused_cpu_`` and a hash of what the
    binary depends on (the source's bytes, the flags, torch's version and
    folder, Python's ABI, the compiler asked for, the CPU), so that a cached
    build is reused exactly when it fits, whichever checkout asks."""
    parts = [hashlib.sha256(_SOURCE.read_bytes()).hexdigest(), " ".join(_FLAGS),
             torch.__version__, str(Path(torch.__file__).resolve().parent),
             sysconfig.get_config_var("SOABI") or sys.version, os.environ.get("CXX", ""),
             _cpu_fingerprint()]
    return "cccl_lite_fused_cpu_" + hashlib.sha1("\0".join(parts).encode()).hexdigest()[:12]


def _build_dir(name: str) -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name


def _lock_holder(path: Path) -> str:
    try:
        pid = path.read_text().split()[0]
        return f"process {int(pid)}"
    except (OSError, ValueError, IndexError):
        return "another process"


@contextlib.contextmanager
def _build_lock(folder: Path):
    """Own ``folder`` for a build (see the module docstring); raises
    :class:`_Unavailable` when another process's lock is abandoned or the
    wait is too long. On the way in, a torch lock file left by a killed
    build is removed (one warning)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = folder / _LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        last_beat = (os.fstat(fd).st_mtime, time.monotonic())
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            mtime, now = os.fstat(fd).st_mtime, time.monotonic()
            if mtime != last_beat[0]:
                last_beat = (mtime, now)
            if now - last_beat[1] > _ABANDONED_S:
                raise _Unavailable(f"{path} is held by {_lock_holder(path)}, which has not "
                                   f"touched it for {now - last_beat[1]:.0f} s (stopped?)")
            if now - start > _MAX_WAIT_S:
                raise _Unavailable(f"{_lock_holder(path)} has been building them for more "
                                   f"than {_MAX_WAIT_S:.0f} s ({path})")
            time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        stale = folder / "lock"  # torch's FileBaton: nobody else can be building
        if stale.exists():
            stale.unlink()
            warnings.warn(f"cccl_lite: removed {stale}, a build lock left by an interrupted "
                          f"build of the fused CPU kernels; building them again.",
                          RuntimeWarning, stacklevel=5)
        done = threading.Event()

        def beat():
            while not done.wait(_HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(path)

        thread = threading.Thread(target=beat, name="cccl_lite-build-lock", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
    finally:
        os.close(fd)  # drops the flock; the file stays (see RunLock for why not here)


def _copy_source(folder: Path) -> Path:
    """The source inside the build folder (rewritten only when it differs),
    so that the build does not depend on the checkout's path."""
    target = folder / _SOURCE.name
    data = _SOURCE.read_bytes()
    if not target.exists() or target.read_bytes() != data:
        write_atomic(target, lambda f: f.write(data))
    return target


def _load():
    from torch.utils.cpp_extension import load

    name = _build_name()
    folder = _build_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    with _build_lock(folder):
        source = _copy_source(folder)
        with _ninja_on_path(), _resolved_torch_paths():
            return load(name=name, sources=[str(source)], extra_cflags=_FLAGS,
                        build_directory=str(folder), verbose=False)


@contextlib.contextmanager
def _resolved_torch_paths():
    """torch writes its include and library folders into the build command as
    Python reached them (``torch.__file__``). The same environment reached
    through two paths (two symlinks) then gave one cache folder two commands,
    and ninja rebuilt the kernels at every switch (issue 29 #4: 2 s -> 33-38 s
    a command). For the build, torch's folder is its resolved path, so the
    command is the same whichever path reached it."""
    from torch.utils import cpp_extension as ext

    names = ("_TORCH_PATH", "TORCH_LIB_PATH")
    saved = {n: getattr(ext, n) for n in names if hasattr(ext, n)}
    for n, value in saved.items():
        setattr(ext, n, os.path.realpath(value))
    try:
        yield
    finally:
        for n, value in saved.items():
            setattr(ext, n, value)


@contextlib.contextmanager
def _ninja_on_path():
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` package (a
    dependency) puts it in the environment's bin folder, which is not on PATH
    when Python is run as ``.venv/bin/python``: add it for the build."""
    path = os.environ.get("PATH", "")
    try:
        import ninja
        missing = shutil.which("ninja") is None
    except ImportError:
        missing = False
    if missing:
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    try:
        yield
    finally:
        if missing:
            os.environ["PATH"] = path


def kernel():
    """The compiled extension module (built on the first call), or None: turned
    off by ``CCCL_LITE_FUSED=0``, or it could not be built (one warning)."""
    if _disabled():
        return None
    if "module" not in _state:
        try:
            _state["module"] = _load()
        except _Unavailable as e:
            _state["module"] = None
            warnings.warn(f"cccl_lite: the fused CPU kernels are not available to this "
                          f"process: {e}; scoring runs the PyTorch code instead (same "
                          f"scores, slower). Set {ENV}=0 to silence this.",
                          RuntimeWarning, stacklevel=2)
        except Exception as e:  # no compiler, no headers, a failed build: all the same to us
            _state["module"] = None
            lines = str(e).strip().splitlines() or [type(e).__name__]
            first = next((x.strip() for x in lines if "error" in x.lower() and ":" in x
                          and not x.startswith("Error building")), lines[0])[:300]
            warnings.warn(
                f"cccl_lite: could not build the fused CPU kernels of {_SOURCE.name} ({first}); "
                f"scoring runs the PyTorch code instead (same scores, slower). They need a "
                f"C++ compiler (g++ or clang++); set {ENV}=0 to silence this.",
                RuntimeWarning, stacklevel=2)
    return _state["module"]


def available() -> bool:
    """True when the fused kernels are on and built (builds them if needed)."""
    return kernel() is not None


def _cpu_autocast_enabled() -> bool:
    """torch.is_autocast_enabled("cpu") (torch >= 2.4), or its older spelling."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


def usable(*tensors: torch.Tensor) -> bool:
    """Whether a fast path may hand these tensors to a kernel: CPU, one dtype,
    float32 or float64, no autograd needed (the kernels have no backward), no
    CPU autocast on, and the kernels on and built.

    Under autocast the kernels step aside: their inner matrix products would
    come back in bf16 and meet float32 state ("expected scalar type Float but
    found BFloat16"); the PyTorch paths handle autocast themselves.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if _cpu_autocast_enabled():
        return False
    if not all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
               and t.dtype == tensors[0].dtype for t in tensors):
        return False
    return kernel() is not None
