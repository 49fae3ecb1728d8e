"""Command line: ``python -m cccl_lite {train,evaluate,retrieve,ablate,diagnose} ...`` (see ``__main__``).

Each subcommand lives with the code it drives (``cccl_lite.train``,
``cccl_lite.evaluate``): the module exposes ``add_<name>_arguments(parser)``
and ``run_<name>(args) -> int``. Expected failures (a missing file, a wrong
schema, an unknown config or ablation, a checkpoint from another config)
raise :class:`CLIError` or one of the errors below and print one line, with
a non-zero exit status and no traceback.
"""

from __future__ import annotations

import argparse
import math
import sys

from ..data.schema import SchemaError


class CLIError(Exception):
    """An expected failure of a command: its message is all the user sees."""


# What a user can cause by a wrong argument or file; anything else is a bug
# and keeps its traceback. OSError: a folder that cannot be written, a full
# disk: the machine's state, not a bug, and its message names the file.
_EXPECTED = (CLIError, SchemaError, ValueError, OSError)


def _error_line(e: BaseException) -> str:
    """One line for an expected failure: an OSError as "FILE: reason", others
    their message with line breaks folded."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return where + e.strerror
    return " ".join(str(e).split()) or type(e).__name__


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (the option and what
    it expects, then where to find the usage), exit status 2 as argparse's."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import ablate, diagnose, evaluate, pretrained, student, train

    parser = OneLineParser(prog="python -m cccl_lite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "train": (train.add_train_arguments, train.run_train, "train CCCL on an HDF5 dataset"),
        "evaluate": (evaluate.add_evaluate_arguments, evaluate.run_evaluate,
                     "R@K of a checkpoint on a split"),
        "retrieve": (evaluate.add_retrieve_arguments, evaluate.run_retrieve,
                     "top-k texts for an image, or images for a caption"),
        "ablate": (ablate.add_ablate_arguments, ablate.run_ablate,
                   "train and test every Table 6 ablation (chapter 7's table)"),
        "diagnose": (diagnose.add_diagnose_arguments, diagnose.run_diagnose,
                     "short runs that each change one thing (chapter 5's diagnosis)"),
        "ship": (pretrained.add_ship_arguments, pretrained.run_ship,
                 "make a finished run the package's shipped lite model, with its provenance"),
        "student-edition": (student.add_student_arguments, student.run_student,
                            "notebooks with exercise stubs and no solutions, for students"),
    }
    for name, (add, run, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    """Run one command; return its exit status (0, 1: an expected failure,
    2: a usage error, 130: interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.run(args) or 0)
    except _EXPECTED as e:
        print(f"error: {_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ---- helpers shared by the scripts in data_scripts/ ---------------------------


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
