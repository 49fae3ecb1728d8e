"""Command line: ``python -m cccl_lite COMMAND ...`` (see ``__main__``); ``--help`` lists them.

The one front door. Engine commands (:mod:`.engine`: train, evaluate,
retrieve), studies (:mod:`.studies`: ablate, diagnose, ship), the student
and Colab editions, grading students' notebooks (grade), and the data commands (:mod:`.data`: make-synthetic, encode-words,
parse, prepare-precomp, prepare-tsv, download, difficulty; the scripts in
``data_scripts/`` are thin wrappers around them). All argparse lives here;
the package below raises plain exceptions. Expected failures (a missing
file, a wrong schema, an unknown config or ablation, a checkpoint from
another config: :class:`cccl_lite.errors.InputError` and the other errors
below) print one line, with a non-zero exit status and no traceback.

Nothing in the package imports this module (only ``__main__`` and
``data_scripts/``).
"""

from __future__ import annotations

import argparse
import sys

from cccl_lite.data.schema import SchemaError
from cccl_lite.errors import InputError, one_line
from cccl_lite.cli.types import (float_at_least, int_at_least, nonnegative_float, nonnegative_int,
                                 positive_float, positive_int, run_script)

__all__ = ["main", "build_parser", "OneLineParser", "positive_int", "int_at_least",
           "float_at_least", "nonnegative_int", "positive_float", "nonnegative_float",
           "run_script"]

# What a user can cause by a wrong argument or file; anything else is a bug
# and keeps its traceback. OSError: a folder that cannot be written, a full
# disk: the machine's state, not a bug, and its message names the file.
_EXPECTED = (InputError, SchemaError, ValueError, OSError)


def _error_line(e: BaseException) -> str:
    """One line for an expected failure: an OSError as "FILE: reason", others
    their message with line breaks folded."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return where + e.strerror
    return one_line(e)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (the option and what
    it expects, then where to find the usage), exit status 2 as argparse's."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def _data_runner(run, name: str):
    """A data command's run(args, prog) as the front door's run(args)."""
    return lambda args: run(args, name)


def build_parser() -> argparse.ArgumentParser:
    from cccl_lite.cli import data, engine, studies

    parser = OneLineParser(prog="python -m cccl_lite",
                           description="CCCL lite: train, evaluate and study the model, and "
                                       "prepare its data; one command each")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        "train": (engine.add_train_arguments, engine.run_train, "train CCCL on an HDF5 dataset"),
        "evaluate": (engine.add_evaluate_arguments, engine.run_evaluate,
                     "R@K of a checkpoint on a split"),
        "retrieve": (engine.add_retrieve_arguments, engine.run_retrieve,
                     "top-k texts for an image, or images for a caption"),
        "ablate": (studies.add_ablate_arguments, studies.run_ablate,
                   "train and test every Table 6 ablation (chapter 7's table)"),
        "diagnose": (studies.add_diagnose_arguments, studies.run_diagnose,
                     "short runs that each change one thing (chapter 11's diagnosis)"),
        "dual-encoder": (studies.add_dual_arguments, studies.run_dual,
                         "bag of words, dual encoder and CCCL: accuracy against scoring cost "
                         "(chapters 1 and 10)"),
        "ship": (studies.add_ship_arguments, studies.run_ship,
                 "make a finished run the package's shipped lite model, with its provenance"),
        "student-edition": (studies.add_student_arguments, studies.run_student,
                            "notebooks with exercise stubs and no solutions, for students"),
        "colab-edition": (studies.add_colab_arguments, studies.run_colab,
                          "the book's pages as plain notebooks for Colab (colab/)"),
        "grade": (studies.add_grade_arguments, studies.run_grade,
                  "run students' notebooks and their exercise checkers; a CSV of verdicts"),
    }
    for name, cmd in data.COMMANDS.items():
        commands[name] = (cmd.add, _data_runner(cmd.run, name),
                          f"{cmd.help} (data_scripts/{cmd.script})")
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
    except SystemExit as e:  # a usage error found after parsing, already printed
        return e.code if isinstance(e.code, int) else 2
