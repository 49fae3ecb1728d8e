"""Tests for cccl_lite.engine.metrics (eqs 35-36) against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cccl_lite.engine.metrics import coco_1k_recall, format_recalls, ranks, recall_at_k

KEYS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"]


# --------------------------------------------------------------------------
# Brute-force reference: explicit sorting with plain Python loops.
# --------------------------------------------------------------------------
def brute_ranks(sims, cpi):
    """Sort every query's candidates; ties put non-matching items first."""
    s = np.asarray(sims, dtype=np.float64).tolist()
    n_img, n_cap = len(s), len(s[0])
    i2t = []
    for i in range(n_img):
        is_gt = [j // cpi == i for j in range(n_cap)]
        # Key (-score, is_gt): higher score first; on equal score the
        # non-matching caption (False < True) goes first = pessimistic.
        order = sorted(range(n_cap), key=lambda j: (-s[i][j], is_gt[j]))
        i2t.append(min(pos for pos, j in enumerate(order) if is_gt[j]))
    t2i = []
    for j in range(n_cap):
        g = j // cpi
        order = sorted(range(n_img), key=lambda k: (-s[k][j], k == g))
        t2i.append(order.index(g))
    return i2t, t2i


def brute_recalls(sims, cpi):
    i2t, t2i = brute_ranks(sims, cpi)
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            hits = 0
            for rank in r:
                if rank < k:
                    hits += 1
            out[f"{name}_r{k}"] = 100.0 * hits / len(r)
    out["rsum"] = sum(out[k] for k in KEYS[:-1])
    return out


def assert_recalls(got, want):
    assert list(got) == KEYS
    for k in KEYS:
        assert type(got[k]) is float, k
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


def random_sims(rng, n_img, cpi, kind):
    shape = (n_img, n_img * cpi)
    if kind == "continuous":
        return rng.standard_normal(shape)
    # Few distinct values -> many exact ties, which exercises the tie rule.
    return rng.integers(0, 4, size=shape).astype(np.float64)


# --------------------------------------------------------------------------
# Random matrices vs brute force
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["continuous", "ties"])
@pytest.mark.parametrize("n_img,cpi", [(7, 5), (20, 5), (20, 1), (13, 1), (1, 5)])
@pytest.mark.parametrize("as_torch", [False, True])
def test_random_matches_brute_force(kind, n_img, cpi, as_torch):
    rng = np.random.default_rng(1000 * n_img + 10 * cpi + (kind == "ties"))
    sims = random_sims(rng, n_img, cpi, kind)
    if as_torch:
        t = torch.tensor(sims, dtype=torch.float32, requires_grad=True)
        # Reference on exactly the values the function sees after .float().
        ref_in = t.detach().numpy()
        got = recall_at_k(t, captions_per_image=cpi)
    else:
        ref_in = sims
        got = recall_at_k(sims, captions_per_image=cpi)
    assert_recalls(got, brute_recalls(ref_in, cpi))

    i2t, t2i = ranks(t if as_torch else sims, cpi)
    bi2t, bt2i = brute_ranks(ref_in, cpi)
    assert i2t.dtype.kind == "i" and t2i.dtype.kind == "i"
    assert i2t.shape == (n_img,) and t2i.shape == (n_img * cpi,)
    np.testing.assert_array_equal(i2t, bi2t)
    np.testing.assert_array_equal(t2i, bt2i)


def test_integer_and_float32_numpy_inputs():
    rng = np.random.default_rng(3)
    sims_int = rng.integers(0, 3, size=(6, 30))
    assert_recalls(recall_at_k(sims_int), brute_recalls(sims_int, 5))
    sims32 = rng.standard_normal((6, 30)).astype(np.float32)
    assert_recalls(recall_at_k(sims32), brute_recalls(sims32, 5))


# --------------------------------------------------------------------------
# Hand-made cases with known answers
# --------------------------------------------------------------------------
def test_identity_like_is_perfect():
    n_img, cpi = 8, 5
    sims = np.zeros((n_img, n_img * cpi))
    for j in range(n_img * cpi):
        sims[j // cpi, j] = 1.0
    r = recall_at_k(sims, cpi)
    assert r == {**{k: 100.0 for k in KEYS[:-1]}, "rsum": 600.0}


def test_known_rank_three():
    # N=10, cpi=5. Own captions score 0.5, background 0. For image i, the FIRST
    # caption of images i+1, i+2, i+3 (mod 10) scores 1.0 -> 3 distractors
    # above every own caption: every i2t rank = 3 -> R@1 = 0, R@5 = R@10 = 100.
    # t2i: caption 0 of image g has 1.0 in rows g-1, g-2, g-3 -> rank 3;
    # captions 1..4 of every image have 0.5 vs 0 -> rank 0. So 4/5 of the
    # captions are at rank 0: R@1 = 80, R@5 = R@10 = 100.
    # rsum = 0 + 100 + 100 + 80 + 100 + 100 = 480.
    n_img, cpi = 10, 5
    sims = np.zeros((n_img, n_img * cpi))
    for i in range(n_img):
        sims[i, i * cpi : (i + 1) * cpi] = 0.5
        for d in (1, 2, 3):
            sims[i, ((i + d) % n_img) * cpi] = 1.0
    i2t, t2i = ranks(sims, cpi)
    assert i2t.tolist() == [3] * n_img
    assert t2i.tolist() == [3, 0, 0, 0, 0] * n_img
    r = recall_at_k(sims, cpi)
    assert r == {
        "i2t_r1": 0.0,
        "i2t_r5": 100.0,
        "i2t_r10": 100.0,
        "t2i_r1": 80.0,
        "t2i_r5": 100.0,
        "t2i_r10": 100.0,
        "rsum": 480.0,
    }


@pytest.mark.parametrize("as_torch", [False, True])
def test_constant_matrix_is_pessimistic(as_torch):
    # All scores tie. i2t: every one of the (N-1)*cpi non-matching captions is
    # >= the best own caption -> rank (N-1)*cpi. t2i: all N-1 other images tie
    # -> rank N-1.
    # N=4, cpi=5: i2t rank 15 -> R@1 = R@5 = R@10 = 0;
    #             t2i rank 3  -> R@1 = 0, R@5 = R@10 = 100; rsum = 200.
    # N=12, cpi=5: i2t rank 55, t2i rank 11 -> all recalls 0, rsum = 0.
    # (An optimistic '>' rule would give 100 everywhere.)
    def make(n):
        a = np.full((n, n * 5), 0.25)
        return torch.from_numpy(a) if as_torch else a

    i2t, t2i = ranks(make(4))
    assert i2t.tolist() == [15] * 4 and t2i.tolist() == [3] * 20
    assert recall_at_k(make(4)) == {
        "i2t_r1": 0.0,
        "i2t_r5": 0.0,
        "i2t_r10": 0.0,
        "t2i_r1": 0.0,
        "t2i_r5": 100.0,
        "t2i_r10": 100.0,
        "rsum": 200.0,
    }
    assert recall_at_k(make(12)) == {k: 0.0 for k in KEYS}


def test_two_image_literal():
    # cpi = 2: captions 0,1 -> image 0; captions 2,3 -> image 1.
    sims = np.array(
        [
            [0.9, 0.1, 0.8, 0.2],
            [0.3, 0.6, 0.4, 0.6],
        ]
    )
    # i2t image 0: best own 0.9; non-matching 0.8, 0.2 -> none >= 0.9 -> rank 0.
    # i2t image 1: best own 0.6; non-matching 0.3, 0.6 -> 0.6 ties -> rank 1.
    # t2i caption 0: 0.9 vs 0.3 -> 0;  caption 1: 0.1 vs 0.6 -> 1;
    #     caption 2: 0.4 vs 0.8 -> 1;  caption 3: 0.6 vs 0.2 -> 0.
    i2t, t2i = ranks(sims, captions_per_image=2)
    assert i2t.tolist() == [0, 1]
    assert t2i.tolist() == [0, 1, 1, 0]
    assert recall_at_k(sims, captions_per_image=2) == {
        "i2t_r1": 50.0,
        "i2t_r5": 100.0,
        "i2t_r10": 100.0,
        "t2i_r1": 50.0,
        "t2i_r5": 100.0,
        "t2i_r10": 100.0,
        "rsum": 500.0,
    }


def test_i2t_uses_best_own_caption():
    # cpi = 2. Image 0 owns captions 0 (score 0.0, last) and 1 (0.9, first):
    # the best one counts -> rank 0 (using caption 0 would give rank 2).
    # Image 1 owns captions 2 (0.9) and 3 (0.1, last): best -> rank 0.
    sims = np.array([[0.0, 0.9, 0.5, 0.4], [0.5, 0.0, 0.9, 0.1]])
    i2t, _ = ranks(sims, captions_per_image=2)
    assert i2t.tolist() == [0, 0]


# --------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------
@pytest.mark.parametrize("cpi", [1, 5])
@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])
def test_chunking_is_invisible(cpi, chunk):
    rng = np.random.default_rng(7)
    sims = random_sims(rng, 23, cpi, "ties")
    i2t0, t2i0 = brute_ranks(sims, cpi)
    i2t, t2i = ranks(sims, cpi, chunk=chunk)
    np.testing.assert_array_equal(i2t, i2t0)
    np.testing.assert_array_equal(t2i, t2i0)
    assert recall_at_k(sims, cpi, chunk=chunk) == recall_at_k(sims, cpi)


# --------------------------------------------------------------------------
# COCO 1K protocol
# --------------------------------------------------------------------------
def test_coco_1k_is_mean_over_diagonal_blocks():
    rng = np.random.default_rng(11)
    sims = random_sims(rng, 10, 5, "ties")  # 10 x 50 -> five 2 x 10 blocks
    folds = [brute_recalls(sims[2 * f : 2 * f + 2, 10 * f : 10 * f + 10], 5)
             for f in range(5)]
    want = {k: sum(r[k] for r in folds) / 5 for k in KEYS[:-1]}
    want["rsum"] = sum(want.values())
    got = coco_1k_recall(sims, folds=5, captions_per_image=5)
    assert_recalls(got, want)

    # Off-diagonal blocks must be ignored: make them beat everything.
    poisoned = np.full_like(sims, 1e9)
    for f in range(5):
        poisoned[2 * f : 2 * f + 2, 10 * f : 10 * f + 10] = sims[
            2 * f : 2 * f + 2, 10 * f : 10 * f + 10
        ]
    assert coco_1k_recall(poisoned, folds=5) == got
    # ...while on the whole matrix the poison does matter: every image has 40
    # poisoned captions above its own (i2t rank >= 40 -> all i2t recalls 0),
    # every caption has 8 poisoned images above its own among 10 (t2i rank 8
    # or 9 -> R@1 = R@5 = 0, R@10 = 100), so rsum = 100.
    assert recall_at_k(poisoned)["rsum"] == 100.0


def test_coco_1k_rsum_is_sum_of_averaged_recalls():
    rng = np.random.default_rng(12)
    sims = rng.standard_normal((12, 36))
    r = coco_1k_recall(sims, folds=3, captions_per_image=3)
    assert list(r) == KEYS
    assert r["rsum"] == pytest.approx(sum(r[k] for k in KEYS[:-1]))


def test_coco_1k_single_fold_equals_recall_at_k():
    rng = np.random.default_rng(13)
    sims = rng.standard_normal((9, 45))
    assert coco_1k_recall(sims, folds=1) == pytest.approx(recall_at_k(sims))


# --------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sims,cpi",
    [
        (np.zeros(35), 5),  # 1-D
        (np.zeros((2, 3, 4)), 5),  # 3-D
        (np.zeros((7, 34)), 5),  # wrong second dim
        (np.zeros((7, 7)), 5),  # second dim fits cpi=1, not cpi=5
        (np.zeros((0, 0)), 5),  # empty
    ],
)
def test_bad_shape_raises(sims, cpi):
    with pytest.raises(ValueError, match=r"N_img \* captions_per_image.*got shape"):
        recall_at_k(sims, cpi)
    with pytest.raises(ValueError):
        ranks(sims, cpi)
    with pytest.raises(ValueError):
        coco_1k_recall(sims, folds=1, captions_per_image=cpi)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raises(bad):
    sims = np.zeros((4, 20))
    sims[2, 13] = bad
    with pytest.raises(ValueError, match="finite"):
        recall_at_k(sims)
    with pytest.raises(ValueError, match="finite"):
        recall_at_k(torch.from_numpy(sims))


def test_folds_not_dividing_raises():
    with pytest.raises(ValueError, match="divisible"):
        coco_1k_recall(np.zeros((10, 50)), folds=3)


@pytest.mark.parametrize("cpi", [0, -1, 2.5])
def test_bad_captions_per_image_raises(cpi):
    with pytest.raises(ValueError):
        recall_at_k(np.zeros((2, 10)), captions_per_image=cpi)


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------
def test_format_recalls():
    r = {
        "i2t_r1": 12.5,
        "i2t_r5": 50.0,
        "i2t_r10": 100.0,
        "t2i_r1": 1.25,
        "t2i_r5": 33.333,
        "t2i_r10": 66.0,
        "rsum": 263.083,
    }
    text = format_recalls(r)
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["R@1", "R@5", "R@10"]
    assert lines[1].split() == ["i2t", "12.50", "50.00", "100.00"]
    assert lines[2].split() == ["t2i", "1.25", "33.33", "66.00"]
    assert lines[3].split() == ["rsum", "263.08"]
    # Fixed width: the recall rows line up column for column.
    assert len(lines[0]) == len(lines[1]) == len(lines[2])
