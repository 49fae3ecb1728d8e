"""cccl_lite.studies.probes: hand cases and independent computations."""

import types

import numpy as np
import pytest
import torch

from cccl_lite.model.perceive import VisualEmbedding
from cccl_lite.studies.probes import SIDES, linear_probe_accuracy, noun_sides, position_share


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


CAPTIONS = [("a red circle left of a blue square", "relation"),
            ("the green cross is above the red circle", "copula"),
            ("a yellow circle", "single"),
            ("a blue square right of a red circle", "relation"),
            ("there is a cross below a large green square", "existential")]
# Hand-read sides of the nouns (word index -> side) of CAPTIONS.
HAND = [{2: "left", 7: "right"}, {2: "above", 7: "below"}, {},
        {2: "right", 7: "left"}, {3: "below", 8: "above"}]


class _CaptionReader:
    def __init__(self, path, words_of):
        self.path, self.split = path, "train"
        self.tokens = [t.split(" ") for t, _ in CAPTIONS] * 20
        self.n_captions = len(self.tokens)
        self._words_of = words_of

    def captions(self, idx):
        m = max(len(self.tokens[k]) for k in idx)
        words = torch.zeros(len(idx), m, 4)
        for b, k in enumerate(idx):
            for i in range(len(self.tokens[k])):
                words[b, i] = self._words_of(k, i)
        return dict(words=words, word_mask=words.abs().sum(-1) > -1, word_adjacency=None)


def _caption_file(tmp_path):
    import h5py
    path = tmp_path / "caps.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train/captions/kind", data=[k for _, k in CAPTIONS] * 20)
    return path


def test_encoded_side_probe_reads_what_the_encoder_kept(tmp_path):
    from cccl_lite.studies.probes import encoded_side_probe
    path = _caption_file(tmp_path)
    identity = types.SimpleNamespace(training=False, eval=lambda: None, train=lambda w: None,
                                     encode_texts=lambda w, m, a: types.SimpleNamespace(t=w))
    rng = torch.Generator().manual_seed(0)

    def keeps_side(k, i):  # a one-hot of the hand-read side, plus noise
        v = 0.1 * torch.randn(4, generator=rng)
        side = HAND[k % len(CAPTIONS)].get(i)
        if side is not None:
            v[SIDES.index(side)] += 1.0
        return v
    got = encoded_side_probe(identity, _CaptionReader(path, keeps_side),
                             _CaptionReader(path, keeps_side))
    assert got["nouns"] == (160, 160) and got["test"] > 99
    lost = encoded_side_probe(identity, _CaptionReader(path, lambda k, i: torch.randn(4, generator=rng)),
                              _CaptionReader(path, lambda k, i: torch.randn(4, generator=rng)))
    assert lost["test"] < 60


class _BoxReader:
    def __init__(self, n=40, regions=3, seed=0):
        g = np.random.default_rng(seed)
        xy = g.uniform(0, 80, size=(n, regions, 2))
        self.boxes = np.concatenate([xy, xy + 10], axis=-1).astype(np.float32)
        self.size = np.full((n, 2), 100.0, dtype=np.float32)
        self.n_images = n

    def images(self, idx):
        b = torch.from_numpy(self.boxes[idx])
        return dict(regions=b, positions=None, region_mask=torch.ones(b.shape[:2], dtype=torch.bool))


def test_region_position_r2_one_for_centres_zero_for_noise():
    from cccl_lite.studies.probes import region_position_r2
    reader = _BoxReader()

    def model_of(encode):
        return types.SimpleNamespace(training=False, eval=lambda: None, train=lambda w: None,
                                     encode_images=lambda r, p, m: types.SimpleNamespace(v=encode(r)))
    # v = 3 * centre + 1, written from the boxes by hand: a line reads it exactly.
    centres = lambda r: torch.stack([3 * (r[..., 0] + 5) / 100 + 1, 3 * (r[..., 1] + 5) / 100 + 1,
                                     torch.zeros_like(r[..., 0])], -1)
    got = region_position_r2(model_of(centres), reader, batch_size=7)
    assert got["x"] == pytest.approx(1.0, abs=1e-6) and got["y"] == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    noise = region_position_r2(model_of(lambda r: torch.randn(*r.shape[:2], 2, generator=g)), reader)
    assert noise["x"] < 0.1 and noise["y"] < 0.1


def test_word_side_probe_projection_keeps_only_what_the_projection_passes(tmp_path, monkeypatch):
    """A side written in one input dimension: read in full, and lost by a
    projection that (by construction) has a zero column for that dimension."""
    import cccl_lite.studies.probes as probes
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=400)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    x[:, 0] = y  # the side, in dimension 0 only
    monkeypatch.setattr(probes, "_noun_rows", lambda path, split: (x[:300], y[:300])
                        if split == "train" else (x[300:], y[300:]))
    assert probes.word_side_probe("unused")["test"] > 95
    real_uniform = torch.Tensor.uniform_

    def no_dim0(t, a, b, generator=None):
        real_uniform(t, a, b, generator=generator)
        if t.dim() == 2 and t.shape[1] == x.shape[1]:  # the projection, not the probe's Linear
            t[:, 0] = 0.0
        return t
    monkeypatch.setattr(torch.Tensor, "uniform_", no_dim0)
    assert probes.word_side_probe("unused", project=4)["test"] < 45


@pytest.mark.parametrize("oracle", ["side", "centre", "side+centre"])
def test_write_oracle_appends_the_halves(tiny_words_h5, tmp_path, oracle):
    import h5py
    from cccl_lite.studies.probes import write_oracle
    dst = write_oracle(tiny_words_h5, tmp_path / "oracle.h5", oracle)
    assert [p.name for p in tmp_path.iterdir()] == ["oracle.h5"]  # no temp file left
    shapes = {"circle", "square", "triangle", "diamond", "cross"}
    sides = {"left of": ("left", "right"), "right of": ("right", "left"),
             "above": ("above", "below"), "below": ("below", "above")}
    with h5py.File(tiny_words_h5, "r") as f, h5py.File(dst, "r") as g:
        for split in f:
            a, b = f[split]["captions"], g[split]["captions"]
            old, new = a["word_vectors"][:], b["word_vectors"][:]
            if oracle == "centre":
                assert np.array_equal(new, old)
            else:
                assert new.shape == (old.shape[0], old.shape[1] + 4)
                assert np.array_equal(new[:, :-4], old)
                offsets = a["word_offsets"][:]
                marked = 0
                for k, text in enumerate(a["tokens"].asstr()[:]):
                    words = text.split(" ")
                    rel = next((r for r in sides if f" {r} " in f" {text} "), None)
                    nouns = [i for i, w in enumerate(words)
                             if w.rstrip("es").rstrip("s") in shapes
                             or w in shapes or w in ("shape", "shapes")]
                    want = np.zeros((len(words), 4))
                    if rel is not None:
                        for i, side in zip(nouns, sides[rel]):
                            want[i, SIDES.index(side)] = 1.0
                    got = new[offsets[k]:offsets[k + 1], -4:].astype(np.float64)
                    assert np.array_equal(got > 0, want > 0), text
                    marked += int(want.sum())
                assert marked > 0
            fa, fb = f[split]["images/features"][:], g[split]["images/features"][:]
            if oracle == "side":
                assert np.array_equal(fa, fb)
                continue
            assert np.array_equal(fb[..., :-2], fa)
            boxes, size, mask = (f[split][f"images/{n}"][:] for n in ("boxes", "size", "region_mask"))
            i, r = np.argwhere(mask)[0]
            cx = (boxes[i, r, 0] + boxes[i, r, 2]) / 2 / size[i, 0] - 0.5
            cy = (boxes[i, r, 1] + boxes[i, r, 3]) / 2 / size[i, 1] - 0.5
            ratio = fb[i, r, -1].astype(np.float64) / fb[i, r, -2]
            assert ratio == pytest.approx(cy / cx, rel=1e-2)
            assert not fb[~mask][:, -2:].any()


# ---- asking for relations directly (fit_sibling_pairs) ---------------------------


def test_pair_accuracy_by_hand():
    from cccl_lite.studies.probes import pair_accuracy
    t = torch.tensor
    own = (t([1.0, 0.0, 2.0, 5.0]), (t([1.0, 1.0, 1.0, 1.0]), None, t([3.0, 0.0, 0.0, 0.0])))
    other = (t([0.0, 1.0, 2.0, 4.0]), (t([0.0, 0.0, 0.0, 2.0]), None, t([0.0, 0.0, 0.0, 0.0])))
    # F: wins on pairs 0 and 3, pair 2 ties (a failure); S: 3 of 4; R: 1 of 4.
    assert pair_accuracy(own, other) == {"F": 50.0, "S": 75.0, "R": 25.0}


def _tiny_model_and_reader(path, seed=0):
    from cccl_lite.engine.checkpoint import make_reader
    from cccl_lite.model.cccl import CCCL
    from helpers import synthetic_config

    torch.manual_seed(seed)
    config = synthetic_config()
    return CCCL(config).eval(), make_reader(path, "train", config, None)


@pytest.mark.usefixtures("single_thread")
def test_sibling_pair_scores_match_the_full_grid(tiny_words_h5):
    """Each pair's scores equal the entries of CCCL.forward's all-pairs grid."""
    from cccl_lite.studies.probes import sibling_pair_scores
    model, reader = _tiny_model_and_reader(tiny_words_h5)
    pairs = np.array([[0, 1], [5, 0], [7, 3]])
    with torch.no_grad():
        own, other = sibling_pair_scores(model, reader, pairs)
    for p, (k, j) in enumerate(pairs):
        cap = reader.captions(np.array([k]))
        for img_id, got in ((reader.caption_image[k], own), (j, other)):
            img = reader.images(np.array([img_id]))
            with torch.no_grad():
                f, branches = model(img["regions"], img["positions"], img["region_mask"],
                                    cap["words"], cap["word_mask"], cap["word_adjacency"])
            assert float(got[0][p]) == pytest.approx(float(f[0, 0]), abs=1e-5)
            for want, have in zip(branches, got[1]):
                assert float(have[p]) == pytest.approx(float(want[0, 0]), abs=1e-5)


@pytest.mark.usefixtures("single_thread")
def test_fit_sibling_pairs_lowers_its_hinge_and_lr_zero_changes_nothing(tiny_words_h5):
    from cccl_lite.studies.probes import fit_sibling_pairs, sibling_pair_scores
    pairs = np.array([[0, 1], [5, 0], [7, 3], [2, 4]])

    def hinge(model, reader):
        with torch.no_grad():
            own, other = sibling_pair_scores(model, reader, pairs)
        return float((0.2 - own[0] + other[0]).clamp(min=0).mean())

    model, reader = _tiny_model_and_reader(tiny_words_h5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curve = fit_sibling_pairs(model, (reader, pairs), (reader, pairs), steps=4, lr=0.0,
                              every=2)
    assert [c["step"] for c in curve] == [0, 2, 4]
    assert all(c["train"] == curve[0]["train"] == c["test"] for c in curve)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    start = hinge(model, reader)
    assert start > 0.05  # an untrained model: something to fit
    fit_sibling_pairs(model, (reader, pairs), (reader, pairs), steps=40, lr=1e-2, every=40,
                      batch_size=len(pairs))
    assert hinge(model, reader) < 0.5 * start
