"""cccl_lite.book.plots: the chapters' shared box drawing, on hand-made boxes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cccl_lite.book.plots import draw_boxes  # noqa: E402


def test_draw_boxes_hand_case():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [2.0, 2.0, 4.0, 6.0], [1.0, 1.0, 3.0, 3.0]])
    fig, ax = plt.subplots()
    try:
        patches = draw_boxes(ax, boxes, np.array([False, True, True]), numbers=True, ec="red")
        # Box 0 is masked out; boxes 1 and 2 as (corner, width, height).
        assert [(p.get_xy(), p.get_width(), p.get_height()) for p in patches] == [
            ((2.0, 2.0), 2.0, 4.0), ((1.0, 1.0), 2.0, 2.0)]
        assert list(ax.patches) == patches
        assert all(not p.get_fill() and p.get_edgecolor()[:3] == (1.0, 0.0, 0.0) for p in patches)
        # Odd r: bottom-right corner, inside by 1 px; even r: top-left.
        labels = {t.get_text(): t.get_position() for t in ax.texts}
        assert labels == {"1": (3.0, 5.0), "2": (2.0, 2.0)}
    finally:
        plt.close(fig)


def test_draw_boxes_without_mask_or_numbers_and_a_wrong_mask():
    fig, ax = plt.subplots()
    try:
        patches = draw_boxes(ax, [[0, 0, 1, 1], [5, 5, 7, 8]])
        assert len(patches) == 2 and not ax.texts
        assert patches[1].get_linewidth() == 0.8 and patches[1].get_height() == 3.0
        with pytest.raises(ValueError, match="2 boxes but a mask of 3"):
            draw_boxes(ax, [[0, 0, 1, 1], [5, 5, 7, 8]], [True, True, False])
    finally:
        plt.close(fig)
