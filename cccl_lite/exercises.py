"""Checkers for the book's "write it yourself" exercises.

Each ``check_*`` runs a reader's function and the package's reference on the
same random inputs (a few trials, one with padding or ties where that
matters) and says what differs first: an exception, the output's type or
shape, its values (where, and by how much), or its gradient with respect to
the inputs. The result prints as one line and is truthy when all trials pass::

    >>> from cccl_lite.exercises import check_vsf
    >>> check_vsf(my_vsf)
    ✓ VSF (eq 15): matches the reference on 3 random inputs (values and gradients).

Conventions follow the paper (row vectors times weights), so the reader's
code can be written straight from the equations; see each checker for the
signature expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .align import vector_similarity
from .loss import alignment_term
from .metrics import KEYS, recall_at_k
from .perceive import ContextPerceivedCell

__all__ = ["CheckResult", "check_cpc", "check_vsf", "check_triplet", "check_recall"]


@dataclass
class CheckResult:
    """Outcome of a checker: ``ok`` and a one-line ``message``."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return self.message

    _repr_pretty_ = lambda self, p, cycle: p.text(self.message)  # noqa: E731 (IPython)


def _fail(name: str, trial: int, what: str) -> CheckResult:
    return CheckResult(False, f"✗ {name}: trial {trial + 1}: {what}")


def _compare_values(name, trial, got, want, atol) -> CheckResult | None:
    if not isinstance(got, torch.Tensor):
        return _fail(name, trial, f"expected a torch.Tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        return _fail(name, trial, f"output shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    diff = (got.detach().double() - want.detach().double()).abs()
    if not torch.isfinite(got.detach()).all() and torch.isfinite(want).all():
        return _fail(name, trial, "output has NaN or inf where the reference is finite")
    if diff.max() > atol:
        at = np.unravel_index(int(diff.argmax()), tuple(diff.shape))
        return _fail(name, trial, f"values differ: max |difference| {float(diff.max()):.3g} at "
                                  f"index {tuple(int(i) for i in at)} (yours "
                                  f"{float(got.detach()[at]):.6g}, expected {float(want.detach()[at]):.6g})")
    return None


def _check(name: str, student: Callable, reference: Callable, trials, atol: float = 1e-6,
           grads: bool = True) -> CheckResult:
    """Run both functions on each trial's inputs; compare outputs, then gradients
    of (output · a fixed random tensor) with respect to the float inputs."""
    for t, make in enumerate(trials):
        inputs, kwargs = make()
        ref_in = [x.clone().requires_grad_(grads) if _is_float(x) else x for x in inputs]
        stu_in = [x.clone().requires_grad_(grads) if _is_float(x) else x for x in inputs]
        want = reference(*ref_in, **kwargs)
        try:
            got = student(*stu_in, **kwargs)
        except Exception as e:  # the reader's code: report, never crash the notebook
            return _fail(name, t, f"your function raised {type(e).__name__}: {e}")
        bad = _compare_values(name, t, got, want, atol)
        if bad is not None:  # a failed CheckResult is falsy
            return bad
        if not grads or not got.requires_grad:
            if grads:
                return _fail(name, t, "the output does not depend differentiably on the inputs "
                                      "(no grad_fn: was something detached or converted?)")
            continue
        upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(t),
                               dtype=want.dtype)
        float_idx = [i for i, x in enumerate(inputs) if _is_float(x)]
        g_want = torch.autograd.grad((want * upstream).sum(), [ref_in[i] for i in float_idx],
                                     allow_unused=True)
        g_got = torch.autograd.grad((got * upstream).sum(), [stu_in[i] for i in float_idx],
                                    allow_unused=True)
        for i, gw, gg in zip(float_idx, g_want, g_got):
            gw = torch.zeros_like(inputs[i]) if gw is None else gw
            gg = torch.zeros_like(inputs[i]) if gg is None else gg
            err = (gw - gg).abs().max()
            if err > max(atol, 1e-5):
                return _fail(name, t, f"values match but the gradient with respect to input "
                                      f"{i + 1} differs (max |difference| {float(err):.3g}): "
                                      f"is part of the computation detached or non-differentiable?")
    what = "values and gradients" if grads else "values"
    return CheckResult(True, f"✓ {name}: matches the reference on {len(trials)} random inputs "
                             f"({what}).")


def _is_float(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
    sum over the batch, a 0-d tensor."""
    def trial(seed, b, margin):
        def make():
            s = torch.rand(b, b, generator=_gen(seed), dtype=torch.float64)
            return (s,), {"margin": margin}
        return make

    trials = [trial(0, 4, 0.2), trial(1, 7, 0.2), trial(2, 5, 0.5), trial(3, 2, 0.0)]
    return _check("triplet term (eq 33)", student,
                  lambda s, margin: alignment_term(s, margin), trials, atol=1e-8)


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
            return _fail(name, t, f"your function raised {type(e).__name__}: {e}")
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
