"""cccl_lite.probes: hand cases and independent computations."""

import types

import numpy as np
import pytest
import torch

from cccl_lite.perceive import VisualEmbedding
from cccl_lite.probes import SIDES, linear_probe_accuracy, noun_sides, position_share


def test_noun_sides_reads_subject_and_object_sides():
    left, right, above, below = (SIDES.index(s) for s in ("left", "right", "above", "below"))
    assert noun_sides("a red circle left of a blue square".split(), "relation") == \
        [(2, left), (7, right)]
    assert noun_sides("the red circle is above the blue square".split(), "copula") == \
        [(2, above), (7, below)]
    assert noun_sides("there is a cross below a large green square".split(), "existential") == \
        [(3, below), (8, above)]
    assert noun_sides("a yellow circle".split(), "single") == []


def test_linear_probe_separable_and_random():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    _, test = linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:], classes=2)
    assert test > 95
    noise = rng.integers(0, 2, size=400)
    _, test = linear_probe_accuracy(x[:300], noise[:300], x[300:], noise[300:], classes=2)
    assert 30 < test < 70


class _Reader:
    def __init__(self, regions, positions, mask):
        self.n_images = len(regions)
        self._r, self._p, self._m = regions, positions, mask

    def images(self, idx):
        idx = torch.as_tensor(idx)
        return dict(regions=self._r[idx], positions=self._p[idx], region_mask=self._m[idx])


@pytest.mark.parametrize("fusion", ["product", "sum"])
def test_position_share_by_hand(fusion):
    torch.manual_seed(1)
    emb = VisualEmbedding(4, 3, use_position=True, use_cpc=True, position_fusion=fusion)
    regions, positions = torch.randn(5, 3, 4), torch.rand(5, 3, 6)
    mask = torch.tensor([[1, 1, 0]] * 5, dtype=torch.bool)
    reader = _Reader(regions, positions, mask)
    model = types.SimpleNamespace(visual=emb)
    got = position_share(model, reader, batch_size=2)
    # By hand: eq 10's fused embedding (no CPC) with own and with mean position.
    w, b = emb.project.weight.detach().numpy(), emb.project.bias.detach().numpy()
    ws, bs = emb.position.weight.detach().numpy(), emb.position.bias.detach().numpy()
    real = [(i, j) for i in range(5) for j in range(3) if mask[i, j]]
    mean = np.mean([positions[i, j].numpy() for i, j in real], axis=0)

    def fused(r, s):
        q = w @ r + b
        return q / (1 + np.exp(-(ws @ s + bs))) if fusion == "product" else q + ws @ s + bs
    own = [fused(regions[i, j].numpy(), positions[i, j].numpy()) for i, j in real]
    nowhere = [fused(regions[i, j].numpy(), mean) for i, j in real]
    want = 100 * np.mean([np.linalg.norm(a - c) for a, c in zip(own, nowhere)]) / \
        np.mean([np.linalg.norm(a) for a in own])
    assert got == pytest.approx(want, rel=1e-4)
    assert emb.cpc is not None  # put back


def test_position_share_zero_without_position_signal():
    emb = VisualEmbedding(4, 3, use_position=True, use_cpc=False, position_fusion="sum")
    with torch.no_grad():
        emb.position.weight.zero_()
    reader = _Reader(torch.randn(2, 3, 4), torch.rand(2, 3, 6), torch.ones(2, 3, dtype=torch.bool))
    assert position_share(types.SimpleNamespace(visual=emb), reader) == pytest.approx(0.0, abs=1e-6)
    off = VisualEmbedding(4, 3, use_position=False)
    assert position_share(types.SimpleNamespace(visual=off), reader) == 0.0
