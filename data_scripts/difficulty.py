#!/usr/bin/env python
"""Measure how hard the synthetic scenes' hard negatives are.

    python data_scripts/difficulty.py --data FILE.h5 [--split test] [--seed 0]

Prints, for a bag-of-words dual encoder and a structure-aware scorer, how
often a caption's own image outscores a hard negative (binding, relation)
and a random negative, then one JSON line. See cccl_lite.engine.baselines and
cccl_lite.data.difficulty.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cccl_lite
from cccl_lite.cli.data import script_main  # noqa: E402


def main(argv=None) -> int:
    """``python -m cccl_lite difficulty``, named difficulty.py in its messages."""
    return script_main("difficulty", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
