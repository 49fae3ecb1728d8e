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
import sys

from .data.schema import SchemaError


class CLIError(Exception):
    """An expected failure of a command: its message is all the user sees."""


# What a user can cause by a wrong argument or file; anything else is a bug
# and keeps its traceback.
_EXPECTED = (CLIError, SchemaError, FileNotFoundError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    from . import ablate, diagnose, evaluate, train

    parser = argparse.ArgumentParser(prog="python -m cccl_lite", description=__doc__.splitlines()[0])
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
    }
    for name, (add, run, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except _EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ---- helpers shared by the scripts in data_scripts/ ---------------------------


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


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
