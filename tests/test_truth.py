"""Caption truth, sibling batches, truth-aware R@K, and the loss options they go with."""

import json

import h5py
import numpy as np
import pytest
import torch

from helpers import lite_vectors
from cccl_lite.data.dataset import SiblingSampler
from cccl_lite.data.schema import SchemaError
from cccl_lite.data.synthetic import make_synthetic
from cccl_lite.data.truth import SplitTruth
from cccl_lite.model.loss import alignment_term, coherence_term, hybrid_loss
from cccl_lite.engine.metrics import recall_at_k, truth_recall_at_k


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("truth") / "tiny.h5", seed=1, size="tiny")


# ---- SplitTruth ----------------------------------------------------------------

def test_every_caption_is_true_of_its_own_image(tiny):
    t = SplitTruth(tiny, "train")
    m = t.truth(np.arange(t.n_images), np.arange(t.n_captions))
    assert m.shape == (t.n_images, t.n_captions)
    assert m[t.caption_image, np.arange(t.n_captions)].all()
    # ...and many are true of other images too: the reason for truth positives.
    assert (m.sum(0) > 1).mean() > 0.2


def _hand_scene(path, objects, captions):
    """Overwrite the first image's scene and the first captions' tokens/kinds."""
    with h5py.File(path, "a") as f:
        g = f["train"]
        scenes = g["images/scene"].asstr()[:]
        scenes[0] = json.dumps(objects)
        del g["images/scene"]
        g.create_dataset("images/scene", data=np.array(scenes, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        toks, kinds = g["captions/tokens"].asstr()[:], g["captions/kind"].asstr()[:]
        for k, (tok, kind) in enumerate(captions):
            toks[k], kinds[k] = tok, kind
        for name, data in (("tokens", toks), ("kind", kinds)):
            del g["captions/" + name]
            g.create_dataset("captions/" + name, data=np.array(data, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        return int(g["images/size"][0][0])


def test_truth_of_a_hand_made_scene(tmp_path):
    path = make_synthetic(tmp_path / "hand.h5", seed=0, size="tiny")
    with h5py.File(path, "r") as f:
        side = int(f["train/images/size"][0][0])
    c = side / 3  # one grid cell
    red_circle = {"shape": "circle", "colour": "red", "size": "small",
                  "box": [0.2 * c, 0.2 * c, 0.8 * c, 0.8 * c]}  # row 0, column 0
    blue_square = {"shape": "square", "colour": "blue", "size": "large",
                   "box": [2.1 * c, 1.1 * c, 2.9 * c, 1.9 * c]}  # row 1, column 2
    captions = [("a red circle left of a blue square", "relation"),        # true
                ("a blue square left of a red circle", "relation"),        # false
                ("the red circle is above the blue square", "copula"),     # true
                ("two shapes", "count"),                                   # true
                ("a blue circle and a red square", "conjunction")]         # false
    _hand_scene(path, [red_circle, blue_square], captions)
    t = SplitTruth(path, "train")
    assert t.truth([0], range(5)).tolist() == [[True, False, True, True, False]]


def test_a_file_without_scenes_is_refused_in_one_line(tmp_path):
    path = make_synthetic(tmp_path / "noscene.h5", seed=0, size="tiny")
    with h5py.File(path, "a") as f:
        del f["train/images/scene"]
    with pytest.raises(SchemaError, match="images/scene: missing"):
        SplitTruth(path, "train")


# ---- SiblingSampler ------------------------------------------------------------

def _layout(n_groups=40, per_group=3, cpi=5):
    group = np.repeat(np.arange(n_groups), per_group)
    caption_image = np.repeat(np.arange(n_groups * per_group), cpi)
    return group, caption_image


def test_sibling_sampler_visits_each_caption_once_and_groups_siblings():
    group, cap_img = _layout()
    s = SiblingSampler(group, cap_img, seed=3)
    order = list(s)
    assert sorted(order) == list(range(len(cap_img)))  # a permutation
    # In batches of 30 (ten whole tuples), every caption meets both siblings.
    batch = 30
    met = []
    for b in range(0, len(order), batch):
        imgs = cap_img[order[b:b + batch]]
        for i in imgs:
            siblings = set(np.flatnonzero(group == group[i])) - {i}
            met.append(siblings <= set(imgs))
    assert np.mean(met) == 1.0
    # A random permutation almost never does.
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(cap_img))
    rand = [set(np.flatnonzero(group == group[i])) - {i} <= set(cap_img[perm[b:b + batch]])
            for b in range(0, len(perm), batch) for i in cap_img[perm[b:b + batch]]]
    assert np.mean(rand) < 0.2


def test_sibling_sampler_order_depends_on_seed_and_epoch_only():
    group, cap_img = _layout()
    a, b = SiblingSampler(group, cap_img, seed=1), SiblingSampler(group, cap_img, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(SiblingSampler(group, cap_img, seed=2)) != first


def test_sibling_sampler_splits_ranks_disjoint_and_equal():
    group, cap_img = _layout(n_groups=41)
    parts = [list(SiblingSampler(group, cap_img, seed=0, num_replicas=2, rank=r))
             for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) > 0
    assert not set(parts[0]) & set(parts[1])


# ---- truth-aware R@K ----------------------------------------------------------------

def test_truth_recall_equals_standard_recall_for_the_standard_truth():
    rng = np.random.default_rng(0)
    sims = rng.normal(size=(7, 35))
    sims[2, 11] = sims[2, 3]  # a tie across images
    truth = np.zeros((7, 35), bool)
    truth[np.arange(35) // 5, np.arange(35)] = True
    want = recall_at_k(sims, 5)
    got = truth_recall_at_k(sims, truth)
    assert got == pytest.approx({k: float(v) for k, v in want.items()})


def test_truth_recall_by_brute_force():
    rng = np.random.default_rng(1)
    n_img, n_cap = 6, 20
    sims = rng.integers(0, 5, size=(n_img, n_cap)).astype(float)  # many ties
    truth = rng.random((n_img, n_cap)) < 0.25
    truth[np.arange(n_cap) % n_img, np.arange(n_cap)] = True
    i2t = []
    for i in range(n_img):
        best = max(sims[i, j] for j in range(n_cap) if truth[i, j])
        i2t.append(sum(1 for j in range(n_cap) if not truth[i, j] and sims[i, j] >= best))
    t2i = []
    for j in range(n_cap):
        best = max(sims[i, j] for i in range(n_img) if truth[i, j])
        t2i.append(sum(1 for i in range(n_img) if not truth[i, j] and sims[i, j] >= best))
    got = truth_recall_at_k(sims, truth)
    for k in (1, 5, 10):
        assert got[f"i2t_r{k}"] == pytest.approx(100 * np.mean(np.array(i2t) < k))
        assert got[f"t2i_r{k}"] == pytest.approx(100 * np.mean(np.array(t2i) < k))
    assert got["rsum"] == pytest.approx(sum(v for k, v in got.items() if k != "rsum"))


def test_truth_recall_refuses_an_image_without_truth():
    truth = np.eye(3, 6, dtype=bool)
    truth[:, 3:] = True
    truth[2] = False
    with pytest.raises(ValueError, match="true caption"):
        truth_recall_at_k(np.zeros((3, 6)), truth)


# ---- loss options -----------------------------------------------------------------

def test_coherence_per_item_is_the_sum_over_pairs_divided_by_the_images():
    g = torch.Generator().manual_seed(0)
    s = [torch.rand(4, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    by_hand = sum(abs(s[a][i, j] - s[b][i, j]).item() for a, b in ((0, 1), (0, 2), (1, 2))
                  for i in range(4) for j in range(6))
    assert coherence_term(*s).item() == pytest.approx(by_hand, rel=1e-12)
    assert coherence_term(*s, reduction="per_item").item() == pytest.approx(by_hand / 4,
                                                                            rel=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        coherence_term(*s, reduction="mean")


def test_hybrid_loss_passes_negatives_and_reduction_through():
    g = torch.Generator().manual_seed(1)
    s = [torch.rand(5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    f = sum(s) / 3
    out = hybrid_loss(*s, margin=0.2, coherence_weight=0.5, negatives="all",
                      coherence_reduction="per_item")
    # The sum over all negatives, written out.
    want_t = sum(max(0.0, 0.2 - f[i, i].item() + f[i, j].item())
                 + max(0.0, 0.2 - f[j, j].item() + f[i, j].item())
                 for i in range(5) for j in range(5) if i != j)
    assert out.alignment.item() == pytest.approx(want_t, rel=1e-12)
    assert out.total.item() == pytest.approx(want_t + 0.5 * coherence_term(*s).item() / 5,
                                             rel=1e-12)
    with pytest.raises(ValueError, match="negatives"):
        alignment_term(f, 0.2, negatives="some")


def test_sibling_weight_multiplies_each_weighted_hinge_in_both_directions():
    g = torch.Generator().manual_seed(2)
    f = torch.rand(5, 5, generator=g, dtype=torch.float64)
    w = torch.ones(5, 5, dtype=torch.float64)
    w[0, 1] = w[1, 0] = 10.0  # pairs 0 and 1 are siblings
    w[3, 4] = 0.0  # a weight of 0 drops a negative
    positive = torch.eye(5, dtype=torch.bool)
    positive[2, 3] = True
    want = sum(w[i, j].item() * (max(0.0, 0.2 - f[i, i].item() + f[i, j].item())
                                 + max(0.0, 0.2 - f[j, j].item() + f[i, j].item()))
               for i in range(5) for j in range(5) if not positive[i, j])
    got = alignment_term(f, 0.2, positive, negatives="all", negative_weight=w)
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert alignment_term(f, 0.2, positive, "all", torch.ones(5, 5, dtype=torch.float64)
                          ).item() == pytest.approx(alignment_term(f, 0.2, positive, "all").item(),
                                                    rel=1e-12)
    with pytest.raises(ValueError, match="needs negatives='all'"):
        alignment_term(f, 0.2, positive, "hardest", w)
    with pytest.raises(ValueError, match="negative_weight must be"):
        alignment_term(f, 0.2, positive, "all", w[:4])


def test_collate_weighs_exactly_the_pairs_of_one_group(tiny_words_h5):
    from cccl_lite.model.cccl import CCCLConfig
    from cccl_lite.engine.train import _Collate, make_reader

    t = SplitTruth(tiny_words_h5, "train")
    reader = make_reader(tiny_words_h5, "train", lite_vectors())
    # captions of the first two groups' images, and one of another group
    first = np.flatnonzero(np.isin(t.group[t.caption_image], np.unique(t.group)[:2]))[:8]
    other = np.flatnonzero(t.group[t.caption_image] == np.unique(t.group)[5])[:1]
    caps = np.concatenate([first, other])
    items = [(int(t.caption_image[k]), int(k)) for k in caps]
    batch = _Collate(reader, None, t.group, 7.0)(items)
    w = batch["negative_weight"]
    for a, (i, _) in enumerate(items):
        for b, (j, _) in enumerate(items):
            assert w[a, b].item() == (7.0 if t.group[i] == t.group[j] else 1.0)
    assert (w == 7.0).any() and (w == 1.0).any()
    assert "negative_weight" not in _Collate(reader)(items)


def test_sibling_weight_is_a_number_at_least_0():
    from cccl_lite.engine.recipes import Recipe

    assert Recipe(warmup_epochs=None, sibling_weight=5).sibling_weight == 5
    # After a warm-up it weighs the warm-up's sum only (the trainer passes no weight
    # to eq 33's hardest negatives): allowed.
    assert Recipe(warmup_epochs=1, sibling_weight=5).sibling_weight == 5
    for bad in (-1, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="sibling_weight: expected a nonnegative float"):
            Recipe(warmup_epochs=None, sibling_weight=bad)


def test_sibling_weight_reaches_the_sum_epochs_only(tiny_words_h5, tmp_path, monkeypatch):
    """A warm-up epoch (sum over negatives) gets the weights, eq 33's epoch none."""
    from cccl_lite.model.loss import HybridObjective
    from cccl_lite.engine.train import RunOptions, train

    from helpers import small

    seen = []
    real = HybridObjective.__call__

    def spy(self, scores, positive_mask=None, negatives="hardest", negative_weight=None):
        seen.append((negatives, None if negative_weight is None else negative_weight.max().item()))
        return real(self, scores, positive_mask, negatives, negative_weight)

    monkeypatch.setattr(HybridObjective, "__call__", spy)
    train(*small(epochs=2, warmup_epochs=1, sibling_weight=4.0, batching="siblings"),
          tiny_words_h5, tmp_path / "run", RunOptions(max_steps=2, quiet=True, device="cpu"))
    assert seen == [("all", 4.0), ("all", 4.0), ("hardest", None), ("hardest", None)]
