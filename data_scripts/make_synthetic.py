#!/usr/bin/env python
"""Write the synthetic-scenes dataset, the book's offline default (chapter 1).

    python data_scripts/make_synthetic.py --out data/synthetic.h5 --seed 0 --size small

Sizes: ``tiny`` (unit tests), ``small`` (the book's default: 3000/102/201
images, a few seconds on a laptop), ``paper`` (Flickr30K's shapes, 36 regions
of 2048-d, ~4.6 GB; streamed to disk). The same seed and size give the same
bytes. The format is described in ``cccl_lite.data.synthetic``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import cccl_lite  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the repo next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cccl_lite.cli import nonnegative_int, run_script  # noqa: E402
from cccl_lite.data.schema import split_sizes  # noqa: E402
from cccl_lite.data.synthetic import SIZES, make_synthetic  # noqa: E402
from cccl_lite.files import check_output_file  # noqa: E402

PROG = "make_synthetic.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the HDF5 file to write")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", default="small", choices=list(SIZES),
                        help="dataset size (default small)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (default: refuse)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def work():
        # An existing file may be a converted Flickr30K or a run's data: never
        # replaced without --overwrite (issue 14).
        check_output_file(args.out, args.overwrite, "dataset file")
        return make_synthetic(args.out, seed=args.seed, size=args.size)

    code, path = run_script(PROG, work)
    if code:
        return code
    seconds = time.perf_counter() - start
    print(path)
    for split, (n_img, n_cap) in split_sizes(path).items():
        print(f"  {split}: {n_img} images, {n_cap} captions")
    print(f"written in {seconds:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
