#!/usr/bin/env python
"""Bottom-up-attention TSV features + Karpathy split JSON → a schema HDF5 file.

    python data_scripts/prepare_tsv.py --tsv trainval_36/*.tsv \\
        --karpathy dataset_coco.json --out data/coco.h5 --name coco

Writes train (train + restval), val and test with every Karpathy image's
features, boxes, size and its first --captions-per-image captions (see
cccl_lite.data.tsv). Exit 1 with one line on stderr for bad input; nothing is
written then.
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
from cccl_lite.data.schema import SPLITS  # noqa: E402
from cccl_lite.data.tsv import convert_tsv  # noqa: E402

PROG = "prepare_tsv.py"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--tsv", nargs="+", required=True, help="TSV file(s), any order")
    p.add_argument("--karpathy", required=True, help="dataset_flickr30k.json / dataset_coco.json")
    p.add_argument("--out", required=True, help="schema HDF5 file to create")
    p.add_argument("--num-regions", type=positive_int, default=36,
                   help="regions kept per image (the first ones; fewer are padded)")
    p.add_argument("--name", default=None, help="dataset name (default: the JSON's 'dataset')")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                   help="splits to write (default: all)")
    p.add_argument("--captions-per-image", type=positive_int, default=5,
                   help="captions kept per image (its first ones; 5 is the standard protocol)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    code, summary = run_script(PROG, lambda: convert_tsv(
        args.tsv, args.karpathy, args.out, num_regions=args.num_regions, name=args.name,
        splits=args.splits, captions_per_image=args.captions_per_image,
        overwrite=args.overwrite), f"interrupted: {args.out} unchanged")
    if code:
        return code
    for split, (n_img, n_cap) in summary.items():
        print(f"{args.out}: {split}: {n_img} images, {n_cap} captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
