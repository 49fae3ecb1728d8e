"""Regenerate the book's architecture figures (architecture*.svg beside this file).

    python book/figures/make_architecture.py

The drawing is cccl_lite.figures.architecture_figure; this script only says
where the files go. Commit the SVGs it writes.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from cccl_lite.figures import write_architecture_svgs  # noqa: E402

if __name__ == "__main__":
    for path in write_architecture_svgs(Path(__file__).resolve().parent):
        print(path)
