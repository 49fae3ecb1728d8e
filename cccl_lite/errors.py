"""The one error the engine raises for what a user can cause.

:class:`InputError` is raised by the engine (``train``, ``evaluate``,
``checkpoint``) and the studies for an expected failure: a missing or
unreadable file, an unknown preset or ablation, a checkpoint that does not
fit its data, a device that is not there. Its message is all the user needs
to see; ``python -m cccl_lite`` (:mod:`cccl_lite.cli`) prints it as one line
and exits with status 1, with no traceback. It is a ValueError, so library
callers that already catch ValueError keep working.

The helpers every layer shares for such failures: :func:`one_line` (an
exception's message as one line), :func:`read_json` (a JSON file, or one line
naming it) and :func:`field` (a record's field, or one line naming the file
and the field).

This module imports nothing of the package: every layer may raise it.
"""

from __future__ import annotations

__all__ = ["InputError", "one_line", "os_reason", "read_json", "field"]


class InputError(ValueError):
    """An expected failure caused by an argument or a file; the message says
    which and what to do instead."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (line breaks folded), or its type's
    name when it has none: how every command shows an expected failure."""
    return " ".join(str(e).split()) or type(e).__name__


def os_reason(e: BaseException) -> str:
    """The OS's reason (e.g. "No space left on device") behind ``e``, found
    along its chain of causes (torch wraps a full disk's OSError in a
    RuntimeError); else its message on one line."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return one_line(e)[:200]


def read_json(path, what: str = "JSON file"):
    """The JSON value in ``path``; InputError naming the file when it is
    missing, unreadable or not JSON (the parser's position included)."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the {what} ({one_line(e)})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise InputError(f"{path}: the {what} is not valid JSON ({one_line(e)})") from None


def field(record, key: str, path, where: str = "", kind: type | tuple = object):
    """``record[key]``, or InputError naming ``path``, the field (``where``
    says whose, e.g. "line 3") and what was expected: a hand-edited results
    or run file fails with one line, not a KeyError."""
    at = f"{where}: " if where else ""
    if not isinstance(record, dict):
        raise InputError(f"{path}: {at}expected a JSON object with '{key}', got "
                         f"{type(record).__name__}")
    if key not in record:
        raise InputError(f"{path}: {at}no field '{key}'")
    value = record[key]
    if kind is not object and (not isinstance(value, kind) or isinstance(value, bool)
                               and bool not in (kind if isinstance(kind, tuple) else (kind,))):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise InputError(f"{path}: {at}field '{key}' should be {names}, got "
                         f"{type(value).__name__} {str(value)[:40]!r}")
    return value
