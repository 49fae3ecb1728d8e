"""The fused CPU kernels (cccl_lite/model/fast/fused.py, cccl_lite/model/fast/csrc/fused_cpu.cpp).

References are independent of the kernels: ``CrossGRU.recur`` and
``LocalBranch.forward`` (the equations as printed, themselves checked against
scalar loops in test_reason.py and test_align.py) and ``torch.nn.GRU`` run on
each pair's own sequence. A spy counts the kernels' calls, so a test knows
which path ran. float64 must agree to rounding; float32 within the issue's
1e-5.
"""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

from cccl_lite.engine import evaluate as ev
from cccl_lite.model.fast import align as fast_align, fused, reason as fast_reason
from cccl_lite.model.fast import local_similarity, relation_recur
from cccl_lite.model.align import LocalBranch
from cccl_lite.model.cccl import CCCL
from cccl_lite.model.reason import CrossGRU

from helpers import make_batch, nn_gru_states, tiny_config

TOL64 = dict(atol=1e-12, rtol=1e-10)
TOL32 = dict(atol=1e-5, rtol=0)

pytestmark = pytest.mark.usefixtures("single_thread")


def _compiler() -> bool:
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.fixture
def spy(monkeypatch):
    """The built kernels, wrapped so that each call is counted by name."""
    monkeypatch.delenv(fused.ENV, raising=False)
    if not fused.available():
        if _compiler():
            pytest.fail("a C++ compiler is installed but the fused kernels did not build")
        pytest.skip("no C++ compiler: the fused kernels cannot be built here")
    module, calls = fused.kernel(), {"cross_gru_recur": 0, "local_branch": 0}

    class Spy:
        def __getattr__(self, name):
            fn = getattr(module, name)

            def counted(*args):
                calls[name] += 1
                return fn(*args)
            return counted

    monkeypatch.setattr(fused, "kernel", lambda: None if fused._disabled() else Spy())
    return calls


def random_gru_case(dt, bx, by, length, d=6, shared=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    gru = CrossGRU(d).to(dt)
    nodes = torch.randn(bx, length, d, generator=g, dtype=dt)
    h = torch.randn(1 if shared else bx, by, d, generator=g, dtype=dt)
    return gru, gru.input_projection(nodes).detach(), h


# ---- eq 26: the GRU kernel ---------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bx,by", [(5, 7), (3, 1), (1, 9), (6, 4)])
def test_gru_kernel_equals_the_printed_recurrence_float64(spy, monkeypatch, shared, bx, by):
    # Tiles of 5 pairs: several tiles, some cutting an item's pairs in two.
    monkeypatch.setattr(fast_reason, "_FUSED_TILE", 5)
    gru, gi, h = random_gru_case(torch.float64, bx, by, 6, shared=shared)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(bx, 6, generator=g) > 0.3  # holes, not only trailing padding
    mask[0] = False  # an item with no valid node keeps its start state
    with torch.no_grad():
        ref = gru.recur(gi, mask, h)
        got = relation_recur(gru, gi, mask, h)
    assert spy["cross_gru_recur"] == 1
    torch.testing.assert_close(got, ref, **TOL64)
    torch.testing.assert_close(got[0], h.expand(bx, by, -1)[0], **TOL64)


def test_gru_kernel_equals_nn_gru_on_each_pair(spy):
    """v^R = the last valid state of torch's own GRU over [cross_y, x_1, ..., x_L]."""
    torch.manual_seed(0)
    gru = CrossGRU(5).double()
    g = torch.Generator().manual_seed(2)
    nodes = torch.randn(4, 5, 5, generator=g, dtype=torch.float64)
    cross = torch.randn(3, 5, generator=g, dtype=torch.float64)
    lengths = [5, 3, 1, 2]
    mask = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        got = relation_recur(gru, gru.input_projection(nodes), mask, gru.cross_state(cross)[None])
    assert spy["cross_gru_recur"] == 1
    torch.testing.assert_close(got, nn_gru_states(gru, nodes, cross, lengths), **TOL64)


def test_gru_kernel_float32_within_1e_5_also_when_the_gates_saturate(spy):
    gru, gi, h = random_gru_case(torch.float32, 4, 33, 7, d=16)
    mask = torch.ones(4, 7, dtype=torch.bool)
    for scale in (1.0, 300.0):  # 300: every gate far in a sigmoid's flat tail
        with torch.no_grad():
            got = relation_recur(gru, gi * scale, mask, h)
            ref = gru.double().recur(gi.double() * scale, mask, h.double())
        gru.float()
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), ref, **TOL32)
    assert spy["cross_gru_recur"] == 2


def test_gru_training_runs_pytorch_with_gradients(spy):
    gru, gi, h = random_gru_case(torch.float64, 3, 4, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    out = relation_recur(gru, gi, mask, h)  # parameters need gradients: no kernel
    assert spy["cross_gru_recur"] == 0 and out.requires_grad
    out.sum().backward()
    assert torch.isfinite(gru.cell.weight_hh.grad).all()


# ---- eqs 17-20: the Branch 2 kernel --------------------------------------------------


def branch2_case(dt, d=8, seed=3):
    torch.manual_seed(seed)
    lb = LocalBranch(d, 5).to(dt)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(3, 5, d, generator=g, dtype=dt)
    t = torch.randn(4, 6, d, generator=g, dtype=dt)
    v_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    t_mask = torch.tensor([[1] * 6, [1, 0, 1, 1, 0, 0], [0] * 6, [1, 1, 0, 0, 0, 0]],
                          dtype=torch.bool)
    return lb, v * v_mask[..., None], v_mask, t * t_mask[..., None], t_mask


@pytest.mark.parametrize("d", [8, 64])  # 64: the width compiled as a constant
def test_branch2_kernel_equals_the_printed_equations_float64(spy, monkeypatch, d):
    # Tiles of 5 pairs over 3 x 4: several tiles; an empty image and an empty text.
    monkeypatch.setattr(fast_align, "_FUSED_TILE", 5)
    lb, v, v_mask, t, t_mask = branch2_case(torch.float64, d)
    with torch.no_grad():
        ref = lb(v, v_mask, t, t_mask)
        got = local_similarity(lb, v, v_mask, t, t_mask)
    assert spy["local_branch"] == 1
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(got, ref, **TOL64)


def test_branch2_kernel_float32_within_1e_5(spy):
    lb, v, v_mask, t, t_mask = branch2_case(torch.float32, 64)
    with torch.no_grad():
        got = local_similarity(lb, v, v_mask, t, t_mask)
        ref = lb.double()(v.double(), v_mask, t.double(), t_mask)
    assert spy["local_branch"] == 1
    torch.testing.assert_close(got.double(), ref, **TOL32)


def test_branch2_kernel_not_used_for_training_or_a_high_temperature(spy):
    lb, v, v_mask, t, t_mask = branch2_case(torch.float64)
    out = local_similarity(lb, v, v_mask, t, t_mask)
    assert out.requires_grad and spy["local_branch"] == 0
    lb.temperature = 80.0  # the kernel subtracts no maximum: PyTorch's path takes it
    with torch.no_grad():
        torch.testing.assert_close(local_similarity(lb, v, v_mask, t, t_mask),
                                   lb(v, v_mask, t, t_mask), **TOL64)
    assert spy["local_branch"] == 0


def test_kernels_reject_inconsistent_shapes(spy):
    gru, gi, h = random_gru_case(torch.float64, 3, 4, 5)
    with pytest.raises(RuntimeError, match="inconsistent shapes"):
        fused.kernel().cross_gru_recur(gi, torch.ones(3, 4, dtype=torch.bool), h,
                                       torch.zeros(6, 18, dtype=torch.float64),
                                       torch.zeros(6, dtype=torch.float64), 8)
    lb, v, v_mask, t, t_mask = branch2_case(torch.float64)
    with pytest.raises(RuntimeError, match="inconsistent shapes"):
        fused.kernel().local_branch(torch.zeros(3, 5, 4, 5, dtype=torch.float64), v, v_mask,
                                    t, t_mask, lb.w_vt.detach(), lb.w_tv.detach(), 9.0, 4)


# ---- the whole scorer, switched on and off ---------------------------------------


def test_score_matrix_same_with_and_without_the_kernels(spy, monkeypatch):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = CCCL(cfg).double().eval()
    b = make_batch(cfg, n_img=6, n_txt=9, seed=4)
    with torch.no_grad():
        img = model.encode_images(b["regions"], b["positions"], b["region_mask"])
        txt = model.encode_texts(b["words"], b["word_mask"], b["word_adjacency"])
        with_kernels = ev.score_matrix(model, img, txt, dtype=torch.float64)
        used = dict(spy)
        monkeypatch.setenv(fused.ENV, "0")
        without = ev.score_matrix(model, img, txt, dtype=torch.float64)
    assert used["cross_gru_recur"] >= 2 and used["local_branch"] >= 1
    assert spy == used  # CCCL_LITE_FUSED=0: no further call
    torch.testing.assert_close(with_kernels, without, **TOL64)


def test_a_failed_build_warns_once_and_scoring_falls_back(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension 'x'\nfused_cpu.cpp:1: error: no compiler")

    monkeypatch.delenv(fused.ENV, raising=False)
    monkeypatch.setattr(cpp, "load", broken)
    monkeypatch.setattr(fused, "_state", {})
    with pytest.warns(RuntimeWarning, match="could not build.*error: no compiler"):
        assert fused.kernel() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no new warning
        assert not fused.available()
        gru, gi, h = random_gru_case(torch.float64, 2, 3, 4)
        mask = torch.ones(2, 4, dtype=torch.bool)
        with torch.no_grad():
            torch.testing.assert_close(relation_recur(gru, gi, mask, h), gru.recur(gi, mask, h),
                                       **TOL64)


def test_the_build_finds_ninja_off_path(monkeypatch):
    """``.venv/bin/python`` does not put the environment's bin folder on PATH,
    where the ninja package installs the binary torch's builder runs."""
    import ninja  # a dependency of the package (pyproject.toml): always installed
    monkeypatch.setattr(fused.shutil, "which", lambda name: None)
    monkeypatch.setenv("PATH", "/nowhere")
    with fused._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
        assert os.path.exists(os.path.join(ninja.BIN_DIR, "ninja"))
    assert os.environ["PATH"] == "/nowhere"
