"""The studies' results files: one reader and one writer for every study.

A study (``ablate``; ``diagnose`` and the studies it runs, ``sensitivity``
and ``plateau``; ``dual_study``) keeps its runs in one JSON object,
``{"settings", "provenance", ...its records}``, rewritten whole after every
run, so that a rerun with the same settings resumes where it stopped and a
file of other settings is never mixed into (each study refuses it in one
line unless ``--overwrite``). The chapters read these files from
``cccl_lite/results/`` (:func:`cccl_lite.book.notebook.results_file`).
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Callable

from cccl_lite.errors import one_line
from cccl_lite.files import write_text_atomic
from cccl_lite.provenance import provenance

__all__ = ["load", "held", "what_is", "write"]


def load(path) -> dict | None:
    """The results file's JSON object; None when there is no file, or it is
    not JSON (a file cut short, another program's) or not an object."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return content if isinstance(content, dict) else None


def held(path, settings: dict, same: Callable[[object, dict], bool] = operator.eq) -> dict | None:
    """:func:`load`'s object when it holds a study of ``settings`` (its
    ``"settings"`` compared by ``same(recorded, settings)``; a comparison that
    fails on a hand-edited value counts as other settings), else None."""
    content = load(path)
    if content is None:
        return None
    try:
        return content if same(content.get("settings"), settings) else None
    except (ValueError, TypeError, AttributeError, KeyError):
        return None


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def what_is(path, study: str, settings: dict | None = None,
            recorded: Callable[[object], object] = lambda s: s) -> str:
    """What a results file that is not one of ``settings`` holds, for the
    refusal's one line: not JSON, no ``study`` at all, or one of other
    settings, each setting that differs named as "key: recorded -> asked"
    (``recorded`` reads the file's settings in this version's shape)."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return f"no {study} (not valid JSON: {one_line(e)})"
    if not isinstance(content, dict) or not isinstance(content.get("settings"), dict):
        return f"no {study} (no settings)"
    if settings is None:
        return f"a {study} with other settings"
    try:
        old = recorded(content["settings"])
    except (ValueError, TypeError, AttributeError, KeyError):
        old = content["settings"]
    diff = [f"{k}: {_short(old.get(k))} -> {_short(settings.get(k))}"
            for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    return f"a {study} with other settings ({'; '.join(diff)})"


def write(path, result: dict) -> dict:
    """``result`` with this run's provenance, written to ``path`` whole
    (a temp file renamed over it: the old file or the new one, never a part)
    as UTF-8 JSON; returned."""
    path = Path(path)
    # "settings" first, then "provenance", then the records, as every study wrote them
    result = {**({"settings": result["settings"]} if "settings" in result else {}),
              "provenance": provenance(),
              **{k: v for k, v in result.items() if k not in ("settings", "provenance")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(result, indent=1, ensure_ascii=False) + "\n", path)
    return result
