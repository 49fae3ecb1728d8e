"""cccl_lite.book.visualize (chapter 8) against hand computations.

Fig 6's rank-to-score map and pixel sums are checked on hand-worked cases and
a brute-force loop; v̂_i · v^R against ``torch.nn.GRU`` run on each pair's
unpadded sequence [t^S, v̂_1, ..., v̂_n]; Branch 2's attention against eq 17
written out with loops; caption truth against hand-made scenes and the
generator's own guarantees.
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import lite_vectors
from cccl_lite.data.synthetic import SIZES, Caption, NounPhrase, build_caption, split_content
from cccl_lite.model.cccl import CCCL, CCCLConfig
from cccl_lite.model.perceive import position_features
from cccl_lite.book.visualize import (FIG6_MU, caption_region_attention, caption_true_of,
                                      named_objects, parse_caption, pixel_attention, rank_scores,
                                      regions_showing, relation_similarity, truth_matrix,
                                      word_region_attention)

TOL = dict(atol=1e-10, rtol=1e-10)


# ---- Fig 6: ranks to scores ------------------------------------------------


def test_rank_scores_hand_case():
    # ranks 2, 1, 3 of n = 3: 100·1², 100·2², 100·0²
    got = rank_scores(torch.tensor([0.3, 0.9, 0.1]))
    assert got.tolist() == [100.0, 400.0, 0.0]
    assert FIG6_MU == 100.0


def test_rank_scores_ignores_padding_and_counts_valid_regions_only():
    # The padded 5.0 would rank first if it counted; n = 3 valid regions.
    got = rank_scores(torch.tensor([[0.3, 0.9, 0.1, 5.0]]),
                      torch.tensor([[True, True, True, False]]))
    assert got.tolist() == [[100.0, 400.0, 0.0, 0.0]]


def test_rank_scores_ties_rank_in_index_order_and_mu_scales():
    assert rank_scores(torch.tensor([0.5, 0.5, 0.2])).tolist() == [400.0, 100.0, 0.0]
    assert rank_scores(np.array([0.5, 0.5, 0.2]), mu=1.0).tolist() == [4.0, 1.0, 0.0]
    assert rank_scores(torch.tensor([2, 7])).tolist() == [0.0, 100.0]  # ints work too


def test_rank_scores_paper_size():
    # n = 36 as in the paper: the top region scores 100 · 35².
    sims = torch.linspace(1, 0, 36)
    got = rank_scores(sims)
    assert got[0] == 100 * 35**2 and got[-1] == 0 and got[1] == 100 * 34**2


def test_rank_scores_brute_force_on_random_rows():
    g = torch.Generator().manual_seed(0)
    sims = torch.randint(0, 4, (3, 5, 7), generator=g).double()  # many ties
    mask = torch.rand(3, 5, 7, generator=g) > 0.3
    got = rank_scores(sims, mask, mu=2.5)
    want = torch.zeros_like(sims)
    for a in range(3):
        for b in range(5):
            valid = [i for i in range(7) if mask[a, b, i]]
            order = sorted(valid, key=lambda i: (-float(sims[a, b, i]), i))
            for rank, i in enumerate(order, start=1):
                want[a, b, i] = 2.5 * (len(valid) - rank) ** 2
    torch.testing.assert_close(got, want, **TOL)


def test_rank_scores_errors():
    with pytest.raises(ValueError, match="same shape"):
        rank_scores(torch.zeros(2, 3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        rank_scores(torch.tensor([0.1, float("nan")]))
    # NaN where the region is padded is fine.
    assert rank_scores(torch.tensor([0.1, float("nan")]),
                       torch.tensor([True, False])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="region axis"):
        rank_scores(torch.tensor(1.0))


# ---- Fig 6: pixels ----------------------------------------------------------


def test_pixel_attention_hand_case():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0],     # covers pixel centres x, y in {0.5, 1.5}
                          [1.0, 1.0, 5.0, 3.0],     # x in 1.5..4.5, y in {1.5, 2.5}
                          [0.5, 3.5, 0.5, 3.5],     # exactly the centre of pixel (0, 3)
                          [0.0, 0.0, 0.0, 0.0]])    # padding, score 0
    scores = torch.tensor([3.0, 10.0, 1.0, 0.0])
    want = torch.tensor([[3, 3, 0, 0, 0],
                         [3, 13, 10, 10, 10],
                         [0, 10, 10, 10, 10],
                         [1, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(pixel_attention(boxes, scores, height=4, width=5), want)


def test_pixel_attention_batches_and_checks_shapes():
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[1.0, 0.0, 2.0, 1.0]]])  # (2, 1, 4)
    got = pixel_attention(boxes, torch.tensor([[2.0], [5.0]]), height=1, width=2)
    assert got.tolist() == [[[2.0, 0.0]], [[0.0, 5.0]]]
    with pytest.raises(ValueError, match="boxes"):
        pixel_attention(torch.zeros(3, 4), torch.zeros(2), 2, 2)


# ---- a pair's vectors and attention ----------------------------------------


def tiny_model(ablation=None):
    cfg = lite_vectors(region_dim=10, word_dim=8, embed_dim=6, sim_dim=12)
    if ablation:
        cfg = cfg.with_ablation(ablation)
    torch.manual_seed(0)
    return CCCL(cfg).double().eval()


def tiny_batch(cfg, n_img=2, n_txt=3, n=5, m=6):
    g = torch.Generator().manual_seed(1)
    regions = torch.randn(n_img, n, cfg.region_dim, generator=g, dtype=torch.float64)
    xy = torch.rand(n_img, n, 2, generator=g) * 50
    wh = torch.rand(n_img, n, 2, generator=g) * 50 + 1
    positions = position_features(torch.cat([xy, xy + wh], -1), torch.full((n_img, 2), 100.0))
    region_mask = torch.arange(n)[None] < torch.tensor([n, 3])[:n_img, None]
    word_mask = torch.arange(m)[None] < torch.tensor([m, 2, 4])[:n_txt, None]
    words = torch.randn(n_txt, m, cfg.word_dim, generator=g, dtype=torch.float64)
    adjacency = torch.zeros(n_txt, m, m, dtype=torch.bool)
    for b in range(n_txt):
        for k in range(int(word_mask[b].sum()) - 1):
            adjacency[b, k, k + 1] = adjacency[b, k + 1, k] = True
    return dict(regions=regions, positions=positions.double(), region_mask=region_mask,
                words=words, word_mask=word_mask, word_adjacency=adjacency)


def encode(model, batch):
    with torch.no_grad():
        img = model.encode_images(batch["regions"], batch["positions"], batch["region_mask"])
        txt = model.encode_texts(batch["words"], batch["word_mask"], batch["word_adjacency"])
    return img, txt


def test_relation_similarity_is_v_hat_dot_gru_state():
    model = tiny_model()
    batch = tiny_batch(model.config)
    img, txt = encode(model, batch)
    got = relation_similarity(model, img, txt)
    gru = nn.GRU(6, 6, batch_first=True).double()
    cell = model.visual_gru.cell
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, f"{name}_l0").copy_(getattr(cell, name))
    want = torch.zeros(2, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        for i in range(2):
            n_i = int(batch["region_mask"][i].sum())
            v_hat = img.graph[i, :n_i]
            for j in range(3):
                seq = torch.cat([txt.global_vec[j][None], v_hat])[None]  # [t^S, v̂_1..v̂_n]
                _, h = gru(seq)
                v_r = h[0, 0]
                for r in range(n_i):
                    want[i, j, r] = float(v_hat[r] @ v_r)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_relation_similarity_without_cross_gru_is_one_map_per_image():
    model = tiny_model("w/o C-GRU")
    img, txt = encode(model, tiny_batch(model.config))
    got = relation_similarity(model, img, txt)
    assert got.shape == (2, 3, 5)
    torch.testing.assert_close(got[:, 0], got[:, 2], **TOL)


def test_relation_similarity_errors():
    model = tiny_model()
    img, txt = encode(model, tiny_batch(model.config))
    with pytest.raises(ValueError, match="keep_graph"):
        relation_similarity(model, img._replace(graph=None), txt)
    no_b3 = tiny_model("w/o B-3")
    img, txt = encode(no_b3, tiny_batch(no_b3.config))
    with pytest.raises(ValueError, match="Branch 3"):
        relation_similarity(no_b3, img, txt)


def test_word_region_attention_is_eq_17_by_loops():
    model = tiny_model()
    batch = tiny_batch(model.config)
    img, txt = encode(model, batch)
    got = word_region_attention(model, img, txt)
    lam = model.config.attention_temperature
    assert got.shape == (2, 3, 6, 5)
    want = np.zeros((2, 3, 6, 5))
    for i in range(2):
        n_i = int(batch["region_mask"][i].sum())
        V = img.v[i, :n_i].numpy()
        for j in range(3):
            m_j = int(batch["word_mask"][j].sum())
            T = txt.t[j, :m_j].numpy()
            M = np.array([[T[w] @ V[r] / (np.linalg.norm(T[w]) * np.linalg.norm(V[r]))
                           for r in range(n_i)] for w in range(m_j)])
            M = np.maximum(M, 0)
            # l2-normalised over the words (the query axis), per region
            M = M / np.maximum(np.sqrt((M ** 2).sum(0, keepdims=True)), 1e-8)
            for w in range(m_j):
                e = [math.exp(lam * M[w, r]) for r in range(n_i)]
                want[i, j, w, :n_i] = np.array(e) / sum(e)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    mean = caption_region_attention(model, img, txt)
    for j, m_j in enumerate((6, 2, 4)):
        np.testing.assert_allclose(mean[:, j].numpy(), want[:, j, :m_j].mean(1), atol=1e-10)


def test_word_region_attention_needs_branch_2():
    model = tiny_model("w/o B-2")
    img, txt = encode(model, tiny_batch(model.config))
    with pytest.raises(ValueError, match="Branch 2"):
        word_region_attention(model, img, txt)


# ---- ground truth of the synthetic scenes ----------------------------------

CAPTIONS = [
    Caption("single", (NounPhrase("a", "circle", "red", "small"),)),
    Caption("conjunction", (NounPhrase("a", "circle", "red"), NounPhrase("a", "square", "orange"))),
    Caption("relation", (NounPhrase("a", "cross", "blue"), NounPhrase("the", None, "green")),
            "left of"),
    Caption("relation", (NounPhrase("a", "diamond"), NounPhrase("a", "triangle", None, "large")),
            "below"),
    Caption("copula", (NounPhrase("the", "circle", "red"), NounPhrase("the", "square")), "above"),
    Caption("copula", (NounPhrase("the", "circle"), NounPhrase("the", "square")), "right of"),
    Caption("existential", (NounPhrase("a", "circle"), NounPhrase("a", "square", "yellow")),
            "above"),
    Caption("count", (NounPhrase(2, "cross"),)),
    Caption("count_conjunction", (NounPhrase(3, None), NounPhrase("a", "square", "blue"))),
    Caption("existential_count", (NounPhrase(2, None, None, "large"),)),
]


@pytest.mark.parametrize("caption", CAPTIONS, ids=lambda c: c.kind)
def test_parse_caption_inverts_build_caption(caption):
    words, _ = build_caption(caption.kind, caption.nps, caption.rel)
    assert parse_caption(words, caption.kind) == caption
    assert parse_caption(" ".join(words), caption.kind) == caption


def test_parse_caption_hand_strings_and_errors():
    assert " ".join(build_caption(CAPTIONS[-1].kind, CAPTIONS[-1].nps)[0]) == \
        "there are two large shapes"
    assert parse_caption("an orange square", "single") == \
        Caption("single", (NounPhrase("a", "square", "orange"),))
    with pytest.raises(ValueError, match="'a red dog'"):
        parse_caption("a red dog", "single")
    with pytest.raises(ValueError, match="end of the caption"):
        parse_caption("a red circle and", "single")
    with pytest.raises(ValueError, match="unknown caption kind"):
        parse_caption("a red circle", "haiku")


# Canvas 96, cells of 32 px: (row, column) = (0, 0), (0, 2), (2, 0).
SCENE = [
    {"shape": "circle", "colour": "red", "size": "small", "box": [9.0, 9.0, 23.0, 23.0]},
    {"shape": "square", "colour": "blue", "size": "large", "box": [68.0, 4.0, 92.0, 28.0]},
    {"shape": "circle", "colour": "green", "size": "small", "box": [9.0, 73.0, 23.0, 87.0]},
]


@pytest.mark.parametrize("tokens, kind, true", [
    ("a red circle left of a blue square", "relation", True),
    ("a blue square left of a red circle", "relation", False),
    ("the red circle is above the green circle", "copula", True),
    ("the green circle is above the red circle", "copula", False),
    ("the small circle is left of the blue square", "copula", False),  # two small circles
    ("two circles", "count", True),
    ("three shapes", "count", True),
    ("two shapes", "count", False),                                    # counts are exact
    ("a red square", "single", False),
    ("there is a green circle below a red circle", "existential", True),
    ("a red circle and a green circle", "conjunction", True),
    ("a red circle and a red circle", "conjunction", False),           # two distinct objects
    ("two circles and a blue square", "count_conjunction", True),
])
def test_caption_true_of_hand_scene(tokens, kind, true):
    assert caption_true_of(tokens, kind, SCENE, canvas=96) is true


def test_truth_matrix_hand_table():
    # The second scene swaps the red circle and the blue square.
    swapped = [dict(SCENE[0], box=SCENE[1]["box"]), dict(SCENE[1], box=SCENE[0]["box"]), SCENE[2]]
    tokens = ["a red circle left of a blue square", "two circles",
              "a blue square right of a green circle"]
    kinds = ["relation", "count", "relation"]
    want = np.array([[True, True, True],      # blue square in cell (0, 2), green circle (2, 0)
                     [False, True, False]])   # blue square now in (0, 0): same column
    assert np.array_equal(truth_matrix(tokens, kinds, [SCENE, swapped], canvas=96), want)
    with pytest.raises(ValueError, match="kinds"):
        truth_matrix(tokens, kinds[:2], [SCENE], canvas=96)


def test_caption_truth_on_generated_scenes():
    """The generator's guarantees, checked from the stored fields only (scene
    JSON without cells): every caption is true of its own image; a base's binding
    captions are false of its binding variant, its relation captions of its
    relation variant."""
    spec = SIZES["tiny"]
    c = split_content(spec, seed=0, split="test")
    stored = [json.loads(json.dumps([{k: o[k] for k in ("shape", "colour", "size", "box")}
                                     for o in s])) for s in c["scenes"]]
    checked = 0
    for k, (tokens, kind, i) in enumerate(zip(c["tokens"], c["kind"], c["image"])):
        assert caption_true_of(tokens, kind, stored[i], spec.canvas), (k, tokens)
        if c["variants"][i] != "base":
            continue
        cap = parse_caption(tokens, kind)
        for j, variant in enumerate(c["variants"]):
            if c["groups"][j] != c["groups"][i]:
                continue
            if (variant == "binding" and cap.binds) or (variant == "relation" and cap.rel):
                assert not caption_true_of(tokens, kind, stored[j], spec.canvas), (k, tokens, j)
                checked += 1
    assert checked > 5


def test_named_objects_and_regions_showing():
    assert named_objects("a red circle left of a blue square", "relation", SCENE) == [0, 1]
    assert named_objects("two circles", "count", SCENE) == [0, 2]
    assert named_objects("three shapes", "count", SCENE) == [0, 1, 2]
    scene = [{"box": [10.0, 10.0, 20.0, 20.0]}, {"box": [30.0, 30.0, 40.0, 40.0]}]  # areas 100
    boxes = np.array([[0, 0, 15, 20],     # half of object 0 (50 of 100): shows it
                      [0, 0, 14, 20],     # 40 of 100: does not
                      [5, 5, 45, 45],     # both objects whole
                      [0, 0, 0, 0]])      # padding
    want = np.array([[True, False], [False, False], [True, True], [False, False]])
    assert np.array_equal(regions_showing(boxes, scene), want)
    assert regions_showing(boxes, scene, min_cover=0.4)[1, 0]
