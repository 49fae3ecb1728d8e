"""Checkers for the hard parts: eq 17's cross attention (chapter 4), eqs 21-23's
masked edge weights and eq 26's cross GRU (chapter 3), one training step
(chapter 6).

Each compares the reader's function with the package's reference (values,
then gradients where the answer is a tensor) and, when the values differ,
compares them with the reference run with one common slip made on purpose:
if the reader's output is that slip's, the message ends with a hint naming
it. A stub that raises NotImplementedError is "not implemented yet", never a
wrong answer.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from cccl_lite.model.align import cross_attention
from cccl_lite.model.loss import HybridObjective, fuse_scores
from cccl_lite.model.perceive import masked_softmax
from cccl_lite.model.reason import CrossGRU, GraphEdges
from cccl_lite.book.exercises.core import CheckResult, _check, _fail, _gen, _raised

__all__ = ["check_cross_attention", "check_edge_weights", "check_cross_gru",
           "check_train_step", "TinyScorer"]


# ---- eq 17 ---------------------------------------------------------------------


def _attend(q, c, temperature, *, cosine=True, relu=True, norm_dim=0, scale=True,
            softmax_dim=1, values="context"):
    """Eq 17 for one pair, written plainly; each keyword makes one slip."""
    qn, cn = (q / q.norm(dim=-1, keepdim=True), c / c.norm(dim=-1, keepdim=True)) \
        if cosine else (q, c)
    m = qn @ cn.T  # (L_q, L_c): M_ij = cos(q_i, c_j)
    if relu:
        m = m.clamp(min=0)
    if norm_dim is not None:
        m = m / m.norm(dim=norm_dim, keepdim=True).clamp(min=1e-8)
    w = torch.softmax((temperature if scale else 1.0) * m, dim=softmax_dim)
    return w @ (c if values == "context" else cn)


def check_cross_attention(student: Callable, dim: int = 8) -> CheckResult:
    """Check ``student(query, context, temperature) -> u`` (eq 17) for one pair
    of items, every node valid: query (L_q, d), context (L_c, d), a float λ;
    returns u (L_q, d), u_i = Σ_j ω_ij c_j with M_ij = cos(q_i, c_j), M̄ =
    relu(M) l2-normalised over the query axis i (SCAN's clipped l2
    normalisation), ω_i = softmax_j(λ M̄_ij). The reference is
    :func:`cccl_lite.model.align.cross_attention`. L_q ≠ L_c in every trial, so a
    normalisation or a softmax over the wrong axis shows."""
    def reference(q, c, temperature):
        ones_q = torch.ones(1, q.shape[0], dtype=torch.bool)
        ones_c = torch.ones(1, c.shape[0], dtype=torch.bool)
        return cross_attention(q[None], ones_q, c[None], ones_c, temperature)[0][0, 0]

    def trial(seed, l_q, l_c, temperature):
        def make():
            g = _gen(seed)
            q = torch.randn(l_q, dim, generator=g, dtype=torch.float64)
            c = torch.randn(l_c, dim, generator=g, dtype=torch.float64)
            return (q, c, temperature), {}
        return make

    mistakes = [
        ("M is a cosine: l2-normalise each query and context vector before the "
         "product", lambda q, c, t: _attend(q, c, t, cosine=False)),
        ("clip M at 0 (relu) before the l2 normalisation", lambda q, c, t: _attend(q, c, t, relu=False)),
        ("SCAN l2-normalises M over the query axis i (dim 0 of the (L_q, L_c) "
         "matrix), not over the attended axis j", lambda q, c, t: _attend(q, c, t, norm_dim=1)),
        ("l2-normalise relu(M) over the query axis before the softmax",
         lambda q, c, t: _attend(q, c, t, norm_dim=None)),
        ("multiply M̄ by the temperature λ inside the softmax",
         lambda q, c, t: _attend(q, c, t, scale=False)),
        ("the softmax runs over the attended axis j (each query's weights sum "
         "to 1)", lambda q, c, t: _attend(q, c, t, softmax_dim=0)),
        ("u is a weighted sum of the context vectors as given, not of their "
         "normalised copies", lambda q, c, t: _attend(q, c, t, values="normalised")),
    ]
    trials = [trial(0, 5, 7, 9.0), trial(1, 3, 6, 4.0), trial(2, 8, 4, 9.0)]
    return _check("cross attention (eq 17)", student, reference, trials, atol=1e-8,
                  mistakes=mistakes)


# ---- eqs 21-23 -----------------------------------------------------------------


def check_edge_weights(student: Callable, dim: int = 8) -> CheckResult:
    """Check ``student(X, W1, W2, adjacency) -> W_e`` (eqs 21-23) for one graph:
    X (N, d) nodes, W1, W2 (d, d) used as X @ W (paper convention),
    adjacency (N, N) bool, True where an edge may exist (self-loops
    included). W_ij = (x_i W1)·(x_j W2) / √d, kept where adjacency allows,
    then a softmax over each row's allowed entries: non-arcs get exactly 0,
    each row sums to 1, and a row with no allowed entry (a padded node) is
    all zeros, not NaN. The reference is :class:`cccl_lite.model.reason.GraphEdges`."""
    def reference(x, w1, w2, adjacency):
        with torch.device("meta"):  # no initialisation: functional_call supplies the weights
            module = GraphEdges(x.shape[-1])
        edges = torch.func.functional_call(module,
                                           {"w1.weight": w1.T, "w2.weight": w2.T},
                                           (x[None], adjacency[None]))
        return edges[0]

    def logits(x, w1, w2):
        return (x @ w1) @ (x @ w2).T / math.sqrt(x.shape[-1])

    def trial(seed, n, padded):
        def make():
            g = _gen(seed)
            x = torch.randn(n, dim, generator=g, dtype=torch.float64)
            w1, w2 = (torch.randn(dim, dim, generator=g, dtype=torch.float64) for _ in range(2))
            arcs = torch.rand(n, n, generator=g) < 0.4
            adjacency = arcs | arcs.T | torch.eye(n, dtype=torch.bool)
            valid = torch.arange(n) < n - padded
            adjacency &= valid[:, None] & valid[None, :]
            return (x, w1, w2, adjacency), {}
        return make

    mistakes = [
        ("mask before the softmax (non-arcs to -inf), not after it: masking the "
         "softmax's output leaves rows that do not sum to 1",
         lambda x, w1, w2, a: torch.softmax(logits(x, w1, w2), -1) * a),
        ("eq 23's dependency mask is missing: non-arcs must get exactly 0",
         lambda x, w1, w2, a: torch.softmax(logits(x, w1, w2), -1)),
        ("scale the affinities by 1/√d before the softmax",
         lambda x, w1, w2, a: masked_softmax(logits(x, w1, w2) * math.sqrt(x.shape[-1]), a)),
        ("the softmax runs over each row (a node's neighbours j), not over columns",
         lambda x, w1, w2, a: masked_softmax(logits(x, w1, w2), a, dim=0)),
        ("W1 goes with node i (the row) and W2 with node j: yours is the transpose",
         lambda x, w1, w2, a: masked_softmax(logits(x, w1, w2).T, a)),
        ("a row with no allowed neighbour (a padded node) must be all zeros, not NaN",
         lambda x, w1, w2, a: torch.softmax(logits(x, w1, w2).masked_fill(~a, float("-inf")), -1)),
    ]
    trials = [trial(0, 5, 0), trial(1, 7, 0), trial(2, 6, 2)]
    return _check("edge weights (eqs 21-23)", student, reference, trials, atol=1e-8,
                  mistakes=mistakes)


# ---- eq 26 ---------------------------------------------------------------------


def _gru_reads(cell, inputs, h=None):
    """The states of ``cell`` reading ``inputs`` (T, d) from h (0 if None): (T, d)."""
    h = inputs.new_zeros(cell.hidden_size) if h is None else h
    states = []
    for x in inputs:
        h = cell(x, h)
        states.append(h)
    return torch.stack(states)


def check_cross_gru(student: Callable, dim: int = 6) -> CheckResult:
    """Check ``student(cell, cross, nodes) -> h`` (eq 26) for one (item, other
    item) pair: cell an ``nn.GRUCell(d, d)``, cross (d,) the other item's
    global vector (t^S for an image), nodes (n, d) the item's refined nodes,
    all valid. Returns the state (d,) after the GRU, from h = 0, has read
    [cross, node_1, …, node_n] in that order. The reference is
    :class:`cccl_lite.model.reason.CrossGRU` with the same cell's weights."""
    def reference(cell, cross, nodes):
        with torch.device("meta"):  # no initialisation: functional_call supplies the weights
            gru = CrossGRU(nodes.shape[-1])
        params = {f"cell.{k}": v for k, v in cell.named_parameters()}
        mask = torch.ones(1, nodes.shape[0], dtype=torch.bool)
        return torch.func.functional_call(gru, params, (nodes[None], mask, cross[None]))[0, 0]

    def trial(seed, n):
        def make():
            g = _gen(seed)
            with torch.random.fork_rng(devices=[]):  # leave the reader's RNG as it was
                cell = nn.GRUCell(dim, dim).double()
            with torch.no_grad():
                for p in cell.parameters():
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
            cross = torch.randn(dim, generator=g, dtype=torch.float64)
            nodes = torch.randn(n, dim, generator=g, dtype=torch.float64)
            return (cell, cross, nodes), {}
        return make

    mistakes = [
        ("read the other item's vector first: the sequence is [cross, node_1, …, node_n]",
         lambda cell, c, x: _gru_reads(cell, x)[-1]),
        ("the other item's vector is the first *input*, read from h = 0, not the "
         "initial state", lambda cell, c, x: _gru_reads(cell, x, h=c)[-1]),
        ("the other item's vector comes first, not last",
         lambda cell, c, x: _gru_reads(cell, torch.cat([x, c[None]]))[-1]),
        ("eq 26 keeps the last state, not the mean of the states",
         lambda cell, c, x: _gru_reads(cell, torch.cat([c[None], x])).mean(0)),
        ("eq 26 keeps the state after the last node, not the first",
         lambda cell, c, x: _gru_reads(cell, torch.cat([c[None], x]))[1]),
    ]
    trials = [trial(0, 4), trial(1, 7), trial(2, 1)]
    return _check("cross GRU (eq 26)", student, reference, trials, atol=1e-8,
                  mistakes=mistakes)


# ---- one training step (chapter 6) ---------------------------------------------


class TinyScorer(nn.Module):
    """A seeded stand-in for CCCL with its training interface: three branches,
    each a pair of linear maps whose cosines, through a sigmoid, score every
    image (B, 6) against every text (B, 6). ``forward(images, texts)`` returns
    (F, (S^S, S^O, S^R)) as :meth:`cccl_lite.model.cccl.CCCL.forward` does."""

    def __init__(self, seed: int, dim: int = 6, out: int = 5):
        super().__init__()
        g = _gen(seed)
        with torch.random.fork_rng(devices=[]):  # leave the reader's RNG as it was
            self.image = nn.ModuleList(nn.Linear(dim, out) for _ in range(3))
            self.text = nn.ModuleList(nn.Linear(dim, out) for _ in range(3))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, images, texts):
        scores = tuple(torch.sigmoid(4 * nn.functional.normalize(fi(images), dim=-1)
                                     @ nn.functional.normalize(ft(texts), dim=-1).T)
                       for fi, ft in zip(self.image, self.text))
        return fuse_scores(scores), scores


# The loss the checker's steps train with: eq 34 at Table 1's Δ 0.2 and λ 0.5,
# as a recipe builds it (cccl_lite.engine.recipes.Recipe.objective).
_OBJECTIVE = HybridObjective(margin=0.2, coherence_weight=0.5)


def _reference_step(model, objective, optimizer, batch, max_norm, *, zero=True, clip=True,
                    total=True, step=True):
    """The trainer's step (``cccl_lite.engine.train``, without autocast); each keyword
    off is one slip."""
    _, scores = model(batch["images"], batch["texts"])
    loss = objective(scores, batch["positive_mask"])
    loss = loss.total if total else loss.alignment
    if zero:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if step:
        optimizer.step()
    return loss.item()


_STEP_MISTAKES = [
    ("zero the gradients (optimizer.zero_grad()) before backward(): the first "
     "step's gradients were added to the second's", dict(zero=False)),
    ("clip the gradient norm to max_norm (torch.nn.utils.clip_grad_norm_) between "
     "backward() and optimizer.step()", dict(clip=False)),
    ("the loss is the hybrid loss's total, L_t + λ L_c (eq 34), not L_t alone",
     dict(total=False)),
    ("the weights did not move: call optimizer.step() after clipping", dict(step=False)),
]


def _train_batches(seed: int, b: int):
    g = _gen(100 + seed)
    batches = []
    for _ in range(2):
        positive = torch.eye(b, dtype=torch.bool)
        positive[0, 1] = positive[1, 0] = True  # two captions of one image
        batches.append({"images": torch.randn(b, 6, generator=g),
                        "texts": torch.randn(b, 6, generator=g), "positive_mask": positive})
    return batches


def _run_steps(step_fn, seed: int, b: int, max_norm: float):
    model = TinyScorer(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = [step_fn(model, _OBJECTIVE, optimizer, batch, max_norm)
              for batch in _train_batches(seed, b)]
    return losses, {k: v.detach().clone() for k, v in model.named_parameters()}


def check_train_step(student: Callable, max_norm: float = 0.1) -> CheckResult:
    """Check ``student(model, objective, optimizer, batch, max_norm) -> loss``
    (a float): one training step as ``cccl_lite.engine.train`` takes it: the
    model's scores of the batch (``model(batch["images"], batch["texts"])``
    returns (F, scores)), the hybrid loss's total (``objective(scores,
    batch["positive_mask"]).total``, the recipe's eq 34:
    :class:`~cccl_lite.model.loss.HybridObjective`), zeroed gradients, backward, the
    gradient norm clipped to ``max_norm``, the optimiser's step; returns the
    loss before the update. Checked on a seeded :class:`TinyScorer` with SGD
    (momentum 0.9) by its weights after two steps, in two trials; the
    gradient norms exceed max_norm, so clipping shows."""
    name = "training step"
    for t, (seed, b) in enumerate(((0, 4), (1, 6))):
        want_losses, want = _run_steps(_reference_step, seed, b, max_norm)
        try:
            got_losses, got = _run_steps(student, seed, b, max_norm)
        except Exception as e:  # the reader's code: report, never crash the notebook
            return _raised(name, t, e)
        worst = max(want, key=lambda k: float((got[k] - want[k]).abs().max()))
        err = float((got[worst] - want[worst]).abs().max())
        if err > 1e-5:
            hint = ""
            for text, slip in _STEP_MISTAKES:
                _, wrong = _run_steps(lambda *a, s=slip: _reference_step(*a, **s), seed, b,
                                      max_norm)
                if all(torch.allclose(got[k], wrong[k], atol=1e-5, rtol=0) for k in want):
                    hint = f" (hint: {text})"
                    break
            return _fail(name, t, f"after two steps the weights differ: parameter {worst!r}, "
                                  f"max |difference| {err:.3g}{hint}")
        for k, (g_loss, w_loss) in enumerate(zip(got_losses, want_losses)):
            try:
                g_loss = float(g_loss)
            except (TypeError, ValueError):
                return _fail(name, t, f"step {k + 1} returned {type(g_loss).__name__}, "
                                      "expected the loss as a number")
            if not math.isclose(g_loss, w_loss, rel_tol=1e-5, abs_tol=1e-6):
                return _fail(name, t, f"step {k + 1}: the weights are right but the returned "
                                      f"loss is {g_loss:.6g}, expected {w_loss:.6g} (the "
                                      "hybrid loss's total, before the update)")
    return CheckResult(True, f"✓ {name}: the same weights as the reference after two steps "
                             "on two seeded tiny models, and the same losses.")
