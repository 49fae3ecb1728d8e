"""CCCL as a whole: presets, ablation switches, all-pairs scoring, padding, gradients."""

import dataclasses

import pytest
import torch

from cccl_lite.model.cccl import (ABLATIONS, CCCL, CCCLConfig, ImageEncoding, TextEncoding,
                                  select_rows)
from cccl_lite.model.loss import HybridObjective
from cccl_lite.engine.recipes import PRESETS, Preset, Recipe

from helpers import make_batch, tiny_config


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return CCCL(cfg).double().eval()


def test_paper_preset_is_table_1():
    c, r = PRESETS["paper"]
    assert (c.region_dim, c.num_regions, c.word_dim, c.embed_dim, c.sim_dim) == (
        2048, 36, 768, 1024, 256)
    assert (r.margin, r.coherence_weight, r.batch_size, r.lr, r.epochs) == (
        0.2, 0.5, 128, 2e-4, 30)
    assert c.attention_temperature == 9.0
    assert r.lr_decay_epoch == 15  # Sec. 4.2: lr x 0.1 after 15 epochs (0-based epoch 15 on)
    lite, lite_recipe = PRESETS["lite"]
    assert lite.embed_dim < c.embed_dim and lite_recipe.batch_size < r.batch_size


def test_ablation_names_are_table_6():
    assert ABLATIONS == (
        "w/o V-CPC", "w/o T-CPC", "w/o CPC", "w/o POS", "w/o BERT", "w/o B-1",
        "w/o B-2", "w/o B-3", "w/o VSF", "w/o A-Pool", "w/o M-Pool", "w/o S-NLP",
        "w/o C-GRU", "w/o SC-loss", "w/o MLP")
    base = PRESETS["lite"]
    for name in ABLATIONS:
        ablated = base.with_ablation(name)
        assert ablated.model.ablation == name and ablated != base
    # "w/o SC-loss" is the recipe's λ 0; the others switch the model
    assert base.with_ablation("w/o SC-loss").recipe.coherence_weight == 0
    assert base.with_ablation("w/o POS").recipe == base.recipe
    with pytest.raises(ValueError, match="unknown ablation"):
        base.with_ablation("w/o everything")


def test_config_round_trips_through_dict():
    cfg = PRESETS["lite"].model.with_ablation("w/o POS")
    assert CCCLConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        CCCLConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("name", (None,) + ABLATIONS)
def test_all_pairs_equal_each_pair_alone(name):
    """Every (image, text) score equals that pair scored alone, unpadded."""
    cfg = tiny_config() if name is None else tiny_config().with_ablation(name)
    model, b = build(cfg), make_batch(cfg)
    f, scores = model(**b)
    n_img, n_txt = b["regions"].shape[0], b["words"].shape[0]
    assert f.shape == (n_img, n_txt)
    present = [s for s in scores if s is not None]
    assert all(s.shape == (n_img, n_txt) for s in present)
    assert torch.allclose(f, sum(present) / len(present))
    for i in range(n_img):
        n = int(b["region_mask"][i].sum())
        for j in range(n_txt):
            m = int(b["word_mask"][j].sum())
            f1, s1 = model(
                b["regions"][i:i + 1, :n], b["positions"][i:i + 1, :n],
                b["region_mask"][i:i + 1, :n], b["words"][j:j + 1, :m],
                b["word_mask"][j:j + 1, :m], b["word_adjacency"][j:j + 1, :m, :m])
            assert torch.allclose(f1[0, 0], f[i, j], atol=1e-10), (name, i, j)
            for s_all, s_one in zip(scores, s1):
                assert (s_all is None) == (s_one is None)
                if s_all is not None:
                    assert torch.allclose(s_one[0, 0], s_all[i, j], atol=1e-10)


def test_padding_never_changes_any_score():
    cfg = tiny_config()
    model, b = build(cfg), make_batch(cfg)
    f, _ = model(**b)
    g = torch.Generator().manual_seed(5)
    padded = dict(b)
    extra_r, extra_w = 3, 4
    padded["regions"] = torch.cat(
        [b["regions"], 1e3 * torch.randn(3, extra_r, cfg.region_dim, generator=g,
                                          dtype=torch.float64)], 1)
    padded["positions"] = torch.cat([b["positions"], torch.rand(3, extra_r, 6).double()], 1)
    padded["region_mask"] = torch.cat([b["region_mask"], torch.zeros(3, extra_r, dtype=bool)], 1)
    padded["words"] = torch.cat(
        [b["words"], 1e3 * torch.randn(4, extra_w, cfg.word_dim, generator=g,
                                        dtype=torch.float64)], 1)
    padded["word_mask"] = torch.cat([b["word_mask"], torch.zeros(4, extra_w, dtype=bool)], 1)
    m = b["words"].shape[1] + extra_w
    adj = torch.ones(4, m, m, dtype=torch.bool)  # arcs to padding must be ignored too
    adj[:, :m - extra_w, :m - extra_w] = b["word_adjacency"]
    padded["word_adjacency"] = adj
    # Garbage inside the *existing* padded slots as well.
    pad = ~padded["region_mask"]
    padded["regions"] = padded["regions"].masked_fill(pad[..., None], 7.0)
    f_pad, _ = model(**padded)
    assert torch.allclose(f, f_pad, atol=1e-10)


@pytest.mark.parametrize("name", (None,) + ABLATIONS)
def test_gradients_reach_every_parameter(name):
    cfg = tiny_config() if name is None else tiny_config().with_ablation(name)
    model, b = build(cfg), make_batch(cfg, n_img=4, n_txt=4)
    model.train()
    _, scores = model(**b)
    HybridObjective()(scores).total.backward()
    for pname, p in model.named_parameters():
        if pname == "textual.words.embed.weight":
            continue  # row 0 is padding; others checked below
        assert p.grad is not None, (name, pname)
        assert p.grad.abs().sum() > 0, (name, pname)
    if not cfg.use_bert:
        used = b["words"].unique()
        grad_rows = model.textual.words.embed.weight.grad.abs().sum(1)
        assert (grad_rows[used[used > 0]] > 0).all()


def _scores(cfg, b, **changes):
    """The three similarity vectors, concatenated: (B_i, B_t, 3P).

    Compared before the MLP, whose ReLUs may be dead for tiny random inputs.
    """
    model, b = build(cfg), {**b, **changes}
    img = model.encode_images(b["regions"], b["positions"], b["region_mask"])
    txt = model.encode_texts(b["words"], b["word_mask"], b["word_adjacency"])
    return torch.cat(model.similarity_vectors(img, txt), dim=-1)


def differ(a, b):
    """Scores at initialisation sit close together: compare at float64 precision."""
    return (a - b).abs().max() > 1e-9


def test_position_matters_only_with_position():
    b = make_batch(tiny_config())
    moved = {"positions": torch.rand_like(b["positions"])}
    full = tiny_config()
    assert differ(_scores(full, b), _scores(full, b, **moved))
    ablated = full.with_ablation("w/o POS")
    assert torch.allclose(_scores(ablated, b), _scores(ablated, b, **moved))
    assert torch.allclose(_scores(ablated, b), _scores(ablated, b, positions=None))


def test_syntax_matters_only_with_syntax():
    b = make_batch(tiny_config())
    full_graph = {"word_adjacency": torch.ones_like(b["word_adjacency"])}
    full = tiny_config()
    assert differ(_scores(full, b), _scores(full, b, **full_graph))
    ablated = full.with_ablation("w/o S-NLP")
    assert torch.allclose(_scores(ablated, b), _scores(ablated, b, **full_graph))
    # "w/o S-NLP" with any adjacency equals the full model given the full graph.
    assert torch.allclose(_scores(ablated, b), _scores(full, b, **full_graph))


def test_cpc_switches_remove_the_cell():
    for name, vis, txt in [("w/o V-CPC", False, True), ("w/o T-CPC", True, False),
                           ("w/o CPC", False, False)]:
        model = build(tiny_config().with_ablation(name))
        assert (model.visual.cpc is not None) == vis
        assert (model.textual.cpc is not None) == txt


def test_branch_switches_drop_the_branch_score():
    b = make_batch(tiny_config())
    for k, name in enumerate(["w/o B-1", "w/o B-2", "w/o B-3"]):
        model = build(tiny_config().with_ablation(name))
        f, scores = model(**b)
        assert scores[k] is None
        others = [s for s in scores if s is not None]
        assert len(others) == 2 and torch.allclose(f, (others[0] + others[1]) / 2)
    assert not hasattr(build(tiny_config().with_ablation("w/o B-3")), "visual_gru")


def test_without_cross_gru_the_relation_vectors_ignore_the_other_item():
    b = make_batch(tiny_config())
    model = build(tiny_config().with_ablation("w/o C-GRU"))
    img = model.encode_images(b["regions"], b["positions"], b["region_mask"])
    txt = model.encode_texts(b["words"], b["word_mask"], b["word_adjacency"])
    v_r, t_r = model.relation_vectors(img, txt)
    assert v_r.shape[1] == 1 and t_r.shape[0] == 1
    full = build(tiny_config())
    v_r, t_r = full.relation_vectors(
        full.encode_images(b["regions"], b["positions"], b["region_mask"]),
        full.encode_texts(b["words"], b["word_mask"], b["word_adjacency"]))
    # With the cross vector first, image 0's v^R differs from text to text.
    assert differ(v_r[0, 0], v_r[0, 1])


@pytest.mark.parametrize("name,use_max,use_avg", [
    (None, True, True), ("w/o A-Pool", True, False), ("w/o M-Pool", False, True)])
def test_pooling_switches(name, use_max, use_avg):
    cfg = tiny_config() if name is None else tiny_config().with_ablation(name)
    model, b = build(cfg), make_batch(cfg)
    img = model.encode_images(b["regions"], b["positions"], b["region_mask"])
    v, mask = img.v, b["region_mask"]
    expected = []
    for i in range(v.shape[0]):
        rows = v[i, mask[i]]
        pooled = 0
        if use_max:
            pooled = pooled + rows.max(0).values
        if use_avg:
            pooled = pooled + rows.mean(0)
        expected.append(model.global_branch.image_fc(pooled))
    assert torch.allclose(img.global_vec, torch.stack(expected))


def test_vsf_and_mlp_switches():
    b = make_batch(tiny_config())
    model = build(tiny_config().with_ablation("w/o VSF"))
    img = model.encode_images(b["regions"], b["positions"], b["region_mask"])
    txt = model.encode_texts(b["words"], b["word_mask"], b["word_adjacency"])
    sims = model.similarity_vectors(img, txt)
    assert all(s.shape[-1] == 1 for s in sims)
    # sim^S is the cosine of v^S and t^S.
    cos = torch.nn.functional.cosine_similarity(
        img.global_vec[:, None], txt.global_vec[None], dim=-1)
    assert torch.allclose(sims[0][..., 0], cos)
    no_mlp = build(tiny_config().with_ablation("w/o MLP"))
    linears = [mod for mod in no_mlp.mlp.modules() if isinstance(mod, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].out_features == 1


def test_without_coherence_the_loss_is_the_alignment_term():
    b = make_batch(tiny_config(), n_img=4, n_txt=4)
    config, recipe = Preset(tiny_config(), Recipe()).with_ablation("w/o SC-loss")
    model = build(config)
    loss = recipe.objective()(model(**b)[1])
    assert loss.coherence > 0 and torch.equal(loss.total, loss.alignment)
    full = build(tiny_config())
    loss = Recipe().objective()(full(**b)[1])
    assert torch.allclose(loss.total, loss.alignment + 0.5 * loss.coherence)


def test_without_bert_words_are_ids():
    cfg = tiny_config().with_ablation("w/o BERT")
    model, b = build(cfg), make_batch(cfg)
    assert model(**b)[0].shape == (3, 4)
    with pytest.raises(ValueError, match="word ids"):
        model(**{**b, "words": torch.randn(4, 6, cfg.word_dim, dtype=torch.float64)})
    with pytest.raises(ValueError, match="vocab_size"):
        CCCL(dataclasses.replace(cfg, vocab_size=0))


def test_missing_adjacency_is_an_error_not_a_full_graph():
    cfg = tiny_config()
    model, b = build(cfg), make_batch(cfg)
    with pytest.raises(ValueError, match="word_adjacency"):
        model(**{**b, "word_adjacency": None})


def test_select_rows_hand_case():
    """Rows by index (copies) and by slice (views), sequence fields cut to a length."""
    v = torch.arange(3 * 4 * 2, dtype=torch.float64).view(3, 4, 2)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    glob = torch.tensor([[10.0], [11.0], [12.0]])
    enc = ImageEncoding(v, mask, glob, None, cross_state=glob * 2)
    got = select_rows(enc, torch.tensor([2, 0]), length=2)
    assert type(got) is ImageEncoding and got.graph is None and got.relation is None
    assert got.v.tolist() == [[[16.0, 17.0], [18.0, 19.0]], [[0.0, 1.0], [2.0, 3.0]]]
    assert got.mask.tolist() == [[True, False], [True, True]]
    assert got.global_vec.tolist() == [[12.0], [10.0]]  # not a sequence: only rows
    assert got.cross_state.tolist() == [[24.0], [20.0]]
    view = select_rows(TextEncoding(v, mask, glob, v), slice(1, 3))
    assert type(view) is TextEncoding and view.t.shape == (2, 4, 2)
    assert view.t.data_ptr() == v[1].data_ptr()  # a view, not a copy
    assert view.graph.tolist() == v[1:].tolist() and view.mask.tolist() == mask[1:].tolist()
