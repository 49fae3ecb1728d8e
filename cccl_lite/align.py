"""Align: vector similarity and the three branches' similarity vectors (eqs 13-20, 27).

Taught in chapter 4 ("Align"). Every branch scores *every* image of a batch
against *every* text: inputs are (B_i, …) image tensors and (B_t, …) text
tensors; outputs are (B_i, B_t, P) similarity vectors, which the shared MLP
of eq 28 (``cccl_lite.loss``) turns into scores.

Readings taken where the paper is ambiguous (see NOTES.md):

* eq 14 prints W_v twice: images and texts get separate layers W_v, W_t.
* eq 15 has no bias (SGRAF adds one): :func:`vector_similarity` has none.
* eq 17: M̄ = relu(M) l2-normalised over the *query* axis, then a softmax
  with temperature λ (SCAN/SGRAF use 9; not the loss weight of eq 34) over
  the attended axis, as SCAN's ``func_attention`` does.
* "w/o VSF" (Table 6) replaces VSF by the cosine similarity: each branch's
  similarity "vector" is then the 1-vector [cos(a, b)].

Branch 2 has a readable ``forward`` (the equations as printed, taught in
the book) and a ``fast_forward`` with the same result up to float rounding
(chapter 10, ``benchmarks/``): the cosines once for both directions, the
softmax written out, the masked mean of eqs 18-19 as one product; on the
CPU without autograd its per-pair part runs in a fused C++ kernel
(:mod:`cccl_lite.fused`).
:func:`vsf_all_pairs` computes Branch 1's VSF by matrix products instead,
W|a − b|² = W a² + W b² − 2 W(a∘b); it does the same multiply-adds, ran
faster at some sizes and slower at others on our CPU (benchmarks/README.md)
and loses precision when a ≈ b, so the model does not use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fused

# Pairs per tile of the fused Branch 2: its (pairs·(n + m), d) rows stay in cache
# (64 to 256 ran about equally fast here at the lite shape).
_FUSED_TILE = 128

__all__ = [
    "vector_similarity",
    "vsf_all_pairs",
    "cosine_similarity_vector",
    "masked_pool",
    "cross_attention",
    "GlobalBranch",
    "LocalBranch",
    "RelationSimilarity",
]


def vector_similarity(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """VSF(a, b, W) = W|a − b|² / ‖W|a − b|²‖₂ (eq 15), bias-free.

    a, b: broadcastable (..., d); weight: (P, d). Returns (..., P) of unit l2
    norm (the zero vector when a = b exactly).
    """
    return F.normalize(F.linear((a - b) ** 2, weight), dim=-1)


def vsf_all_pairs(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """VSF(a_i, b_j, W) (eq 15) for every i, j by matrix products: (B_a, B_b, P).

    a (B_a, d), b (B_b, d), weight (P, d). W|a − b|² = W a² + W b² − 2 W(a∘b):
    the first two are per item, the last one GEMM (B_a, d) @ (d, B_b·P); no
    (B_a, B_b, d) tensor, but B_b·P·d memory for the cross term. The
    subtraction loses relative precision when a ≈ b (exact in real
    arithmetic). Same result as ``vector_similarity(a[:, None], b[None], W)``.
    """
    b_a, b_b, p = a.shape[0], b.shape[0], weight.shape[0]
    # Σ_k a_ik (b_jk W_pk): one GEMM (B_a, d) @ (d, B_b·P), laid out (B_a, B_b, P).
    cross = a @ (b[:, None, :] * weight).reshape(b_b * p, -1).t()
    y = cross.view(b_a, b_b, p).mul_(-2.0)
    y = y.add_(F.linear(a * a, weight)[:, None, :]).add_(F.linear(b * b, weight)[None, :, :])
    # In real arithmetic y >= 0 (W may have negative entries, so no clamp here).
    return F.normalize(y, dim=-1)


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


def _vsf_mean(weights, context, query, weight, query_valid, length):
    """1/L Σ_q VSF(x_q, u_q, W) over valid queries (eqs 18-19) for every pair.

    weights ω (B_y, B_x·L_q, L_c) with the context batch B_y leading; context
    (B_y, L_c, d); query x (1, B_x·L_q, d); query_valid (B_x, L_q) float.
    u = ω @ context. Returns (B_y, B_x, P).
    """
    b_y, b_x = weights.shape[0], query_valid.shape[0]
    diff = torch.baddbmm(query, weights, context, beta=-1)  # u − x, (B_y, B_x·L_q, d)
    diff = diff.square() if torch.is_grad_enabled() else diff.square_()
    y = torch.matmul(diff, weight.t())  # W(x − u)², (B_y, B_x·L_q, P)
    coef = query_valid / query_valid.sum(1, keepdim=True).clamp(min=1)  # the mean's weights
    coef = coef[None] / torch.linalg.vector_norm(y, dim=-1).view(b_y, b_x, length).clamp(min=1e-12)
    out = torch.matmul(coef.view(b_y * b_x, 1, length), y.view(b_y * b_x, length, -1))
    return out.view(b_y, b_x, -1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
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
        s_vt = _masked_mean(self._sim(v[:, None], u_t, self.w_vt), v_mask[:, None, :], dim=2)
        u_v, _ = cross_attention(t, t_mask, v, v_mask, self.temperature)  # (B_t, B_i, m, d)
        s_tv = _masked_mean(self._sim(t[:, None], u_v, self.w_tv), t_mask[:, None, :], dim=2)
        return s_vt + s_tv.transpose(0, 1)

    def fast_forward(self, v, v_mask, t, t_mask):
        """sim^O as :meth:`forward`, (B_i, B_t, P), with less work and memory traffic.

        The same equations (17-20), reordered: cos(v_i, t_j) of every pair is
        one GEMM shared by both directions (only the normalisation
        axis differs); u − v comes out of the attention product itself
        (baddbmm); and the masked mean of the unit vectors of eqs 18-19 is a
        weighted sum Σ_i c_i W(v_i − u_i)² with c_i = mask_i / (n‖W(v_i − u_i)²‖),
        one product. Largest tensors: (B_i·B_t, n, d) and (B_i·B_t, m, d).
        Under "w/o VSF" it is :meth:`forward`.

        On the CPU without autograd (scoring), everything after the cosines runs
        in the fused C++ kernel of :mod:`cccl_lite.fused` when it can be built:
        the same equations pair by pair, no block-sized intermediate.
        """
        if self.w_vt is None:
            return self.forward(v, v_mask, t, t_mask)
        b_i, n, d = v.shape
        b_t, m, _ = t.shape
        vf, tf = v_mask.to(v.dtype), t_mask.to(t.dtype)
        # masked_fill, not a product: padding may hold anything (as cross_attention).
        # Padded rows are then exactly 0, and so are their cosines: relu(M) needs
        # no mask product.
        vn = F.normalize(v.masked_fill(~v_mask[..., None], 0.0), dim=-1)
        tn = F.normalize(t.masked_fill(~t_mask[..., None], 0.0), dim=-1)
        # relu(M) of eq 17 for every pair: one GEMM, (B_i, n, B_t, m).
        cos = (vn.reshape(b_i * n, d) @ tn.reshape(b_t * m, d).t()).view(b_i, n, b_t, m)
        rel = cos.relu_() if not torch.is_grad_enabled() else cos.relu()
        if 0 <= self.temperature <= 60 and fused.usable(rel, v, t, self.w_vt, self.w_tv):
            # The rest in C++ (cccl_lite.fused), pair by pair in cache-sized tiles.
            return fused.kernel().local_branch(rel, v, v_mask, t, t_mask, self.w_vt,
                                               self.w_tv, float(self.temperature), _FUSED_TILE)
        # Padded queries keep some weights here; _vsf_mean gives them weight 0.
        # V -> T: regions attend to words (l2 over regions, softmax over words),
        # laid out (B_t, B_i, n, m) for the product with T.
        w_vt = self._weights(rel.permute(2, 0, 1, 3).contiguous(), t_mask[:, None, None, :])
        sim_vt = _vsf_mean(w_vt.view(b_t, b_i * n, m), t, v.reshape(1, b_i * n, d),
                           self.w_vt, vf, n)  # (B_t, B_i, P)
        # T -> V: words attend to regions, laid out (B_i, B_t, m, n).
        w_tv = self._weights(rel.permute(0, 2, 3, 1).contiguous(), v_mask[:, None, None, :])
        sim_tv = _vsf_mean(w_tv.view(b_i, b_t * m, n), v, t.reshape(1, b_t * m, d),
                           self.w_tv, tf, m)  # (B_i, B_t, P)
        return sim_vt.transpose(0, 1) + sim_tv

    def paired(self, v, v_mask, t, t_mask):
        """sim^O of aligned pairs (image p, text p) only: V (B, n, d), T (B, m, d)
        and masks → (B, P). For re-ranking a list of pairs (two-stage retrieval)."""
        vn = F.normalize(v.masked_fill(~v_mask[..., None], 0.0), dim=-1)
        tn = F.normalize(t.masked_fill(~t_mask[..., None], 0.0), dim=-1)
        rel = torch.bmm(vn, tn.transpose(1, 2)).relu()  # 0 at padding (see fast_forward)
        w_vt = self._weights(rel[:, None], t_mask[:, None, None, :])[:, 0]  # (B, n, m)
        s_vt = _masked_mean(self._sim(v, torch.bmm(w_vt, t), self.w_vt), v_mask, dim=1)
        w_tv = self._weights(rel.transpose(1, 2)[:, None], v_mask[:, None, None, :])[:, 0]
        s_tv = _masked_mean(self._sim(t, torch.bmm(w_tv, v), self.w_tv), t_mask, dim=1)
        return s_vt + s_tv

    def _weights(self, rel, context):
        """ω of eq 17 from relu(M) (B_x, B_y, L_q, L_c), 0 at padding: l2 over the
        queries (dim 2), softmax over the valid contexts (``context`` mask,
        broadcast to rel; an empty context row gives 0, the reference's NaN -> 0).
        Padded queries get weights; callers give them weight 0 afterwards.

        The softmax is written out, exp(x)·mask / Σ exp(x)·mask: here
        λ M̄ lies in [0, λ] (M̄ <= 1 after the l2 step), so exp cannot overflow
        for λ <= 60 and no max is subtracted.
        """
        # sqrt of a sum of squares: torch's norm over a short inner axis ran >10x
        # slower. Clamped before the sqrt (= after it, at 1e-8) so that its
        # gradient stays finite for an all-zero column.
        norm = rel.square().sum(dim=2, keepdim=True).clamp(min=1e-16).sqrt()
        logits = (rel / norm).mul_(self.temperature)
        if self.temperature > 60:
            logits = logits - logits.amax(dim=-1, keepdim=True)
        weights = torch.exp(logits) if torch.is_grad_enabled() else logits.exp_()
        weights = weights * context.to(weights.dtype)
        total = weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)
        return weights / total if torch.is_grad_enabled() else weights.div_(total)

    def attention(self, v, v_mask, t, t_mask):
        """The weights ω of both directions, for heatmaps.

        Returns (ω_{V→T} (B_i, B_t, n, m), ω_{T→V} (B_t, B_i, m, n)).
        """
        return (cross_attention(v, v_mask, t, t_mask, self.temperature)[1],
                cross_attention(t, t_mask, v, v_mask, self.temperature)[1])


class RelationSimilarity(nn.Module):
    """Branch 3's score vector sim^R = VSF(v^R, t^R, W^R) (eq 27).

    v^R, t^R: (B_i, B_t, d) relation vectors of every pair from
    ``cccl_lite.reason.CrossGRU`` (or (B_i, 1, d) / (1, B_t, d) without the
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
