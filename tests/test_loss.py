"""Tests for cccl_lite.model.loss (eqs 28-34) against independent references.

References are plain Python loops over scalars (nested lists), written from
the equations and from the module's own weights.
"""

from __future__ import annotations

import math

import pytest
import torch

from cccl_lite.model.loss import (
                                  HybridLoss,
                                  SimilarityMLP,
                                  alignment_term,
                                  coherence_term,
                                  fuse_scores,
                                  hybrid_loss,
                                  )


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def uniform(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------
def ref_coherence(*scores):
    """Eqs 29-31: sum over all (i, j) of |x - y| for every pair of present branches."""
    present = [s.tolist() for s in scores if s is not None]
    total = 0.0
    rows, cols = len(present[0]), len(present[0][0])
    for i in range(rows):
        for j in range(cols):
            for a in range(len(present)):
                for b in range(a + 1, len(present)):
                    total += math.sqrt((present[a][i][j] - present[b][i][j]) ** 2)
    return total


def ref_alignment(f, margin=0.2, positive=None):
    """Eq 33 by loops: hardest negative per row (image) and per column (text)."""
    f = f.tolist()
    n = len(f)
    if positive is None:
        positive = [[i == j for j in range(n)] for i in range(n)]
    else:
        positive = positive.tolist()
    total = 0.0
    for i in range(n):
        negs = [f[i][j] for j in range(n) if j != i and not positive[i][j]]
        if negs:
            total += max(0.0, margin - f[i][i] + max(negs))
    for j in range(n):
        negs = [f[i][j] for i in range(n) if i != j and not positive[i][j]]
        if negs:
            total += max(0.0, margin - f[j][j] + max(negs))
    return total


def ref_mean(*scores):
    present = [s.tolist() for s in scores if s is not None]
    rows, cols = len(present[0]), len(present[0][0])
    return torch.tensor([[sum(p[i][j] for p in present) / len(present) for j in range(cols)]
                         for i in range(rows)], dtype=torch.float64)


def ids_mask(ids):
    return torch.tensor([[a == b for b in ids] for a in ids])


# --------------------------------------------------------------------------
# SimilarityMLP (eq 28)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("hidden", [None, 7])
def test_mlp_matches_formula(hidden):
    torch.manual_seed(0)
    mlp = SimilarityMLP(5, hidden).double()
    lin1, lin2 = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    h = hidden or 5
    assert lin1.weight.shape == (h, 5) and lin2.weight.shape == (1, h)
    w1, b1 = lin1.weight.tolist(), lin1.bias.tolist()
    w2, b2 = lin2.weight.tolist(), lin2.bias.tolist()
    s = rand(3, 2, 5, seed=1)
    got = mlp(s).detach()
    assert got.shape == (3, 2)
    for a in range(3):
        for b in range(2):
            x = s[a, b].tolist()
            hid = [max(sum(w1[k][p] * x[p] for p in range(5)) + b1[k], 0.0) for k in range(h)]
            z = sum(w2[0][k] * hid[k] for k in range(h)) + b2[0]
            assert float(got[a, b]) == pytest.approx(sigmoid(z), rel=1e-12, abs=1e-14)
            assert 0.0 < float(got[a, b]) < 1.0


def test_mlp_relu_is_active():
    # Make the hidden pre-activations strictly negative: the output must be sigmoid(b2).
    mlp = SimilarityMLP(3).double()
    lin1, lin2 = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        lin1.weight.fill_(1.0)
        lin1.bias.fill_(-100.0)
        lin2.bias.fill_(0.3)
    got = mlp(uniform(4, 3, seed=2)).detach()
    torch.testing.assert_close(got, torch.full((4,), sigmoid(0.3), dtype=torch.float64),
                               rtol=1e-12, atol=1e-14)


def test_mlp_depth_one():
    torch.manual_seed(3)
    mlp = SimilarityMLP(4, depth=1).double()
    lins = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert len(lins) == 1 and lins[0].weight.shape == (1, 4)
    w, b = lins[0].weight.tolist(), lins[0].bias.tolist()
    s = rand(5, 4, seed=4)
    got = mlp(s).detach()
    assert got.shape == (5,)
    for r in range(5):
        x = s[r].tolist()
        z = sum(w[0][p] * x[p] for p in range(4)) + b[0]
        assert float(got[r]) == pytest.approx(sigmoid(z), rel=1e-12)


@pytest.mark.parametrize("depth", [0, 3])
def test_mlp_bad_depth(depth):
    with pytest.raises(ValueError):
        SimilarityMLP(4, depth=depth)


# --------------------------------------------------------------------------
# coherence_term (eqs 29-31)
# --------------------------------------------------------------------------
def test_coherence_matches_loop():
    s, o, r = uniform(4, 4, seed=5), uniform(4, 4, seed=6), uniform(4, 4, seed=7)
    got = coherence_term(s, o, r)
    assert got.dim() == 0
    assert float(got) == pytest.approx(ref_coherence(s, o, r), rel=1e-12)


def test_coherence_rectangular_and_hand_case():
    # One pair (1x1): S=0.9, O=0.5, R=0.2 -> 0.4 + 0.7 + 0.3 = 1.4
    one = lambda x: torch.tensor([[x]], dtype=torch.float64)  # noqa: E731
    assert float(coherence_term(one(0.9), one(0.5), one(0.2))) == pytest.approx(1.4, abs=1e-12)
    s, o, r = uniform(2, 5, seed=8), uniform(2, 5, seed=9), uniform(2, 5, seed=10)
    assert float(coherence_term(s, o, r)) == pytest.approx(ref_coherence(s, o, r), rel=1e-12)


@pytest.mark.parametrize("drop", [0, 1, 2])
def test_coherence_with_one_branch_missing(drop):
    scores = [uniform(3, 3, seed=11), uniform(3, 3, seed=12), uniform(3, 3, seed=13)]
    kept = [x for k, x in enumerate(scores) if k != drop]
    scores[drop] = None
    got = coherence_term(*scores)
    want = sum(abs(a - b) for a, b in zip(kept[0].flatten().tolist(), kept[1].flatten().tolist()))
    assert float(got) == pytest.approx(want, rel=1e-12)
    assert float(got) == pytest.approx(ref_coherence(*scores), rel=1e-12)


def test_coherence_all_none_raises():
    with pytest.raises(ValueError):
        coherence_term(None, None, None)


# --------------------------------------------------------------------------
# alignment_term (eqs 32-33)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_alignment_matches_loop(n, seed):
    f = uniform(n, n, seed=20 + seed)
    got = alignment_term(f)
    assert got.dim() == 0
    assert float(got) == pytest.approx(ref_alignment(f), rel=1e-12, abs=1e-14)


def test_alignment_hand_case():
    f = torch.tensor([[0.9, 0.3, 0.8],
                      [0.5, 0.6, 0.1],
                      [0.2, 0.7, 0.4]], dtype=torch.float64)
    # margin 0.2.
    # rows (image -> text): i=0: 0.2 - 0.9 + max(0.3, 0.8) = 0.1
    #                       i=1: 0.2 - 0.6 + max(0.5, 0.1) = 0.1
    #                       i=2: 0.2 - 0.4 + max(0.2, 0.7) = 0.5
    # cols (text -> image): j=0: 0.2 - 0.9 + max(0.5, 0.2) = -0.2 -> 0
    #                       j=1: 0.2 - 0.6 + max(0.3, 0.7) = 0.3
    #                       j=2: 0.2 - 0.4 + max(0.8, 0.1) = 0.6
    # total = 0.1 + 0.1 + 0.5 + 0 + 0.3 + 0.6 = 1.6
    assert float(alignment_term(f, margin=0.2)) == pytest.approx(1.6, abs=1e-12)
    # margin 0: rows 0, 0, 0.3 (i=0: -0.1 -> 0, i=1: -0.1 -> 0); cols 0, 0.1, 0.4 -> 0.8
    assert float(alignment_term(f, margin=0.0)) == pytest.approx(0.8, abs=1e-12)


def test_alignment_positive_mask_excludes_same_image_captions():
    # Texts 0 and 1 are two captions of image A (rows 0 and 1 are image A twice).
    ids = [0, 0, 1, 2]
    pos = ids_mask(ids)
    f = uniform(4, 4, seed=30) * 0.5
    # The same-image off-diagonal pairs are the most similar entries: any
    # hardest-negative search that does not skip them would pick them.
    f[0, 1] = f[1, 0] = 0.99
    got = alignment_term(f, positive_mask=pos)
    want = ref_alignment(f, positive=pos)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-14)
    # Independent check on row 0: its negatives are only columns 2, 3.
    row0 = max(0.0, 0.2 - float(f[0, 0]) + max(float(f[0, 2]), float(f[0, 3])))
    assert row0 < 0.2 - float(f[0, 0]) + 0.99
    # Without the mask the value differs (the 0.99 entries become negatives).
    assert float(alignment_term(f)) == pytest.approx(ref_alignment(f), rel=1e-12)
    assert float(alignment_term(f)) > float(got) + 0.1


def test_alignment_random_masks_match_loop():
    for seed, ids in enumerate([[0, 0, 1, 1, 2], [3, 1, 3, 1, 3, 0], [0, 1, 2, 0]]):
        f = uniform(len(ids), len(ids), seed=40 + seed)
        pos = ids_mask(ids)
        assert float(alignment_term(f, 0.3, pos)) == pytest.approx(
            ref_alignment(f, 0.3, pos), rel=1e-12, abs=1e-14)


def test_alignment_all_positive_is_zero_with_finite_gradient():
    f = uniform(3, 3, seed=50).requires_grad_()
    loss = alignment_term(f, positive_mask=torch.ones(3, 3, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(f.grad).all()
    assert torch.all(f.grad == 0)


def test_alignment_gradient_finite_when_one_row_has_no_negatives():
    # Row 0 (image 0) matches every text (asymmetric mask): row 0 has no negatives,
    # the others do.
    pos = torch.eye(3, dtype=torch.bool)
    pos[0, :] = True
    f = uniform(3, 3, seed=51)
    f[0, 0] = 0.1  # so the other hinges are active
    f = f.requires_grad_()
    loss = alignment_term(f, margin=1.0, positive_mask=pos)
    assert float(loss.detach()) == pytest.approx(ref_alignment(f.detach(), 1.0, pos), rel=1e-12)
    loss.backward()
    assert torch.isfinite(f.grad).all()
    assert f.grad.abs().sum() > 0
    # F[0, j] (j > 0) is a positive, so it is never a negative of row 0 nor of
    # column j: it gets no gradient at all.
    assert torch.all(f.grad[0, 1:] == 0)


def test_alignment_gradient_matches_hinge_counts():
    # d loss / d F_ii = -(#active hinges of row i and column i); the hardest negative
    # of an active hinge gets +1.
    f = torch.tensor([[0.9, 0.3, 0.8],
                      [0.5, 0.6, 0.1],
                      [0.2, 0.7, 0.4]], dtype=torch.float64, requires_grad=True)
    alignment_term(f, margin=0.2).backward()
    # Active: rows 0 (neg (0,2)), 1 (neg (1,0)), 2 (neg (2,1)); cols 1 (neg (2,1)), 2 (neg (0,2)).
    want = [[-1.0, 0.0, 2.0],
            [1.0, -2.0, 0.0],
            [0.0, 2.0, -2.0]]
    torch.testing.assert_close(f.grad, torch.tensor(want, dtype=torch.float64))


def test_alignment_margin():
    f = uniform(4, 4, seed=60)
    for margin in (0.0, 0.1, 0.2, 0.7):
        assert float(alignment_term(f, margin)) == pytest.approx(ref_alignment(f, margin),
                                                                 rel=1e-12, abs=1e-14)
    # Scores in [0, 1): with margins above 1 every hinge is active, so the loss
    # is affine in the margin with slope 2B.
    a, b = float(alignment_term(f, 1.5)), float(alignment_term(f, 2.0))
    assert b - a == pytest.approx(2 * 4 * 0.5, abs=1e-12)


@pytest.mark.parametrize("shape", [(3, 4), (3,), (2, 3, 3)])
def test_alignment_bad_shape(shape):
    with pytest.raises(ValueError):
        alignment_term(torch.zeros(shape, dtype=torch.float64))


def test_alignment_bad_positive_mask():
    f = uniform(3, 3, seed=61)
    no_diag = torch.zeros(3, 3, dtype=torch.bool)
    no_diag[0, 1] = True
    with pytest.raises(ValueError):
        alignment_term(f, positive_mask=no_diag)
    partial = torch.eye(3, dtype=torch.bool)
    partial[2, 2] = False
    with pytest.raises(ValueError):
        alignment_term(f, positive_mask=partial)
    with pytest.raises(ValueError):
        alignment_term(f, positive_mask=torch.ones(4, 4, dtype=torch.bool))


# --------------------------------------------------------------------------
# fuse_scores and hybrid_loss (eqs 32, 34)
# --------------------------------------------------------------------------
def test_fuse_scores():
    s, o, r = uniform(3, 3, seed=70), uniform(3, 3, seed=71), uniform(3, 3, seed=72)
    torch.testing.assert_close(fuse_scores((s, o, r)), ref_mean(s, o, r), rtol=1e-12, atol=1e-14)
    for drop in range(3):
        args = [s, o, r]
        args[drop] = None
        torch.testing.assert_close(fuse_scores(args), ref_mean(*args), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fuse_scores((None, o, None)), o)
    with pytest.raises(ValueError):
        fuse_scores((None, None, None))


@pytest.mark.parametrize("lam", [0.5, 0.75, 0.0])
def test_hybrid_loss_matches_formula(lam):
    s, o, r = uniform(4, 4, seed=80), uniform(4, 4, seed=81), uniform(4, 4, seed=82)
    out = hybrid_loss(s, o, r, margin=0.2, coherence_weight=lam)
    assert isinstance(out, HybridLoss)
    l_t = ref_alignment(ref_mean(s, o, r), 0.2)
    l_c = ref_coherence(s, o, r)
    assert float(out.alignment) == pytest.approx(l_t, rel=1e-12)
    assert float(out.coherence) == pytest.approx(l_c, rel=1e-12)
    assert float(out.total) == pytest.approx(l_t + lam * l_c, rel=1e-12)
    if lam == 0.0:
        assert float(out.total) == pytest.approx(l_t, rel=1e-12)


def test_hybrid_loss_with_mask_margin_and_missing_branch():
    ids = [0, 0, 1, 2, 2]
    pos = ids_mask(ids)
    s, o = uniform(5, 5, seed=90), uniform(5, 5, seed=91)
    out = hybrid_loss(s, None, o, margin=0.35, coherence_weight=0.75, positive_mask=pos)
    l_t = ref_alignment(ref_mean(s, o), 0.35, pos)
    l_c = ref_coherence(s, o)
    assert float(out.total) == pytest.approx(l_t + 0.75 * l_c, rel=1e-12)


def test_hybrid_loss_gradient_reaches_every_branch():
    s, o, r = (uniform(3, 3, seed=100 + k).requires_grad_() for k in range(3))
    hybrid_loss(s, o, r, margin=2.0).total.backward()
    for x in (s, o, r):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
