"""Reading a .npy file of pickled objects without running code or taking gigabytes.

GSMN stored its image sizes as a pickled numpy object array (one dict per
image); ``np.load(allow_pickle=True)`` would run whatever code such a file
names. :func:`load_object_npy` unpickles it with a restricted unpickler that
only rebuilds numpy arrays and scalars, numbers, strings and plain
containers, and that refuses, from the header and from each constructor's
arguments, any allocation the file's size cannot describe (issue 29, 5: a
169-byte file asked ``bytearray`` for 1.7 GB). Used by
:mod:`cccl_lite.data.precomp`; bad input raises :class:`InputError`.
"""

from __future__ import annotations

import builtins
import codecs
import pickle
from pathlib import Path

import numpy as np

from cccl_lite.errors import InputError

__all__ = ["load_object_npy"]


def _safe_global(module: str, name: str):
    """The few callables that a pickled numpy object array of plain values
    names, and nothing more: numpy's array and scalar reconstructors (numpy 1
    and 2 name their module differently), a few builtin containers, and the
    byte-string decoder of protocol-2 pickles. None for anything else."""
    if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        if name == "_reconstruct":
            return _np_reconstruct()
        if name == "scalar":
            return _np_scalar()
    if module in ("builtins", "__builtin__") and name in ("complex", "set", "frozenset",
                                                           "bytearray"):
        return getattr(builtins, name)
    if module in ("_codecs", "codecs") and name == "encode":
        return codecs.encode  # str -> bytes, how protocol 2 stores bytes
    return None


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _np_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


def _bounded(fn, limit: int):
    """``fn`` (bytearray, numpy's array constructors) refusing to allocate more
    than ``limit`` bytes: a 169-byte file could otherwise ask for gigabytes
    (``bytearray(1_700_000_000)``, issue 29, 5)."""
    def call(*args, **kw):
        if fn is bytearray:
            size = args[0] if args and isinstance(args[0], int) else 0
        else:  # ndarray(shape, dtype, ...) and _reconstruct(cls, shape, dtype)
            shape, dtype = (args[0], args[1] if len(args) > 1 else float) if fn is np.ndarray \
                else (args[1] if len(args) > 1 else 0, args[2] if len(args) > 2 else "b")
            try:
                size = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
            except (TypeError, ValueError):
                size = 0  # let the call itself refuse it
        if size > limit:
            raise pickle.UnpicklingError(f"it asks for {size:,} bytes, more than a file of this "
                                         f"size can describe")
        if fn is not bytearray and fn is not np.ndarray and args:
            # _reconstruct's first argument is the class: ndarray, not its guard.
            args = (getattr(args[0], "wrapped", args[0]),) + args[1:]
        return fn(*args, **kw)
    call.wrapped = fn
    return call


def _safe_unpickler(fileobj, limit: int = 2**40):
    class SafeUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            found = _safe_global(module, name)
            if found is None:
                raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a numpy "
                                             f"array, a number or a plain container")
            if found is bytearray or found is np.ndarray or name == "_reconstruct":
                return _bounded(found, limit)
            return found

    # latin1: Python 2 pickles (GSMN's) hold byte strings and numpy buffers.
    return SafeUnpickler(fileobj, encoding="latin1")


def load_object_npy(path) -> np.ndarray:
    """A .npy file as np.load(allow_pickle=True) would read it, without
    running code: an object array's pickle may only rebuild numpy arrays and
    scalars, numbers, strings, dicts, lists, tuples and sets. Anything else
    raises :class:`InputError`, which names a conversion to a plain numeric
    array (run only where the file's source is trusted). A plain (not
    object) array is read as np.load reads it."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # 3.0 (UTF-8 header): no public reader
                shape, _, dtype = np.lib.format._read_array_header(f, version)
        except (ValueError, EOFError, AttributeError) as e:
            raise InputError(f"{path}: not a .npy file ({e})") from None
        # Sizes from the header, before anything is allocated (issue 29, 5).
        size, count = path.stat().st_size, int(np.prod(shape, dtype=np.float64))
        if not dtype.hasobject:
            if count * dtype.itemsize > size - f.tell():
                raise InputError(f"{path}: its header announces {tuple(shape)} {dtype} "
                                 f"({count * dtype.itemsize:,} bytes) but the file holds "
                                 f"{size - f.tell():,}: truncated; re-download it")
            return np.load(path)
        if count > size:  # every pickled object takes at least a byte
            raise InputError(f"{path}: its header announces {count:,} objects in a file of "
                             f"{size:,} bytes: truncated or crafted; re-download it")
        try:
            arr = _safe_unpickler(f, limit=4 * size + 2**20).load()
        except pickle.UnpicklingError as e:
            raise InputError(
                f"{path}: refusing to unpickle it: {e}. A .npy of pickled objects can run "
                f"code; convert it where you trust its source, e.g. python -c \"import numpy "
                f"as np; a = np.load('{path.name}', allow_pickle=True); np.save('{path.name}', "
                f"np.array([[d['image_w'], d['image_h']] if isinstance(d, dict) else d for d "
                f"in a], dtype=np.float32))\" (then rows of width, height are read as is)"
            ) from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise InputError(f"{path}: not a complete .npy object array ({type(e).__name__}: "
                             f"{e}); re-download it") from None
    if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
        raise InputError(f"{path}: the pickled data is not the {tuple(shape)} array its "
                         f"header announces")
    return arr
