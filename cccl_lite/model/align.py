"""Align: vector similarity and the three branches' similarity vectors (eqs 13-20, 27).

Taught in chapter 4 ("Align"). Every branch scores *every* image of a batch
against *every* text: inputs are (B_i, …) image tensors and (B_t, …) text
tensors; outputs are (B_i, B_t, P) similarity vectors, which the shared MLP
of eq 28 (``cccl_lite.model.loss``) turns into scores.

Readings taken where the paper is ambiguous (the book's readings appendix,
"Align, Branches 1 and 2"):

* eq 14 prints W_v twice: images and texts get separate layers W_v, W_t.
* eq 15 has no bias (SGRAF adds one): :func:`vector_similarity` has none.
* eq 15's inputs are taken as they come: SGRAF l2-normalises the region and
  word embeddings, the global vectors and the attended vectors before the
  squared difference; the paper prints no normalisation, so none is applied
  (eq 17's cosine normalises only to weigh the attention; the attended
  vectors u are weighted sums of the raw vectors). Only VSF's output is
  unit length.
* the VSF matrices W (bare parameters, which have no PyTorch default) start
  Xavier-uniform; every other layer of the model keeps PyTorch's default
  initialisation (the paper names none; readings appendix, "Precision and
  initialisation").
* eq 17: M̄ = relu(M) l2-normalised over the *query* axis, then a softmax
  with temperature λ (SCAN/SGRAF use 9; not the loss weight of eq 34) over
  the attended axis, as SCAN's ``func_attention`` does.
* "w/o VSF" (Table 6) replaces VSF by the cosine similarity: each branch's
  similarity "vector" is then the 1-vector [cos(a, b)].

Each branch is written once, as printed (the book's reference). The same
equations regrouped for speed (chapter 10, ``benchmarks/``) live in
:mod:`cccl_lite.model.fast`; :class:`cccl_lite.model.cccl.CCCL` chooses between them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "vector_similarity",
    "cosine_similarity_vector",
    "masked_pool",
    "masked_mean",
    "cross_attention",
    "GlobalBranch",
    "LocalBranch",
    "RelationSimilarity",
]


def vector_similarity(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """VSF(a, b, W) = W|a − b|² / ‖W|a − b|²‖₂ (eq 15), bias-free.

    a, b: broadcastable (..., d), not normalised (the paper prints no
    normalisation; SGRAF l2-normalises its inputs); weight: (P, d). Returns
    (..., P) of unit l2 norm (the zero vector when a = b exactly).
    """
    return F.normalize(F.linear((a - b) ** 2, weight), dim=-1)


def cosine_similarity_vector(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) as a (..., 1) "similarity vector": VSF's stand-in in "w/o VSF"."""
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8)[..., None]


def masked_pool(x: torch.Tensor, mask: torch.Tensor, use_max: bool = True,
                use_avg: bool = True) -> torch.Tensor:
    """Global vector x̂ = maxpool(x) + avgpool(x) over valid positions (eq 13).

    x (B, L, d), mask (B, L) bool. "w/o A-Pool" keeps only the max,
    "w/o M-Pool" only the average. Returns (B, d).
    """
    if not (use_max or use_avg):
        raise ValueError("masked_pool: at least one of max and average pooling is needed")
    m = mask[..., None]
    out = 0
    if use_max:
        out = out + x.masked_fill(~m, float("-inf")).amax(dim=1).nan_to_num(0.0, 0.0, 0.0)
    if use_avg:
        out = out + x.masked_fill(~m, 0.0).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    return out


def cross_attention(query, query_mask, context, context_mask, temperature: float = 9.0):
    """Each query attends to the other item's context, for every pair (eq 17).

    M_ij = cos(q_i, c_j); M̄ = relu(M) l2-normalised over the query axis i;
    ω_ij = softmax_j(λ M̄_ij) over valid contexts; u_i = Σ_j ω_ij c_j.

    query (B_q, L_q, d), query_mask (B_q, L_q); context (B_c, L_c, d),
    context_mask (B_c, L_c). Returns (u, ω): u (B_q, B_c, L_q, d) and
    ω (B_q, B_c, L_q, L_c), every query item against every context item.
    """
    # masked_fill, not a product: padding may hold anything, even inf or NaN.
    query = query.masked_fill(~query_mask[..., None], 0.0)
    context = context.masked_fill(~context_mask[..., None], 0.0)
    qn, cn = F.normalize(query, dim=-1), F.normalize(context, dim=-1)
    m = torch.einsum("aid,bjd->abij", qn, cn)
    valid_q = query_mask[:, None, :, None]
    valid_c = context_mask[None, :, None, :]
    m = m.clamp(min=0) * valid_q * valid_c
    m = m / m.norm(dim=2, keepdim=True).clamp(min=1e-8)
    weights = torch.softmax(
        (temperature * m).masked_fill(~valid_c, float("-inf")), dim=-1
    )
    # A text may be empty after masking: its weights are NaN; make them 0.
    weights = weights.nan_to_num(0.0) * valid_q
    return torch.einsum("abij,bjd->abid", weights, context), weights


class GlobalBranch(nn.Module):
    """Branch 1: global vectors and their similarity sim^S (eqs 13-14, 16).

    v^S = W_v v̂ + b_v, t^S = W_t t̂ + b_t (eq 14, v̂, t̂ from eq 13);
    sim^S = VSF(v^S, t^S, W^S) (eq 16). The vectors v^S, t^S are also the
    cross vectors of Branch 3 (eq 26); ``scores=False`` ("w/o B-1") keeps
    them for Branch 3 and drops W^S.
    """

    def __init__(self, dim: int, sim_dim: int, use_max: bool = True, use_avg: bool = True,
                 use_vsf: bool = True, scores: bool = True):
        super().__init__()
        self.image_fc = nn.Linear(dim, dim)
        self.text_fc = nn.Linear(dim, dim)
        self.scores = scores
        self.w_s = nn.Parameter(torch.empty(sim_dim, dim)) if use_vsf and scores else None
        self.pool = dict(use_max=use_max, use_avg=use_avg)
        if self.w_s is not None:
            nn.init.xavier_uniform_(self.w_s)

    def image_vector(self, v, mask):
        """v^S (B_i, d) from V (B_i, n, d) (eqs 13-14)."""
        return self.image_fc(masked_pool(v, mask, **self.pool))

    def text_vector(self, t, mask):
        """t^S (B_t, d) from T (B_t, m, d) (eqs 13-14)."""
        return self.text_fc(masked_pool(t, mask, **self.pool))

    def forward(self, v_s: torch.Tensor, t_s: torch.Tensor) -> torch.Tensor:
        """sim^S (B_i, B_t, P) from v^S (B_i, d) and t^S (B_t, d) (eq 16)."""
        if not self.scores:
            raise RuntimeError("GlobalBranch was built without its score (w/o B-1)")
        return self.paired(v_s[:, None, :], t_s[None, :, :])

    def paired(self, v_s: torch.Tensor, t_s: torch.Tensor) -> torch.Tensor:
        """sim^S of aligned (or broadcastable) vectors: v_s, t_s (..., d) → (..., P)."""
        if not self.scores:
            raise RuntimeError("GlobalBranch was built without its score (w/o B-1)")
        if self.w_s is None:
            return cosine_similarity_vector(v_s, t_s)
        return vector_similarity(v_s, t_s, self.w_s)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """The 1/n Σ_i over valid positions of eqs 18-19: x (..., P) averaged over
    axis ``dim`` where ``mask`` (x's shape without its last axis, bool) is True;
    the zero vector where no position is valid."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


class LocalBranch(nn.Module):
    """Branch 2: cross-attention both ways and sim^O (eqs 17-20).

    sim^O_{V→T} = 1/n Σ_i VSF(v_i, u_i^T, W^O_{V→T}) (eq 18) over valid regions,
    sim^O_{T→V} = 1/m Σ_j VSF(t_j, u_j^V, W^O_{T→V}) (eq 19) over valid words,
    sim^O = sim^O_{V→T} + sim^O_{T→V} (eq 20), separate weights per direction.
    """

    def __init__(self, dim: int, sim_dim: int, temperature: float = 9.0, use_vsf: bool = True):
        super().__init__()
        self.temperature = temperature
        if use_vsf:
            self.w_vt = nn.Parameter(torch.empty(sim_dim, dim))
            self.w_tv = nn.Parameter(torch.empty(sim_dim, dim))
            nn.init.xavier_uniform_(self.w_vt)
            nn.init.xavier_uniform_(self.w_tv)
        else:
            self.w_vt = self.w_tv = None

    def _sim(self, a, b, weight):
        return cosine_similarity_vector(a, b) if weight is None else vector_similarity(a, b, weight)

    def forward(self, v, v_mask, t, t_mask):
        """sim^O (B_i, B_t, P) from V (B_i, n, d) and T (B_t, m, d) and masks."""
        u_t, _ = cross_attention(v, v_mask, t, t_mask, self.temperature)  # (B_i, B_t, n, d)
        s_vt = masked_mean(self._sim(v[:, None], u_t, self.w_vt), v_mask[:, None, :], dim=2)
        u_v, _ = cross_attention(t, t_mask, v, v_mask, self.temperature)  # (B_t, B_i, m, d)
        s_tv = masked_mean(self._sim(t[:, None], u_v, self.w_tv), t_mask[:, None, :], dim=2)
        return s_vt + s_tv.transpose(0, 1)

    def attention(self, v, v_mask, t, t_mask):
        """The weights ω of both directions, for heatmaps.

        Returns (ω_{V→T} (B_i, B_t, n, m), ω_{T→V} (B_t, B_i, m, n)).
        """
        return (cross_attention(v, v_mask, t, t_mask, self.temperature)[1],
                cross_attention(t, t_mask, v, v_mask, self.temperature)[1])


class RelationSimilarity(nn.Module):
    """Branch 3's score vector sim^R = VSF(v^R, t^R, W^R) (eq 27).

    v^R, t^R: (B_i, B_t, d) relation vectors of every pair from
    ``cccl_lite.model.reason.CrossGRU`` (or (B_i, 1, d) / (1, B_t, d) without the
    cross vector). Returns (B_i, B_t, P).
    """

    def __init__(self, dim: int, sim_dim: int, use_vsf: bool = True):
        super().__init__()
        self.w_r = nn.Parameter(torch.empty(sim_dim, dim)) if use_vsf else None
        if self.w_r is not None:
            nn.init.xavier_uniform_(self.w_r)

    def forward(self, v_r: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
        if self.w_r is None:
            return cosine_similarity_vector(v_r, t_r)
        return vector_similarity(v_r, t_r, self.w_r)
