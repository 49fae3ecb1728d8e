"""Seeing inside a trained CCCL: Fig 6's region scores, a pair's attention, caption truth.

Taught in chapter 8 ("Seeing inside"). Fig 6 of the paper (Sec. 4.6) ranks an
image's regions by the inner product of each refined region v̂_i (eq 25) with
the relation vector v^R (eq 26), turns ranks into scores
score_i = μ (n − rank_i)² (μ = 100) and gives each pixel the sum of the scores
of the regions that cover it. :func:`relation_similarity`, :func:`rank_scores`
and :func:`pixel_attention` are those three steps. The same rank-to-score map
also turns Branch 2's cross attention (eq 17, :func:`word_region_attention`)
into a heat map of where a caption looks.

For the synthetic scenes, :func:`parse_caption`, :func:`caption_true_of`,
:func:`regions_showing` and :func:`named_objects` say whether a retrieved
caption is in fact true of an image and which regions show the objects a
caption names, so that retrieval results and attention maps can be judged
against the ground truth.

Readings taken where the paper is ambiguous (the book's readings appendix,
"Fig. 6: the attention maps"):

* rank_i is 1-based (1 = the most similar region), so the least similar
  valid region scores 0; n counts the image's *valid* regions (the paper's
  images all have n = 36); padded regions score 0; ties rank in region order.
* The paper speaks of "the global relation vector v^R of the image", but
  eq 26 feeds the caption's t^S to the visual GRU first: v^R belongs to an
  (image, caption) pair, so Fig 6's map does too. Under "w/o C-GRU" it is one
  vector per image.
* A pixel belongs to a region when its centre lies inside the region's box,
  edges included.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cccl_lite.model.align import cross_attention
from cccl_lite.data.truth import caption_true_of, parse_caption, truth_matrix
from cccl_lite.model.cccl import CCCL, ImageEncoding, TextEncoding

__all__ = [
    "FIG6_MU",
    "rank_scores",
    "pixel_attention",
    "relation_similarity",
    "word_region_attention",
    "caption_region_attention",
    "parse_caption",
    "caption_true_of",
    "truth_matrix",
    "named_objects",
    "regions_showing",
]

FIG6_MU = 100.0  # μ of Fig 6 (Sec. 4.6)



def rank_scores(similarity, mask=None, mu: float = FIG6_MU) -> torch.Tensor:
    """Fig 6's scores score_i = μ (n − rank_i)² from similarities (..., n).

    rank_i = 1 for the largest similarity of a row, n for the smallest, where
    n is the number of valid entries of that row (``mask`` (..., n) bool,
    None = all valid); ties rank in index order. Padded entries score 0.
    Returns (..., n) in the similarity's float dtype (float32 for integers).
    Raises ValueError on shapes that differ or NaN at a valid entry.
    """
    sims = torch.as_tensor(similarity)
    if not sims.is_floating_point():
        sims = sims.float()
    if sims.dim() == 0:
        raise ValueError("rank_scores: similarity must have a region axis (..., n), got a scalar")
    if mask is None:
        mask = torch.ones_like(sims, dtype=torch.bool)
    mask = torch.as_tensor(mask, dtype=torch.bool, device=sims.device)
    if mask.shape != sims.shape:
        raise ValueError(f"rank_scores: mask {tuple(mask.shape)} and similarity "
                         f"{tuple(sims.shape)} must have the same shape")
    if torch.isnan(sims[mask]).any():
        raise ValueError("rank_scores: similarity is NaN at a valid region")
    # Descending by similarity, then valid entries first; both sorts are stable,
    # so equal similarities keep their index order.
    order = torch.sort(sims.nan_to_num(0.0), dim=-1, descending=True, stable=True).indices
    padded_in_order = (~mask).gather(-1, order).to(torch.uint8)
    order = order.gather(-1, torch.sort(padded_in_order, dim=-1, stable=True).indices)
    positions = torch.arange(1, sims.shape[-1] + 1, device=sims.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    n = mask.sum(-1, keepdim=True)
    return (mu * (n - rank).clamp(min=0).to(sims.dtype) ** 2) * mask


def pixel_attention(boxes, scores, height: int, width: int) -> torch.Tensor:
    """Fig 6's pixel map: A[y, x] = Σ_i score_i · [pixel (x, y) lies in box i].

    boxes (..., n, 4) pixel x1, y1, x2, y2; scores (..., n), e.g. from
    :func:`rank_scores` (padded regions must score 0). A pixel (x, y) covers
    [x, x+1) × [y, y+1); it lies in a box when its centre (x + ½, y + ½) does,
    edges included. Returns (..., height, width) in the scores' float dtype.
    """
    scores = torch.as_tensor(scores)
    if not scores.is_floating_point():
        scores = scores.float()
    boxes = torch.as_tensor(boxes, dtype=scores.dtype, device=scores.device)
    if boxes.shape[-1] != 4 or boxes.shape[:-1] != scores.shape:
        raise ValueError(f"pixel_attention: expected boxes (..., n, 4) and scores (..., n), "
                         f"got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    cx = torch.arange(width, dtype=scores.dtype, device=scores.device) + 0.5
    cy = torch.arange(height, dtype=scores.dtype, device=scores.device) + 0.5
    x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))
    in_x = ((x1 <= cx) & (cx <= x2)).to(scores.dtype)  # (..., n, W)
    in_y = ((y1 <= cy) & (cy <= y2)).to(scores.dtype)  # (..., n, H)
    return torch.einsum("...n,...nh,...nw->...hw", scores, in_y, in_x)


@torch.no_grad()
def relation_similarity(model: CCCL, images: ImageEncoding, texts: TextEncoding) -> torch.Tensor:
    """Fig 6's v̂_i · v^R for every region of every (image, text) pair.

    V̂ (eq 25) from ``images.graph`` (encode with ``CCCL.encode_images`` or
    ``encode_all_images(..., keep_graph=True)``), v^R (eq 26) from
    ``CCCL.relation_vectors``. images: B_i items with n regions; texts: B_t
    items. Returns (B_i, B_t, n), 0 at padded regions. Raises ValueError for
    a model without Branch 3 or an encoding without V̂.
    """
    if not model.config.use_branch3:
        raise ValueError("relation_similarity: this model has no Branch 3 ('w/o B-3'), so no "
                         "V-hat (eq 25) or v^R (eq 26) for Fig 6")
    if images.graph is None:
        raise ValueError("relation_similarity: images.graph (V-hat, eq 25) is None; encode the "
                         "images with encode_all_images(..., keep_graph=True)")
    v_r, _ = model.relation_vectors(images, texts)  # (B_i, B_t, d), or (B_i, 1, d)
    v_r = v_r.expand(images.graph.shape[0], texts.t.shape[0], -1)
    sims = torch.einsum("ind,itd->itn", images.graph, v_r.to(images.graph.dtype))
    return sims * images.mask[:, None, :]


@torch.no_grad()
def word_region_attention(model: CCCL, images: ImageEncoding, texts: TextEncoding) -> torch.Tensor:
    """Branch 2's T→V weights ω (eq 17, the attention behind eq 19) for every pair.

    For each word j of a text, its weights over the regions of an image:
    M = cos(t_j, v_i), M̄ = relu(M) l2-normalised over the words,
    ω_j = softmax_i(λ M̄_ji) over valid regions (the reading of
    ``cccl_lite.model.align.cross_attention``). Returns (B_i, B_t, m, n): rows of
    valid words sum to 1, padded words and regions are 0. Raises ValueError
    for a model without Branch 2.
    """
    if model.local_branch is None:
        raise ValueError("word_region_attention: this model has no Branch 2 ('w/o B-2'), so no "
                         "cross attention (eq 17)")
    _, weights = cross_attention(texts.t, texts.mask, images.v, images.mask,
                                 model.local_branch.temperature)  # (B_t, B_i, m, n)
    return weights.transpose(0, 1)


def caption_region_attention(model: CCCL, images: ImageEncoding,
                             texts: TextEncoding) -> torch.Tensor:
    """Where a whole caption looks: :func:`word_region_attention` averaged over its
    valid words. Returns (B_i, B_t, n), each valid row summing to 1."""
    weights = word_region_attention(model, images, texts)
    words = texts.mask.sum(1).clamp(min=1).to(weights.dtype)
    return weights.sum(2) / words[None, :, None]


def named_objects(tokens: str | Sequence[str], kind: str, scene: Sequence[dict]) -> list[int]:
    """Indices of the scene's objects that some noun phrase of the caption fits
    (shape, colour and size as far as the phrase gives them), in scene order."""
    caption = parse_caption(tokens, kind)
    return [k for k, o in enumerate(scene) if any(np_.matches(o) for np_ in caption.nps)]


def regions_showing(boxes, scene: Sequence[dict], min_cover: float = 0.5) -> np.ndarray:
    """Which regions show which objects: (n, k) bool, True where at least
    ``min_cover`` of object k's box lies inside region box i (the share the
    synthetic region features are built from). boxes (n, 4) pixel x1, y1, x2, y2;
    padded regions (empty boxes) show nothing."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    objs = np.asarray([o["box"] for o in scene], dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(boxes[:, None, 2], objs[None, :, 2])
                - np.maximum(boxes[:, None, 0], objs[None, :, 0]), 0, None)
    h = np.clip(np.minimum(boxes[:, None, 3], objs[None, :, 3])
                - np.maximum(boxes[:, None, 1], objs[None, :, 1]), 0, None)
    area = (objs[:, 2] - objs[:, 0]) * (objs[:, 3] - objs[:, 1])
    return w * h >= min_cover * area[None, :]
