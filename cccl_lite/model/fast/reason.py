"""Eq 26's per-pair recurrence regrouped for speed (chapter 10).

:func:`relation_recur` is :meth:`cccl_lite.model.reason.CrossGRU.recur` (the GRU as
PyTorch's ``nn.GRUCell`` computes it) rewritten with identities that hold in
real arithmetic, equal to it up to float rounding (tests/test_perf.py and
tests/test_fused.py compare both with ``nn.GRU`` run on each pair's
sequence). On the CPU without autograd its loop runs in the fused C++ kernel
of :mod:`cccl_lite.model.fast.fused`.
"""

from __future__ import annotations

import torch

from cccl_lite.model.reason import CrossGRU
from cccl_lite.model.fast import fused

# Pairs per tile of the fused kernel: at d = 64 a (1024, 3d) GEMM output stays in L2.
_FUSED_TILE = 1024

__all__ = ["relation_recur"]


def relation_recur(gru: CrossGRU, gi_nodes: torch.Tensor, mask: torch.Tensor,
                   h: torch.Tensor) -> torch.Tensor:
    """``gru.recur(gi_nodes, mask, h)`` with fewer and cheaper passes over the
    gates per step: gi_nodes (B_x, L, 3d), mask (B_x, L) bool, h (B_x, B_y, d)
    or broadcastable to it; returns (B_x, B_y, d), each pair's last valid state.

    The same GRU, rewritten with identities that hold in real arithmetic
    (chapter 10): tanh(x) = 2σ(2x) − 1 (on our CPU torch's tanh ran 5x slower
    than this form); 1 − z = σ(−a_z), by negating the z rows of W_hh,
    b_hh and the input projection; and the state is carried as
    g = (h + 1)/2, so that h' = n + z(h − n) becomes g' = g + (1 − z)(s − g)
    = lerp(g, s, 1 − z) with s = σ(2(i_n + r∘h_n)), and W_hh h + b_hh =
    2W_hh g + (b_hh − W_hh 1). Per step: one GEMM, two adds, two sigmoids,
    one addcmul, one lerp. Without autograd the activations run in place.
    Under bf16 autocast only the GEMM runs in bf16; the state and gates stay
    float32. Equal to ``gru.recur`` up to float rounding.

    On the CPU without autograd (scoring), the loop runs in the fused C++
    kernel of :mod:`cccl_lite.model.fast.fused` when it can be built: the same steps,
    tile by tile, skipping each item's padded nodes.
    """
    valid = mask.any(0).tolist()
    full = mask.all(0).tolist()
    steps = max((t + 1 for t, v in enumerate(valid) if v), default=0)
    d = gru.dim
    inplace = not torch.is_grad_enabled()
    w_hh, b_hh = gru.cell.weight_hh, gru.cell.bias_hh
    # Row scales of the gates: r as is, z negated (gives 1 − z), n doubled (gives 2x).
    sign = torch.ones(3 * d, dtype=w_hh.dtype, device=w_hh.device)
    sign[d:2 * d] = -1
    sign[2 * d:] = 2
    w_g = (2 * w_hh * sign[:, None]).t()
    b_g = (b_hh - w_hh.sum(1)) * sign
    # (B_x, L, 3d), once per item: −i_z and 2 i_n; the r, z biases folded in.
    gi = gi_nodes[:, :steps] * sign
    gi[..., :2 * d] += b_g[:2 * d]
    b_n = b_g[2 * d:]
    g = (h + 1) / 2
    if _fused_ok(gi, g, w_g):
        # The same loop in C++: tiles of pairs, no padded steps.
        return fused.kernel().cross_gru_recur(gi, mask[:, :steps], g, w_g, b_n, _FUSED_TILE)
    for t in range(steps):
        gh = torch.matmul(g, w_g)  # r: a_r, z: −a_z, n: 2 W_hn h, without biases
        if t == 0:
            # The state and the gates in the GEMM's dtype, at least float32: under
            # bf16 autocast g = (h + 1)/2 would lose h's small values in bf16.
            dt = torch.promote_types(gh.dtype, torch.float32)
            gi, b_n, g = gi.to(dt), b_n.to(dt), g.to(dt)
        rq = torch.add(gi[:, t, None, :2 * d], gh[..., :2 * d])  # gi broadcasts over B_y
        rq = rq.sigmoid_() if inplace else rq.sigmoid()
        r, q = rq[..., :d], rq[..., d:]  # r and 1 − z
        h_n = gh[..., 2 * d:].add_(b_n) if inplace else gh[..., 2 * d:] + b_n
        s = torch.addcmul(gi[:, t, None, 2 * d:], r, h_n)
        s = s.sigmoid_() if inplace else s.sigmoid()  # (n + 1)/2
        g_new = torch.lerp(g, s, q)
        g = g_new if full[t] else torch.where(mask[:, t, None, None], g_new, g)
    return (2 * g - 1).expand(gi_nodes.shape[0], -1, -1)


def _fused_ok(gi: torch.Tensor, g: torch.Tensor, w_g: torch.Tensor) -> bool:
    """Whether relation_recur hands its loop to the fused CPU kernel: start states
    (1 or B_x, B_y, d), and see :func:`fused.usable`."""
    return g.dim() == 3 and g.shape[0] in (1, gi.shape[0]) and fused.usable(gi, g, w_g)
