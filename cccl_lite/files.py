"""How every command writes its results: one rule for outputs, temp files, locks.

The rules (issue 14), shared by ``train``, ``evaluate``, ``ablate`` and the
data scripts so that each follows them the same way:

* **Never replace an existing result without ``--overwrite``**, and write
  results where ``--out`` (or ``--results``) says, nowhere else:
  :func:`check_output_file` refuses an existing file, a folder given where a
  file is expected, and a folder that cannot be made or written, before any
  work is done, with one line naming the path.
* **Nothing half-written under a final name**: writers write
  ``.NAME.tmp-PID`` in the same folder and rename it over ``NAME`` once
  complete, all through :func:`atomic_path` (or :func:`write_atomic`, for
  a writer given an open file). A writer killed with ``kill -9`` cannot
  delete its temp file, so the next writer of the same ``NAME`` removes the
  temp files of processes that no longer run (:func:`remove_stale_temps`):
  the next run of the same command cleans up after the killed one.
* **One run per run directory** (:class:`RunLock`): a lock file holding the
  owner's PID and host. The lock is an advisory ``flock`` that the kernel
  drops when its process dies, so a ``kill -9`` never leaves a lock that
  blocks the next run; the stale file is taken over with a message naming
  the dead PID. A live owner makes a second run fail at once, naming it.

Errors are :class:`OutputError`, a ValueError: the command line and the
data scripts print its message as one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import sys
from pathlib import Path

try:  # POSIX; on Windows the locks fall back to the PID test alone
    import fcntl
except ImportError:  # pragma: no cover - not on the Linux CI
    fcntl = None

__all__ = ["OutputError", "check_output_file", "check_output_dir", "temp_path",
           "remove_stale_temps", "atomic_path", "write_atomic", "write_text_atomic", "pid_alive",
           "RunLock", "shared_file", "slug"]

_TMP = ".tmp-"


class OutputError(ValueError):
    """An output path cannot be used as asked; the message names it and says why."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when we cannot tell:
    a file of a process that may be alive is never removed)."""
    if pid <= 0:
        return False
    if os.name != "posix":  # pragma: no cover
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def temp_path(path) -> Path:
    """The temp file a writer of ``path`` uses: ``.NAME.tmp-PID``, same folder
    (so that the final ``os.replace`` is a rename within one file system)."""
    path = Path(path)
    return path.with_name(f".{path.name}{_TMP}{os.getpid()}")


def remove_stale_temps(path) -> list[Path]:
    """Remove the ``.NAME.tmp-PID`` files of ``path`` whose process is gone
    (killed while writing); return them. A temp file of a live process is
    another writer's work in progress and stays; one with this process's PID
    is a leftover of an earlier process that had the same PID (this process
    is not writing it now: callers clean up before they write)."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}{_TMP}"
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        try:
            pid = int(p.name[len(prefix):])
        except ValueError:
            continue
        if pid == os.getpid() or not pid_alive(pid):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def atomic_path(path, chmod: int | None = None):
    """Yield the temp path of ``path`` (:func:`temp_path`) for the caller to
    write in any way (h5py, a copy, ``open``); on leaving without an error,
    rename it over ``path``: ``path`` is either the old file or the complete
    new one, never a part. On any error (Ctrl-C included) the temp file is
    removed and ``path`` is untouched. Temp files of killed writers of
    ``path`` are removed first. ``chmod``: permission bits given to the temp
    file before the rename (None: those it was created with, 0666 less the
    umask for ``open`` and h5py). A caller that decides to keep the file
    already at ``path`` deletes the temp file: then nothing is renamed."""
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if tmp.exists():
            if chmod is not None:
                os.chmod(tmp, chmod)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path, write, mode: str = "wb", encoding: str | None = None,
                 chmod: int | None = None) -> Path:
    """Write ``path`` through its temp file (:func:`atomic_path`): ``write(f)``
    writes to the open temp file (``mode``, ``encoding``: as for ``open``),
    which is flushed to disk before the rename. Returns ``path``."""
    path = Path(path)
    with atomic_path(path, chmod) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_text_atomic(text: str, path, encoding: str | None = None,
                      chmod: int | None = None) -> Path:
    """``Path(path).write_text(text, encoding)``, atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(text), "w", encoding, chmod)


def _first_file_above(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` (itself included) if it is
    not a folder: then nothing can be created below it."""
    for p in (folder, *folder.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _check_no_dangling_link(path: Path, what: str) -> None:
    """A symbolic link (``path`` or a folder above it) to nothing is not a file
    that "exists" (mkdir's "File exists"), nor one to replace by a plain file
    (the link would silently stop pointing anywhere): say what it is (issue 29)."""
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            raise OutputError(f"{path}: cannot be the {what}: {p} is a symbolic link to "
                              f"{os.readlink(p)}, which does not exist; create its target or "
                              f"remove the link")


def check_output_dir(folder, what: str = "output folder", create: bool = False) -> Path:
    """Fail now, with one line, if results cannot be written into ``folder``:
    it (or a folder above it) is a file, or it exists and is not writable.
    ``create``: also make it (and its parents). Returns it as a Path."""
    folder = Path(folder)
    _check_no_dangling_link(folder, what)
    blocker = _first_file_above(folder)
    if blocker is not None:
        raise OutputError(f"{folder}: cannot be the {what}: {blocker} is a file, not a folder")
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: the {what} is not writable")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{folder}: cannot create the {what} "
                              f"({e.strerror or type(e).__name__})") from None
    else:
        parent = next((p for p in folder.parents if p.exists()), None)
        if not folder.exists() and parent is not None and not os.access(parent, os.W_OK):
            raise OutputError(f"{folder}: cannot create the {what}: {parent} is not writable")
    return folder


def check_output_file(path, overwrite: bool = False, what: str = "output",
                      flag: str = "--overwrite") -> Path:
    """Fail now, with one line, if a command may not write its result to
    ``path``: it is a folder, its folder cannot be written, or it exists and
    ``overwrite`` is False (the message names ``flag``). Returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; expected a file name for the {what}")
    _check_no_dangling_link(path, what)
    if path.exists() and not path.is_file():  # --overwrite would replace a device node
        raise OutputError(f"{path}: not a regular file (a device, FIFO or socket); expected a "
                          f"file name for the {what}")
    check_output_dir(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass {flag} to replace it, or choose another path")
    return path


class RunLock:
    """``with RunLock(folder): ...``: this process owns ``folder`` (a run
    directory) until the block ends.

    The lock is ``folder/.lock`` holding "PID host". A second owner gets an
    :class:`OutputError` at once naming the first one's PID (no waiting: two
    runs writing one ``log.jsonl`` and ``best.pt`` mix their epochs). The
    file is locked with ``flock``, which the kernel releases when the owner
    dies, so a run killed with ``kill -9`` leaves a stale file that the next
    run takes over, saying so (``log``, default: a line on stderr). Without
    ``flock`` (Windows) a lock whose PID no longer runs on this host is
    stale. The file is removed when the block ends.
    """

    NAME = ".lock"

    def __init__(self, folder, log=None):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self._fd: int | None = None

    def _holder(self) -> tuple[int, str]:
        try:
            pid, _, host = self.path.read_text().strip().partition(" ")
            return int(pid), host
        except (OSError, ValueError):
            return 0, ""

    def _busy(self, pid: int, host: str) -> OutputError:
        who = f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        return OutputError(f"{self.folder}: another run ({who}) is writing here now; wait for "
                           f"it to end or use another --out")

    def _open_locked(self) -> int:
        """The lock file's descriptor, flock-ed (no waiting). Retried when the
        file was replaced meanwhile: a run that ended unlinked the file we
        opened, and a lock on an unlinked file guards nothing."""
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                return fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self._busy(*self._holder()) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise self._busy(*self._holder())

    def acquire(self) -> "RunLock":
        check_output_dir(self.folder, "run folder", create=True)
        fd = self._open_locked()
        try:
            pid, host = self._holder()
            if pid and pid != os.getpid():
                if fcntl is None and host == socket.gethostname() and pid_alive(pid):
                    raise self._busy(pid, host)  # pragma: no cover
                self.log(f"note: {self.path}: taking over the lock of process {pid}"
                         + (f" on {host}" if host else "") + ", which no longer runs "
                         "(it was interrupted)")
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Remove the file while still holding the lock: a run that opened it
        # meanwhile fails to lock it and reports this run, which is still here.
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def shared_file(path):
    """``with shared_file(path): read, change, write path``: one process at a
    time (an exclusive ``flock`` on ``PATH.lock``, waited for), so that
    several processes of one study (``--only``) can add their rows to one
    results file without losing each other's. Without ``flock`` (Windows),
    no lock: run one process at a time there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def slug(name: str) -> str:
    """A run's name as a folder name: lower case, every run of characters
    that are not letters or digits one "-" ("w/o B-3" -> "w-o-b-3")."""
    return "-".join(part for part in re.split(r"[\W_]+", name.lower()) if part)
