#!/usr/bin/env python
"""Dependency-parse a dataset file's captions with stanza (chapter 3, eq 23).

    python data_scripts/parse_captions.py data/f30k.h5 --gpu

Stores ``captions/heads`` (one 1-based head per word, 0 = root) in every split
that has none (the synthetic scenes ship gold heads). Needs stanza's English
models, installed once with internet:
``python -c "import stanza; stanza.download('en')"``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cccl_lite
from cccl_lite.cli.data import script_main  # noqa: E402


def main(argv=None) -> int:
    """``python -m cccl_lite parse``, named parse_captions.py in its messages."""
    return script_main("parse", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
