"""The hybrid loss: shared MLP, coherence and alignment terms (Sec. 3.4, eqs 28-34).

Taught in chapter 5 ("The hybrid loss"). Scores are (B_i, B_t) matrices:
row i is an image, column j a text, every image against every text.

Readings taken where the paper is ambiguous (the book's readings appendix,
"Hybrid loss"):

* eq 28 ends in a sigmoid (the prose says softmax, which on one output is
  the constant 1): scores lie in (0, 1).
* eqs 29-31: D(x, y) = |x − y| summed over all B × B pairs of the batch
  (``coherence_reduction="sum"``, the paper's reading and the default).
  Since eq 33 has only 2B hinge terms, at B = 32 λ L_c outweighs L_t
  about 15-fold; ``coherence_reduction="per_item"`` divides L_c by B_i so
  that both terms grow like B (our option, measured in chapter 5).
* eq 33 takes the hardest negative (``negatives="hardest"``);
  ``negatives="all"`` sums the hinge over every negative (VSE++'s "SH"
  loss, the warm-up of VSE∞ and of our training recipe).
* eq 33: two captions of one image in a batch are positives, not
  negatives; ``positive_mask`` excludes them from the hardest-negative search.
* "w/o MLP" (Table 6): one shared linear layer P → 1, then the sigmoid.
* When an ablation drops a branch, F and L_c use the remaining branches.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

__all__ = [
    "SimilarityMLP",
    "coherence_term",
    "alignment_term",
    "hardest_negative_wins",
    "COHERENCE_REDUCTIONS",
    "NEGATIVES",
    "fuse_scores",
    "HybridLoss",
    "HybridObjective",
    "hybrid_loss",
]


class SimilarityMLP(nn.Module):
    """Similarity vector → score: s_out = σ(W2 relu(W1 s_in + b1) + b2) (eq 28).

    One module shared by the three branches. in_dim: P (1 under "w/o VSF");
    hidden: P. ``depth=1`` is the "w/o MLP" ablation, s_out = σ(W s_in + b).
    ``forward(sim)``: (..., in_dim) → (...,).
    """

    def __init__(self, in_dim: int, hidden: int | None = None, depth: int = 2):
        super().__init__()
        if depth == 2:
            hidden = hidden or in_dim
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        elif depth == 1:
            self.net = nn.Linear(in_dim, 1)
        else:
            raise ValueError(f"SimilarityMLP: depth must be 1 or 2, got {depth}")

    def forward(self, sim: torch.Tensor) -> torch.Tensor:
        """Scores (...,) in float32 (float64 for a float64 model) under any autocast.

        Reading taken for mixed precision: eq 28's layers, its sigmoid and
        everything ranked after it run in at least float32, the similarity
        vectors entering it may come from bf16/fp16 matrix products. Near 1
        the bf16 grid is 2^-8 = 0.0039 wide, so a bf16 sigmoid turns distinct
        scores into ties, which count against the model in R@K.
        """
        dtype = torch.promote_types(sim.dtype, torch.float32)
        with torch.autocast(sim.device.type, enabled=False):
            x = sim.to(dtype)
            layers = self.net if isinstance(self.net, nn.Sequential) else (self.net,)
            for layer in layers:
                if isinstance(layer, nn.Linear):
                    # .to is a no-op for float32 weights; a bf16 model's are upcast.
                    x = nn.functional.linear(x, layer.weight.to(dtype), layer.bias.to(dtype))
                else:
                    x = layer(x)
            return torch.sigmoid(x).squeeze(-1)


COHERENCE_REDUCTIONS = ("sum", "per_item")
NEGATIVES = ("hardest", "all")


def coherence_term(s_s, s_o, s_r, reduction: str = "sum") -> torch.Tensor:
    """L_c = Σ_ij |S^S−S^O| + |S^S−S^R| + |S^O−S^R| over all pairs (eqs 29-31).

    Each argument (B_i, B_t); a branch removed by an ablation may be None,
    and then only the pairs of present branches count. ``reduction``:
    "sum" as printed, "per_item" the same sum divided by B_i (so that it
    grows like eq 33's 2B hinges, not like B²). Returns a scalar.
    """
    if reduction not in COHERENCE_REDUCTIONS:
        raise ValueError(f"coherence_term: reduction must be one of {COHERENCE_REDUCTIONS}, "
                         f"got {reduction!r}")
    present = [s for s in (s_s, s_o, s_r) if s is not None]
    if not present:
        raise ValueError("coherence_term: all three scores are None")
    total = present[0].new_zeros(())
    for i in range(len(present)):
        for j in range(i + 1, len(present)):
            total = total + (present[i] - present[j]).abs().sum()
    if reduction == "per_item":
        total = total / present[0].shape[0]
    return total


def alignment_term(scores: torch.Tensor, margin: float = 0.2,
                   positive_mask: torch.Tensor | None = None,
                   negatives: str = "hardest",
                   negative_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional hinge triplet loss with the hardest negatives (eq 33).

    scores (B, B): F(I_i, Z_j), the positive pair of row i and of column i on
    the diagonal. positive_mask (B, B) bool, True where (i, j) match (it must
    include the diagonal; other Trues, e.g. a second caption of the same
    image, are excluded from the negatives). For each row i:
    [Δ − F_ii + max_{j neg} F_ij]_+, and for each column j:
    [Δ − F_jj + max_{i neg} F_ij]_+ (0 when there is no negative). Returns
    the sum over the batch (a scalar).

    ``negatives="all"``: the max over negatives becomes a sum,
    Σ_i Σ_{j neg} [Δ − F_ii + F_ij]_+ + Σ_j Σ_{i neg} [Δ − F_jj + F_ij]_+
    (VSE++'s "SH" loss; SGRAF's ``max_violation=False``).

    ``negative_weight`` (B, B) float, with ``negatives="all"`` only: the
    hinge of pair (i, j) counts w_ij times, in both directions (None: every
    w_ij = 1). A reading of ours for the synthetic scenes' hard negatives:
    ``Recipe.sibling_weight`` puts w > 1 on a scene's rebound and
    swapped siblings, in the spirit of NegCLIP's added hard negatives
    (Yuksekgonul et al. 2023).
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"alignment_term: negatives must be one of {NEGATIVES}, "
                         f"got {negatives!r}")
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"alignment_term: scores must be (B, B), got {tuple(scores.shape)}")
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if positive_mask is None:
        positive_mask = eye
    elif positive_mask.shape != scores.shape or not bool(positive_mask[eye].all()):
        raise ValueError("alignment_term: positive_mask must be (B, B) bool with a True diagonal")
    diag = scores.diagonal()
    if negative_weight is not None:
        if negatives != "all":
            raise ValueError("alignment_term: negative_weight needs negatives='all' (a hardest "
                             "negative has no weight to share)")
        if negative_weight.shape != scores.shape:
            raise ValueError(f"alignment_term: negative_weight must be {tuple(scores.shape)}, "
                             f"got {tuple(negative_weight.shape)}")
    if negatives == "all":
        cost_i2t = (margin - diag[:, None] + scores).clamp(min=0)  # row i: image i vs text j
        cost_t2i = (margin - diag[None, :] + scores).clamp(min=0)  # column j: text j vs image i
        if negative_weight is not None:
            cost_i2t, cost_t2i = cost_i2t * negative_weight, cost_t2i * negative_weight
        return (cost_i2t.masked_fill(positive_mask, 0).sum()
                + cost_t2i.masked_fill(positive_mask, 0).sum())
    negs = scores.masked_fill(positive_mask, float("-inf"))
    hardest_text = negs.amax(dim=1)  # per image row
    hardest_image = negs.amax(dim=0)  # per text column
    # (margin - pos + -inf).clamp(0) is 0: rows without negatives cost nothing.
    cost_i2t = (margin - diag + hardest_text).clamp(min=0)
    cost_t2i = (margin - diag + hardest_image).clamp(min=0)
    return cost_i2t.sum() + cost_t2i.sum()


@torch.no_grad()
def hardest_negative_wins(scores: torch.Tensor,
                          positive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """How often the positive beats eq 33's hardest negative: the in-batch win rate.

    scores (B, B) and positive_mask as in :func:`alignment_term` (the
    diagonal is the positive; other Trues, a second caption of the same image,
    are neither positive nor negative for the row or column they share). Image
    row i *wins* when F_ii > max_{j neg} F_ij (strictly: a tie with the hardest
    negative is a loss), caption column j when F_jj > max_{i neg} F_ij; a row
    or column without a negative is not counted. Returns a float64 tensor of
    four counts [image rows won, image rows counted, caption columns won,
    caption columns counted], so that batches (and ranks) add up before the
    division. Diagnostic only (no gradient): whether eq 33 can train depends
    on it (issue 28), e.g. the score scale collapses when few rows win.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"hardest_negative_wins: scores must be (B, B), "
                         f"got {tuple(scores.shape)}")
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if positive_mask is None:
        positive_mask = eye
    negs = scores.detach().float().masked_fill(positive_mask, float("-inf"))
    diag = scores.detach().float().diagonal()
    hardest_text, hardest_image = negs.amax(dim=1), negs.amax(dim=0)
    has_text, has_image = torch.isfinite(hardest_text), torch.isfinite(hardest_image)
    return torch.stack([((diag > hardest_text) & has_text).sum(), has_text.sum(),
                        ((diag > hardest_image) & has_image).sum(), has_image.sum()]).double()


def fuse_scores(scores: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """F = (S^S + S^O + S^R) / 3 (eq 32), the mean of the branches present.

    Each score (B_i, B_t); F in at least float32 whatever the autocast (see
    :meth:`SimilarityMLP.forward`): it is what R@K ranks.
    """
    present = [s for s in scores if s is not None]
    if not present:
        raise ValueError("fuse_scores: all scores are None")
    dtype = torch.promote_types(present[0].dtype, torch.float32)
    with torch.autocast(present[0].device.type, enabled=False):
        return torch.stack([s.to(dtype) for s in present]).mean(dim=0)


class HybridLoss(NamedTuple):
    """L = L_t + λ L_c, with both terms kept for logging."""

    total: torch.Tensor
    alignment: torch.Tensor
    coherence: torch.Tensor


def hybrid_loss(s_s, s_o, s_r, margin: float = 0.2, coherence_weight: float = 0.5,
                positive_mask: torch.Tensor | None = None, negatives: str = "hardest",
                coherence_reduction: str = "sum",
                negative_weight: torch.Tensor | None = None) -> HybridLoss:
    """The hybrid loss L = L_t + λ L_c (eq 34) from the three (B, B) scores.

    L_t is :func:`alignment_term` of F = :func:`fuse_scores` (eqs 32-33); L_c
    is :func:`coherence_term` (eqs 29-31); λ = ``coherence_weight`` (0.5 for
    Flickr30K, 0.75 for MS-COCO; 0 is the "w/o SC-loss" ablation).
    ``negatives``, ``negative_weight`` and ``coherence_reduction``: see
    :func:`alignment_term` and :func:`coherence_term`.
    """
    f = fuse_scores((s_s, s_o, s_r))
    l_t = alignment_term(f, margin, positive_mask, negatives, negative_weight)
    l_c = coherence_term(s_s, s_o, s_r, coherence_reduction)
    return HybridLoss(l_t + coherence_weight * l_c, l_t, l_c)


class HybridObjective:
    """Eq 34 with its constants bound: Δ (``margin``), λ
    (``coherence_weight``) and L_c's reduction, Table 1's by default as in
    :func:`hybrid_loss`; built once from a training recipe
    (``cccl_lite.engine.recipes.Recipe.objective``) and called on a model's
    three branch scores: ``objective(scores, positive_mask).total``.
    ``negatives`` and ``negative_weight`` are the step's (see
    :func:`alignment_term`)."""

    def __init__(self, margin: float = 0.2, coherence_weight: float = 0.5,
                 coherence_reduction: str = "sum"):
        if coherence_reduction not in COHERENCE_REDUCTIONS:
            raise ValueError(f"HybridObjective: coherence_reduction must be one of "
                             f"{COHERENCE_REDUCTIONS}, got {coherence_reduction!r}")
        self.margin, self.coherence_weight = margin, coherence_weight
        self.coherence_reduction = coherence_reduction

    def __repr__(self) -> str:
        return (f"HybridObjective(margin={self.margin}, coherence_weight="
                f"{self.coherence_weight}, coherence_reduction={self.coherence_reduction!r})")

    def __call__(self, scores, positive_mask: torch.Tensor | None = None,
                 negatives: str = "hardest", negative_weight: torch.Tensor | None = None
                 ) -> HybridLoss:
        """scores: (S^S, S^O, S^R), each (B, B) or None (an ablated branch)."""
        return hybrid_loss(*scores, margin=self.margin, coherence_weight=self.coherence_weight,
                           positive_mask=positive_mask, negatives=negatives,
                           coherence_reduction=self.coherence_reduction,
                           negative_weight=negative_weight)
