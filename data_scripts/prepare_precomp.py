#!/usr/bin/env python
"""SCAN precomputed features (+ CAMERA or GSMN boxes) → one split of a schema HDF5 file.

    python data_scripts/prepare_precomp.py --src data/f30k_precomp --split test \\
        --boxes camera --out data/flickr30k.h5

Files read from --src: {split}_ims.npy, {split}_caps.txt, {split}_ids.txt and,
for --boxes camera, {split}_boxes.npy + {split}_img_sizes.npy, for --boxes gsmn,
{split}_ims_bbx.npy + {split}_ims_size.npy (see cccl_lite.data.precomp).
SCAN splits map to train/val/test (dev → val, testall → test; --as overrides).
Other splits already in --out are kept. Exit 1 with one line on stderr for
bad input; nothing is written then.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

try:
    import cccl_lite  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the repo next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cccl_lite.cli import run_script  # noqa: E402
from cccl_lite.data.precomp import BOX_SOURCES, convert_precomp  # noqa: E402
from cccl_lite.data.schema import SPLITS  # noqa: E402

PROG = "prepare_precomp.py"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="folder with SCAN's {split}_* files")
    p.add_argument("--split", required=True, help="SCAN split: train, dev, test, testall")
    p.add_argument("--boxes", required=True, choices=BOX_SOURCES,
                   help="where boxes come from (none: the model runs 'w/o POS')")
    p.add_argument("--out", required=True, help="schema HDF5 file to create or add to")
    p.add_argument("--name", default=None,
                   help="dataset name (default: the existing file's, else flickr30k)")
    p.add_argument("--as", dest="as_split", choices=SPLITS, default=None,
                   help="schema split to write (default: from the SCAN split)")
    p.add_argument("--overwrite", action="store_true", help="replace the split if it exists")
    args = p.parse_args(argv)
    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"
    code, info = run_script(PROG, lambda: convert_precomp(
        args.src, args.split, args.boxes, args.out, name=args.name, as_split=args.as_split,
        overwrite=args.overwrite), f"interrupted: {args.out} unchanged")
    if code:
        return code
    print(f"{args.out}: wrote split {info['split']!r}: {info['images']} images, "
          f"{info['captions']} captions (features one row per {info['layout']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
