"""Perceive (Sec. 3.2, eqs 1-12) checked against independent computations.

Every reference below is written out in the test from the module's own
weights (explicit loops over positions, hand-made boxes with known answers,
``nn.GRU`` run on the unpadded sequence alone): nothing is compared with the
package's own output except for invariances (padding, ignored inputs).
"""

import math

import pytest
import torch
from torch import nn

from cccl_lite.model.perceive import (
                                      BiGRUWordEncoder,
                                      ContextPerceivedCell,
                                      TextualEmbedding,
                                      VisualEmbedding,
                                      masked_softmax,
                                      position_features,
                                      )

D = 6
TOL = dict(atol=1e-10, rtol=1e-10)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def prefix_mask(lengths, size):
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


def sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


@torch.no_grad()
def cpc_by_hand(cell, y, mask=None):
    """Eqs 1-7 per batch element, with explicit loops over queries and keys.

    Returns (q, k, v, g_q, g_k, attention, output); attention rows of padded
    queries are left at 0 here (the package is not asked to zero them).
    """
    B, L, d = y.shape
    Wq, Wk, Wv = cell.w_q.weight, cell.w_k.weight, cell.w_v.weight
    Wgq, bgq = cell.gate_q.weight, cell.gate_q.bias
    Wgk, bgk = cell.gate_k.weight, cell.gate_k.bias
    qs, ks, vs, gqs, gks = [], [], [], [], []
    att = torch.zeros(B, L, L, dtype=y.dtype)
    out = torch.zeros_like(y)
    for b in range(B):
        valid = [i for i in range(L) if mask is None or bool(mask[b, i])]
        Y = y[b]
        Q = torch.stack([Wq @ Y[i] for i in range(L)])  # eq 1 (no bias)
        K = torch.stack([Wk @ Y[i] for i in range(L)])
        V = torch.stack([Wv @ Y[i] for i in range(L)])
        U = Q * K  # eq 3
        GQ = torch.stack([sigmoid(Wgq @ U[i] + bgq) for i in range(L)])  # eq 4
        GK = torch.stack([sigmoid(Wgk @ U[i] + bgk) for i in range(L)])
        Qh, Kh = Q * GQ, K * GK  # eq 5 (K gated by G_K)
        for i in valid:
            scores = [float(Qh[i] @ Kh[j]) / math.sqrt(d) for j in valid]  # eq 6
            top = max(scores)
            e = [math.exp(s - top) for s in scores]
            total = sum(e)
            acc = torch.zeros(d, dtype=y.dtype)
            for j, ej in zip(valid, e):
                att[b, i, j] = ej / total
                acc = acc + (ej / total) * V[j]
            out[b, i] = acc + Y[i]  # eq 7, residual
        qs.append(Q), ks.append(K), vs.append(V), gqs.append(GQ), gks.append(GK)
    return (torch.stack(qs), torch.stack(ks), torch.stack(vs), torch.stack(gqs),
            torch.stack(gks), att, out)


# ---------------------------------------------------------------- masked_softmax

def test_masked_softmax_matches_loop_over_valid_entries():
    logits = torch.randn(3, 4, 5, dtype=torch.float64) * 3
    mask = torch.rand(3, 4, 5) > 0.4
    mask[0, 0] = False  # one all-masked row
    mask[1, 2] = True  # one full row
    out = masked_softmax(logits, mask, dim=-1)
    for a in range(3):
        for b in range(4):
            valid = [k for k in range(5) if mask[a, b, k]]
            total = sum(math.exp(float(logits[a, b, k])) for k in valid)
            for k in range(5):
                want = math.exp(float(logits[a, b, k])) / total if k in valid else 0.0
                assert abs(float(out[a, b, k]) - want) < 1e-12
    assert (out[~mask] == 0).all()  # exactly zero, not merely small
    assert (out[0, 0] == 0).all()
    assert not torch.isnan(out).any()


def test_masked_softmax_other_dim_and_broadcast_mask():
    logits = torch.randn(2, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True], [False, False, False, False]])
    out = masked_softmax(logits, mask[:, :, None], dim=1)  # (2, 4, 1) broadcast
    for c in range(3):
        valid = [k for k in range(4) if mask[0, k]]
        total = sum(math.exp(float(logits[0, k, c])) for k in valid)
        for k in range(4):
            want = math.exp(float(logits[0, k, c])) / total if k in valid else 0.0
            assert abs(float(out[0, k, c]) - want) < 1e-12
    assert (out[1] == 0).all()


def test_masked_softmax_without_mask_is_plain_softmax():
    logits = torch.randn(3, 5, dtype=torch.float64)
    out = masked_softmax(logits, None)
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    assert torch.allclose(out, e / e.sum(-1, keepdim=True), **TOL)


def test_masked_softmax_all_masked_row_has_finite_zero_gradient():
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True],
                         [False, False, False, False],
                         [False, True, False, False]])
    out = masked_softmax(logits, mask)
    weights = torch.randn(3, 4, dtype=torch.float64)
    (out * weights).sum().backward()
    grad = logits.grad
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert (out[1] == 0).all()
    assert (grad[1] == 0).all()  # all-masked row: no signal, no NaN
    assert (grad[~mask] == 0).all()
    assert (grad[2] == 0).all()  # a single valid entry has softmax 1 whatever its logit
    # The valid entries of row 0 get the analytic softmax gradient p (w - p·w).
    valid = [0, 1, 3]
    p = torch.softmax(logits.detach()[0, valid], -1)
    w = weights[0, valid]
    assert torch.allclose(grad[0, valid], p * (w - (p * w).sum()), **TOL)


# ------------------------------------------------------- ContextPerceivedCell

def test_cpc_details_match_eqs_1_to_7_by_hand():
    cell = ContextPerceivedCell(D).double()
    y = torch.randn(2, 5, D, dtype=torch.float64)
    got = cell.details(y)
    q, k, v, g_q, g_k, att, out = cpc_by_hand(cell, y)
    assert torch.allclose(got.q, q, **TOL)
    assert torch.allclose(got.k, k, **TOL)
    assert torch.allclose(got.v, v, **TOL)
    assert torch.allclose(got.gate_q, g_q, **TOL)
    assert torch.allclose(got.gate_k, g_k, **TOL)
    assert torch.allclose(got.attention, att, **TOL)
    assert torch.allclose(got.output, out, **TOL)
    assert torch.allclose(cell(y), out, **TOL)


def test_cpc_parameters_are_as_printed():
    cell = ContextPerceivedCell(D)
    assert cell.w_q.bias is None and cell.w_k.bias is None and cell.w_v.bias is None
    assert cell.gate_q.bias is not None and cell.gate_k.bias is not None
    for lin in (cell.w_q, cell.w_k, cell.w_v, cell.gate_q, cell.gate_k):
        assert tuple(lin.weight.shape) == (D, D)


def test_cpc_gates_k_with_g_k_not_g_v():
    """Make G_K and G_Q very different: only eq 5 read as K̂ = K ∘ G_K matches."""
    cell = ContextPerceivedCell(D).double()
    with torch.no_grad():
        cell.gate_k.weight.zero_()
        cell.gate_k.bias.fill_(-30.0)  # G_K ≈ 0: every key is gated off
    y = torch.randn(1, 4, D, dtype=torch.float64)
    det = cell.details(y)
    assert (det.gate_k < 1e-12).all()
    # K̂ ≈ 0, so all logits ≈ 0 and the attention is uniform over the keys.
    assert torch.allclose(det.attention, torch.full((1, 4, 4), 0.25, dtype=torch.float64),
                          atol=1e-9)
    assert torch.allclose(det.output, det.v.mean(1, keepdim=True) + y, atol=1e-9)


def test_cpc_with_mask_matches_hand_and_ignores_padding():
    cell = ContextPerceivedCell(D).double()
    L = 6
    mask = prefix_mask([6, 3, 1], L)
    y = torch.randn(3, L, D, dtype=torch.float64)
    got = cell.details(y, mask)
    *_, att, out = cpc_by_hand(cell, y, mask)
    assert torch.allclose(got.output, out, **TOL)
    # Padded keys receive exactly 0 attention from every query.
    assert (got.attention.masked_select(~mask[:, None, :].expand(-1, L, -1)) == 0).all()
    for b in range(3):
        for i in range(L):
            if mask[b, i]:
                assert torch.allclose(got.attention[b, i], att[b, i], **TOL)
    # Padded output rows are exactly 0.
    assert (got.output[~mask] == 0).all()
    # Garbage at padded positions never changes valid outputs.
    y2 = y.clone()
    y2[~mask] = torch.randn(int((~mask).sum()), D, dtype=torch.float64) * 100
    out2 = cell(y2, mask)
    assert torch.allclose(out2[mask], got.output[mask], **TOL)
    assert (out2[~mask] == 0).all()


def test_cpc_padded_equals_truncated_run():
    cell = ContextPerceivedCell(D).double()
    lengths = [5, 2, 4]
    L = 7
    mask = prefix_mask(lengths, L)
    y = torch.randn(3, L, D, dtype=torch.float64)
    padded = cell(y, mask)
    for b, n in enumerate(lengths):
        alone = cell(y[b:b + 1, :n])  # unpadded, no mask
        assert torch.allclose(padded[b, :n], alone[0], **TOL)


# ----------------------------------------------------------- position_features

def pos_by_hand(box, W, H):
    """The documented six-tuple for one box, in plain Python floats."""
    x1, y1, x2, y2 = (min(max(c / s, 0.0), 1.0) for c, s in zip(box, (W, H, W, H)))
    w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    shape = w / (w + h) if w + h > 0 else 0.5
    return [x1, y1, x2, y2, w * h, shape]


def test_position_features_hand_made_boxes():
    W, H = 200.0, 400.0
    boxes = torch.tensor([
        [10.0, 20.0, 60.0, 120.0],  # 50 x 100 pixels, w = h = 0.25 (normalised)
        [0.0, 0.0, 100.0, 40.0],  # wide: w = 0.5, h = 0.1
        [50.0, 10.0, 50.0, 300.0],  # a vertical line: w = 0
        [20.0, 80.0, 180.0, 80.0],  # a horizontal line: h = 0
        [50.0, 50.0, 50.0, 50.0],  # empty
    ])
    got = position_features(boxes, torch.tensor([W, H]))
    want = torch.tensor([
        [0.05, 0.05, 0.3, 0.3, (50 * 100) / (200 * 400), 0.25 / (0.25 + 0.25)],
        [0.0, 0.0, 0.5, 0.1, (100 * 40) / (200 * 400), 0.5 / (0.5 + 0.1)],
        [0.25, 10 / 400, 0.25, 300 / 400, 0.0, 0.0],
        [0.1, 0.2, 0.9, 0.2, 0.0, 1.0],
        [0.25, 0.125, 0.25, 0.125, 0.0, 0.5],
    ])
    assert got.shape == (5, 6)
    assert torch.allclose(got, want, atol=1e-6)


def test_position_features_sixth_is_relative_to_the_image():
    # The docstring's case: a square box in a non-square image is not 0.5.
    got = position_features(torch.tensor([0.0, 0.0, 100.0, 100.0]), torch.tensor([200.0, 100.0]))
    assert abs(float(got[5]) - 1 / 3) < 1e-6  # w = 0.5, h = 1: 0.5 / 1.5
    # 0.5 exactly when the box has the image's aspect ratio.
    got = position_features(torch.tensor([20.0, 10.0, 120.0, 60.0]), torch.tensor([200.0, 100.0]))
    assert abs(float(got[5]) - 0.5) < 1e-6


def camera_by_hand(box, W, H):
    """CAMERA's absoluteEncode for one box inside the image, in plain floats:
    x/W, y/H, w/W, h/H, then the pixel aspect ratio w/h and the area ratio."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return [x1 / W, y1 / H, w / W, h / H, w / h, w * h / (W * H)]


def test_position_features_camera_tuple_by_hand():
    W, H = 200.0, 400.0
    boxes = [[10.0, 20.0, 60.0, 120.0],   # 50 x 100 pixels: w/h = 0.5
             [0.0, 0.0, 100.0, 40.0],     # 100 x 40: w/h = 2.5
             [0.0, 0.0, 200.0, 400.0]]    # the whole image: w/h = 0.5, area 1
    got = position_features(torch.tensor(boxes), torch.tensor([W, H]), variant="camera")
    want = torch.tensor([camera_by_hand(b, W, H) for b in boxes])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got[0], torch.tensor([0.05, 0.05, 0.25, 0.25, 0.5, 0.0625]))
    # A square box has ratio 1 whatever the image (ours gives 1/3 here).
    sq = position_features(torch.tensor([0.0, 0.0, 100.0, 100.0]), torch.tensor([200.0, 100.0]),
                           variant="camera")
    assert torch.allclose(sq, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 0.5]))


def test_position_features_camera_degenerate_and_clipped_boxes():
    got = position_features(torch.tensor([[20.0, 80.0, 180.0, 80.0],    # h = 0
                                          [-20.0, 0.0, 100.0, 800.0]]),  # clipped
                            torch.tensor([200.0, 400.0]), variant="camera")
    assert torch.isfinite(got).all()
    assert got[0, 4] == 0.0 and got[0, 5] == 0.0  # no inf for a zero height
    # Clipped to (0, 0, 100, 400): 100 x 400 pixels.
    assert torch.allclose(got[1], torch.tensor(camera_by_hand([0.0, 0.0, 100.0, 400.0],
                                                              200.0, 400.0)))
    with pytest.raises(ValueError, match="variant"):
        position_features(torch.zeros(4), torch.tensor([10.0, 10.0]), variant="pfan")


def test_position_features_clips_out_of_image_boxes():
    boxes = torch.tensor([
        [-20.0, -10.0, 250.0, 500.0],  # covers the whole image and more
        [150.0, 300.0, 260.0, 500.0],  # sticks out of the bottom-right corner
        [300.0, 10.0, 400.0, 20.0],  # entirely to the right of the image
        [60.0, 120.0, 10.0, 20.0],  # inverted corners
    ])
    got = position_features(boxes, torch.tensor([200.0, 400.0]))
    want = torch.tensor([
        [0.0, 0.0, 1.0, 1.0, 1.0, 0.5],
        [0.75, 0.75, 1.0, 1.0, 0.25 * 0.25, 0.5],
        [1.0, 10 / 400, 1.0, 20 / 400, 0.0, 0.0],
        [0.3, 0.3, 0.05, 0.05, 0.0, 0.5],  # w = h = 0 after clamping
    ])
    assert torch.allclose(got, want, atol=1e-6)


def test_position_features_random_boxes_in_unit_range_and_match_formula():
    g = torch.Generator().manual_seed(1)
    B, n = 3, 8
    sizes = torch.rand(B, 2, generator=g) * 500 + 20
    boxes = torch.rand(B, n, 4, generator=g) * 800 - 150  # many outside the image
    got = position_features(boxes, sizes)  # (B, 2) broadcast against (B, n, 4)
    assert got.shape == (B, n, 6)
    assert torch.isfinite(got).all()
    assert (got >= 0).all() and (got <= 1).all()
    for b in range(B):
        W, H = float(sizes[b, 0]), float(sizes[b, 1])
        for i in range(n):
            want = pos_by_hand([float(c) for c in boxes[b, i]], W, H)
            assert torch.allclose(got[b, i].double(), torch.tensor(want, dtype=torch.float64),
                                  atol=1e-5)


def test_position_features_broadcasts_one_size_per_image():
    boxes = torch.tensor([[[10.0, 20.0, 60.0, 120.0]], [[10.0, 20.0, 60.0, 120.0]]])
    sizes = torch.tensor([[200.0, 400.0], [100.0, 200.0]])
    got = position_features(boxes, sizes)
    assert got.shape == (2, 1, 6)
    assert torch.allclose(got[0, 0], torch.tensor([0.05, 0.05, 0.3, 0.3, 0.0625, 0.5]),
                          atol=1e-6)
    # Image 1 is half as large: every coordinate doubles, area quadruples.
    assert torch.allclose(got[1, 0], torch.tensor([0.1, 0.1, 0.6, 0.6, 0.25, 0.5]),
                          atol=1e-6)
    # Per-box sizes (B, n, 2) give the same as per-image sizes (B, 2).
    per_box = position_features(boxes, sizes[:, None, :])
    assert torch.allclose(per_box, got, atol=1e-7)


@pytest.mark.parametrize("boxes, size", [
    (torch.zeros(3, 3), torch.tensor([10.0, 10.0])),  # boxes not (..., 4)
    (torch.zeros(3, 5), torch.tensor([10.0, 10.0])),
    (torch.zeros(3, 4), torch.tensor([10.0, 10.0, 10.0])),  # size not (..., 2)
    (torch.zeros(3, 4), torch.tensor([0.0, 10.0])),  # zero width
    (torch.zeros(3, 4), torch.tensor([10.0, -5.0])),  # negative height
    (torch.zeros(2, 3, 4), torch.tensor([[10.0, 10.0], [10.0, 0.0]])),
])
def test_position_features_rejects_bad_input(boxes, size):
    with pytest.raises(ValueError):
        position_features(boxes, size)


# ---------------------------------------------------------------- VisualEmbedding

def test_visual_embedding_matches_eqs_8_to_10_by_hand():
    ve = VisualEmbedding(region_dim=5, dim=D).double()
    B, n = 2, 4
    regions = torch.randn(B, n, 5, dtype=torch.float64)
    positions = torch.rand(B, n, 6, dtype=torch.float64)
    mask = prefix_mask([4, 3], n)
    Wp, bp = ve.project.weight, ve.project.bias
    Ws, bs = ve.position.weight, ve.position.bias
    x = torch.zeros(B, n, D, dtype=torch.float64)
    for b in range(B):
        for i in range(n):
            q_hat = Wp @ regions[b, i] + bp  # eq 8
            s_hat = sigmoid(Ws @ positions[b, i] + bs)  # eq 9
            x[b, i] = q_hat * s_hat  # eq 10, inside CPC
    want = cpc_by_hand(ve.cpc, x, mask)[-1]
    assert torch.allclose(ve(regions, positions, mask), want, **TOL)


def test_visual_embedding_without_position_ignores_positions():
    ve = VisualEmbedding(region_dim=5, dim=D, use_position=False).double()
    assert ve.position is None
    regions = torch.randn(2, 4, 5, dtype=torch.float64)
    mask = prefix_mask([2, 4], 4)
    x = regions @ ve.project.weight.T + ve.project.bias
    want = cpc_by_hand(ve.cpc, x, mask)[-1]
    assert torch.allclose(ve(regions, None, mask), want, **TOL)
    noise = torch.rand(2, 4, 6, dtype=torch.float64)
    assert torch.allclose(ve(regions, noise, mask), want, **TOL)


def test_visual_embedding_requires_positions_when_used():
    ve = VisualEmbedding(region_dim=5, dim=D)
    with pytest.raises(ValueError):
        ve(torch.randn(1, 3, 5), None)


def test_visual_embedding_without_cpc_is_the_projection():
    regions = torch.randn(2, 4, 5, dtype=torch.float64)
    positions = torch.rand(2, 4, 6, dtype=torch.float64)
    mask = prefix_mask([4, 2], 4)
    plain = VisualEmbedding(region_dim=5, dim=D, use_position=False, use_cpc=False).double()
    assert plain.cpc is None
    want = regions @ plain.project.weight.T + plain.project.bias
    assert torch.allclose(plain(regions, None), want, **TOL)
    got = plain(regions, None, mask)
    assert torch.allclose(got[mask], want[mask], **TOL)
    assert (got[~mask] == 0).all()
    gated = VisualEmbedding(region_dim=5, dim=D, use_cpc=False).double()
    want = (regions @ gated.project.weight.T + gated.project.bias) * sigmoid(
        positions @ gated.position.weight.T + gated.position.bias)
    assert torch.allclose(gated(regions, positions), want, **TOL)


def test_visual_embedding_padded_regions_do_not_change_valid_rows():
    ve = VisualEmbedding(region_dim=5, dim=D).double()
    n = 6
    mask = prefix_mask([6, 3, 2], n)
    regions = torch.randn(3, n, 5, dtype=torch.float64)
    positions = torch.rand(3, n, 6, dtype=torch.float64)
    out = ve(regions, positions, mask)
    regions2, positions2 = regions.clone(), positions.clone()
    regions2[~mask] = torch.randn(int((~mask).sum()), 5, dtype=torch.float64) * 50
    positions2[~mask] = torch.rand(int((~mask).sum()), 6, dtype=torch.float64)
    out2 = ve(regions2, positions2, mask)
    assert torch.allclose(out2[mask], out[mask], **TOL)
    assert (out[~mask] == 0).all() and (out2[~mask] == 0).all()
    # And a padded image equals the same image run alone, unpadded.
    alone = ve(regions[1:2, :3], positions[1:2, :3])
    assert torch.allclose(out[1, :3], alone[0], **TOL)


# ----------------------------------------------- BiGRUWordEncoder / TextualEmbedding

VOCAB, EMB, WD = 20, 5, 6


def make_tokens(lengths, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (len(lengths), m), generator=g)
    mask = prefix_mask(lengths, m)
    return tokens * mask, mask


def bigru_alone(enc, ids):
    """nn.GRU (the module's own, bidirectional) on one unpadded sequence, no packing."""
    out, _ = enc.gru(enc.embed(ids[None]))
    return out[0]


def test_bigru_matches_unpacked_gru_on_each_sequence_alone():
    enc = BiGRUWordEncoder(VOCAB, WD, embed_dim=EMB).double()
    lengths, m = [7, 4, 1], 7
    tokens, mask = make_tokens(lengths, m)
    out = enc(tokens, mask)
    assert out.shape == (3, m, WD)
    for b, n in enumerate(lengths):
        assert torch.allclose(out[b, :n], bigru_alone(enc, tokens[b, :n]), **TOL)
    assert (out[~mask] == 0).all()


def test_bigru_backward_direction_sees_only_valid_words():
    """The backward half of the first word's state depends on the last valid word."""
    enc = BiGRUWordEncoder(VOCAB, WD, embed_dim=EMB).double()
    tokens, mask = make_tokens([3], 6)
    out = enc(tokens, mask)
    garbage = tokens.clone()
    garbage[0, 3:] = torch.tensor([5, 9, 13])  # non-zero ids at padded positions
    out2 = enc(garbage, mask)
    assert torch.allclose(out2, out, **TOL)
    changed = tokens.clone()
    changed[0, 2] = 1 + tokens[0, 2] % (VOCAB - 1)  # alter the last valid word
    out3 = enc(changed, mask)
    half = WD // 2
    assert not torch.allclose(out3[0, 0, half:], out[0, 0, half:])  # backward half moves
    assert torch.allclose(out3[0, 0, :half], out[0, 0, :half], **TOL)  # forward does not


def test_bigru_padding_invariance_with_extra_padding():
    enc = BiGRUWordEncoder(VOCAB, WD, embed_dim=EMB).double()
    lengths = [5, 2, 3]
    tokens, mask = make_tokens(lengths, 5)
    out = enc(tokens, mask)
    extra = torch.randint(1, VOCAB, (3, 4))  # 4 more padded slots with any ids
    tokens2 = torch.cat([tokens, extra], 1)
    tokens2[:, :5][~mask] = torch.randint(1, VOCAB, (int((~mask).sum()),))
    mask2 = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
    out2 = enc(tokens2, mask2)
    assert out2.shape == (3, 9, WD)
    assert torch.allclose(out2[:, :5], out, **TOL)
    assert (out2[~mask2] == 0).all()


def test_bigru_rejects_odd_output_size():
    with pytest.raises(ValueError):
        BiGRUWordEncoder(VOCAB, 5)


def test_textual_embedding_matches_eqs_11_12_by_hand():
    te = TextualEmbedding(word_dim=4, dim=D).double()
    words = torch.randn(2, 5, 4, dtype=torch.float64)
    mask = prefix_mask([5, 3], 5)
    x = torch.zeros(2, 5, D, dtype=torch.float64)
    for b in range(2):
        for j in range(5):
            x[b, j] = te.project.weight @ words[b, j] + te.project.bias  # eq 11
    want = cpc_by_hand(te.cpc, x, mask)[-1]  # eq 12
    got = te(words, mask)
    assert torch.allclose(got, want, **TOL)
    words2 = words.clone()
    words2[~mask] = 1e3
    assert torch.allclose(te(words2, mask), got, **TOL)


def test_textual_embedding_without_cpc_is_the_masked_projection():
    te = TextualEmbedding(word_dim=4, dim=D, use_cpc=False).double()
    words = torch.randn(2, 5, 4, dtype=torch.float64)
    mask = prefix_mask([5, 2], 5)
    want = (words @ te.project.weight.T + te.project.bias) * mask[..., None]
    assert torch.allclose(te(words, mask), want, **TOL)


def test_textual_embedding_word_ids_path_matches_gru_then_cpc():
    te = TextualEmbedding(word_dim=WD, dim=D, vocab_size=VOCAB).double()
    lengths, m = [6, 3], 6
    tokens, mask = make_tokens(lengths, m, seed=3)
    x = torch.zeros(2, m, D, dtype=torch.float64)
    for b, n in enumerate(lengths):
        e = bigru_alone(te.words, tokens[b, :n])
        for j in range(n):
            x[b, j] = te.project.weight @ e[j] + te.project.bias
    want = cpc_by_hand(te.cpc, x, mask)[-1]
    assert torch.allclose(te(tokens, mask), want, **TOL)
    # Without a mask, id 0 marks padding.
    assert torch.allclose(te(tokens), want, **TOL)
    # With an explicit mask, padded ids may be anything.
    garbage = tokens.clone()
    garbage[~mask] = 7
    assert torch.allclose(te(garbage, mask), want, **TOL)


def test_textual_embedding_input_type_errors():
    with_vocab = TextualEmbedding(word_dim=WD, dim=D, vocab_size=VOCAB)
    with pytest.raises(ValueError):
        with_vocab(torch.randn(2, 4, WD), torch.ones(2, 4, dtype=torch.bool))
    bert = TextualEmbedding(word_dim=WD, dim=D)
    with pytest.raises(ValueError):
        bert(torch.randint(1, VOCAB, (2, 4)), torch.ones(2, 4, dtype=torch.bool))


# ------------------------------------------------------------------- gradients

def _assert_all_grads(module):
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradients_reach_every_parameter_of_cpc():
    cell = ContextPerceivedCell(D).double()
    y = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
    mask = prefix_mask([5, 3], 5)
    (cell(y, mask) * torch.randn(2, 5, D, dtype=torch.float64)).sum().backward()
    _assert_all_grads(cell)
    assert (y.grad[~mask] == 0).all()  # padding receives no gradient


def test_gradients_reach_every_parameter_of_visual_embedding():
    ve = VisualEmbedding(region_dim=5, dim=D).double()
    regions = torch.randn(2, 4, 5, dtype=torch.float64)
    positions = torch.rand(2, 4, 6, dtype=torch.float64)
    mask = prefix_mask([4, 2], 4)
    (ve(regions, positions, mask) * torch.randn(2, 4, D, dtype=torch.float64)).sum().backward()
    _assert_all_grads(ve)


def test_position_fusion_sum_adds_the_linear_position_embedding():
    """"sum" reading of eq 10: Q̂ + S̃ W_S + b_S, written out by hand (no CPC)."""
    import torch
    from cccl_lite.model.perceive import VisualEmbedding
    torch.manual_seed(0)
    emb = VisualEmbedding(5, 3, use_position=True, use_cpc=False, position_fusion="sum")
    regions, positions = torch.randn(2, 4, 5), torch.rand(2, 4, 6)
    want = torch.empty(2, 4, 3)
    w_q, b_q = emb.project.weight.detach(), emb.project.bias.detach()
    w_s, b_s = emb.position.weight.detach(), emb.position.bias.detach()
    for b in range(2):
        for i in range(4):
            for k in range(3):
                q = sum(float(regions[b, i, f]) * float(w_q[k, f]) for f in range(5))
                s = sum(float(positions[b, i, f]) * float(w_s[k, f]) for f in range(6))
                want[b, i, k] = q + float(b_q[k]) + s + float(b_s[k])
    assert torch.allclose(emb(regions, positions), want, atol=1e-5)
    product = VisualEmbedding(5, 3, use_position=True, use_cpc=False)
    product.load_state_dict(emb.state_dict())
    gate = torch.sigmoid(positions @ emb.position.weight.T + emb.position.bias)
    assert torch.allclose(product(regions, positions),
                          (regions @ emb.project.weight.T + emb.project.bias) * gate, atol=1e-5)
    try:
        VisualEmbedding(5, 3, position_fusion="concat")
    except ValueError as e:
        assert "position_fusion" in str(e)
    else:
        raise AssertionError("an unknown position_fusion was accepted")


def test_box_centres_of_a_hand_box_in_both_tuples():
    from cccl_lite.model.perceive import box_centres
    # A 40 x 20 box at (10, 60) in a 100 x 200 image: centre (30, 70).
    boxes, size = torch.tensor([[10.0, 60.0, 50.0, 80.0]]), torch.tensor([100.0, 200.0])
    for variant in ("ours", "camera"):
        got = box_centres(position_features(boxes, size, variant), variant)
        assert torch.allclose(got, torch.tensor([[30 / 100 - 0.5, 70 / 200 - 0.5]]), atol=1e-6)
    with pytest.raises(ValueError, match="variant"):
        box_centres(torch.zeros(1, 6), "corners")


def test_centre_scale_appends_the_scaled_centre_to_eq_8s_features():
    """Q̂ = [Q, ρ c] W_Q + b_Q, then eq 10's gate, written out by hand (no CPC)."""
    torch.manual_seed(1)
    rho = 7.5
    emb = VisualEmbedding(5, 3, use_cpc=False, centre_scale=rho)
    assert emb.project.in_features == 7
    boxes = torch.tensor([[[0.0, 0.0, 20.0, 40.0], [50.0, 10.0, 90.0, 30.0]]])
    positions = position_features(boxes, torch.tensor([[100.0, 80.0]]))
    regions = torch.randn(1, 2, 5)
    w_q, b_q = emb.project.weight.detach(), emb.project.bias.detach()
    w_s, b_s = emb.position.weight.detach(), emb.position.bias.detach()
    centres = [(10 / 100 - 0.5, 20 / 80 - 0.5), (70 / 100 - 0.5, 20 / 80 - 0.5)]
    want = torch.empty(1, 2, 3)
    for i in range(2):
        cols = [float(regions[0, i, f]) for f in range(5)] + [rho * c for c in centres[i]]
        for k in range(3):
            q = sum(x * float(w_q[k, f]) for f, x in enumerate(cols)) + float(b_q[k])
            s = sum(float(positions[0, i, f]) * float(w_s[k, f]) for f in range(6))
            want[0, i, k] = q / (1 + math.exp(-(s + float(b_s[k]))))
    assert torch.allclose(emb(regions, positions), want, atol=1e-5)
    # "w/o POS" drops the centre with eq 9: the features alone.
    assert VisualEmbedding(5, 3, use_position=False, centre_scale=rho).project.in_features == 5
    with pytest.raises(ValueError, match="centre_scale"):
        VisualEmbedding(5, 3, centre_scale=-1.0)


def test_word_gru_over_vectors_matches_the_gru_on_each_sequence_alone():
    """word_gru: the Bi-GRU reads the given vectors (no embedding), packed like ids."""
    enc = BiGRUWordEncoder(None, WD, in_dim=4).double()
    assert enc.embed is None
    lengths, m = [5, 2], 5
    mask = prefix_mask(lengths, m)
    vectors = torch.randn(2, m, 4, dtype=torch.float64) * mask[..., None]
    out = enc(vectors, mask)
    for b, n in enumerate(lengths):
        alone, _ = enc.gru(vectors[b:b + 1, :n])
        assert torch.allclose(out[b, :n], alone[0], **TOL)
    assert (out[~mask] == 0).all()
    with pytest.raises(ValueError, match="vocab_size .* or in_dim"):
        BiGRUWordEncoder(None, WD)
    # In TextualEmbedding: eq 11 reads the GRU's states; "w/o BERT" has no second GRU.
    te = TextualEmbedding(word_dim=4, dim=D, use_cpc=False, word_gru=True).double()
    want = te.context(vectors, mask) @ te.project.weight.T + te.project.bias
    assert torch.allclose(te(vectors, mask), want * mask[..., None], **TOL)
    assert TextualEmbedding(word_dim=4, dim=D, vocab_size=VOCAB, word_gru=True).context is None
