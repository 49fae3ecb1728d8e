"""argparse types and the data scripts' runner: every number is checked at the boundary.

Issue 14: a negative margin or weight would train without a word, so each
command's numbers are parsed by these types, whose message says what was
expected. :func:`run_script` runs a data command's work and turns an
expected failure into one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["positive_int", "int_at_least", "float_at_least", "nonnegative_int",
           "positive_float", "nonnegative_float", "run_script"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return int_at_least(1)(text)


def int_at_least(low: int):
    """argparse type: an integer >= ``low`` (its message says so)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


def float_at_least(low: float, strict: bool = False):
    """argparse type: a finite number >= ``low`` (> ``low`` when ``strict``);
    nan and inf are refused (a nan margin or learning rate trains nothing)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"expected a finite number {'>' if strict else '>='} {low:g}, got {text!r}")
        return value
    parse.__name__ = "float"
    return parse


nonnegative_int = int_at_least(0)
positive_float = float_at_least(0.0, strict=True)
nonnegative_float = float_at_least(0.0)


def run_script(prog: str, work, interrupted: str = "interrupted; nothing was written"):
    """Run a data script's ``work()``: expected failures print one line
    ``PROG: error: ...`` (exit 1), Ctrl-C prints ``interrupted`` (exit 130).

    Returns ``(exit_code, result)``; result is None unless the code is 0.
    """
    try:
        return 0, work()
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130, None
    except (OSError, ValueError, RuntimeError) as e:  # SchemaError is a ValueError
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1, None
