"""Scores under mixed precision: float32 out of the shared MLP, the fusion and
every ranking, whatever the autocast (issue 13).

CUDA's bf16 autocast is emulated with the CPU's (``torch.autocast("cpu",
dtype=torch.bfloat16)``): the same op lists decide what runs in bf16.
References are independent of the code under test: the float32 run of the
same weights, and ranks recounted here by a loop over queries.

The tolerance, stated once: with ε = max |F_bf16 − F_fp32| over all pairs,
an (image, caption) order can only flip where their float32 scores are
within 2ε of each other. So R@K under bf16 may differ from float32 only in
queries whose decisive float32 gap is below 2ε, and no exact tie may appear
that float32 does not have. ε on the trained model here is about 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import small
from cccl_lite.engine import evaluate as ev
from cccl_lite.model.fast import fused
from cccl_lite.model.loss import SimilarityMLP, fuse_scores
from cccl_lite.model.cccl import CCCLConfig
from cccl_lite.engine.train import RunOptions, Trainer, load_model, make_reader

pytestmark = pytest.mark.usefixtures("single_thread")

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def test_mlp_and_fusion_are_float32_under_autocast():
    """Scores near 1, where bf16's grid is 2^-8 wide: the float32 MLP keeps them apart."""
    torch.manual_seed(0)
    mlp = SimilarityMLP(16, 16)
    with torch.no_grad():
        mlp.net[-1].bias += 6.0  # sigmoid near 0.998, as trained positives sit
    sim = torch.randn(40, 16)
    expected = mlp(sim)  # float32, no autocast
    assert len(torch.unique(expected)) == 40
    with torch.autocast(**BF16):
        got = mlp(sim)
        fused_f = fuse_scores((got, got.to(torch.bfloat16), None))
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    # eq 32 by hand, in float64, from the same two branch scores
    by_hand = (expected.double() + expected.to(torch.bfloat16).double()) / 2
    assert fused_f.dtype == torch.float32
    torch.testing.assert_close(fused_f.double(), by_hand, atol=1e-7, rtol=0)


def test_mlp_takes_bf16_input_and_a_float64_model_stays_float64():
    torch.manual_seed(0)
    mlp = SimilarityMLP(8, 8)
    sim = torch.randn(5, 8).to(torch.bfloat16)
    with torch.autocast(**BF16):
        out = mlp(sim)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mlp(sim.float()), atol=0, rtol=0)
    mlp64 = SimilarityMLP(8, 8).double()
    assert mlp64(torch.randn(5, 8, dtype=torch.float64)).dtype == torch.float64


# ---- a trained lite model ----------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_words_h5, tmp_path_factory):
    """A lite "w/o BERT" model trained for 4 epochs on the tiny scenes (word ids,
    so the text side learns: the fixture's word vectors are random per word
    occurrence)."""
    # coherence_reduction pinned to the printed sum: the model this test's
    # bound on ε (below 0.01) was measured on; the lite preset's default
    # (per item) trains larger weights, and bf16's error grows with them.
    cfg, recipe = small(word_dim=384, embed_dim=32, sim_dim=32, batch_size=10, epochs=4,
                        lr=3e-3, lr_decay_epoch=4, coherence_reduction="sum",
                        warmup_epochs=None).with_ablation("w/o BERT")
    out = tmp_path_factory.mktemp("amp-run")
    trainer = Trainer(cfg, recipe, tiny_words_h5, out, RunOptions(device="cpu", quiet=True))
    trainer.fit()
    model, config, vocab = load_model(trainer.last_path)
    return model, config, vocab, tiny_words_h5


def ranks(sims: np.ndarray, owner: np.ndarray):
    """Per query, the rank of its best match (ties count against it) and the
    float32 score of its best match; by loops, as eq 35 reads."""
    n_img, n_cap = sims.shape
    i2t = []
    for i in range(n_img):
        best = max(sims[i, j] for j in range(n_cap) if owner[j] == i)
        i2t.append(sum(1 for j in range(n_cap) if owner[j] != i and sims[i, j] >= best))
    t2i = []
    for j in range(n_cap):
        gt = sims[owner[j], j]
        t2i.append(sum(1 for i in range(n_img) if i != owner[j] and sims[i, j] >= gt))
    return np.array(i2t), np.array(t2i)


def decisive_gap(sims: np.ndarray, owner: np.ndarray, k: int):
    """Per query, |positive − the k-th best other item| in float32: the margin a
    perturbation must cross to change that query's R@k."""
    n_img, _ = sims.shape
    i2t = []
    for i in range(n_img):
        pos = sims[i, owner == i].max()
        other = np.sort(sims[i, owner != i])[::-1]
        i2t.append(abs(pos - other[k - 1]))
    t2i = []
    for j in range(len(owner)):
        pos = sims[owner[j], j]
        other = np.sort(np.delete(sims[:, j], owner[j]))[::-1]
        t2i.append(abs(pos - other[k - 1]))
    return np.array(i2t), np.array(t2i)


def positive_ties(sims: np.ndarray, owner: np.ndarray) -> int:
    """Exact ties between a ground-truth score and any other score of its row."""
    return sum(int((sims[i] == v).sum()) - 1 for i in range(sims.shape[0])
               for v in sims[i, owner == i])


@pytest.mark.slow  # its fixture trains 4 epochs
@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_split_under_bf16_autocast_ranks_as_float32(trained, split):
    model, config, vocab, path = trained
    reader = make_reader(path, split, config, vocab)
    owner = np.asarray(reader.caption_image)
    rec32, s32 = ev.evaluate_split(model, reader, amp=False)
    rec16, s16 = ev.evaluate_split(model, reader, amp=True)  # CPU bf16 autocast
    assert s16.dtype == torch.float32
    a32, a16 = s32.numpy(), s16.numpy()
    eps = float(np.abs(a16 - a32).max())
    assert 0 < eps < 0.01  # bf16 did run; its error stays small
    assert positive_ties(a16, owner) <= positive_ties(a32, owner)  # no new ties
    r32, r16 = ranks(a32, owner), ranks(a16, owner)
    for direction, (x32, x16) in enumerate(zip(r32, r16)):
        for k in (1, 5, 10):
            changed = (x32 < k) != (x16 < k)
            gap = decisive_gap(a32, owner, k)[direction]
            # a changed query must have had its decisive float32 gap within 2ε
            assert np.all(gap[changed] <= 2 * eps + 1e-7), (direction, k)
            name = ("i2t", "t2i")[direction] + f"_r{k}"
            # the recalls themselves: float32's, up to those near-tied queries
            assert abs(rec16[name] - rec32[name]) <= 100.0 * changed.sum() / len(x32) + 1e-9
            assert rec32[name] == pytest.approx(100.0 * (x32 < k).mean())


@pytest.mark.slow  # its fixture trains 4 epochs
def test_fused_kernels_step_aside_under_autocast(trained):
    """float32 encodings scored under autocast: the crash of issue 13
    ("expected scalar type Float but found BFloat16") is gone, and the scores
    equal the PyTorch path's under the same autocast (kernels off)."""
    model, config, vocab, path = trained
    reader = make_reader(path, "test", config, vocab)
    images = ev.encode_all_images(model, reader, amp=False)
    texts = ev.encode_all_texts(model, reader, amp=False)
    got = ev.score_matrix(model, images, texts, amp=True)
    assert got.dtype == torch.float32
    with torch.autocast(**BF16):
        assert not fused.usable(torch.zeros(2), torch.zeros(2))
    old = fused._state.get("module", "unset")
    fused._state["module"] = None  # as if the kernels could not be built
    try:
        reference = ev.score_matrix(model, images, texts, amp=True)
    finally:
        if old == "unset":
            fused._state.pop("module", None)
        else:
            fused._state["module"] = old
    torch.testing.assert_close(got, reference, atol=0, rtol=0)


@pytest.mark.parametrize("amp, expected", [("bf16", torch.bfloat16), ("off", False)])
def test_validation_honours_the_runs_amp_setting(tiny_words_h5, tmp_path, monkeypatch, amp,
                                                  expected):
    import cccl_lite.engine.evaluate as evaluate_module

    seen = []

    def fake_evaluate_split(model, reader, device="cpu", batch_size=256, **kw):
        seen.append(kw.get("amp"))
        return {k: 0.0 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                 "t2i_r10", "rsum")}, None

    monkeypatch.setattr(evaluate_module, "evaluate_split", fake_evaluate_split)
    Trainer(*small(word_dim=16, embed_dim=8, sim_dim=8, epochs=1, warmup_epochs=None),
            tiny_words_h5, tmp_path / "run",
            RunOptions(device="cpu", amp=amp, max_steps=1, quiet=True)).fit()
    assert seen == [expected]
