#!/usr/bin/env python
"""SCAN precomputed features (+ CAMERA or GSMN boxes) → one split of a schema HDF5 file.

    python data_scripts/prepare_precomp.py --src data/f30k_precomp --split test \
        --boxes camera --out data/flickr30k.h5

Files read from --src: {split}_ims.npy, {split}_caps.txt, {split}_ids.txt and,
for --boxes camera, {split}_boxes.npy + {split}_img_sizes.npy, for --boxes gsmn,
{split}_ims_bbx.npy + {split}_ims_size.npy (see cccl_lite.data.precomp).
SCAN splits map to train/val/test (dev → val, testall → test; --as overrides).
Other splits already in --out are kept. Exit 1 with one line on stderr for
bad input; nothing is written then.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cccl_lite
from cccl_lite.cli.data import script_main  # noqa: E402


def main(argv=None) -> int:
    """``python -m cccl_lite prepare-precomp``, named prepare_precomp.py in its messages."""
    return script_main("prepare-precomp", argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
