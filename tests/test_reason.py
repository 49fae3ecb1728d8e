"""Reason (Sec. 3.3.3, eqs 21-26) checked against independent computations.

References are explicit loops over nodes on the modules' own weights, a
hand-made dependency tree, and ``torch.nn.GRU`` (weights copied from the
module's cell) run on each pair's unpadded sequence.
"""

import math

import pytest
import torch
from torch import nn

from cccl_lite.model.reason import CrossGRU, GraphEdges, GraphReasoning, ResidualGCN, full_adjacency

D = 6
TOL = dict(atol=1e-10, rtol=1e-10)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def prefix_mask(lengths, size):
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


@torch.no_grad()
def edges_by_hand(edges, x, allowed):
    """Eqs 21-23 by loops: logits (W1 x_i)·(W2 x_j)/√d, softmax over allowed j."""
    B, L, d = x.shape
    W1, W2 = edges.w1.weight, edges.w2.weight
    out = torch.zeros(B, L, L, dtype=x.dtype)
    for b in range(B):
        for i in range(L):
            nbrs = [j for j in range(L) if bool(allowed[b, i, j])]
            if not nbrs:
                continue
            a = W1 @ x[b, i]
            logits = [float(a @ (W2 @ x[b, j])) / math.sqrt(d) for j in nbrs]
            top = max(logits)
            e = [math.exp(s - top) for s in logits]
            for j, ej in zip(nbrs, e):
                out[b, i, j] = ej / sum(e)
    return out


@torch.no_grad()
def gcn_by_hand(gcn, h, edges, mask=None):
    """Eq 24 per node: ĥ_i = h_i + W_R (Σ_j W_e[i, j] W_G h_j), W_R d × d."""
    B, N, d = h.shape
    WG, WR = gcn.w_g.weight, gcn.w_r.weight
    out = torch.zeros_like(h)
    for b in range(B):
        for i in range(N):
            if mask is not None and not mask[b, i]:
                continue
            agg = torch.zeros(d, dtype=h.dtype)
            for j in range(N):
                agg = agg + edges[b, i, j] * (WG @ h[b, j])
            out[b, i] = h[b, i] + WR @ agg
    return out


def torch_gru_from(cross_gru):
    """nn.GRU holding the module's GRUCell weights."""
    d = cross_gru.dim
    gru = nn.GRU(d, d, batch_first=True).double()
    with torch.no_grad():
        gru.weight_ih_l0.copy_(cross_gru.cell.weight_ih)
        gru.weight_hh_l0.copy_(cross_gru.cell.weight_hh)
        gru.bias_ih_l0.copy_(cross_gru.cell.bias_ih)
        gru.bias_hh_l0.copy_(cross_gru.cell.bias_hh)
    return gru


@torch.no_grad()
def last_state(gru, seq):
    """Last hidden state of nn.GRU over seq (T, d); zeros for an empty sequence."""
    if seq.shape[0] == 0:
        return torch.zeros(gru.hidden_size, dtype=torch.float64)
    _, h = gru(seq[None])
    return h[0, 0]


# ---------------------------------------------------------------- full_adjacency

def test_full_adjacency_matches_loop():
    mask = torch.tensor([[True, True, False, True], [False, False, False, False],
                         [True, True, True, True]])
    got = full_adjacency(mask)
    assert got.dtype == torch.bool and got.shape == (3, 4, 4)
    for b in range(3):
        for i in range(4):
            for j in range(4):
                assert bool(got[b, i, j]) == (bool(mask[b, i]) and bool(mask[b, j]))


# ------------------------------------------------------------------- GraphEdges

def test_graph_edges_match_eqs_21_22_by_loop():
    edges = GraphEdges(D).double()
    assert edges.w1.bias is None and edges.w2.bias is None
    x = torch.randn(2, 5, D, dtype=torch.float64)
    allowed = torch.rand(2, 5, 5) > 0.5
    allowed |= torch.eye(5, dtype=torch.bool)  # self-loops: no empty valid row
    allowed[1, 4] = False  # one empty row (a padded node, say)
    got = edges(x, allowed)
    want = edges_by_hand(edges, x, allowed)
    assert torch.allclose(got, want, **TOL)
    assert (got[~allowed] == 0).all()  # disallowed edges are exactly 0
    sums = got.sum(-1)
    nonempty = allowed.any(-1)
    assert torch.allclose(sums[nonempty], torch.ones_like(sums[nonempty]), **TOL)
    assert (got[1, 4] == 0).all() and not torch.isnan(got).any()


def test_graph_edges_full_graph_is_not_symmetric_in_general():
    """W1 ≠ W2, so (W1 x_i)·(W2 x_j) ≠ (W1 x_j)·(W2 x_i): the loop, not xᵀx, is right."""
    edges = GraphEdges(D).double()
    x = torch.randn(1, 4, D, dtype=torch.float64)
    allowed = torch.ones(1, 4, 4, dtype=torch.bool)
    got = edges(x, allowed)
    assert torch.allclose(got, edges_by_hand(edges, x, allowed), **TOL)
    swapped = edges_by_hand(edges, x, allowed)
    with torch.no_grad():
        w1 = edges.w1.weight.clone()
        edges.w1.weight.copy_(edges.w2.weight)
        edges.w2.weight.copy_(w1)
    assert not torch.allclose(edges(x, allowed), swapped)


# --------------------------------------------------------------- GraphReasoning

def test_edge_weights_add_self_loops_even_without_adjacency_arcs():
    gr = GraphReasoning(D).double()
    x = torch.randn(2, 4, D, dtype=torch.float64)
    mask = prefix_mask([4, 2], 4)
    no_arcs = torch.zeros(2, 4, 4, dtype=torch.bool)
    got = gr.edge_weights(x, mask, no_arcs)
    # Each valid node may only talk to itself: weight exactly 1 on the diagonal.
    want = torch.diag_embed(mask.double())
    assert torch.equal(got, want)


def test_edge_weights_full_graph_and_padding():
    gr = GraphReasoning(D).double()
    x = torch.randn(3, 5, D, dtype=torch.float64)
    mask = prefix_mask([5, 3, 1], 5)
    got = gr.edge_weights(x, mask)
    allowed = mask[:, :, None] & mask[:, None, :]
    assert torch.allclose(got, edges_by_hand(gr.edges, x, allowed), **TOL)
    assert (got[~mask] == 0).all()  # padded rows all zero
    assert (got.transpose(1, 2)[~mask] == 0).all()  # padded columns too
    sums = got.sum(-1)
    assert torch.allclose(sums[mask], torch.ones_like(sums[mask]), **TOL)
    assert torch.allclose(got[2, 0, 0], torch.tensor(1.0, dtype=torch.float64))
    # Garbage in padded nodes changes nothing.
    x2 = x.clone()
    x2[~mask] = 1e3
    assert torch.allclose(gr.edge_weights(x2, mask), got, **TOL)


# "a red circle left of a blue square": 1-based heads, 0 = root.
# a→circle, red→circle, circle = root, left→circle, of→square, a→square,
# blue→square, square→left.
SENT1 = [3, 3, 0, 3, 8, 8, 8, 4]
SENT2 = [3, 3, 0]  # "a blue square"


def arcs_from_heads(heads, size):
    adj = torch.zeros(size, size, dtype=torch.bool)
    for i, h in enumerate(heads):
        if h > 0:
            adj[i, h - 1] = adj[h - 1, i] = True
    return adj


def test_edge_weights_follow_the_dependency_tree():
    gr = GraphReasoning(D).double()
    L = 9
    x = torch.randn(2, L, D, dtype=torch.float64)
    mask = prefix_mask([len(SENT1), len(SENT2)], L)
    adjacency = torch.stack([arcs_from_heads(SENT1, L), arcs_from_heads(SENT2, L)])
    got = gr.edge_weights(x, mask, adjacency)
    allowed = adjacency | torch.diag_embed(mask)  # the arcs plus self-loops
    assert torch.allclose(got, edges_by_hand(gr.edges, x, allowed), **TOL)
    assert (got[~allowed] == 0).all()  # eq 23: non-arcs get weight exactly 0
    # Spot checks on the hand-made tree: "red" (1) links only to "circle" (2) and
    # itself; "blue" (6) never reaches "red" (1); "square" (7) sees of, a, blue, left.
    assert set(torch.nonzero(got[0, 1]).flatten().tolist()) == {1, 2}
    assert got[0, 6, 1] == 0 and got[0, 1, 6] == 0
    assert set(torch.nonzero(got[0, 7]).flatten().tolist()) == {3, 4, 5, 6, 7}
    assert (got[0, 8] == 0).all() and (got[1, 3:] == 0).all()
    sums = got.sum(-1)
    assert torch.allclose(sums[mask], torch.ones_like(sums[mask]), **TOL)


def test_graph_reasoning_forward_is_gcn_on_its_edges_by_hand():
    gr = GraphReasoning(D).double()
    L = 9
    x = torch.randn(2, L, D, dtype=torch.float64)
    mask = prefix_mask([8, 3], L)
    adjacency = torch.stack([arcs_from_heads(SENT1, L), arcs_from_heads(SENT2, L)])
    allowed = adjacency | torch.diag_embed(mask)
    e = edges_by_hand(gr.edges, x, allowed)
    want = gcn_by_hand(gr.gcn, x, e, mask)
    got = gr(x, mask, adjacency)
    assert torch.allclose(got, want, **TOL)
    assert (got[~mask] == 0).all()
    # Padded sequence equals the same text alone, unpadded.
    alone = gr(x[1:2, :3], mask[1:2, :3], adjacency[1:2, :3, :3])
    assert torch.allclose(got[1, :3], alone[0], **TOL)


# ------------------------------------------------------------------ ResidualGCN

def test_residual_gcn_matches_eq_24_by_hand():
    gcn = ResidualGCN(D).double()
    assert gcn.w_g.bias is None and gcn.w_r.bias is None
    assert tuple(gcn.w_r.weight.shape) == (D, D)  # feature side, d × d (NOTES eq 24)
    h = torch.randn(2, 5, D, dtype=torch.float64)
    edges = torch.softmax(torch.randn(2, 5, 5, dtype=torch.float64), -1)
    assert torch.allclose(gcn(h, edges), gcn_by_hand(gcn, h, edges), **TOL)
    # Matrix form of the same reading: Ĥ = H + (W_e H W_Gᵀ) W_Rᵀ (row vectors).
    mat = h + (edges @ h @ gcn.w_g.weight.T) @ gcn.w_r.weight.T
    assert torch.allclose(gcn(h, edges), mat.detach(), **TOL)


def test_residual_gcn_zero_edges_is_identity_and_padding_is_zero():
    gcn = ResidualGCN(D).double()
    h = torch.randn(2, 4, D, dtype=torch.float64)
    assert torch.allclose(gcn(h, torch.zeros(2, 4, 4, dtype=torch.float64)), h, **TOL)
    mask = prefix_mask([4, 2], 4)
    edges = torch.softmax(torch.randn(2, 4, 4, dtype=torch.float64), -1)
    got = gcn(h, edges, mask)
    assert (got[~mask] == 0).all()
    assert torch.allclose(got, gcn_by_hand(gcn, h, edges, mask), **TOL)


# --------------------------------------------------------------------- CrossGRU

def test_cross_gru_equals_nn_gru_for_every_pair():
    cg = CrossGRU(D).double()
    gru = torch_gru_from(cg)
    L = 5
    nodes = torch.randn(3, L, D, dtype=torch.float64)
    mask = prefix_mask([5, 2, 3], L)
    nodes[~mask] = 77.0  # garbage at padding
    cross = torch.randn(4, D, dtype=torch.float64)
    got = cg(nodes, mask, cross)
    assert got.shape == (3, 4, D)
    for b in range(3):
        for c in range(4):
            seq = torch.cat([cross[c:c + 1], nodes[b][mask[b]]])  # [cross_c, x_1..x_Lb]
            assert torch.allclose(got[b, c], last_state(gru, seq), **TOL)


def test_cross_gru_without_cross_equals_nn_gru_on_nodes():
    cg = CrossGRU(D).double()
    gru = torch_gru_from(cg)
    L = 4
    nodes = torch.randn(3, L, D, dtype=torch.float64)
    mask = prefix_mask([4, 1, 0], L)
    got = cg(nodes, mask)
    assert got.shape == (3, 1, D)
    for b in range(3):
        assert torch.allclose(got[b, 0], last_state(gru, nodes[b][mask[b]]), **TOL)
    assert (got[2] == 0).all()  # nothing read: the zero initial state


def test_cross_gru_padded_steps_do_not_change_the_result():
    cg = CrossGRU(D).double()
    L = 6
    nodes = torch.randn(2, L, D, dtype=torch.float64)
    mask = prefix_mask([6, 3], L)
    cross = torch.randn(3, D, dtype=torch.float64)
    out = cg(nodes, mask, cross)
    nodes2 = nodes.clone()
    nodes2[~mask] = torch.randn(int((~mask).sum()), D, dtype=torch.float64) * 100
    assert torch.allclose(cg(nodes2, mask, cross), out, **TOL)
    # Same as the item run alone with no padding at all.
    alone = cg(nodes[1:2, :3], mask[1:2, :3], cross)
    assert torch.allclose(out[1], alone[0], **TOL)
    # Extra padded columns appended to the batch change nothing either.
    wider = torch.cat([nodes, torch.randn(2, 3, D, dtype=torch.float64)], 1)
    wider_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    assert torch.allclose(cg(wider, wider_mask, cross), out, **TOL)


def test_cross_gru_skips_masked_steps_inside_the_sequence():
    """Module notes: masked steps leave the state unchanged, wherever they are."""
    cg = CrossGRU(D).double()
    gru = torch_gru_from(cg)
    nodes = torch.randn(1, 5, D, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True, False]])
    cross = torch.randn(2, D, dtype=torch.float64)
    got = cg(nodes, mask, cross)
    for c in range(2):
        seq = torch.cat([cross[c:c + 1], nodes[0, [0, 2, 3]]])
        assert torch.allclose(got[0, c], last_state(gru, seq), **TOL)


def test_cross_gru_all_padded_item_returns_the_cross_step_alone():
    cg = CrossGRU(D).double()
    gru = torch_gru_from(cg)
    nodes = torch.randn(2, 3, D, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    cross = torch.randn(3, D, dtype=torch.float64)
    got = cg(nodes, mask, cross)
    # The GRU equations (PyTorch's gate order r, z, n) for one step from h = 0.
    W_ih, b_ih, b_hh = cg.cell.weight_ih, cg.cell.bias_ih, cg.cell.bias_hh
    for c in range(3):
        with torch.no_grad():
            gi = W_ih @ cross[c] + b_ih
            r = torch.sigmoid(gi[:D] + b_hh[:D])
            z = torch.sigmoid(gi[D:2 * D] + b_hh[D:2 * D])
            n = torch.tanh(gi[2 * D:] + r * b_hh[2 * D:])
            h1 = (1 - z) * n  # + z * h0 with h0 = 0
        assert torch.allclose(got[1, c], h1, **TOL)
        assert torch.allclose(got[1, c], last_state(gru, cross[c:c + 1]), **TOL)


# ------------------------------------------------------------------- gradients

def _assert_all_grads(module):
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradients_reach_every_parameter_of_graph_reasoning():
    gr = GraphReasoning(D).double()
    L = 9
    x = torch.randn(2, L, D, dtype=torch.float64, requires_grad=True)
    mask = prefix_mask([8, 3], L)
    adjacency = torch.stack([arcs_from_heads(SENT1, L), arcs_from_heads(SENT2, L)])
    (gr(x, mask, adjacency) * torch.randn(2, L, D, dtype=torch.float64)).sum().backward()
    _assert_all_grads(gr)
    assert (x.grad[~mask] == 0).all()


def test_gradients_reach_every_parameter_of_cross_gru():
    cg = CrossGRU(D).double()
    nodes = torch.randn(2, 4, D, dtype=torch.float64, requires_grad=True)
    cross = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    mask = prefix_mask([4, 2], 4)
    (cg(nodes, mask, cross) * torch.randn(2, 3, D, dtype=torch.float64)).sum().backward()
    _assert_all_grads(cg)
    assert cross.grad.abs().sum() > 0
    assert (nodes.grad[~mask] == 0).all()
