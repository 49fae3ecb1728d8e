#!/usr/bin/env python
"""Dependency-parse a dataset file's captions with stanza (chapter 3, eq 23).

    python data_scripts/parse_captions.py data/f30k.h5 --gpu

Stores ``captions/heads`` (one 1-based head per word, 0 = root) in every split
that has none (the synthetic scenes ship gold heads). Needs stanza's English
models, installed once with internet:
``python -c "import stanza; stanza.download('en')"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import cccl_lite  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the repo next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cccl_lite.cli import positive_int, run_script  # noqa: E402
from cccl_lite.data.text import parse_captions  # noqa: E402

PROG = "parse_captions.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="an HDF5 file following cccl_lite's schema")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--gpu", action="store_true", help="run stanza on the GPU (default: CPU)")
    parser.add_argument("--overwrite", action="store_true", help="re-parse splits with heads")
    args = parser.parse_args(argv)
    # The parser is loaded only if some split needs parsing.
    code, done = run_script(PROG, lambda: parse_captions(
        args.file, batch_size=args.batch_size, overwrite=args.overwrite, use_gpu=args.gpu),
        "interrupted; no partial heads were kept")
    if code:
        return code
    for split, written in done.items():
        print(f"{args.file}:/{split}: " + ("heads written" if written else
                                           "heads already present (--overwrite to re-parse)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
