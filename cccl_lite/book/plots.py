"""Figures the chapters share: region boxes drawn on a scene.

Chapters 1-4 and 8 draw a scene's region boxes over its pixels; they call
:func:`draw_boxes` instead of each re-making the loop. Which regions show
which objects is :func:`cccl_lite.book.visualize.regions_showing`; timing and
multiply-add counts live in :mod:`cccl_lite.engine.costs`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

__all__ = ["draw_boxes"]

# The number label of a box: small, bold, on a light patch that keeps it readable.
_LABEL = dict(fontsize=7, fontweight="bold", bbox=dict(fc="white", ec="none", pad=0.5, alpha=0.8))


def draw_boxes(ax, boxes, mask=None, *, numbers: bool = False, **style) -> list[Rectangle]:
    """Draw region boxes on ``ax`` as unfilled rectangles; returns the patches.

    boxes: (n, 4) pixel x1, y1, x2, y2 (array, tensor or nested lists); mask:
    (n,) bool, boxes where it is False are skipped (None: draw all).
    ``numbers``: write each box's index r in a corner, top-left for even r and
    bottom-right for odd r, so that two boxes of the same object stay apart.
    ``style``: Rectangle keywords (default black edges, line width 0.8).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if keep.shape[0] != boxes.shape[0]:
        raise ValueError(f"draw_boxes: {boxes.shape[0]} boxes but a mask of {keep.shape[0]}")
    style = {"fill": False, "ec": "black", "lw": 0.8, **style}
    patches = []
    for r in np.flatnonzero(keep):
        x1, y1, x2, y2 = boxes[r]
        patches.append(ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, **style)))
        if numbers:
            corner = (dict(x=x1 + 1, y=y1 + 1, va="top") if r % 2 == 0
                      else dict(x=x2 - 1, y=y2 - 1, va="bottom", ha="right"))
            ax.text(s=str(r), **corner, **_LABEL)
    return patches
