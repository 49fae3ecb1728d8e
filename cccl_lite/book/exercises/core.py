"""The checkers' machinery: a result that tells a stub from a wrong answer,
and the comparison of a reader's function with the package's reference
(values, then gradients) that names the first difference and, where the
reader's output matches a known mistake, says which (a hint).

Used by every checker of :mod:`cccl_lite.book.exercises`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

_TODO = ("not implemented yet: replace `raise NotImplementedError` with your code, "
         "then run the cell again")


@dataclass
class CheckResult:
    """Outcome of a checker: ``ok``, a one-line ``message`` and a ``status``:
    "pass", "fail" (a wrong answer) or "todo" (a stub that still raises
    NotImplementedError)."""

    ok: bool
    message: str
    status: str = ""

    def __post_init__(self):
        if not self.status:
            self.status = "pass" if self.ok else "fail"

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return self.message

    _repr_pretty_ = lambda self, p, cycle: p.text(self.message)  # noqa: E731 (IPython)


def _fail(name: str, trial: int, what: str) -> CheckResult:
    return CheckResult(False, f"✗ {name}: trial {trial + 1}: {what}")


def _todo(name: str) -> CheckResult:
    """A stub, not a wrong answer: the reader has not written the code yet."""
    return CheckResult(False, f"… {name}: {_TODO}.", status="todo")


def _raised(name: str, trial: int, e: Exception) -> CheckResult:
    """What the reader's function raised: NotImplementedError is a stub."""
    if isinstance(e, NotImplementedError):
        return _todo(name)
    return _fail(name, trial, f"your function raised {type(e).__name__}: {e}")


def _number(name: str, trial: int, student: Callable, *args) -> tuple[float, CheckResult | None]:
    """``student(*args)`` as a float, for a checker whose answer is one number:
    (value, None), or (nan, the failed result) when the call raised
    (:func:`_raised`) or returned something ``float`` does not take."""
    try:
        got = student(*args)
    except Exception as e:  # the reader's code: report, never crash the notebook
        return float("nan"), _raised(name, trial, e)
    try:
        return float(got), None
    except (TypeError, ValueError):
        return float("nan"), _fail(name, trial, f"expected a number, got {type(got).__name__}")


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


def _mistake_hint(got, inputs, kwargs, mistakes, atol) -> str:
    """The hint of the first known mistake whose output the reader's matches
    on these inputs ("" if none does): each mistake is (hint, function), the
    reference with one slip made on purpose."""
    for hint, wrong in mistakes:
        try:
            with torch.no_grad():
                out = wrong(*[x.detach() if isinstance(x, torch.Tensor) else x for x in inputs],
                            **kwargs)
        except Exception:  # a mistake that cannot run on these inputs matches nothing
            continue
        if isinstance(got, torch.Tensor) and isinstance(out, torch.Tensor) \
                and got.shape == out.shape \
                and torch.allclose(got.detach().double(), out.double(), atol=atol, rtol=0,
                                   equal_nan=True):
            return f" (hint: {hint})"
    return ""


def _check(name: str, student: Callable, reference: Callable, trials, atol: float = 1e-6,
           grads: bool = True, mistakes: Sequence = ()) -> CheckResult:
    """Run both functions on each trial's inputs; compare outputs, then gradients
    of (output · a fixed random tensor) with respect to the float inputs.
    ``mistakes``: (hint, function) pairs; when the values differ and match a
    mistake's, its hint ends the message."""
    for t, make in enumerate(trials):
        inputs, kwargs = make()
        ref_in = [x.clone().requires_grad_(grads) if _is_float(x) else x for x in inputs]
        stu_in = [x.clone().requires_grad_(grads) if _is_float(x) else x for x in inputs]
        want = reference(*ref_in, **kwargs)
        try:
            got = student(*stu_in, **kwargs)
        except Exception as e:  # the reader's code: report, never crash the notebook
            return _raised(name, t, e)
        bad = _compare_values(name, t, got, want, atol)
        if bad is not None:  # a failed CheckResult is falsy
            bad.message += _mistake_hint(got, inputs, kwargs, mistakes, atol)
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

