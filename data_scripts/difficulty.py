"""Measure how hard the synthetic scenes' hard negatives are.

    python data_scripts/difficulty.py --data FILE.h5 [--split test] [--seed 0]

Prints, for a bag-of-words dual encoder and a structure-aware scorer, how
often a caption's own image outscores a hard negative (binding, relation)
and a random negative, then one JSON line. See cccl_lite.baselines and
cccl_lite.data.difficulty.
"""

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import cccl_lite  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cccl_lite.cli import positive_int, run_script  # noqa: E402
from cccl_lite.baselines import difficulty_report  # noqa: E402

PROG = "difficulty.py"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a synthetic-scenes HDF5 file")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bow-epochs", type=positive_int, default=10)
    args = ap.parse_args(argv)
    t = time.time()
    code, r = run_script(PROG, lambda: difficulty_report(args.data, args.split, args.seed,
                                                          args.bow_epochs))
    if code:
        return code
    print(f"pairs (caption, negative image) in {args.split}: {r['pairs']}")
    print(f"{'% own image scores higher':<28}{'binding':>9}{'relation':>10}{'random':>8}")
    for name in ("bag_of_words", "structure_probe"):
        print(f"{name:<28}" + "".join(f"{r[name][k]:>{w}.1f}" for k, w in
                                      (("binding", 9), ("relation", 10), ("random", 8))))
    rec = r["bag_of_words_recall"]
    print(f"bag of words on all of {args.split}: R@sum {rec['rsum']:.1f} "
          f"(i2t R@1 {rec['i2t_r1']:.1f}, t2i R@1 {rec['t2i_r1']:.1f})")
    print(f"({time.time() - t:.0f} s)")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
