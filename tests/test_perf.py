"""Going faster (chapter 10): the fast scorer, the memory-saving training mode,
pair-list scoring, two-stage retrieval and the benchmark script.

References are independent of the code under test: the equations as printed
(``fast=False``, itself checked against scalar loops in test_align.py and
test_reason.py), ``nn.GRU`` run on each pair's sequence, the training
forward's own branch scores, ranks counted by Python loops, and a hand-made
shortlist whose recalls are worked out below.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cccl_lite.engine import evaluate as ev
from cccl_lite.engine import scoring
from cccl_lite.model.align import vector_similarity
from cccl_lite.model.fast import (fused, local_similarity, local_similarity_pairs, relation_recur,
                                  vsf_all_pairs)
from cccl_lite.model.loss import HybridObjective, hybrid_loss
from cccl_lite.model.cccl import ABLATIONS, CCCL, CCCLConfig, select_rows
from cccl_lite.model.reason import CrossGRU
from cccl_lite.engine.train import RunOptions, warmup_loss

from helpers import MemoryReader, brute_force_recalls, make_batch, nn_gru_states, tiny_config, lite_vectors

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(atol=1e-10, rtol=1e-9)


pytestmark = pytest.mark.usefixtures("single_thread")


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return CCCL(cfg).double().eval()


def config_of(name):
    return tiny_config() if name is None else tiny_config().with_ablation(name)


def encodings(model, b):
    return (model.encode_images(b["regions"], b["positions"], b["region_mask"]),
            model.encode_texts(b["words"], b["word_mask"], b["word_adjacency"]))


# ---- the fast path == the equations as printed ----------------------------------


@pytest.mark.parametrize("name", (None,) + ABLATIONS)
def test_fast_scores_equal_the_reference(name):
    cfg = config_of(name)
    model, b = build(cfg), make_batch(cfg, n_img=4, n_txt=5, seed=1)
    with torch.no_grad():
        f_ref, s_ref = model(**b, fast=False)
        f_fast, s_fast = model(**b)  # fast is the default
    torch.testing.assert_close(f_fast, f_ref, **TOL)
    for a, r in zip(s_fast, s_ref):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, **TOL)
    # Without no_grad the fast path avoids in-place ops; same numbers.
    torch.testing.assert_close(model(**b)[0].detach(), f_ref, **TOL)


def test_fast_local_branch_handles_padding_and_empty_items():
    cfg = tiny_config()
    lb = build(cfg).local_branch
    g = torch.Generator().manual_seed(3)
    v = torch.randn(3, 5, cfg.embed_dim, generator=g, dtype=torch.float64)
    t = torch.randn(4, 6, cfg.embed_dim, generator=g, dtype=torch.float64)
    v_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    t_mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [0] * 6, [1, 1, 0, 0, 0, 0]],
                          dtype=torch.bool)
    v = v * v_mask[..., None]
    t = t * t_mask[..., None]
    with torch.no_grad():
        ref = lb(v, v_mask, t, t_mask)
        fast = local_similarity(lb, v, v_mask, t, t_mask)
        paired = local_similarity_pairs(lb, v[[0, 1, 2, 0]], v_mask[[0, 1, 2, 0]], t, t_mask)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(fast, ref, **TOL)
    torch.testing.assert_close(paired, ref[[0, 1, 2, 0], [0, 1, 2, 3]], **TOL)
    # Gradients stay finite with an empty text and a word whose cosines with
    # every region are negative (an all-zero column of relu(M)).
    t = t.clone()
    t[0, 0] = -v.sum((0, 1))
    v.requires_grad_(True)
    t.requires_grad_(True)
    for fn in (lambda *a: local_similarity(lb, *a),
               lambda *a: local_similarity_pairs(lb, *(x[[0, 1, 2, 0]] for x in a[:2]), *a[2:])):
        v.grad = t.grad = None
        fn(v, v_mask, t, t_mask).sum().backward()
        assert torch.isfinite(v.grad).all() and torch.isfinite(t.grad).all()


def test_vsf_all_pairs_equals_the_direct_vsf():
    """Branch 1's VSF by matrix products (chapter 10) = eq 15 pair by pair."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 6, generator=g, dtype=torch.float64)
    b = torch.randn(5, 6, generator=g, dtype=torch.float64)
    w = torch.rand(4, 6, generator=g, dtype=torch.float64)
    got = vsf_all_pairs(a, b, w)
    assert got.shape == (3, 5, 4)
    for i in range(3):
        for j in range(5):
            torch.testing.assert_close(got[i, j], vector_similarity(a[i], b[j], w), **TOL)


def test_relation_recur_equals_nn_gru_on_each_pair():
    """v^R of eq 26 = the last valid state of nn.GRU over [cross_y, x_1, ..., x_L]."""
    torch.manual_seed(0)
    gru = CrossGRU(5).double()
    g = torch.Generator().manual_seed(1)
    nodes = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    cross = torch.randn(5, 5, generator=g, dtype=torch.float64)
    lengths = [4, 2, 1]
    mask = torch.arange(4)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        got = relation_recur(gru, gru.input_projection(nodes), mask, gru.cross_state(cross)[None])
    torch.testing.assert_close(got, nn_gru_states(gru, nodes, cross, lengths), **TOL)


@pytest.mark.parametrize("name", [None, "w/o B-2", "w/o C-GRU"])
def test_fast_gradients_equal_the_reference(name):
    cfg = config_of(name)
    b = make_batch(cfg, n_img=4, n_txt=4, seed=2)
    grads = []
    for fast in (False, True):
        model = build(cfg).train()
        _, scores = model(**b, fast=fast)
        HybridObjective()(scores).total.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], **TOL, msg=k)


def lite_float32(n_img: int, n_txt: int, seed: int):
    """A freshly seeded lite CCCL (eval mode) and a float32 batch at the lite shape."""
    cfg = lite_vectors()
    torch.manual_seed(0)
    model = CCCL(cfg).eval()
    b = make_batch(cfg, n_img=n_img, n_txt=n_txt, n=cfg.num_regions, m=12, seed=seed)
    return model, {k: v.float() if v.is_floating_point() else v for k, v in b.items()}


def test_fast_float32_at_the_lite_shape_within_1e_5():
    model, b = lite_float32(n_img=6, n_txt=9, seed=4)
    with torch.no_grad():
        ref = model(**b, fast=False)[0]
        fast = model(**b)[0]
    assert (fast - ref).abs().max() < 1e-5


def test_fast_path_under_bf16_autocast_matches_and_trains():
    """The GPU path's dtypes (bf16 autocast), exercised on the CPU: the fast
    scores stay as close to float32 as the reference's, and a checkpointed
    training step runs backward."""
    model, b = lite_float32(n_img=6, n_txt=6, seed=9)
    with torch.no_grad():
        exact = model(**b, fast=False)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = model(**b, fast=False)[0].float()
            fast = model(**b)[0].float()
    assert (fast - exact).abs().max() <= 2 * (ref - exact).abs().max() + 1e-3
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, scores = model(**b, pair_chunk=10)
    HybridObjective()(tuple(s.float() for s in scores)).total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---- aligned pairs ----------------------------------------------------------------


@pytest.mark.parametrize("name", (None,) + ABLATIONS)
def test_score_pairs_equals_the_grid(name):
    cfg = config_of(name)
    model, b = build(cfg), make_batch(cfg, n_img=3, n_txt=4, seed=5)
    img, txt = encodings(model, b)
    ii, tt = torch.tensor([0, 2, 1, 2, 0]), torch.tensor([3, 0, 1, 3, 0])
    with torch.no_grad():
        grid = model.score(img, txt, fast=False)
        f, scores = model.score_pairs(select_rows(img, ii), select_rows(txt, tt))
    torch.testing.assert_close(f, grid[0][ii, tt], **TOL)
    for a, r in zip(scores, grid[1]):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r[ii, tt], **TOL)
    with pytest.raises(ValueError, match="2 images but 4 texts"):
        model.score_pairs(select_rows(img, slice(2)), txt)


# ---- the memory-saving mode -------------------------------------------------------


def loss_and_grads(model, b, pair_chunk, all_negatives):
    model.zero_grad(set_to_none=True)
    _, scores = model(**b, pair_chunk=pair_chunk)
    loss = warmup_loss(*scores) if all_negatives else HybridObjective()(scores)
    loss.total.backward()
    return loss.total.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.slow  # a training step per ablation, twice
@pytest.mark.parametrize("name", [None, "w/o B-2", "w/o C-GRU", "w/o B-1", "w/o BERT"])
def test_pair_chunk_gives_the_same_loss_and_gradients(name):
    cfg = config_of(name)
    model = build(cfg).train()
    b = make_batch(cfg, n_img=4, n_txt=4, seed=6)
    for all_negatives in (False, True):
        loss, grads = loss_and_grads(model, b, None, all_negatives)
        for chunk in (1, 3, 5, 8, 100):
            loss_c, grads_c = loss_and_grads(model, b, chunk, all_negatives)
            torch.testing.assert_close(loss_c, loss, atol=1e-12, rtol=1e-12)
            for k in grads:
                torch.testing.assert_close(grads_c[k], grads[k], atol=1e-12, rtol=1e-10, msg=k)


def test_pair_chunk_scores_equal_the_plain_ones_without_autograd():
    cfg = tiny_config()
    model, b = build(cfg), make_batch(cfg, n_img=3, n_txt=5, seed=7)
    with torch.no_grad():
        plain = model(**b)
        for chunk in (1, 2, 4, 7, 15):
            f, scores = model(**b, pair_chunk=chunk)
            torch.testing.assert_close(f, plain[0], **TOL)
            for a, r in zip(scores, plain[1]):
                torch.testing.assert_close(a, r, **TOL)


def test_pair_chunk_recomputes_blocks_and_keeps_fewer_activations():
    """Each block's per-pair work runs twice (forward, then again in backward),
    and the tensors autograd keeps outside the blocks are far fewer bytes."""
    cfg = tiny_config()
    model = build(cfg).train()
    b = make_batch(cfg, n_img=4, n_txt=4, n=5, m=6, seed=8)
    inner = model._branch_scores
    calls = []

    def counting(*args):
        calls.append(1)
        return inner(*args)

    def saved_bytes(pair_chunk):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, scores = model(**b, pair_chunk=pair_chunk)
            loss = HybridObjective()(scores).total
        loss.backward()
        return total[0]

    plain = saved_bytes(None)
    model._branch_scores = counting
    chunked = saved_bytes(4)  # 16 pairs in 4 blocks of 1 image x 4 texts
    del model._branch_scores
    assert len(calls) == 8
    assert chunked < plain / 2


def test_pair_chunk_rejects_bad_values():
    cfg = tiny_config()
    model, b = build(cfg), make_batch(cfg)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="pair_chunk must be a positive int"):
            model(**b, pair_chunk=bad)
        with pytest.raises(ValueError, match="pair_chunk must be a positive int"):
            RunOptions(pair_chunk=bad)
    assert RunOptions(pair_chunk=64).pair_chunk == 64


# ---- the naive loop and pair lists == the score matrix --------------------------------


@pytest.mark.parametrize("name", [None, "w/o C-GRU", "w/o B-3"])
def test_per_caption_scores_and_score_pairs_equal_the_score_matrix(name):
    cfg = config_of(name)
    model, reader = build(cfg), MemoryReader(cfg, n_img=5, cpi=2, seed=1)
    images = ev.encode_all_images(model, reader, batch_size=2)
    texts = ev.encode_all_texts(model, reader, batch_size=3)
    full = reader.forward(model)
    plain_i = images._replace(gru_input=None, cross_state=None, relation=None)
    plain_t = texts._replace(gru_input=None, cross_state=None, relation=None)
    for fast in (False, True):
        got = ev.per_caption_scores(model, images, texts, shard=2, fast=fast,
                                    dtype=torch.float64)
        torch.testing.assert_close(got, full, **TOL)
    if cfg.use_branch3:  # the GRUs from their inputs, per call (V̂, T̂ kept)
        keep_i = ev.encode_all_images(model, reader, keep_graph=True)
        keep_t = ev.encode_all_texts(model, reader, keep_graph=True)
        plain_i = keep_i._replace(gru_input=None, cross_state=None, relation=None)
        plain_t = keep_t._replace(gru_input=None, cross_state=None, relation=None)
        got = ev.per_caption_scores(model, plain_i, plain_t, [3, 0, 9], shard=3,
                                    dtype=torch.float64)
        torch.testing.assert_close(got, full[:, [3, 0, 9]], **TOL)
    ii = torch.tensor([4, 0, 0, 3, 2, 1, 4])
    tt = torch.tensor([9, 0, 5, 1, 2, 8, 9])
    for chunk in (None, 1, 3):
        got = ev.score_pairs(model, images, texts, ii, tt, chunk, dtype=torch.float64)
        torch.testing.assert_close(got, full[ii, tt], **TOL)


# ---- two-stage retrieval ------------------------------------------------------------


def forward_branch_scores(model, reader):
    with torch.no_grad():
        return model(reader.regions, reader.positions, reader.region_mask, reader.words,
                     reader.word_mask, reader.adjacency)


def two_stage_brute_force(full, cheap, owner, k):
    """Recalls when each query ranks its top-k candidates by cheap with F, every
    other candidate after them by cheap: per-direction matrices, then loops."""
    full, cheap = np.asarray(full, np.float64), np.asarray(cheap, np.float64)
    n_img, n_cap = full.shape
    i2t = np.full_like(full, np.nan)
    t2i = np.full_like(full, np.nan)
    for i in range(n_img):
        keep = sorted(range(n_cap), key=lambda j: -cheap[i, j])[:k]
        for j in range(n_cap):
            i2t[i, j] = full[i, j] if j in keep else cheap[i, j] - 10
    for j in range(n_cap):
        keep = sorted(range(n_img), key=lambda i: -cheap[i, j])[:k]
        for i in range(n_img):
            t2i[i, j] = full[i, j] if i in keep else cheap[i, j] - 10
    a, b = brute_force_recalls(i2t, owner), brute_force_recalls(t2i, owner)
    out = {key: (a if key.startswith("i2t") else b)[key] for key in a if key != "rsum"}
    out["rsum"] = sum(out.values())
    return out


@pytest.mark.parametrize("name", [None, "w/o B-1"])
def test_two_stage_recalls_equal_brute_force(name):
    cfg = config_of(name)
    model, reader = build(cfg), MemoryReader(cfg, n_img=6, cpi=2, seed=2)
    f, (s_s, _, _) = forward_branch_scores(model, reader)
    if s_s is None:  # "w/o B-1": the cosine of v^S and t^S
        img, txt = encodings(model, dict(regions=reader.regions, positions=reader.positions,
                                         region_mask=reader.region_mask, words=reader.words,
                                         word_mask=reader.word_mask,
                                         word_adjacency=reader.adjacency))
        with torch.no_grad():
            s_s = torch.nn.functional.cosine_similarity(img.global_vec[:, None],
                                                        txt.global_vec[None], dim=-1)
    owner = reader.caption_image
    full_recalls, full_sims = ev.evaluate_split(model, reader, batch_size=4)
    for k in (1, 2, 3, 5):
        recalls, sims = ev.evaluate_split(model, reader, batch_size=4, shortlist=k)
        expected = two_stage_brute_force(f, s_s, owner, k)
        for key in expected:
            assert recalls[key] == pytest.approx(expected[key], abs=1e-9), (k, key)
        # Re-ranked pairs hold F; the others lie below every F, in the cheap order.
        two = ev.two_stage_scores(model, ev.encode_all_images(model, reader),
                                  ev.encode_all_texts(model, reader), k)
        kept = two.i2t | two.t2i
        assert two.reranked == int(kept.sum())
        assert two.i2t.sum(1).eq(k).all() and two.t2i.sum(0).eq(k).all()
        torch.testing.assert_close(sims[kept].double(), f[kept], atol=1e-6, rtol=0)
        assert (sims[~kept] < 0).all() and (sims[kept] >= 0).all()
    # Every candidate shortlisted: exactly the full ranking and recalls.
    for k in (12, 1000):
        recalls, sims = ev.evaluate_split(model, reader, batch_size=4, shortlist=k)
        assert recalls == full_recalls
        torch.testing.assert_close(sims, full_sims, atol=1e-6, rtol=0)
        assert torch.equal(torch.argsort(sims, dim=1, stable=True),
                           torch.argsort(full_sims, dim=1, stable=True))


def test_two_stage_hand_made_shortlist_that_drops_true_matches(monkeypatch):
    """3 images x 2 captions (caption j belongs to image j // 2), shortlist 1.

    Cheap scores (rows images, columns captions):
        i0: .80 .10 .90 .05 .70 .00  -> keeps c2, not its own; c0 comes next: rank 1
        i1: .20 .60 .30 .90 .10 .20  -> keeps c3, its own: rank 0
        i2: .10 .05 .20 .30 .95 .40  -> keeps c4, its own: rank 0
    Columns: c1 keeps i1 (its own i0 next, rank 1), c2 keeps i0 (own i1 next,
    rank 1); c0, c3, c4, c5 keep their own image. With one candidate re-ranked
    per query F cannot change any rank: i2t R@1 = 2/3, t2i R@1 = 4/6, all
    R@5 and R@10 = 100.
    """
    cheap = torch.tensor([[.80, .10, .90, .05, .70, .00],
                          [.20, .60, .30, .90, .10, .20],
                          [.10, .05, .20, .30, .95, .40]])
    # The two-stage scorer (cccl_lite.engine.scoring) reads its shortlist's cheap scores.
    monkeypatch.setattr(scoring, "cheap_scores", lambda *a, **kw: cheap.clone())
    cfg = tiny_config()
    model, reader = build(cfg), MemoryReader(cfg, n_img=3, cpi=2, seed=3)
    recalls, sims = ev.evaluate_split(model, reader, shortlist=1)
    assert recalls["i2t_r1"] == pytest.approx(200 / 3)
    assert recalls["t2i_r1"] == pytest.approx(400 / 6)
    for key in ("i2t_r5", "i2t_r10", "t2i_r5", "t2i_r10"):
        assert recalls[key] == 100.0
    assert recalls["rsum"] == pytest.approx(200 / 3 + 400 / 6 + 400)
    # the re-ranked pairs: each row's and each column's top cheap score
    kept = {(0, 2), (1, 3), (2, 4), (0, 0), (1, 1), (0, 2), (1, 3), (2, 4), (2, 5)}
    got = {tuple(p) for p in (sims >= 0).nonzero().tolist()}
    assert got == kept


def test_retrieve_with_a_shortlist_ranks_the_cheap_top_s_by_f(synthetic_reader):
    model, reader, f, s_s = synthetic_reader
    for image in (0, 5):
        hits = ev.retrieve(model, reader, image=image, k=3, shortlist=6)
        keep = torch.argsort(s_s[image], descending=True)[:6]
        order = keep[torch.argsort(f[image, keep], descending=True)][:3].tolist()
        assert [h.index for h in hits] == order
        np.testing.assert_allclose([h.score for h in hits], f[image, order].numpy(), atol=1e-10)
    hits = ev.retrieve(model, reader, caption=7, k=2, shortlist=4)
    keep = torch.argsort(s_s[:, 7], descending=True)[:4]
    assert [h.index for h in hits] == keep[torch.argsort(f[keep, 7], descending=True)][:2].tolist()
    # every candidate shortlisted: the plain ranking
    assert ev.retrieve(model, reader, image=3, k=5, shortlist=1000) == \
        ev.retrieve(model, reader, image=3, k=5)
    with pytest.raises(ValueError, match="must be >= k"):
        ev.retrieve(model, reader, image=0, k=5, shortlist=2)
    with pytest.raises(ValueError, match="shortlist must be a positive int"):
        ev.retrieve(model, reader, image=0, k=1, shortlist=0)


@pytest.fixture(scope="module")
def synthetic_reader(tmp_path_factory):
    """A tiny synthetic split (retrieve reads caption texts from the file)."""
    from cccl_lite.data.dataset import SplitReader
    from cccl_lite.data.synthetic import make_synthetic
    from helpers import add_word_vectors, synthetic_config

    data = make_synthetic(tmp_path_factory.mktemp("perf") / "tiny.h5", seed=0, size="tiny")
    add_word_vectors(data)
    reader = SplitReader(data, "test")
    model = build(synthetic_config())
    batch = {**reader.images(np.arange(reader.n_images)),
             **reader.captions(np.arange(reader.n_captions))}
    with torch.no_grad():
        f, (s_s, _, _) = model(**{k: v.double() if v is not None and v.is_floating_point()
                                  else v for k, v in batch.items()})
    return model, reader, f, s_s


def test_evaluate_shortlist_rejects_coco1k_and_bad_values():
    cfg = tiny_config()
    model, reader = build(cfg), MemoryReader(cfg, n_img=5, cpi=2)
    reader.fail = True  # errors come before any encoding
    with pytest.raises(ValueError, match="not available with --protocol coco1k"):
        ev.evaluate_split(model, reader, protocol="coco1k", fold_size=1, shortlist=2)
    with pytest.raises(ValueError, match="shortlist must be a positive int"):
        ev.evaluate_split(model, reader, shortlist=0)


# ---- the benchmark script ---------------------------------------------------------------


@pytest.mark.slow  # the benchmark script, every case
def test_benchmark_prints_one_json_line_per_case():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scoring.py"), "--sizes", "5x7", "3x4",
           "--naive-captions", "3", "--repeats", "1", "--train-batch", "4", "--threads", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["images"], r["captions"]) for r in lines] == [(5, 7), (3, 4)]
    for r in lines:
        for key in ("device", "shape", "naive_pairs_per_s", "batched_pairs_per_s",
                    "max_abs_diff", "train_step_s", "peak_mem_gb"):
            assert key in r
        assert r["shape"] == "lite" and r["peak_mem_gb"] is None
        assert r["max_abs_diff"] < 1e-5 and r["max_abs_diff_per_caption_fast"] < 1e-5
        assert r["naive_pairs_per_s"] > 0 and r["batched_pairs_per_s"] > 0
        # The kernels build wherever this suite runs with a compiler (test_fused.py).
        assert r["fused_cpu_kernels"] is fused.available()
