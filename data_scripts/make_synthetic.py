#!/usr/bin/env python
"""Write the synthetic-scenes dataset, the book's offline default (chapter 1).

    python data_scripts/make_synthetic.py --out data/synthetic.h5 --seed 0 --size small

Sizes: ``tiny`` (unit tests), ``small`` (the book's default: 3000/102/201
images, a few seconds on a laptop), ``paper`` (Flickr30K's shapes, 36 regions
of 2048-d, ~4.6 GB; streamed to disk). The same seed and size give the same
bytes. The format is described in ``cccl_lite.data.synthetic``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cccl_lite
from cccl_lite.cli.data import script_main  # noqa: E402


def main(argv=None) -> int:
    """``python -m cccl_lite make-synthetic``, named make_synthetic.py in its messages."""
    return script_main("make-synthetic", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
