"""The book's drawn figure: CCCL's architecture, after the paper's Fig. 2.

Shown whole in the Preface and, with one stage highlighted ("you are here"),
at the top of chapters 2-5. The SVG files under ``book/figures/`` are made by
:func:`write_architecture_svgs` (``python book/figures/make_architecture.py``
runs it), so a change to the model's picture is a change to this code, and
the files can always be regenerated. The output is deterministic (fixed SVG
ids, no date), so regenerating an unchanged figure gives an unchanged file.

Stages, in the book's order: Perceive (chapter 2, eqs 1-12), Reason
(chapter 3, Branch 3's graphs, residual GCN and cross GRUs, eqs 21-26),
Align (chapter 4, the three branches' similarity vectors, eqs 13-20 and 27)
and the hybrid loss (chapter 5, eqs 28-34).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import matplotlib

__all__ = ["STAGES", "architecture_figure", "write_architecture_svgs"]

# stage key -> (title shown on the figure, chapter, colour)
STAGES = {
    "perceive": ("Perceive", 2, "#4C78A8"),
    "reason": ("Reason", 3, "#54A24B"),
    "align": ("Align", 4, "#F58518"),
    "loss": ("Hybrid loss", 5, "#B279A2"),
}
_INPUT = "#9D9D9D"  # data, not a stage of the model


class _Box(NamedTuple):
    x: float
    y: float
    w: float
    h: float
    text: str
    stage: str | None  # None: an input (image, text), never highlighted

    @property
    def left(self):
        return (self.x, self.y + self.h / 2)

    @property
    def right(self):
        return (self.x + self.w, self.y + self.h / 2)

    @property
    def top(self):
        return (self.x + self.w / 2, self.y + self.h)

    @property
    def bottom(self):
        return (self.x + self.w / 2, self.y)


# The layout, in axis units (0-100 wide, 0-48 high): one column per step,
# the image path above the text path, the three branches stacked.
_BOXES = {
    "image": _Box(0.5, 33, 12.5, 8, "image\n36 regions + boxes\n(bottom-up)", None),
    "text": _Box(0.5, 7, 12.5, 8, "caption\nBERT word vectors\n+ dependency parse", None),
    "v_cpc": _Box(16, 32, 13, 10, "$\\hat{Q} \\circ \\sigma(\\tilde{S} W_S)$\nCPC → $V$\n(eqs 1–10)",
                  "perceive"),
    "t_cpc": _Box(16, 6, 13, 10, "$\\hat{E} = E W_E$\nCPC → $T$\n(eqs 11–12)", "perceive"),
    "b1": _Box(35, 35, 17, 7.5, "Branch 1: max + mean pool\n$v^S$, $t^S$ (eqs 13–14)", "align"),
    "b2": _Box(35, 23.5, 17, 8, "Branch 2: regions ↔ words\ncross-attention (17–19)", "align"),
    "graphs": _Box(35, 9.5, 17, 7.5, "Branch 3: region graph,\nword graph ∘ parse (21–23)",
                   "reason"),
    "gcn": _Box(35, 0.5, 17, 7, "residual GCN (24–25); GRUs\nread $t^S$ / $v^S$ first (26)",
                "reason"),
    "sim_s": _Box(56, 35, 11, 7.5, "VSF → $sim^S$\n(eqs 15–16)", "align"),
    "sim_o": _Box(56, 23.5, 11, 8, "VSF → $sim^O$\n(eqs 18–20)", "align"),
    "sim_r": _Box(56, 0.5, 11, 7, "VSF → $sim^R$\n(eq 27)", "align"),
    "mlp": _Box(71.5, 16, 10, 14, "shared MLP\n(eq 28)\n$S^S, S^O, S^R$", "loss"),
    "loss": _Box(85, 14, 14.5, 18, "$L = L_t + \\lambda L_c$\n(eq 34)\n\n$L_t$: triplet on the\n"
                                     "mean score (32–33)\n$L_c$: coherence (29–31)", "loss"),
}

_ARROWS = [
    ("image", "right", "v_cpc", "left"),
    ("text", "right", "t_cpc", "left"),
    ("v_cpc", "right", "b1", "left"),
    ("v_cpc", "right", "b2", "left"),
    ("v_cpc", "right", "graphs", "left"),
    ("t_cpc", "right", "b1", "left"),
    ("t_cpc", "right", "b2", "left"),
    ("t_cpc", "right", "graphs", "left"),
    ("graphs", "bottom", "gcn", "top"),
    ("b1", "right", "sim_s", "left"),
    ("b2", "right", "sim_o", "left"),
    ("gcn", "right", "sim_r", "left"),
    ("sim_s", "right", "mlp", "left"),
    ("sim_o", "right", "mlp", "left"),
    ("sim_r", "right", "mlp", "left"),
    ("mlp", "right", "loss", "left"),
]


def _blend(colour: str, amount: float) -> tuple:
    """``colour`` mixed with white: 0 = the colour, 1 = white."""
    from matplotlib.colors import to_rgb

    return tuple(c + (1 - c) * amount for c in to_rgb(colour))


def architecture_figure(highlight: str | None = None):
    """CCCL's architecture as a matplotlib figure (about 10 × 4.8 inches).

    ``highlight``: one of :data:`STAGES` ("perceive", "reason", "align",
    "loss"), drawn in full colour with its chapter named in the title, the
    other stages faded; None draws every stage in colour (the Preface's
    overview). Boxes name the paper's equations, so the figure doubles as a
    map from equation numbers to chapters.
    """
    if highlight is not None and highlight not in STAGES:
        raise ValueError(f"highlight must be None or one of {list(STAGES)}, got {highlight!r}")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10, 4.8))
    ax.set_xlim(0, 101.5)
    ax.set_ylim(-2, 49)
    ax.set_axis_off()

    def faded(stage):
        return highlight is not None and stage != highlight

    # One band per stage behind its boxes, labelled with the chapter. Reason
    # sits inside Align: it is Branch 3's way to its similarity vector.
    for stage, (title, chapter, colour) in STAGES.items():
        members = [b for b in _BOXES.values() if b.stage == stage]
        pad = 1.0 if stage == "reason" else 1.8
        x0 = min(b.x for b in members) - pad
        x1 = max(b.x + b.w for b in members) + pad
        y0 = min(b.y for b in members) - pad
        y1 = max(b.y + b.h for b in members) + pad
        if stage == "reason":
            y1 += 3.2  # room for the label inside the Align band
        here = "-here" if highlight == stage else ""
        ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, gid=f"band-{stage}{here}",
                                    boxstyle="round,pad=0,rounding_size=1.5",
                                    fc=_blend(colour, 0.96 if faded(stage) else 0.82),
                                    ec=_blend(colour, 0.75 if faded(stage) else 0.0),
                                    lw=0.8 if faded(stage) else 1.6,
                                    zorder=1 if stage == "reason" else 0))
        inside = stage == "reason"
        ax.text(x0 + 0.8, y1 - 0.4 if inside else y1 + 0.6, f"{title} · chapter {chapter}",
                fontsize=8.5, fontweight="bold", va="top" if inside else "bottom", ha="left",
                color=_blend(colour, 0.55 if faded(stage) else 0.0), zorder=3)

    for key, box in _BOXES.items():
        colour = _INPUT if box.stage is None else STAGES[box.stage][2]
        fade = box.stage is not None and faded(box.stage)
        ax.add_patch(FancyBboxPatch((box.x, box.y), box.w, box.h, gid=f"box-{key}",
                                    boxstyle="round,pad=0,rounding_size=0.8",
                                    fc="white", ec=_blend(colour, 0.6 if fade else 0.0),
                                    lw=0.8 if fade else 1.3, zorder=2))
        ax.text(box.x + box.w / 2, box.y + box.h / 2, box.text, ha="center", va="center",
                fontsize=6.8, color="#999999" if fade else "black", zorder=3,
                linespacing=1.25)

    for a, side_a, b, side_b in _ARROWS:
        start, end = getattr(_BOXES[a], side_a), getattr(_BOXES[b], side_b)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=7,
                                     lw=0.7, color="#555555", shrinkA=0, shrinkB=0,
                                     zorder=1.5))

    if highlight is None:
        title = "CCCL: Perceive, Reason and Align, scored by three branches, trained by a hybrid loss"
    else:
        name, chapter, _ = STAGES[highlight]
        title = f"You are here: {name} (chapter {chapter}) in CCCL"
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    return fig


def write_architecture_svgs(out_dir) -> list[Path]:
    """Write ``architecture.svg`` (every stage) and ``architecture-<stage>.svg``
    (one highlighted) into ``out_dir``; return the paths.

    Glyphs are drawn as paths (the equations' symbols look the same in every
    browser, whatever its fonts); each stage's band has the SVG id
    ``band-<stage>``, with ``-here`` appended to the highlighted one, and each
    box ``box-<name>``. Ids are hashed from a fixed salt and no date is
    written, so the files depend only on this code and matplotlib's version.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "cccl_lite",
                                "font.family": "DejaVu Sans"}):
        import matplotlib.pyplot as plt

        for stage in (None, *STAGES):
            fig = architecture_figure(stage)
            path = out / ("architecture.svg" if stage is None else f"architecture-{stage}.svg")
            fig.savefig(path, format="svg", metadata={"Date": None})
            plt.close(fig)
            paths.append(path)
    return paths
