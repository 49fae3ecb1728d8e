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

A "write it yourself" cell starts as a stub whose body is ``raise
NotImplementedError``; its checker then says "not implemented yet" (status
``"todo"``) instead of reporting a wrong answer (``"fail"``). Solutions are
kept out of the notebooks: each lives in ``cccl_lite/solutions/<label>.md``,
which the built book shows folded under its exercise and
:func:`show_solution` prints in a notebook. :data:`EXERCISES` lists the
exercises that have a checker (chapter, function name, checker), which the
tests and the student edition (``cccl_lite.student``) use.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .align import vector_similarity
from .loss import alignment_term
from .metrics import KEYS, recall_at_k
from .perceive import ContextPerceivedCell, masked_softmax
from .reason import ResidualGCN
from .visualize import rank_scores

__all__ = ["CheckResult", "Exercise", "EXERCISES", "check_cpc", "check_vsf", "check_triplet",
           "check_recall", "check_gcn", "check_rank_scores", "check_feature_size",
           "check_pairwise_accuracy",
           "solution_text", "solution_code", "show_solution", "SOLUTIONS_DIR"]

SOLUTIONS_DIR = Path(__file__).resolve().parent / "solutions"
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
            return _raised(name, t, e)
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
    compared as zeros, as :class:`cccl_lite.reason.ResidualGCN` returns them.
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
        try:
            got = student(*args)
        except Exception as e:
            return _raised(name, t, e)
        try:
            got = float(got)
        except (TypeError, ValueError):
            return _fail(name, t, f"expected a number, got {type(got).__name__}")
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
    from .data.difficulty import pairwise_accuracy

    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 4, size=(2, 50)) for _ in range(3)]
    cases += [rng.normal(size=(2, 30)), np.ones((2, 7))]
    name = "pairwise accuracy"
    for t, (own, negative) in enumerate(cases):
        want = pairwise_accuracy(own, negative)
        try:
            got = student(own.copy(), negative.copy())
        except Exception as e:
            return _raised(name, t, e)
        try:
            got = float(got)
        except (TypeError, ValueError):
            return _fail(name, t, f"expected a number, got {type(got).__name__}")
        if not np.isclose(got, want, atol=1e-9):
            hint = ""
            if np.isclose(got * 100, want):
                hint = " (a fraction: the book prints percent)"
            elif np.isclose(got, 100 * np.mean(own > negative)):
                hint = " (ties should count one half)"
            return _fail(name, t, f"yours {got:.4g}, expected {want:.4g}{hint}")
    return CheckResult(True, f"✓ {name}: matches the reference on {len(cases)} cases, "
                             "most with ties.")


# ---- the registry, and solutions kept out of the notebooks ---------------------


@dataclass(frozen=True)
class Exercise:
    """An exercise with a checker: its label, the chapter (``book/<chapter>.md``)
    whose stub cell defines ``function``, and the name of its checker here."""

    label: str
    chapter: str
    function: str
    checker: str

    def check(self, fn: Callable) -> CheckResult:
        return globals()[self.checker](fn)


EXERCISES = {e.label: e for e in (
    Exercise("ex-recall", "01_task", "my_recall", "check_recall"),
    Exercise("ex-perceive-cpc", "02_perceive", "my_cpc", "check_cpc"),
    Exercise("ex-perceive-sdpa", "02_perceive", "my_cpc_fused", "check_cpc"),
    Exercise("ex-reason-gcn", "03_reason", "my_residual_gcn", "check_gcn"),
    Exercise("ex-align-vsf", "04_align", "my_vsf", "check_vsf"),
    Exercise("ex-loss-triplet", "05_loss", "my_triplet", "check_triplet"),
    Exercise("ex-train-pairwise", "06_training", "my_pairwise_accuracy",
             "check_pairwise_accuracy"),
    Exercise("ex-inside-rank", "08_inside", "my_rank_scores", "check_rank_scores"),
    Exercise("ex-flickr-disk", "09_flickr30k", "my_feature_gib", "check_feature_size"),
    Exercise("ex-faster-vsf", "10_faster", "my_vsf", "check_vsf"),
)}


def solution_text(label: str) -> str:
    """The solution of exercise ``label`` (MyST markdown), from
    ``cccl_lite/solutions/<label>.md``; KeyError names the known labels."""
    path = SOLUTIONS_DIR / f"{label}.md"
    if not path.is_file():
        known = sorted(p.stem for p in SOLUTIONS_DIR.glob("ex-*.md"))
        raise KeyError(f"no solution for {label!r}; known: {', '.join(known)}")
    return path.read_text(encoding="utf-8")


def solution_code(label: str) -> str:
    """The Python code blocks of a solution, joined: for a checked exercise,
    code that defines the function and runs without the chapter's state."""
    blocks = re.findall(r"^```python\n(.*?)^```", solution_text(label), flags=re.S | re.M)
    return "\n".join(blocks)


def _plain_roles(text: str) -> str:
    """MyST roles a notebook cannot resolve, as plain text: {ref}`ch-task`
    becomes ch-task, {cite:p}`a,b` becomes (a, b)."""
    text = re.sub(r"\{cite:p\}`([^`]*)`", lambda m: f"({m.group(1).replace(',', ', ')})", text)
    return re.sub(r"\{[a-z:]+\}`([^`]*)`", r"\1", text)


def show_solution(label: str):
    """Show the solution of exercise ``label`` in a notebook (rendered
    markdown under IPython, plain text elsewhere). The notebooks carry no
    solution text: this is how a reader who has tried opens one."""
    text = _plain_roles(solution_text(label))
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # plain Python
        print(text)
        return None
    if get_ipython() is None:
        print(text)
        return None
    display(Markdown(text))
    return None


def _last_value(code: str, namespace: dict):
    """Run ``code`` in ``namespace`` and return its last expression's value
    (None if it does not end with an expression), as a notebook cell would."""
    tree = ast.parse(code)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body = tree.body[:-1]
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
