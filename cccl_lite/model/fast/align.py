"""Branches 1 and 2 regrouped for speed (eqs 15, 17-20; chapter 10).

The equations are those of :mod:`cccl_lite.model.align`; here they are reordered
for less work and memory traffic, with the same results up to float rounding
(tests/test_perf.py and tests/test_fused.py compare them with
``LocalBranch.forward``, itself checked against scalar loops):

* :func:`local_similarity`: sim^O of every pair, the cosines once for both
  directions, the softmax written out, the masked mean of eqs 18-19 as one
  product; on the CPU without autograd its per-pair part runs in the fused
  C++ kernel of :mod:`cccl_lite.model.fast.fused`.
* :func:`local_similarity_pairs`: sim^O of aligned pairs only (image p,
  text p), for re-ranking a list of pairs.
* :func:`vsf_all_pairs`: Branch 1's VSF by matrix products,
  W|a − b|² = W a² + W b² − 2 W(a∘b). It does the same multiply-adds, ran
  faster at some sizes and slower at others on our CPU (benchmarks/README.md)
  and loses precision when a ≈ b, so the model does not use it; chapter 10
  times it against the direct form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cccl_lite.model.align import (LocalBranch, cosine_similarity_vector, masked_mean,
                                   vector_similarity)
from cccl_lite.model.fast import fused

# Pairs per tile of the fused Branch 2: its (pairs·(n + m), d) rows stay in cache
# (64 to 256 ran about equally fast here at the lite shape).
_FUSED_TILE = 128

__all__ = ["local_similarity", "local_similarity_pairs", "vsf_all_pairs"]


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


def _attention_weights(rel, context, temperature: float):
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
    logits = (rel / norm).mul_(temperature)
    if temperature > 60:
        logits = logits - logits.amax(dim=-1, keepdim=True)
    weights = torch.exp(logits) if torch.is_grad_enabled() else logits.exp_()
    weights = weights * context.to(weights.dtype)
    total = weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)
    return weights / total if torch.is_grad_enabled() else weights.div_(total)


def local_similarity(branch: LocalBranch, v, v_mask, t, t_mask) -> torch.Tensor:
    """sim^O as ``branch(v, v_mask, t, t_mask)``, (B_i, B_t, P), with less work
    and memory traffic.

    The same equations (17-20), reordered: cos(v_i, t_j) of every pair is
    one GEMM shared by both directions (only the normalisation
    axis differs); u − v comes out of the attention product itself
    (baddbmm); and the masked mean of the unit vectors of eqs 18-19 is a
    weighted sum Σ_i c_i W(v_i − u_i)² with c_i = mask_i / (n‖W(v_i − u_i)²‖),
    one product. Largest tensors: (B_i·B_t, n, d) and (B_i·B_t, m, d).
    Under "w/o VSF" it is ``branch.forward``.

    On the CPU without autograd (scoring), everything after the cosines runs
    in the fused C++ kernel of :mod:`cccl_lite.model.fast.fused` when it can be
    built: the same equations pair by pair, no block-sized intermediate.
    """
    if branch.w_vt is None:
        return branch(v, v_mask, t, t_mask)
    temperature = branch.temperature
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
    if 0 <= temperature <= 60 and fused.usable(rel, v, t, branch.w_vt, branch.w_tv):
        # The rest in C++, pair by pair in cache-sized tiles.
        return fused.kernel().local_branch(rel, v, v_mask, t, t_mask, branch.w_vt,
                                           branch.w_tv, float(temperature), _FUSED_TILE)
    # Padded queries keep some weights here; _vsf_mean gives them weight 0.
    # V -> T: regions attend to words (l2 over regions, softmax over words),
    # laid out (B_t, B_i, n, m) for the product with T.
    w_vt = _attention_weights(rel.permute(2, 0, 1, 3).contiguous(), t_mask[:, None, None, :],
                              temperature)
    sim_vt = _vsf_mean(w_vt.view(b_t, b_i * n, m), t, v.reshape(1, b_i * n, d),
                       branch.w_vt, vf, n)  # (B_t, B_i, P)
    # T -> V: words attend to regions, laid out (B_i, B_t, m, n).
    w_tv = _attention_weights(rel.permute(0, 2, 3, 1).contiguous(), v_mask[:, None, None, :],
                              temperature)
    sim_tv = _vsf_mean(w_tv.view(b_i, b_t * m, n), v, t.reshape(1, b_t * m, d),
                       branch.w_tv, tf, m)  # (B_i, B_t, P)
    return sim_vt.transpose(0, 1) + sim_tv


def _similarity(a, b, weight):
    """VSF(a, b, W) (eq 15), or cos(a, b) under "w/o VSF" (``weight`` None)."""
    return cosine_similarity_vector(a, b) if weight is None else vector_similarity(a, b, weight)


def local_similarity_pairs(branch: LocalBranch, v, v_mask, t, t_mask) -> torch.Tensor:
    """sim^O (eqs 17-20) of aligned pairs (image p, text p) only: V (B, n, d),
    T (B, m, d) and masks → (B, P); the diagonal of ``branch(v, v_mask, t,
    t_mask)``. For re-ranking a list of pairs (two-stage retrieval)."""
    vn = F.normalize(v.masked_fill(~v_mask[..., None], 0.0), dim=-1)
    tn = F.normalize(t.masked_fill(~t_mask[..., None], 0.0), dim=-1)
    rel = torch.bmm(vn, tn.transpose(1, 2)).relu()  # 0 at padding (see local_similarity)
    lam = branch.temperature
    w_vt = _attention_weights(rel[:, None], t_mask[:, None, None, :], lam)[:, 0]  # (B, n, m)
    s_vt = masked_mean(_similarity(v, torch.bmm(w_vt, t), branch.w_vt), v_mask, dim=1)
    w_tv = _attention_weights(rel.transpose(1, 2)[:, None], v_mask[:, None, None, :], lam)[:, 0]
    s_tv = masked_mean(_similarity(t, torch.bmm(w_tv, v), branch.w_tv), t_mask, dim=1)
    return s_vt + s_tv
