"""The first checkers: CPC (eqs 1-7), VSF (eq 15), the triplet term (eq 33),
R@K (eqs 35-36), the residual GCN (eq 24), Fig 6's rank scores, feature
sizes (chapter 9) and pairwise accuracy (chapter 6). Each signature is in its
docstring; :mod:`cccl_lite.book.exercises.core` compares and reports.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from cccl_lite.model.align import vector_similarity
from cccl_lite.model.loss import alignment_term
from cccl_lite.engine.metrics import KEYS, recall_at_k
from cccl_lite.model.perceive import ContextPerceivedCell, masked_softmax
from cccl_lite.model.reason import ResidualGCN
from cccl_lite.book.visualize import rank_scores
from cccl_lite.book.exercises.core import CheckResult, _check, _fail, _gen, _number, _raised
from cccl_lite.data.difficulty import pairwise_accuracy


# ---- eqs 1-7 -------------------------------------------------------------------


def check_cpc(student: Callable, dim: int = 8) -> CheckResult:
    """Check ``student(Y, mask, W_Q, W_K, W_V, W_QG, b_QG, W_KG, b_KG) -> CPC(Y)``.

    Y (B, L, d); mask (B, L) bool, True = valid (padded keys get no attention;
    padded output rows may be anything: they are compared as zeros); weights
    (d, d) used as Y @ W (paper convention), biases (d,). Eqs 1-7 with the
    reading G_K gates K (eq 5 prints G_V).
    """
    def reference(y, mask, w_q, w_k, w_v, w_qg, b_qg, w_kg, b_kg):
        # The package's cell, run with the given tensors as its parameters
        # (nn.Linear stores W transposed), so gradients reach them.
        return torch.func.functional_call(ContextPerceivedCell(y.shape[-1]), {
            "w_q.weight": w_q.T, "w_k.weight": w_k.T, "w_v.weight": w_v.T,
            "gate_q.weight": w_qg.T, "gate_q.bias": b_qg, "gate_k.weight": w_kg.T,
            "gate_k.bias": b_kg}, (y, mask))

    def masked(student_fn):
        def run(y, mask, *weights):
            out = student_fn(y, mask, *weights)
            return out * mask[..., None] if isinstance(out, torch.Tensor) else out
        return run

    def trial(seed, lengths):
        def make():
            g = _gen(seed)
            b, L = len(lengths), max(lengths)
            y = torch.randn(b, L, dim, generator=g, dtype=torch.float64)
            mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
            w = [torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim ** 0.5
                 for _ in range(5)]
            bq, bk = (torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(2))
            return (y, mask, w[0], w[1], w[2], w[3], bq, w[4], bk), {}
        return make

    trials = [trial(0, [5, 5]), trial(1, [6, 3, 1]), trial(2, [4, 2])]
    return _check("CPC (eqs 1-7)", masked(student), masked(reference), trials, atol=1e-8)


# ---- eq 15 ---------------------------------------------------------------------


def check_vsf(student: Callable, dim: int = 10, sim_dim: int = 6) -> CheckResult:
    """Check ``student(a, b, W) -> VSF(a, b, W)`` (eq 15): a, b broadcastable
    (..., d), W (P, d); returns (..., P), W|a − b|² divided by its l2 norm."""
    def trial(seed, shape_a, shape_b):
        def make():
            g = _gen(seed)
            a = torch.randn(*shape_a, dim, generator=g, dtype=torch.float64)
            b = torch.randn(*shape_b, dim, generator=g, dtype=torch.float64)
            w = torch.randn(sim_dim, dim, generator=g, dtype=torch.float64)
            return (a, b, w), {}
        return make

    trials = [trial(0, (4,), (4,)), trial(1, (3, 1), (1, 5)), trial(2, (2, 3, 1), (1, 1, 4))]
    return _check("VSF (eq 15)", student, vector_similarity, trials, atol=1e-8)


# ---- eq 33 ---------------------------------------------------------------------


def check_triplet(student: Callable) -> CheckResult:
    """Check ``student(scores, margin) -> L_t`` (eq 33): scores (B, B) with the
    positives on the diagonal; hardest negative per row and per column; the
    sum over the batch, a 0-d tensor.

    The last trial's scores are all below 0 (cosines can be): a positive
    masked out of the max with 0 instead of −inf then wins the max and is
    taken for the hardest negative, which the checker names."""
    def trial(seed, b, margin, low=0.0):
        def make():
            s = torch.rand(b, b, generator=_gen(seed), dtype=torch.float64) + low
            return (s,), {"margin": margin}
        return make

    def zero_masked(s, margin):
        off = s.masked_fill(torch.eye(len(s), dtype=torch.bool), 0.0)
        d = s.diagonal()
        return ((margin - d + off.max(1).values).clamp(min=0).sum()
                + (margin - d + off.max(0).values).clamp(min=0).sum())

    mistakes = [("the positive was masked with 0, so where every score is below 0 it "
                 "wins the max: mask it with -inf (or a value below every score)", zero_masked)]
    trials = [trial(0, 4, 0.2), trial(1, 7, 0.2), trial(2, 5, 0.5), trial(3, 2, 0.0),
              trial(4, 5, 0.2, low=-1.2)]
    return _check("triplet term (eq 33)", student,
                  lambda s, margin: alignment_term(s, margin), trials, atol=1e-8,
                  mistakes=mistakes)


# ---- eqs 35-36 -----------------------------------------------------------------


def check_recall(student: Callable) -> CheckResult:
    """Check ``student(sims) -> dict`` of R@K and R@sum in percent (eqs 35-36):
    sims (N, 5N) numpy, caption j belongs to image j // 5; keys i2t_r1, i2t_r5,
    i2t_r10, t2i_r1, t2i_r5, t2i_r10, rsum. Ties count against the model."""
    rng = np.random.default_rng(0)
    cases = [rng.normal(size=(12, 60)), rng.integers(0, 3, size=(15, 75)).astype(float),
             np.eye(11).repeat(5, axis=1) + 0.1 * rng.normal(size=(11, 55))]
    name = "R@K (eqs 35-36)"
    for t, sims in enumerate(cases):
        want = recall_at_k(sims)
        try:
            got = student(sims.copy())
        except Exception as e:
            return _raised(name, t, e)
        if not isinstance(got, dict):
            return _fail(name, t, f"expected a dict, got {type(got).__name__}")
        missing = [k for k in KEYS if k not in got]
        if missing:
            return _fail(name, t, f"missing keys {missing}")
        wrong = [f"{k}: yours {float(got[k]):.2f}, expected {want[k]:.2f}" for k in KEYS
                 if not np.isclose(float(got[k]), want[k], atol=1e-6)]
        if wrong:
            hint = " (this trial has tied scores)" if t == 1 else ""
            return _fail(name, t, "; ".join(wrong) + hint)
    return CheckResult(True, f"✓ {name}: matches the reference on {len(cases)} score matrices, "
                             "ties included.")


# ---- eq 24 ---------------------------------------------------------------------


def check_gcn(student: Callable, dim: int = 8) -> CheckResult:
    """Check ``student(H, W_e, W_G, W_R) -> Ĥ``, eq 24 with W_R on the feature
    side (chapter 3's reading): Ĥ = H + (W_e H W_G) W_R.

    H (B, N, d); W_e (B, N, N) edge weights, rows summing to 1 over each
    graph's valid nodes and 0 at padded ones; W_G, W_R (d, d) used as
    H @ W (paper convention). Padded output rows may be anything: they are
    compared as zeros, as :class:`cccl_lite.model.reason.ResidualGCN` returns them.
    """
    def reference(h, w_e, w_g, w_r, mask):
        return torch.func.functional_call(ResidualGCN(h.shape[-1]), {
            "w_g.weight": w_g.T, "w_r.weight": w_r.T}, (h, w_e, mask))

    def masked(fn, with_mask):
        def run(h, w_e, w_g, w_r, mask):
            out = fn(h, w_e, w_g, w_r, mask) if with_mask else fn(h, w_e, w_g, w_r)
            return out * mask[..., None] if isinstance(out, torch.Tensor) else out
        return run

    def trial(seed, lengths):
        def make():
            g = _gen(seed)
            b, n = len(lengths), max(lengths)
            mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
            h = torch.randn(b, n, dim, generator=g, dtype=torch.float64) * mask[..., None]
            logits = torch.randn(b, n, n, generator=g, dtype=torch.float64)
            w_e = masked_softmax(logits, mask[:, None, :]) * mask[..., None]
            w_g, w_r = (torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim ** 0.5
                        for _ in range(2))
            return (h, w_e, w_g, w_r, mask), {}
        return make

    trials = [trial(0, [4, 4]), trial(1, [6, 3, 1]), trial(2, [5, 2])]
    return _check("residual GCN (eq 24)", masked(student, False), masked(reference, True),
                  trials, atol=1e-8)


# ---- Fig 6 ---------------------------------------------------------------------


def check_rank_scores(student: Callable) -> CheckResult:
    """Check ``student(sims, mu=100.0) -> scores``, Fig 6's region scores
    μ (n − rank)² for one image's similarities (a 1-D numpy array, every
    region valid): rank 1 for the largest similarity, ties ranked in region
    order. The answer may be a numpy array, a tensor or a list of n numbers.
    """
    rng = np.random.default_rng(0)
    cases = [(rng.normal(size=5), 100.0), (rng.normal(size=12), 1.0),
             (np.array([0.2, 0.7, 0.2, 0.5, 0.7]), 100.0), (np.array([3.0]), 100.0)]
    name = "Fig 6 rank scores"
    for t, (sims, mu) in enumerate(cases):
        want = rank_scores(torch.from_numpy(sims), mu=mu).numpy()
        try:
            got = student(sims.copy(), mu=mu)
        except Exception as e:
            return _raised(name, t, e)
        try:
            got = np.asarray(got.detach() if isinstance(got, torch.Tensor) else got,
                             dtype=float).reshape(-1)
        except (TypeError, ValueError):
            return _fail(name, t, f"expected n numbers, got {type(got).__name__}")
        if got.shape != want.shape:
            return _fail(name, t, f"{got.size} scores for {want.size} regions")
        if not np.allclose(got, want, atol=1e-9):
            i = int(np.argmax(np.abs(got - want)))
            hint = ""
            if np.isclose(got.max(), mu * len(sims) ** 2):
                hint = " (does rank 1, not 0, go to the best region?)"
            elif t == 2:
                hint = " (this trial has tied similarities: they rank in region order)"
            return _fail(name, t, f"region {i}: yours {got[i]:.6g}, expected {want[i]:.6g} "
                                  f"(similarities {np.round(sims, 3).tolist()}, μ = {mu:g})"
                                  + hint)
    return CheckResult(True, f"✓ {name}: matches `rank_scores` on {len(cases)} rows, "
                             "ties and a single region included.")


# ---- the data-size arithmetic of chapter 9 ------------------------------------


def check_feature_size(student: Callable) -> CheckResult:
    """Check ``student(n_images, n_regions, dim, bytes_per_number) -> GiB``:
    the size of a (n_images, n_regions, dim) feature array, in GiB (2³⁰
    bytes), as a number. The reference is the product divided by 2³⁰."""
    cases = [(113_287, 36, 2048, 4), (113_287, 36, 2048, 2), (31_014, 36, 2048, 4),
             (3_000, 12, 256, 2)]
    name = "feature size in GiB"
    for t, args in enumerate(cases):
        want = float(np.prod(args, dtype=np.float64)) / 2 ** 30
        got, failed = _number(name, t, student, *args)
        if failed is not None:
            return failed
        if not np.isclose(got, want, rtol=1e-6):
            hint = ""
            if np.isclose(got, want * 2 ** 30 / 1e9, rtol=1e-6):
                hint = " (that is GB, 10⁹ bytes; a GiB is 2³⁰ bytes)"
            elif np.isclose(got, want * 2 ** 30, rtol=1e-6):
                hint = " (that is bytes: divide by 2³⁰)"
            return _fail(name, t, f"{args}: yours {got:.4g}, expected {want:.4g} GiB{hint}")
    return CheckResult(True, f"✓ {name}: right for {len(cases)} arrays, from COCO's "
                             "training split to the synthetic scenes.")


# ---- chapter 6: pairwise accuracy on hard negatives ----------------------------


def check_pairwise_accuracy(student: Callable) -> CheckResult:
    """Check ``student(own, negative) -> percent``: the share of pairs whose own
    score is higher than the negative's, ties counting one half, in percent
    (``cccl_lite.data.difficulty.pairwise_accuracy``). own, negative: 1-D
    arrays of equal length, small integers in most trials, so ties abound."""
    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 4, size=(2, 50)) for _ in range(3)]
    cases += [rng.normal(size=(2, 30)), np.ones((2, 7))]
    name = "pairwise accuracy"
    for t, (own, negative) in enumerate(cases):
        want = pairwise_accuracy(own, negative)
        got, failed = _number(name, t, student, own.copy(), negative.copy())
        if failed is not None:
            return failed
        if not np.isclose(got, want, atol=1e-9):
            hint = ""
            if np.isclose(got * 100, want):
                hint = " (a fraction: the book prints percent)"
            elif np.isclose(got, 100 * np.mean(own > negative)):
                hint = " (ties should count one half)"
            return _fail(name, t, f"yours {got:.4g}, expected {want:.4g}{hint}")
    return CheckResult(True, f"✓ {name}: matches the reference on {len(cases)} cases, "
                             "most with ties.")

