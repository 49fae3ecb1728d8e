"""The collapse guard: a warning (or a stop) when every score of a batch is the same.

With eq 33's hardest negatives from scratch the lite model's scores can go
flat: every score nearly equal, L_t stuck at exactly 2·B·Δ. What collapses
is the *scale* of the scores, not necessarily the ranking (chapter 11's
diagnosis rows measure both). :class:`CollapseGuard` watches each training
batch for flat scores and says what it sees, not what recall is (chapter 6).
"""

from __future__ import annotations

import torch

from cccl_lite.model.loss import alignment_term

__all__ = ["TrainingCollapsed", "CollapseGuard"]


class TrainingCollapsed(RuntimeError):
    """Raised inside an epoch when the collapse guard stops the run."""


class CollapseGuard:
    """Watches every training batch for the collapse of issue 13: all scores equal.

    A batch is *flat* when the fused scores F (eq 32) of its B_i x B_t pairs
    have a standard deviation below ``min_spread``, or when L_t (eq 33) sits
    within ``rel_tol`` (relative) of the value it takes for constant scores:
    Δ per row and per column that has a negative, 2·B·Δ with hardest
    negatives (Δ per negative pair, both ways, with the sum over negatives).
    That value is computed by the loss itself on a constant matrix with the
    batch's positive mask, not by a formula. Then every hinge is exactly Δ
    and the scores have lost their scale; the order of the nearly equal
    scores may still rank better than chance, which the guard does not
    measure (validation R@K does).

    :meth:`update` returns True once, at the ``steps``-th flat batch in a row;
    ``report`` then holds the numbers (step, spread, L_t, the flat value).
    """

    def __init__(self, steps: int = 50, min_spread: float = 1e-3, rel_tol: float = 1e-3):
        self.steps, self.min_spread, self.rel_tol = steps, min_spread, rel_tol
        self.streak = 0
        self.report: dict | None = None

    @torch.no_grad()
    def update(self, fused: torch.Tensor, alignment: torch.Tensor, positive: torch.Tensor,
               negatives: str, margin: float, step: int) -> bool:
        """One batch: F (B_i, B_t), its L_t (scalar), positive mask (B_i, B_t)."""
        f = fused.detach().float()
        flat_value = alignment_term(torch.zeros_like(f), margin, positive, negatives)
        # One transfer for the three numbers (one GPU sync per step).
        spread, l_t, flat = torch.stack([f.std() if f.numel() > 1 else f.new_zeros(()),
                                         alignment.detach().float(), flat_value]).tolist()
        is_flat = spread < self.min_spread or (flat > 0 and abs(l_t - flat) <= self.rel_tol * flat)
        self.streak = self.streak + 1 if is_flat else 0
        if self.streak < self.steps or self.report is not None:
            return False
        self.report = {"step": step, "steps_in_a_row": self.streak, "spread": spread,
                       "alignment": l_t, "flat_alignment": flat, "negatives": negatives,
                       "batch": list(f.shape)}
        return True

    def message(self) -> str:
        r = self.report
        return (f"warning: the score scale looks collapsed: {r['steps_in_a_row']} batches in a "
                f"row up to step {r['step']} had flat scores (std of F {r['spread']:.2e}, L_t "
                f"{r['alignment']:.6g} against {r['flat_alignment']:.6g} for constant scores, "
                f"{r['negatives']} negatives, batch {r['batch'][0]}x{r['batch'][1]}). Try: "
                f"--warmup-epochs all (the sum over negatives), a lower --lr, resuming from "
                f"an earlier last.pt, or check that captions match their images; "
                f"--stop-on-collapse stops such a run")
