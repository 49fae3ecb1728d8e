"""Regenerate the book's architecture figures (architecture*.svg and .png beside this file).

    python book/figures/make_architecture.py

The drawing is cccl_lite.book.figures.architecture_figure; this script only says
where the files go. The SVGs are what the built book shows; the PNGs, the
same drawings at 100 dpi, are what the Colab and student editions embed
(cccl_lite.book.editions), since Colab shows neither an SVG data URI nor a cell
attachment. Commit both.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from cccl_lite.book.figures import STAGES, architecture_figure, write_architecture_svgs  # noqa: E402

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for path in write_architecture_svgs(here):
        print(path)
    with matplotlib.rc_context({"font.family": "DejaVu Sans"}):
        for stage in (None, *STAGES):
            fig = architecture_figure(stage)
            path = here / ("architecture.png" if stage is None else f"architecture-{stage}.png")
            fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
            plt.close(fig)
            print(path)
