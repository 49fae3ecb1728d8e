"""The cost model of cccl_lite.engine.costs against independent counts: torch's own
FLOP counter on the scorer, autograd's saved tensors at a batch size the
fit did not see, and the bytes arithmetic by hand."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import lite_vectors
from cccl_lite.engine import costs
from cccl_lite.model.fast import fused
from cccl_lite.model.cccl import CCCL, CCCLConfig
from cccl_lite.model.loss import HybridObjective
from cccl_lite.engine.recipes import PRESETS

pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = lite_vectors(region_dim=32, word_dim=16, embed_dim=24, sim_dim=8)


def test_macs_per_pair_equal_torchs_flop_counter_on_the_scorer(monkeypatch):
    monkeypatch.setitem(fused._state, "module", None)  # PyTorch ops only: the counter sees them
    n, m, b_i, b_t = 5, 7, 3, 4
    torch.manual_seed(0)
    model = CCCL(SMALL).eval()
    x = costs._inputs(SMALL, max(b_i, b_t), n, m)
    with torch.no_grad():
        img = model.encode_images(x["regions"][:b_i], x["positions"][:b_i],
                                  x["region_mask"][:b_i])
        txt = model.encode_texts(x["words"][:b_t], x["word_mask"][:b_t],
                                 x["word_adjacency"][:b_t])
        with FlopCounterMode(display=False) as counter:
            model.score(img, txt)
    d, p = SMALL.embed_dim, SMALL.sim_dim
    per_pair = sum(costs.macs_per_pair(SMALL, n, m).values())
    # Besides the per-pair count: the masked means' (n + m) x P products per pair, and
    # each GRU's first step, one (d, 3d) product per item of the other side.
    expected = 2 * (b_i * b_t * (per_pair + (n + m) * p) + 3 * d * d * (b_i + b_t))
    assert counter.get_total_flops() == expected


def test_saved_bytes_fit_predicts_an_unseen_batch():
    per_pair, per_item = costs.saved_bytes_per_pair(SMALL, 5, 7)
    assert per_pair > 0 and per_item > 0

    def measured(batch):
        torch.manual_seed(0)
        model = CCCL(SMALL).train()
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            _, scores = model(**costs._inputs(SMALL, batch, 5, 7))
            HybridObjective()(tuple(s.float() for s in scores), negatives="all")
        return total[0]

    # c + a B + b B², with c from B = 2: the prediction for B = 6 must hold exactly
    c = measured(2) - 2 * per_item - 4 * per_pair
    assert measured(6) == pytest.approx(c + 6 * per_item + 36 * per_pair, abs=1)


def test_bytes_and_times_by_hand_at_the_paper_shape():
    paper = PRESETS["paper"].model
    parts = costs.bytes_per_pair(paper, 36, 13)
    assert costs.GRU_STEP_BYTES_PER_D == 80
    assert parts["eq 26 GRUs"] == 80 * 1024 * (35 + 12)  # 3,850,240
    assert parts["eqs 17-19 Branch 2"] == 8 * 49 * 1024 + 4 * 49 * 256
    h100 = costs.GPUS["H100"]
    e = costs.estimate(paper, h100, 5_000_000, 36, 13)
    assert e["memory_s"] == pytest.approx(5e6 * 4_301_824 / 3.35e12)
    macs = 3 * 1024**2 * 47 + 49 * 1024 * 256 + 3 * 36 * 13 * 1024 + 2 * 1024 * 256 \
        + 3 * (256**2 + 256)
    assert e["compute_s"] == pytest.approx(2 * 5e6 * macs / 989e12)
    assert e["bound_s"] == max(e["compute_s"], e["memory_s"])
    assert e["estimate_s"] == e["bound_s"] / costs.EFFICIENCY
    train = costs.estimate(paper, h100, 128 * 128, 36, 13, passes=3)
    assert train["flops"] == pytest.approx(3 * 2 * 128**2 * macs)


def test_gru_macs_per_pair_hand_case():
    # d = 2: W_hh is 6 x 2, 12 multiply-adds a step; (3 + 1) + (4 + 1) = 9 steps.
    assert costs.gru_macs_per_pair(2, 3, 4) == 108
    assert costs.gru_macs_per_pair(1024, 36, 13) == 3 * 1024**2 * 51


def test_best_time_keeps_the_fastest_run_and_restores_threads(monkeypatch):
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])  # runs of 5, 1 and 3 s
    monkeypatch.setattr(costs.time, "perf_counter", lambda: next(clock))
    calls, seen = [], []
    before = torch.get_num_threads()

    def fn():
        calls.append(1)
        seen.append(torch.get_num_threads())
        return len(calls)

    assert costs.best_time(fn, repeats=3, threads=1) == (1.0, 3)
    assert seen == [1, 1, 1] and torch.get_num_threads() == before
