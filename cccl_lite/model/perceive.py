"""Perceive: context-perceived embeddings of regions and words (Sec. 3.2, eqs 1-12).

Taught in chapter 2 ("Perceive"). Shapes use B for a batch, L for a sequence
(n regions or m words), d for the common embedding size.

Readings taken where the paper is ambiguous (the book's readings appendix,
"Perceive"):

* eq 5 prints ``K̂ = K ∘ G_V``; ``G_K`` is meant.
* eq 8 prints W as ``n × d_Q``; it is a ``d_F → d`` linear layer.
* eq 9's "six-tuple" is garbled; :func:`position_features` documents ours
  and offers CAMERA's beside it.
* eqs 11-12 speak of *words*: BERT's WordPiece vectors are mean-pooled per
  word before they reach :class:`TextualEmbedding` (see ``cccl_lite.data.vectors``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = [
    "masked_softmax",
    "CPCDetails",
    "ContextPerceivedCell",
    "POSITION_TUPLES",
    "position_features",
    "box_centres",
    "POSITION_FUSIONS",
    "VisualEmbedding",
    "BiGRUWordEncoder",
    "TextualEmbedding",
]


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None, dim: int = -1):
    """Softmax over ``dim`` where ``mask`` is True; masked entries get exactly 0.

    A slice with no valid entry returns all zeros instead of NaN, so padded
    queries never poison a batch. ``mask`` must broadcast to ``logits``.
    """
    if mask is None:
        return torch.softmax(logits, dim=dim)
    mask = mask.expand_as(logits)
    logits = logits.masked_fill(~mask, float("-inf"))
    # An all-masked slice would give softmax(-inf, ..., -inf) = NaN.
    any_valid = mask.any(dim=dim, keepdim=True)
    logits = torch.where(any_valid, logits, torch.zeros_like(logits))
    return torch.softmax(logits, dim=dim) * mask


class CPCDetails(NamedTuple):
    """Every intermediate of the context-perceived cell, for the book's figures."""

    q: torch.Tensor  # (B, L, d), eq 1
    k: torch.Tensor  # (B, L, d), eq 1
    v: torch.Tensor  # (B, L, d), eq 1
    gate_q: torch.Tensor  # (B, L, d), eq 4
    gate_k: torch.Tensor  # (B, L, d), eq 4
    attention: torch.Tensor  # (B, L, L), the softmax of eq 6 (rows: queries)
    output: torch.Tensor  # (B, L, d), eq 7


class ContextPerceivedCell(nn.Module):
    """Gated self-attention with a residual connection, CPC(Y) (eqs 1-7).

    Q, K, V = Y W_Q, Y W_K, Y W_V (eq 1, bias-free as printed);
    U = Q ∘ K (eq 3); G_Q = σ(U W_Q^G + b_Q^G), G_K = σ(U W_K^G + b_K^G) (eq 4);
    Q̂ = Q ∘ G_Q, K̂ = K ∘ G_K (eq 5, reading the printed G_V as G_K);
    Â = softmax(Q̂ K̂ᵀ / √d) V (eq 6, d_K = d_V = d); CPC(Y) = Â + Y (eq 7).

    ``forward(y, mask)``: y (B, L, d); mask (B, L) bool, True = valid. Padded
    keys never receive attention and padded rows of the output are zero, so
    padding cannot leak into any later step.

    The gating is CAMERA's adaptive gating self-attention (Qu et al., ACM MM
    2020), which the paper does not cite, in a one-head form without
    CAMERA's extra query/key layers and batch norm (chapter 2).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.gate_q = nn.Linear(dim, dim)
        self.gate_k = nn.Linear(dim, dim)

    def details(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> CPCDetails:
        """Run eqs 1-7 and return every intermediate (see :class:`CPCDetails`)."""
        q, k, v = self.w_q(y), self.w_k(y), self.w_v(y)
        u = q * k
        g_q = torch.sigmoid(self.gate_q(u))
        g_k = torch.sigmoid(self.gate_k(u))
        logits = (q * g_q) @ (k * g_k).transpose(-1, -2) / math.sqrt(self.dim)
        key_mask = None if mask is None else mask[:, None, :]
        attention = masked_softmax(logits, key_mask, dim=-1)
        if mask is not None:
            attention = attention * mask[:, :, None]  # padded queries attend to nothing
        out = attention @ v + y
        if mask is not None:
            out = out * mask[..., None]
        return CPCDetails(q, k, v, g_q, g_k, attention, out)

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.details(y, mask).output


POSITION_TUPLES = ("ours", "camera")


def position_features(boxes: torch.Tensor, image_size: torch.Tensor,
                      variant: str = "ours") -> torch.Tensor:
    """Absolute position six-tuple s̃_i of each region, the input of eq 9.

    boxes (..., 4): pixel x1, y1, x2, y2; image_size (..., 2): width W,
    height H (broadcast against boxes' leading dims). Boxes are clipped to
    the image first; w = (x2 − x1)/W and h = (y2 − y1)/H are the box's width
    and height *relative to the image*. Returns (..., 6), by ``variant``
    (``CCCLConfig.position_tuple``):

    * ``"ours"`` (the default, in [0, 1]): x1/W, y1/H, x2/W, y2/H, w·h (the
      five readable quantities of the garbled eq 9) and, sixth, w/(w + h).
      Because w and h are relative, the sixth is 0.5 when the box has the
      *image's* aspect ratio (a square box only in a square image), 0 for a
      vertical line, 1 for a horizontal one, 0.5 for an empty box: a
      100 × 100 box in a 200 × 100 image has w = 0.5, h = 1 and gives 1/3.
      It is our choice: a bounded stand-in for CAMERA's aspect ratio.
    * ``"camera"``: CAMERA's tuple (Qu et al. 2020, ``absoluteEncode`` in
      its code), x1/W, y1/H, w, h, the box's own aspect ratio in pixels
      w_px/h_px (unbounded: 1 for a square box in any image), then the area
      w·h. A box of zero pixel height gets 0 there instead of CAMERA's
      inf/NaN, and boxes are clipped like ours (CAMERA does not clip).

    Eq 9's position encoder σ(s̃ W_S + b_S) and its product with the region
    embedding (eq 10) are CAMERA's too (chapter 2 credits them).
    """
    if variant not in POSITION_TUPLES:
        raise ValueError(f"position_features: variant must be one of {POSITION_TUPLES}, "
                         f"got {variant!r}")
    boxes = torch.as_tensor(boxes)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    image_size = torch.as_tensor(image_size, dtype=boxes.dtype, device=boxes.device)
    if boxes.shape[-1] != 4 or image_size.shape[-1] != 2:
        raise ValueError(
            "position_features: expected boxes (..., 4) and image_size (..., 2), "
            f"got {tuple(boxes.shape)} and {tuple(image_size.shape)}"
        )
    if not bool((image_size > 0).all()):
        raise ValueError("position_features: image_size must be positive (width, height)")
    # One size per image, many boxes: align the size's leading dims with the
    # boxes' leading dims, then broadcast over the remaining box dims.
    extra = boxes.dim() - image_size.dim()
    if extra > 0:
        image_size = image_size.reshape(*image_size.shape[:-1], *([1] * extra), 2)
    rel = (boxes / torch.cat([image_size, image_size], dim=-1)).clamp(0.0, 1.0)
    w = (rel[..., 2] - rel[..., 0]).clamp(min=0.0)
    h = (rel[..., 3] - rel[..., 1]).clamp(min=0.0)
    area = w * h
    if variant == "camera":
        w_px, h_px = w * image_size[..., 0], h * image_size[..., 1]
        ratio = torch.where(h_px > 0, w_px / h_px.clamp(min=1e-12), torch.zeros_like(w_px))
        return torch.stack([rel[..., 0], rel[..., 1], w, h, ratio, area], dim=-1)
    shape = torch.where(w + h > 0, w / (w + h).clamp(min=1e-12), torch.full_like(w, 0.5))
    return torch.cat([rel, area[..., None], shape[..., None]], dim=-1)


def box_centres(positions: torch.Tensor, variant: str = "ours") -> torch.Tensor:
    """Each region's box centre, relative to the image and centred on it:
    (x/W − ½, y/H − ½) in [−½, ½], from the six-tuple of
    :func:`position_features` (``variant`` as there). positions (..., 6) →
    (..., 2). Used by ``VisualEmbedding(centre_scale=...)``.
    """
    if variant not in POSITION_TUPLES:
        raise ValueError(f"box_centres: variant must be one of {POSITION_TUPLES}, got {variant!r}")
    if variant == "ours":  # x1, y1, x2, y2, ...
        centre = (positions[..., 0:2] + positions[..., 2:4]) / 2
    else:  # CAMERA's x1, y1, w, h, ...
        centre = positions[..., 0:2] + positions[..., 2:4] / 2
    return centre - 0.5


# How eq 10 joins a region's embedding and its position (VisualEmbedding).
POSITION_FUSIONS = ("product", "sum")


class VisualEmbedding(nn.Module):
    """Regions to context-perceived visual embeddings V (eqs 8-10).

    Q̂ = Q W_Q + b_Q (eq 8, d_F → d); Ŝ = σ(S̃ W_S + b_S) (eq 9, 6 → d);
    V = CPC(Q̂ ∘ Ŝ) (eq 10): CAMERA's position encoder and its product with
    the region embedding. Ablations: ``use_position=False`` ("w/o POS")
    gives V = CPC(Q̂); ``use_cpc=False`` ("w/o V-CPC") drops the cell.

    ``position_fusion``: "product" is eq 10 as printed; "sum" is a reading
    of ours, V = CPC(Q̂ + S̃ W_S + b_S) (the position enters as an additive
    embedding, as in Transformers, with no sigmoid). Chapter 11 measures both:
    with either, relations stay at chance in the lite recipe, and neither
    lets Branch 2 learn them even when asked for them directly (its
    "relation fit" rows; readings appendix, "Eq 10").

    ``centre_scale`` ρ > 0, a reading of ours (readings appendix, "Eq 8"):
    the box centre c = :func:`box_centres` also enters eq 8 as two more
    feature columns, Q̂ = [Q, ρ c] W_Q + b_Q, beside eq 10's gate; ρ puts
    them at the features' scale (chapter 11's rows use
    ``cccl_lite.model.cccl.LITE_CENTRE_SCALE``, about the synthetic regions' mean
    norm; its "centre oracle" rows measure the same form made by the data
    file). "w/o POS" drops it with eq 9. 0 (the default): off.

    ``forward(regions, positions, mask)``: regions (B, n, d_F), positions
    (B, n, 6) from :func:`position_features` (ignored, may be None, without
    position), mask (B, n) bool. Returns V (B, n, d), zero at padded regions.
    """

    def __init__(self, region_dim: int, dim: int, use_position: bool = True,
                 use_cpc: bool = True, position_fusion: str = "product",
                 centre_scale: float = 0.0, position_tuple: str = "ours"):
        super().__init__()
        if position_fusion not in POSITION_FUSIONS:
            raise ValueError(f"VisualEmbedding: position_fusion must be one of "
                             f"{POSITION_FUSIONS}, got {position_fusion!r}")
        if not centre_scale >= 0:
            raise ValueError(f"VisualEmbedding: centre_scale must be >= 0, got {centre_scale!r}")
        self.position_fusion, self.position_tuple = position_fusion, position_tuple
        self.centre_scale = float(centre_scale) if use_position else 0.0
        self.project = nn.Linear(region_dim + (2 if self.centre_scale else 0), dim)
        self.position = nn.Linear(6, dim) if use_position else None
        self.cpc = ContextPerceivedCell(dim) if use_cpc else None

    def forward(self, regions, positions=None, mask=None):
        if self.position is not None and positions is None:
            raise ValueError("VisualEmbedding: positions are required (or use 'w/o POS')")
        if self.centre_scale:
            centre = box_centres(positions, self.position_tuple) * self.centre_scale
            regions = torch.cat([regions, centre.to(regions.dtype)], dim=-1)
        x = self.project(regions)
        if self.position is not None:
            if self.position_fusion == "product":
                x = x * torch.sigmoid(self.position(positions))  # eq 10
            else:
                x = x + self.position(positions)
        if self.cpc is not None:
            return self.cpc(x, mask)
        return x if mask is None else x * mask[..., None]


class BiGRUWordEncoder(nn.Module):
    """Word vectors from a Bi-GRU: over learned embeddings of word ids (the
    "w/o BERT" ablation), or, with ``vocab_size=None``, over given word
    vectors of ``in_dim`` (``CCCLConfig.word_gru``: a trained context layer
    over the frozen MiniLM vectors).

    ``forward(words, mask)``: words (B, m) int64 ids (0 = padding) or
    (B, m, in_dim) float vectors; mask (B, m) bool with the valid words first
    (padding at the end only). Returns (B, m, out_dim), the two directions'
    states concatenated, zero at padding (packed sequences, so the backward
    direction never reads padding).
    """

    def __init__(self, vocab_size: int | None, out_dim: int, embed_dim: int = 300,
                 in_dim: int | None = None):
        super().__init__()
        if out_dim % 2:
            raise ValueError("BiGRUWordEncoder: out_dim must be even (two directions)")
        if (vocab_size is None) == (in_dim is None):
            raise ValueError("BiGRUWordEncoder: give vocab_size (word ids) or in_dim (vectors)")
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0) if vocab_size else None
        self.gru = nn.GRU(embed_dim if vocab_size else in_dim, out_dim // 2, batch_first=True,
                          bidirectional=True)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]):
            raise ValueError("BiGRUWordEncoder: the mask must put valid words first")
        lengths = lengths.clamp(min=1).cpu()
        x = self.embed(words) if self.embed is not None else words
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=words.shape[1])
        return out * mask[..., None]


class TextualEmbedding(nn.Module):
    """Word vectors to context-perceived textual embeddings T (eqs 11-12).

    Ê = E W_E + b_E (eq 11, d_E → d); T = CPC(Ê) (eq 12). E holds one row per
    *word* (WordPieces mean-pooled; readings appendix, "Eqs 11–12"). Ablations: ``use_cpc=False``
    ("w/o T-CPC"); ``vocab_size`` set ("w/o BERT") makes E come from a
    :class:`BiGRUWordEncoder` over word ids instead of pretrained vectors.
    ``word_gru=True``, a reading of ours for frozen word vectors (readings
    appendix, "Eqs 11–12"): a Bi-GRU over the pretrained vectors (d_E → d_E)
    before eq 11, a trained context layer standing in for fine-tuning the
    encoder's top, which the paper does not say whether it does.

    ``forward(words, mask)``: words (B, m, d_E) float, or (B, m) int64 ids
    for "w/o BERT"; mask (B, m) bool. Returns T (B, m, d), zero at padding.
    """

    def __init__(self, word_dim: int, dim: int, use_cpc: bool = True,
                 vocab_size: int | None = None, word_gru: bool = False):
        super().__init__()
        self.words = BiGRUWordEncoder(vocab_size, word_dim) if vocab_size else None
        self.context = BiGRUWordEncoder(None, word_dim, in_dim=word_dim) \
            if word_gru and not vocab_size else None
        self.project = nn.Linear(word_dim, dim)
        self.cpc = ContextPerceivedCell(dim) if use_cpc else None

    def forward(self, words, mask=None):
        if self.words is not None:
            if words.is_floating_point():
                raise ValueError("TextualEmbedding: 'w/o BERT' expects word ids (B, m) int64")
            if mask is None:
                mask = words != 0
            words = self.words(words, mask)
        elif not words.is_floating_point():
            raise ValueError("TextualEmbedding: expected word vectors (B, m, d_E) float")
        elif self.context is not None:
            words = self.context(words, words.abs().sum(-1) > 0 if mask is None else mask)
        x = self.project(words)
        if self.cpc is not None:
            return self.cpc(x, mask)
        return x if mask is None else x * mask[..., None]
