#!/usr/bin/env python
"""Bottom-up-attention TSV features + Karpathy split JSON → a schema HDF5 file.

    python data_scripts/prepare_tsv.py --tsv trainval_36/*.tsv \
        --karpathy dataset_coco.json --out data/coco.h5 --name coco

Writes train (train + restval), val and test with every Karpathy image's
features, boxes, size and its first --captions-per-image captions (see
cccl_lite.data.tsv). Exit 1 with one line on stderr for bad input; nothing is
written then.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cccl_lite
from cccl_lite.cli.data import script_main  # noqa: E402


def main(argv=None) -> int:
    """``python -m cccl_lite prepare-tsv``, named prepare_tsv.py in its messages."""
    return script_main("prepare-tsv", argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
