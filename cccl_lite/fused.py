"""Fused CPU kernels for the per-pair work of scoring (chapter 10, benchmarks/).

``csrc/fused_cpu.cpp`` holds two C++ functions, each the same arithmetic as a
PyTorch path of the package, regrouped so that a tile of pairs is finished
while its numbers are in cache:

* ``cross_gru_recur``: eq 26's per-pair recurrence, the loop of
  :meth:`cccl_lite.reason.CrossGRU.fast_recur` (per step one GEMM for a tile
  of pairs, then its gates in one pass; no step for an item's padded nodes).
* ``local_branch``: Branch 2's sim^O (eqs 17-20), the rest of
  :meth:`cccl_lite.align.LocalBranch.fast_forward` after the cosines (per
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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import warnings
from pathlib import Path

import torch

__all__ = ["kernel", "available", "usable", "ENV"]

ENV = "CCCL_LITE_FUSED"
_SOURCE = Path(__file__).parent / "csrc" / "fused_cpu.cpp"
# Compiled for the machine it runs on (-march=native): the cache is per machine.
# -fopenmp: without it at::parallel_for compiles to a serial loop.
_FLAGS = ["-O3", "-march=native", "-fopenmp"]
_state: dict = {}


def _disabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}


def _build_name() -> str:
    """The extension's name, with a fingerprint of this CPU: -march=native code
    must not be loaded on another CPU that shares the cache (a shared home)."""
    cpu = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(sorted({x for x in f if x.startswith(("model name", "flags"))}))
    except OSError:
        pass
    return "cccl_lite_fused_cpu_" + hashlib.sha1(cpu.encode()).hexdigest()[:10]


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
            from torch.utils.cpp_extension import load
            with _ninja_on_path():
                _state["module"] = load(name=_build_name(), sources=[str(_SOURCE)],
                                        extra_cflags=_FLAGS, verbose=False)
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
