"""Tests for cccl_lite.model.align (eqs 13-20, 27) against independent references.

Every reference below is written out with plain Python loops over scalars
(tensors are turned into nested lists first), from the module's own weights,
so that no reference shares code with the package.
"""

from __future__ import annotations

import math

import pytest
import torch

from cccl_lite.model.align import (
                                   GlobalBranch,
                                   LocalBranch,
                                   RelationSimilarity,
                                   cosine_similarity_vector,
                                   cross_attention,
                                   masked_pool,
                                   vector_similarity,
                                   )

TOL = dict(rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# Scalar references
# --------------------------------------------------------------------------
def ref_vsf(a, b, w):
    """Eq 15 by loops: y_p = sum_k W[p][k] (a_k - b_k)^2, then y / ||y||_2."""
    y = []
    for row in w:
        acc = 0.0
        for k in range(len(a)):
            acc += row[k] * (a[k] - b[k]) ** 2
        y.append(acc)
    norm = math.sqrt(sum(v * v for v in y))
    if norm == 0.0:
        return [0.0] * len(y)
    return [v / norm for v in y]


def ref_cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def ref_linear(w, b, x):
    return [sum(w[o][k] * x[k] for k in range(len(x))) + b[o] for o in range(len(w))]


def ref_pool(x, mask, use_max=True, use_avg=True):
    """Eq 13 for one item: max over valid rows + mean over valid rows."""
    d = len(x[0])
    valid = [r for r, ok in zip(x, mask) if ok]
    out = [0.0] * d
    for k in range(d):
        if use_max:
            out[k] += max(r[k] for r in valid)
        if use_avg:
            out[k] += sum(r[k] for r in valid) / len(valid)
    return out


def ref_attend(q, qm, c, cm, lam):
    """Eq 17 (SCAN reading) for ONE (query item, context item) pair.

    M_ij = cos(q_i, c_j); Mbar_ij = relu(M_ij) / sqrt(sum_{valid i'} relu(M_i'j)^2);
    w_ij = exp(lam Mbar_ij) / sum_{valid j'} exp(lam Mbar_ij');  u_i = sum_j w_ij c_j.
    Returns (u, w) for all query rows; rows/columns that are not valid are None/0.
    """
    lq, lc, d = len(q), len(c), len(c[0])
    relu_m = [[max(ref_cos(q[i], c[j]), 0.0) if (qm[i] and cm[j]) else 0.0
               for j in range(lc)] for i in range(lq)]
    mbar = [[0.0] * lc for _ in range(lq)]
    for j in range(lc):
        if not cm[j]:
            continue
        col = math.sqrt(sum(relu_m[i][j] ** 2 for i in range(lq) if qm[i]))
        for i in range(lq):
            if qm[i]:
                mbar[i][j] = relu_m[i][j] / col if col > 0 else 0.0
    w = [[0.0] * lc for _ in range(lq)]
    u = [None] * lq
    for i in range(lq):
        if not qm[i]:
            continue
        den = sum(math.exp(lam * mbar[i][j]) for j in range(lc) if cm[j])
        for j in range(lc):
            if cm[j]:
                w[i][j] = math.exp(lam * mbar[i][j]) / den
        u[i] = [sum(w[i][j] * c[j][k] for j in range(lc)) for k in range(d)]
    return u, w


def ref_local_pair(v, vm, t, tm, w_vt, w_tv, lam):
    """Eqs 18-20 for one (image, text) pair; cosine when the weight is None."""
    def sim(a, b, w):
        return [ref_cos(a, b)] if w is None else ref_vsf(a, b, w)

    u_t, _ = ref_attend(v, vm, t, tm, lam)
    s_vt = None
    n_valid = sum(1 for ok in vm if ok)
    for i in range(len(v)):
        if vm[i]:
            s = sim(v[i], u_t[i], w_vt)
            s_vt = s if s_vt is None else [x + y for x, y in zip(s_vt, s)]
    s_vt = [x / n_valid for x in s_vt]
    u_v, _ = ref_attend(t, tm, v, vm, lam)
    s_tv = None
    m_valid = sum(1 for ok in tm if ok)
    for j in range(len(t)):
        if tm[j]:
            s = sim(t[j], u_v[j], w_tv)
            s_tv = s if s_tv is None else [x + y for x, y in zip(s_tv, s)]
    s_tv = [x / m_valid for x in s_tv]
    return [x + y for x, y in zip(s_vt, s_tv)]


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def lengths_mask(lengths, total):
    return torch.arange(total)[None] < torch.tensor(lengths)[:, None]


def close(got, want, **tol):
    want_t = torch.tensor(want, dtype=torch.float64)
    torch.testing.assert_close(got, want_t, **(tol or TOL))


# --------------------------------------------------------------------------
# vector_similarity (eq 15)
# --------------------------------------------------------------------------
def test_vsf_matches_loop_and_is_unit():
    a, b, w = rand(5, seed=1), rand(5, seed=2), rand(4, 5, seed=3)
    got = vector_similarity(a, b, w)
    assert got.shape == (4,)
    close(got, ref_vsf(a.tolist(), b.tolist(), w.tolist()))
    assert float(got.norm()) == pytest.approx(1.0, abs=1e-12)


def test_vsf_hand_case():
    # a - b = (1, 2) -> squared (1, 4); W = [[1, 0], [0, 1], [1, 1]] -> (1, 4, 5),
    # norm sqrt(1 + 16 + 25) = sqrt(42).
    a = torch.tensor([3.0, 5.0], dtype=torch.float64)
    b = torch.tensor([2.0, 3.0], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    r = math.sqrt(42.0)
    close(vector_similarity(a, b, w), [1 / r, 4 / r, 5 / r])


def test_vsf_broadcast_all_pairs():
    a, b, w = rand(3, 6, seed=4), rand(4, 6, seed=5), rand(7, 6, seed=6)
    got = vector_similarity(a[:, None, :], b[None, :, :], w)
    assert got.shape == (3, 4, 7)
    for i in range(3):
        for j in range(4):
            close(got[i, j], ref_vsf(a[i].tolist(), b[j].tolist(), w.tolist()))
            assert float(got[i, j].norm()) == pytest.approx(1.0, abs=1e-12)


def test_vsf_equal_inputs_give_zero_without_nan():
    a, w = rand(2, 5, seed=7).requires_grad_(), rand(3, 5, seed=8)
    out = vector_similarity(a, a.detach().clone(), w)
    assert torch.equal(out, torch.zeros(2, 3, dtype=torch.float64))
    out.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_vsf_has_no_bias():
    # W|a-b|^2 / ||W|a-b|^2|| is invariant under W -> cW (c > 0); an additive
    # bias would break the invariance.
    a, b, w = rand(4, 5, seed=9), rand(4, 5, seed=10), rand(6, 5, seed=11)
    base = vector_similarity(a, b, w)
    for c in (0.01, 3.0, 250.0):
        torch.testing.assert_close(vector_similarity(a, b, c * w), base, rtol=1e-12, atol=1e-14)


def test_cosine_similarity_vector():
    a, b = rand(3, 1, 5, seed=12), rand(1, 4, 5, seed=13)
    got = cosine_similarity_vector(a, b)
    assert got.shape == (3, 4, 1)
    for i in range(3):
        for j in range(4):
            assert float(got[i, j, 0]) == pytest.approx(ref_cos(a[i, 0].tolist(), b[0, j].tolist()),
                                                       rel=1e-12, abs=1e-14)


# --------------------------------------------------------------------------
# masked_pool (eq 13)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("use_max,use_avg", [(True, True), (True, False), (False, True)])
def test_masked_pool_matches_loop(use_max, use_avg):
    x = rand(3, 5, 4, seed=14)
    mask = lengths_mask([5, 2, 1], 5)
    got = masked_pool(x, mask, use_max=use_max, use_avg=use_avg)
    assert got.shape == (3, 4)
    for b in range(3):
        close(got[b], ref_pool(x[b].tolist(), mask[b].tolist(), use_max, use_avg))


def test_masked_pool_hand_case():
    # valid rows (1, -2) and (3, 0): max (3, 0) + mean (2, -1) = (5, -1).
    x = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [99.0, 99.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    close(masked_pool(x, mask), [[5.0, -1.0]])
    close(masked_pool(x, mask, use_avg=False), [[3.0, 0.0]])
    close(masked_pool(x, mask, use_max=False), [[2.0, -1.0]])


@pytest.mark.parametrize("use_max,use_avg", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("fill", [1e30, -1e30])
def test_masked_pool_ignores_padding(use_max, use_avg, fill):
    # All-negative valid entries: a max that let padding (or a 0) in would show.
    x = -rand(2, 6, 3, seed=15).abs() - 1.0
    mask = lengths_mask([4, 2], 6)
    clean = masked_pool(x, mask, use_max=use_max, use_avg=use_avg)
    dirty = x.masked_fill(~mask[..., None], fill)
    got = masked_pool(dirty, mask, use_max=use_max, use_avg=use_avg)
    torch.testing.assert_close(got, clean, **TOL)
    for b in range(2):
        close(got[b], ref_pool(x[b].tolist(), mask[b].tolist(), use_max, use_avg))


def test_masked_pool_needs_a_pooling():
    with pytest.raises(ValueError):
        masked_pool(rand(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), use_max=False, use_avg=False)


# --------------------------------------------------------------------------
# cross_attention (eq 17)
# --------------------------------------------------------------------------
def check_attention(q, qm, c, cm, lam):
    u, w = cross_attention(q, qm, c, cm, lam)
    bq, lq, d = q.shape
    bc, lc, _ = c.shape
    assert u.shape == (bq, bc, lq, d) and w.shape == (bq, bc, lq, lc)
    assert torch.isfinite(u).all() and torch.isfinite(w).all()
    for a in range(bq):
        for b in range(bc):
            ru, rw = ref_attend(q[a].tolist(), qm[a].tolist(), c[b].tolist(), cm[b].tolist(), lam)
            for i in range(lq):
                if not qm[a, i]:
                    continue
                close(u[a, b, i], ru[i])
                close(w[a, b, i], rw[i])
                assert float(w[a, b, i].sum()) == pytest.approx(1.0, abs=1e-12)
                for j in range(lc):
                    if not cm[b, j]:
                        assert float(w[a, b, i, j]) == 0.0
    return u, w


@pytest.mark.parametrize("lam", [9.0, 1.0, 4.5])
def test_cross_attention_matches_loop(lam):
    q = rand(2, 4, 5, seed=16)
    c = rand(3, 3, 5, seed=17)
    qm = lengths_mask([4, 2], 4)
    cm = lengths_mask([3, 1, 2], 3)
    check_attention(q, qm, c, cm, lam)


def test_cross_attention_hand_case_normalises_over_query_axis():
    # q1 = e1, q2 = (e1 + e2)/sqrt2; contexts c1 = e1, c2 = e2.
    # M = [[1, 0], [r, r]] with r = 1/sqrt2. Column norms over the QUERY axis:
    # col 1: sqrt(1 + 1/2) = sqrt(1.5); col 2: r. Mbar = [[1/sqrt1.5, 0], [r/sqrt1.5, 1]].
    # (Normalising over the context axis would give [[1, 0], [r, r]] instead.)
    lam = 2.0
    r = 1 / math.sqrt(2.0)
    q = torch.tensor([[[1.0, 0.0], [r, r]]], dtype=torch.float64)
    c = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    ones = torch.ones(1, 2, dtype=torch.bool)
    mbar = [[1 / math.sqrt(1.5), 0.0], [r / math.sqrt(1.5), 1.0]]
    want_w = []
    for row in mbar:
        e = [math.exp(lam * x) for x in row]
        want_w.append([x / sum(e) for x in e])
    u, w = cross_attention(q, ones, c, ones, lam)
    close(w[0, 0], want_w)
    # u_i = w_i1 e1 + w_i2 e2
    close(u[0, 0], want_w)


def test_cross_attention_padding_is_inert():
    q = rand(2, 4, 5, seed=18)
    c = rand(2, 3, 5, seed=19)
    qm = lengths_mask([3, 2], 4)
    cm = lengths_mask([2, 3], 3)
    u0, w0 = cross_attention(q, qm, c, cm)
    # Garbage (large, random) in every padded row of queries and contexts.
    q1 = torch.where(qm[..., None], q, rand(2, 4, 5, seed=20, scale=1e6))
    c1 = torch.where(cm[..., None], c, rand(2, 3, 5, seed=21, scale=1e6))
    # ...and extra padded rows appended to both.
    q2 = torch.cat([q1, rand(2, 2, 5, seed=22, scale=1e3)], 1)
    qm2 = torch.cat([qm, torch.zeros(2, 2, dtype=torch.bool)], 1)
    c2 = torch.cat([c1, rand(2, 3, 5, seed=23, scale=1e3)], 1)
    cm2 = torch.cat([cm, torch.zeros(2, 3, dtype=torch.bool)], 1)
    u1, w1 = check_attention(q2, qm2, c2, cm2, 9.0)
    for a in range(2):
        for b in range(2):
            for i in range(4):
                if qm[a, i]:
                    torch.testing.assert_close(u1[a, b, i], u0[a, b, i], **TOL)
                    torch.testing.assert_close(w1[a, b, i, :3], w0[a, b, i], **TOL)
                    assert torch.all(w1[a, b, i, 3:] == 0)


def test_cross_attention_other_pairs_do_not_interact():
    # The attention of pair (a, b) depends only on query item a and context item b.
    q = rand(3, 4, 5, seed=24)
    c = rand(2, 3, 5, seed=25)
    qm = lengths_mask([4, 3, 2], 4)
    cm = lengths_mask([3, 2], 3)
    u, w = cross_attention(q, qm, c, cm)
    for a in range(3):
        for b in range(2):
            ua, wa = cross_attention(q[a:a + 1], qm[a:a + 1], c[b:b + 1], cm[b:b + 1])
            torch.testing.assert_close(u[a, b], ua[0, 0], **TOL)
            torch.testing.assert_close(w[a, b], wa[0, 0], **TOL)


def test_cross_attention_gradient_finite_with_padding():
    q = rand(2, 4, 5, seed=26).requires_grad_()
    c = rand(2, 3, 5, seed=27).requires_grad_()
    qm = lengths_mask([4, 2], 4)
    cm = lengths_mask([1, 3], 3)
    u, _ = cross_attention(q.masked_fill(~qm[..., None], 0.0), qm,
                           c.masked_fill(~cm[..., None], 0.0), cm)
    u.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(c.grad).all()


# --------------------------------------------------------------------------
# LocalBranch (eqs 18-20)
# --------------------------------------------------------------------------
def local_inputs(seed):
    v = rand(2, 4, 5, seed=seed)
    t = rand(3, 3, 5, seed=seed + 1)
    vm = lengths_mask([4, 2], 4)
    tm = lengths_mask([3, 1, 2], 3)
    # garbage in the padding
    v = torch.where(vm[..., None], v, rand(2, 4, 5, seed=seed + 2, scale=1e4))
    t = torch.where(tm[..., None], t, rand(3, 3, 5, seed=seed + 3, scale=1e4))
    return v, vm, t, tm


@pytest.mark.parametrize("lam", [9.0, 2.0])
def test_local_branch_matches_loop(lam):
    torch.manual_seed(0)
    branch = LocalBranch(5, 6, temperature=lam).double()
    v, vm, t, tm = local_inputs(30)
    got = branch(v, vm, t, tm)
    assert got.shape == (2, 3, 6)
    w_vt, w_tv = branch.w_vt.tolist(), branch.w_tv.tolist()
    assert w_vt != w_tv  # separate weights per direction
    for a in range(2):
        for b in range(3):
            want = ref_local_pair(v[a].tolist(), vm[a].tolist(), t[b].tolist(), tm[b].tolist(),
                                  w_vt, w_tv, lam)
            close(got[a, b].detach(), want)


def test_local_branch_directions_use_their_own_weight():
    # Swapping the two weights must change sim^O (it would not if one weight served both).
    torch.manual_seed(1)
    branch = LocalBranch(5, 6).double()
    v, vm, t, tm = local_inputs(40)
    base = branch(v, vm, t, tm).detach()
    with torch.no_grad():
        w_vt = branch.w_vt.clone()
        branch.w_vt.copy_(branch.w_tv)
        branch.w_tv.copy_(w_vt)
    assert not torch.allclose(branch(v, vm, t, tm), base)


def test_local_branch_cosine_without_vsf():
    branch = LocalBranch(5, 6, use_vsf=False).double()
    assert len(list(branch.parameters())) == 0
    v, vm, t, tm = local_inputs(50)
    got = branch(v, vm, t, tm)
    assert got.shape == (2, 3, 1)
    for a in range(2):
        for b in range(3):
            want = ref_local_pair(v[a].tolist(), vm[a].tolist(), t[b].tolist(), tm[b].tolist(),
                                  None, None, 9.0)
            close(got[a, b], want)


def test_local_branch_attention_weights():
    torch.manual_seed(2)
    branch = LocalBranch(5, 6).double()
    v, vm, t, tm = local_inputs(60)
    w_vt, w_tv = branch.attention(v, vm, t, tm)
    assert w_vt.shape == (2, 3, 4, 3) and w_tv.shape == (3, 2, 3, 4)
    for a in range(2):
        for b in range(3):
            _, rvt = ref_attend(v[a].tolist(), vm[a].tolist(), t[b].tolist(), tm[b].tolist(), 9.0)
            _, rtv = ref_attend(t[b].tolist(), tm[b].tolist(), v[a].tolist(), vm[a].tolist(), 9.0)
            for i in range(4):
                if vm[a, i]:
                    close(w_vt[a, b, i], rvt[i])
            for j in range(3):
                if tm[b, j]:
                    close(w_tv[b, a, j], rtv[j])


# --------------------------------------------------------------------------
# GlobalBranch (eqs 13-14, 16)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("use_max,use_avg", [(True, True), (True, False), (False, True)])
def test_global_vectors_match_loop(use_max, use_avg):
    torch.manual_seed(3)
    br = GlobalBranch(4, 5, use_max=use_max, use_avg=use_avg).double()
    v = rand(2, 5, 4, seed=70)
    vm = lengths_mask([5, 3], 5)
    t = rand(3, 4, 4, seed=71)
    tm = lengths_mask([4, 1, 2], 4)
    v = torch.where(vm[..., None], v, torch.full_like(v, 1e20))
    t = torch.where(tm[..., None], t, torch.full_like(t, -1e20))
    vs, ts = br.image_vector(v, vm), br.text_vector(t, tm)
    wi, bi = br.image_fc.weight.tolist(), br.image_fc.bias.tolist()
    wt, bt = br.text_fc.weight.tolist(), br.text_fc.bias.tolist()
    for a in range(2):
        close(vs[a].detach(), ref_linear(wi, bi, ref_pool(v[a].tolist(), vm[a].tolist(),
                                                           use_max, use_avg)))
    for b in range(3):
        close(ts[b].detach(), ref_linear(wt, bt, ref_pool(t[b].tolist(), tm[b].tolist(),
                                                           use_max, use_avg)))


def test_global_image_and_text_layers_are_distinct():
    torch.manual_seed(4)
    br = GlobalBranch(4, 5).double()
    assert br.image_fc.weight is not br.text_fc.weight
    x = rand(2, 3, 4, seed=72)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert not torch.allclose(br.image_vector(x, mask), br.text_vector(x, mask))


def test_global_forward_matches_loop():
    torch.manual_seed(5)
    br = GlobalBranch(4, 6).double()
    vs, ts = rand(3, 4, seed=73), rand(2, 4, seed=74)
    got = br(vs, ts)
    assert got.shape == (3, 2, 6)
    w = br.w_s.tolist()
    for i in range(3):
        for j in range(2):
            close(got[i, j].detach(), ref_vsf(vs[i].tolist(), ts[j].tolist(), w))


def test_global_forward_cosine_without_vsf():
    br = GlobalBranch(4, 6, use_vsf=False).double()
    assert br.w_s is None
    vs, ts = rand(3, 4, seed=75), rand(2, 4, seed=76)
    got = br(vs, ts)
    assert got.shape == (3, 2, 1)
    for i in range(3):
        for j in range(2):
            assert float(got[i, j, 0]) == pytest.approx(ref_cos(vs[i].tolist(), ts[j].tolist()),
                                                       rel=1e-12)


def test_global_without_scores():
    br = GlobalBranch(4, 6, scores=False).double()
    names = [n for n, _ in br.named_parameters()]
    assert not any("w_s" in n for n in names)
    assert sorted(names) == ["image_fc.bias", "image_fc.weight", "text_fc.bias", "text_fc.weight"]
    # the vectors (Branch 3's cross vectors) still work
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert br.image_vector(rand(2, 3, 4, seed=77), mask).shape == (2, 4)
    with pytest.raises(RuntimeError):
        br(rand(2, 4, seed=78), rand(2, 4, seed=79))


# --------------------------------------------------------------------------
# RelationSimilarity (eq 27)
# --------------------------------------------------------------------------
def test_relation_similarity_all_pairs():
    torch.manual_seed(6)
    rs = RelationSimilarity(5, 4).double()
    vr, tr = rand(2, 3, 5, seed=80), rand(2, 3, 5, seed=81)
    got = rs(vr, tr)
    assert got.shape == (2, 3, 4)
    w = rs.w_r.tolist()
    for i in range(2):
        for j in range(3):
            close(got[i, j].detach(), ref_vsf(vr[i, j].tolist(), tr[i, j].tolist(), w))


def test_relation_similarity_broadcast():
    torch.manual_seed(7)
    rs = RelationSimilarity(5, 4).double()
    vr, tr = rand(3, 1, 5, seed=82), rand(1, 2, 5, seed=83)
    got = rs(vr, tr)
    assert got.shape == (3, 2, 4)
    w = rs.w_r.tolist()
    for i in range(3):
        for j in range(2):
            close(got[i, j].detach(), ref_vsf(vr[i, 0].tolist(), tr[0, j].tolist(), w))


def test_relation_similarity_cosine_without_vsf():
    rs = RelationSimilarity(5, 4, use_vsf=False).double()
    vr, tr = rand(3, 1, 5, seed=84), rand(1, 2, 5, seed=85)
    got = rs(vr, tr)
    assert got.shape == (3, 2, 1)
    for i in range(3):
        for j in range(2):
            assert float(got[i, j, 0]) == pytest.approx(
                ref_cos(vr[i, 0].tolist(), tr[0, j].tolist()), rel=1e-12)
