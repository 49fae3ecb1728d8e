"""The synthetic scenes (cccl_lite.data.synthetic), checked against independent
computations: captions are parsed and evaluated here from the words and the
scene JSON alone (relations from the boxes, not from the generator's grid),
heads are re-derived from the documented analysis, features are compared
with hand-computed ones."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from cccl_lite.data.schema import SPLITS, check_file
from cccl_lite.data.synthetic import (COLOURS, KINDS, SIZES, NounPhrase, SceneSpec,
                                      SyntheticFeatures, appearance_tables, build_caption,
                                      make_synthetic, region_features, render_scene)

ROOT = Path(__file__).resolve().parent.parent
SHAPE_WORDS = {"circle": "circle", "square": "square", "triangle": "triangle",
               "diamond": "diamond", "cross": "cross", "circles": "circle", "squares": "square",
               "triangles": "triangle", "diamonds": "diamond", "crosses": "cross",
               "shape": None, "shapes": None}
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5}
SIZE_WORDS = {"small", "large"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "tiny.h5", seed=0, size="tiny")


def read_split(path: Path, split: str) -> dict:
    with h5py.File(path, "r") as f:
        g = f[split]
        return {
            "scenes": [json.loads(s) for s in g["images/scene"].asstr()[:]],
            "variant": list(g["images/variant"].asstr()[:]),
            "group": g["images/group"][:],
            "boxes": g["images/boxes"][:],
            "mask": g["images/region_mask"][:],
            "features": g["images/features"][:],
            "pixels": g["images/pixels"][:] if "pixels" in g["images"] else None,
            "tokens": list(g["captions/tokens"].asstr()[:]),
            "text": list(g["captions/text"].asstr()[:]),
            "heads": [list(h) for h in g["captions/heads"][:]],
            "kind": list(g["captions/kind"].asstr()[:]),
            "image": g["captions/image"][:],
        }


# --------------------------------------------------------------------------
# an independent reader of the caption grammar
# --------------------------------------------------------------------------


def parse_np(words: list[str], i: int) -> tuple[dict, int]:
    """det [size] [colour] noun starting at i -> (phrase, index after it)."""
    det = words[i]
    assert det in ("a", "an", "the") or det in NUMBER_WORDS, words
    np_ = {"det": NUMBER_WORDS.get(det, det), "start": i, "size": None, "colour": None}
    i += 1
    if words[i] in SIZE_WORDS:
        np_["size"] = words[i]
        i += 1
    if words[i] in COLOURS:
        np_["colour"] = words[i]
        i += 1
    assert words[i] in SHAPE_WORDS, words
    plural = words[i].endswith("s") and words[i] != "cross"
    assert plural == (det in NUMBER_WORDS), words
    if det in ("a", "an"):  # the article agrees with the next word
        assert (det == "an") == (words[np_["start"] + 1][0] in "aeiou"), words
    np_["shape"], np_["noun"] = SHAPE_WORDS[words[i]], i
    return np_, i + 1


def parse(tokens: str) -> dict:
    """The structure of a caption: phrases, relation, copula/existential markers."""
    w = tokens.split(" ")
    out = {"words": w, "existential": w[0] == "there", "copula": False, "rel": None,
           "and": None}
    i = 2 if out["existential"] else 0
    if out["existential"]:
        assert w[1] in ("is", "are")
    first, i = parse_np(w, i)
    nps = [first]
    if i < len(w) and w[i] == "and":
        out["and"] = i
        second, i = parse_np(w, i + 1)
        nps.append(second)
    elif i < len(w):
        if w[i] == "is":
            out["copula"], i = i, i + 1
        if w[i] in ("left", "right"):
            assert w[i + 1] == "of"
            out["rel"], out["rel_at"], i = w[i] + " of", i, i + 2
        else:
            assert w[i] in ("above", "below"), w
            out["rel"], out["rel_at"], i = w[i], i, i + 1
        second, i = parse_np(w, i)
        nps.append(second)
    assert i == len(w), w
    out["nps"] = nps
    return out


def expected_heads(p: dict) -> list[int]:
    """Heads (1-based) from the analysis in the module docstring, written independently."""
    w, nps = p["words"], p["nps"]
    heads = [None] * len(w)
    for np_ in nps:
        for k in range(np_["start"], np_["noun"]):
            heads[k] = np_["noun"] + 1
    first = nps[0]["noun"]
    if p["existential"]:
        heads[0], heads[1], heads[first] = 2, 0, 2
    if p["and"] is not None:
        heads[first] = 0
        heads[p["and"]] = nps[1]["noun"] + 1
        heads[nps[1]["noun"]] = first + 1
    elif p["rel"] is not None:
        r, second = p["rel_at"], nps[1]["noun"]
        horizontal = p["rel"] in ("left of", "right of")
        if p["copula"]:
            pred = r if horizontal else second
            heads[first], heads[p["copula"]], heads[pred] = pred + 1, pred + 1, 0
        elif not p["existential"]:
            heads[first] = 0
        if horizontal:
            heads[r + 1] = second + 1  # of -> second noun (case)
            heads[second] = r + 1  # second noun -> left/right (obl)
            if not p["copula"]:
                heads[r] = first + 1
        else:
            heads[r] = second + 1  # above -> second noun (case)
            if not p["copula"]:
                heads[second] = first + 1
    elif not p["existential"]:
        heads[first] = 0
    assert None not in heads, (w, heads)
    return heads


def matches(np_: dict, obj: dict) -> bool:
    return all(np_[key] is None or obj[key] == np_[key] for key in ("shape", "colour", "size"))


def related(x: dict, y: dict, rel: str) -> bool:
    """x REL y read off the boxes: the boxes must be separated along that axis."""
    bx, by = x["box"], y["box"]
    return {"left of": bx[2] <= by[0], "right of": bx[0] >= by[2],
            "above": bx[3] <= by[1], "below": bx[1] >= by[3]}[rel]


def is_true(tokens: str, scene: list[dict]) -> bool:
    p = parse(tokens)
    found = [[i for i, o in enumerate(scene) if matches(np_, o)] for np_ in p["nps"]]
    for np_, m in zip(p["nps"], found):
        if isinstance(np_["det"], int) and len(m) != np_["det"]:
            return False
        if np_["det"] == "the" and len(m) != 1:
            return False
    if p["rel"] is not None:
        return any(i != j and related(scene[i], scene[j], p["rel"])
                   for i in found[0] for j in found[1])
    single = [m for np_, m in zip(p["nps"], found) if not isinstance(np_["det"], int)]
    if len(single) == 2:
        return any(i != j for i in single[0] for j in single[1])
    return all(single)


def binds(tokens: str) -> bool:
    return any(np_["colour"] and np_["shape"] for np_ in parse(tokens)["nps"])


def is_relation(tokens: str) -> bool:
    return parse(tokens)["rel"] is not None


def centre(obj: dict) -> np.ndarray:
    x1, y1, x2, y2 = obj["box"]
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2])


# --------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(tiny, tmp_path):
    again = make_synthetic(tmp_path / "again.h5", seed=0, size="tiny")
    other = make_synthetic(tmp_path / "other.h5", seed=1, size="tiny")
    assert again.read_bytes() == tiny.read_bytes()
    assert other.read_bytes() != tiny.read_bytes()


def test_schema_shapes_and_dtypes(tiny):
    spec = SIZES["tiny"]
    with check_file(tiny) as f:
        assert f.attrs["dataset"] == "synthetic-scenes" and f.attrs["has_boxes"]
        assert f.attrs["seed"] == 0 and f.attrs["size"] == "tiny"
        for split, n_img in zip(SPLITS, spec.images):
            im, cap = f[split]["images"], f[split]["captions"]
            n, d = spec.num_regions, spec.feature_dim
            assert im["features"].shape == (n_img, n, d) and im["features"].dtype == np.float16
            assert im["boxes"].shape == (n_img, n, 4) and im["boxes"].dtype == np.float32
            assert im["region_mask"].shape == (n_img, n) and im["region_mask"].dtype == bool
            assert im["pixels"].shape == (n_img, spec.canvas, spec.canvas, 3)
            assert im["pixels"].dtype == np.uint8
            assert (im["size"][:] == spec.canvas).all()
            assert im["group"].dtype == np.int64 and im["group"].shape == (n_img,)
            for name in ("variant", "scene"):
                assert h5py.check_string_dtype(im[name].dtype).encoding == "utf-8"
                assert im[name].shape == (n_img,)
            assert h5py.check_string_dtype(cap["kind"].dtype).encoding == "utf-8"
            assert cap["kind"].shape == cap["text"].shape == (5 * n_img,)
            assert (np.bincount(cap["image"][:], minlength=n_img) == 5).all()


def test_regions_inside_canvas_padded_and_shuffled(tiny):
    s = read_split(tiny, "train")
    canvas = SIZES["tiny"].canvas
    objects_first = []
    for scene, boxes, mask, feats in zip(s["scenes"], s["boxes"], s["mask"], s["features"]):
        real = boxes[mask]
        assert len(scene) + 2 <= mask.sum() <= len(mask)
        assert not mask[mask.sum():].any()  # padding comes last
        assert (real >= 0).all() and (real <= canvas).all()
        assert (real[:, 2] > real[:, 0]).all() and (real[:, 3] > real[:, 1]).all()
        assert (boxes[~mask] == 0).all() and (feats[~mask] == 0).all()
        # Every object has a region that is its box, give or take a detector's error.
        iou = [max(box_iou(o["box"], b) for b in real) for o in scene]
        assert min(iou) > 0.5
        best = [int(np.argmax([box_iou(o["box"], b) for b in real])) for o in scene]
        objects_first.append(max(best) < len(scene))
    # The regions that match the objects best are not simply the first ones:
    # a region's index does not give away what it is.
    assert np.mean(objects_first) < 0.2


def box_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda c: (c[2] - c[0]) * (c[3] - c[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def test_scenes_follow_the_grid_and_attribute_sets(tiny):
    s = read_split(tiny, "train")
    cell = SIZES["tiny"].canvas / 3
    for scene in s["scenes"]:
        assert 2 <= len(scene) <= 5
        cells = {tuple(((centre(o) // cell).astype(int)).tolist()) for o in scene}
        assert len(cells) == len(scene)  # one object per cell
        for o in scene:  # each box inside its own cell
            col, row = (centre(o) // cell).astype(int)
            x1, y1, x2, y2 = o["box"]
            assert col * cell <= x1 and x2 <= (col + 1) * cell
            assert row * cell <= y1 and y2 <= (row + 1) * cell
        assert len({o["colour"] for o in scene}) == len(scene)


def test_heads_are_trees_matching_the_words(tiny):
    for split in SPLITS:
        s = read_split(tiny, split)
        for tokens, heads in zip(s["tokens"], s["heads"]):
            n = len(tokens.split(" "))
            assert len(heads) == n and heads.count(0) == 1
            assert all(0 <= h <= n for h in heads)
            for k in range(1, n + 1):  # every word reaches the root without a cycle
                seen, at = set(), k
                while at != 0:
                    assert at not in seen, (tokens, heads)
                    seen.add(at)
                    at = heads[at - 1]
            assert heads == expected_heads(parse(tokens)), tokens


@pytest.mark.parametrize("kind, nps, rel, words, heads", [
    ("single", [NounPhrase("a", "circle", "red", "small")], None,
     "a small red circle", [4, 4, 4, 0]),
    ("conjunction", [NounPhrase("a", "circle", "red"), NounPhrase("a", "square", "blue")], None,
     "a red circle and a blue square", [3, 3, 0, 7, 7, 7, 3]),
    ("relation", [NounPhrase("a", "circle", "red"), NounPhrase("a", "square", "blue")],
     "left of", "a red circle left of a blue square", [3, 3, 0, 3, 8, 8, 8, 4]),
    ("relation", [NounPhrase("a", "circle", "red"), NounPhrase("a", "square", "blue")],
     "above", "a red circle above a blue square", [3, 3, 0, 7, 7, 7, 3]),
    ("copula", [NounPhrase("the", "circle", "red"), NounPhrase("the", "square", "blue")],
     "left of", "the red circle is left of the blue square", [3, 3, 5, 5, 0, 9, 9, 9, 5]),
    ("copula", [NounPhrase("the", "circle", "red"), NounPhrase("the", "square", "blue")],
     "above", "the red circle is above the blue square", [3, 3, 8, 8, 8, 8, 8, 0]),
    ("existential", [NounPhrase("a", "circle", "red"), NounPhrase("a", "triangle", "green")],
     "above", "there is a red circle above a green triangle", [2, 0, 5, 5, 2, 9, 9, 9, 5]),
    ("count", [NounPhrase(2, "circle")], None, "two circles", [2, 0]),
    ("count", [NounPhrase(3)], None, "three shapes", [2, 0]),
    ("count_conjunction", [NounPhrase(2, "circle"), NounPhrase("a", "square", "blue")], None,
     "two circles and a blue square", [2, 0, 6, 6, 6, 2]),
    ("existential_count", [NounPhrase(3)], None, "there are three shapes", [2, 0, 4, 2]),
    ("single", [NounPhrase("a", "cross", "orange")], None, "an orange cross", [3, 3, 0]),
])
def test_templates_by_hand(kind, nps, rel, words, heads):
    got_words, got_heads = build_caption(kind, nps, rel)
    assert " ".join(got_words) == words
    assert got_heads == heads


def test_build_caption_rejects_a_bad_template():
    with pytest.raises(ValueError):
        build_caption("relation", [NounPhrase("a", "circle")], "left of")
    with pytest.raises(ValueError):
        build_caption("single", [NounPhrase("a", "circle")], "above")


def test_captions_are_true_of_their_scene(tiny):
    kinds = Counter()
    for split in SPLITS:
        s = read_split(tiny, split)
        per_image = [[] for _ in s["scenes"]]
        for tokens, text, kind, i in zip(s["tokens"], s["text"], s["kind"], s["image"]):
            assert is_true(tokens, s["scenes"][i]), (tokens, s["scenes"][i])
            assert text == tokens[0].upper() + tokens[1:] + "."
            assert tokens == tokens.lower() and "  " not in tokens
            per_image[i].append(tokens)
            kinds[kind] += 1
        for caps in per_image:
            assert len(caps) == 5 and len(set(caps)) == 5
            assert any(binds(t) for t in caps) and any(is_relation(t) for t in caps)
    assert set(kinds) == set(KINDS)  # every template is used


def test_hard_negative_groups(tiny):
    for split in SPLITS:
        s = read_split(tiny, split)
        groups = s["group"]
        assert (groups == np.arange(len(groups)) // 3).all()  # groups of 3, in order
        assert s["variant"] == ["base", "binding", "relation"] * (len(groups) // 3)
        caps = [[] for _ in s["scenes"]]
        for tokens, i in zip(s["tokens"], s["image"]):
            caps[i].append(tokens)
        for g in range(0, len(groups), 3):
            base, binding, relation = s["scenes"][g:g + 3]
            # Binding variant: same shapes, sizes and boxes; colours permuted.
            assert [(o["shape"], o["size"], o["box"]) for o in base] == \
                   [(o["shape"], o["size"], o["box"]) for o in binding]
            assert sorted(o["colour"] for o in base) == sorted(o["colour"] for o in binding)
            pairs = lambda sc: {(o["colour"], o["shape"]) for o in sc}  # noqa: E731
            assert len(pairs(base) - pairs(binding)) >= 2
            # Relation variant: same objects; exactly two of them swap centres.
            assert [(o["shape"], o["colour"], o["size"]) for o in base] == \
                   [(o["shape"], o["colour"], o["size"]) for o in relation]
            moved = [i for i in range(len(base))
                     if not np.allclose(centre(base[i]), centre(relation[i]), atol=0.02)]
            assert len(moved) == 2
            a, b = moved
            assert np.allclose(centre(relation[a]), centre(base[b]), atol=0.02)
            assert np.allclose(centre(relation[b]), centre(base[a]), atol=0.02)
            # The base's binding / relation captions are false of the variants.
            for tokens in caps[g]:
                if binds(tokens):
                    assert not is_true(tokens, binding), tokens
                if is_relation(tokens):
                    assert not is_true(tokens, relation), tokens
            assert any(binds(t) for t in caps[g]) and any(is_relation(t) for t in caps[g])


def test_pixels_show_each_object_in_its_colour(tiny):
    s = read_split(tiny, "train")
    for scene, pixels in zip(s["scenes"], s["pixels"]):
        for o in scene:
            cx, cy = centre(o)
            assert tuple(pixels[int(cy), int(cx)]) == COLOURS[o["colour"]]
        assert tuple(pixels[0, 0]) == tuple(pixels[-1, -1])  # corners are background


def test_render_scene_by_hand():
    objects = [{"shape": "circle", "colour": "red", "box": [10, 10, 30, 30]},
               {"shape": "square", "colour": "blue", "box": [40, 10, 60, 30]},
               {"shape": "triangle", "colour": "green", "box": [10, 40, 30, 60]}]
    img = render_scene(objects, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    background = tuple(img[63, 63])
    assert tuple(img[20, 20]) == COLOURS["red"] and tuple(img[20, 50]) == COLOURS["blue"]
    assert tuple(img[11, 11]) == background  # a circle leaves its box's corners empty
    assert tuple(img[11, 41]) == COLOURS["blue"]  # a square fills them
    assert tuple(img[59, 11]) == COLOURS["green"] and tuple(img[41, 11]) == background


# --------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------


def obj(shape, colour, size, box):
    return {"shape": shape, "colour": colour, "size": size, "box": box}


def appearance_by_hand(t, shape, colour, size, pair=True):
    s, c = ["circle", "square", "triangle", "diamond", "cross"].index(shape), \
        list(COLOURS).index(colour)
    z = ["small", "large"].index(size)
    return t.shape[s] + t.colour[c] + t.size[z] + (t.pair[s, c] if pair else 0)


def test_region_features_by_hand():
    t = appearance_tables(0, 32)
    scene = [obj("circle", "red", "small", [10, 10, 20, 20]),
             obj("square", "blue", "large", [40, 40, 60, 60])]
    boxes = [[10, 10, 20, 20],  # exactly the circle
             [10, 10, 15, 20],  # its left half: half the object, no background
             [0, 0, 20, 20],  # the circle and three times its area of background
             [40, 0, 60, 10]]  # background only
    f = region_features(scene, boxes, t)
    red_circle = appearance_by_hand(t, "circle", "red", "small")
    np.testing.assert_allclose(f[0], red_circle, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f[1], 0.5 * red_circle, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f[2], red_circle + 0.75 * t.background, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f[3], t.background, rtol=1e-5, atol=1e-5)


def test_features_ignore_absolute_position():
    t = appearance_tables(3, 64)
    scene = [obj("circle", "red", "small", [5, 5, 15, 15]),
             obj("cross", "yellow", "large", [30, 5, 50, 25])]
    boxes = np.array([[5, 5, 15, 15], [30, 5, 50, 25], [4, 4, 52, 26], [0, 30, 20, 50]], float)
    shift = np.array([17.0, 23.0])
    moved = [dict(o, box=(np.array(o["box"]) + np.tile(shift, 2)).tolist()) for o in scene]
    f0 = region_features(scene, boxes, t, noise=0.0)
    f1 = region_features(moved, boxes + np.tile(shift, 2), t, noise=0.0)
    np.testing.assert_allclose(f0, f1, atol=1e-5)
    # The object boxes alone (the detector's objects) are unchanged too, and what is
    # inside does matter: the same boxes over another object give other features.
    np.testing.assert_allclose(f1[:2], np.stack([appearance_by_hand(t, "circle", "red", "small"),
                                                 appearance_by_hand(t, "cross", "yellow",
                                                                    "large")]), atol=1e-5)
    other = [dict(moved[0], colour="blue"), moved[1]]
    assert not np.allclose(region_features(other, boxes + np.tile(shift, 2), t)[0], f1[0])


def test_pair_table_binds_colour_to_shape():
    t = appearance_tables(0, 64)
    boxes = [[0, 0, 20, 20], [30, 0, 50, 20]]
    a = [obj("circle", "red", "large", boxes[0]), obj("square", "blue", "large", boxes[1])]
    b = [obj("circle", "blue", "large", boxes[0]), obj("square", "red", "large", boxes[1])]
    fa, fb = region_features(a, boxes, t), region_features(b, boxes, t)
    # Region level: no region of one scene looks like a region of the other.
    assert min(np.linalg.norm(x - y) for x in fa for y in fb) > 1.0
    # Without the pair table the mean over object regions is the same bag of attributes...
    no_pair = dataclasses.replace(t, pair=np.zeros_like(t.pair))
    ma = region_features(a, boxes, no_pair).mean(0)
    mb = region_features(b, boxes, no_pair).mean(0)
    np.testing.assert_allclose(ma, mb, atol=1e-5)
    # ...and with it the means differ by exactly the pair terms.
    s = {"circle": 0, "square": 1}
    c = {name: k for k, name in enumerate(COLOURS)}
    pair_gap = (t.pair[s["circle"], c["red"]] + t.pair[s["square"], c["blue"]]
                - t.pair[s["circle"], c["blue"]] - t.pair[s["square"], c["red"]]) / 2
    np.testing.assert_allclose(fa.mean(0) - fb.mean(0), pair_gap, atol=1e-4)
    assert np.linalg.norm(pair_gap) > 1.0


def test_noise_needs_an_rng_and_is_reproducible():
    t = appearance_tables(0, 16)
    scene = [obj("diamond", "purple", "small", [0, 0, 10, 10])]
    with pytest.raises(ValueError):
        region_features(scene, [[0, 0, 10, 10]], t, noise=0.1)
    f1 = region_features(scene, [[0, 0, 10, 10]], t, np.random.default_rng(5), noise=0.1)
    f2 = region_features(scene, [[0, 0, 10, 10]], t, np.random.default_rng(5), noise=0.1)
    np.testing.assert_array_equal(f1, f2)
    assert not np.allclose(f1, region_features(scene, [[0, 0, 10, 10]], t))


def test_streaming_matches_eager(tmp_path, monkeypatch):
    spec = SceneSpec("stream", (7, 3, 2), num_regions=36, feature_dim=2048, canvas=96,
                     store_pixels=False)
    # Record what write_split is given: the lazy features, read in slices.
    import cccl_lite.data.synthetic as synthetic
    given, real_write = [], synthetic.write_split

    def spy(f, split, *, features, **kw):
        given.append(type(features))
        return real_write(f, split, features=features, **kw)

    monkeypatch.setattr(synthetic, "write_split", spy)
    lazy = make_synthetic(tmp_path / "lazy.h5", seed=4, size=spec, stream=True)
    assert given == [SyntheticFeatures] * 3
    monkeypatch.setattr(synthetic, "write_split", real_write)
    eager = make_synthetic(tmp_path / "eager.h5", seed=4, size=spec, stream=False)
    assert lazy.read_bytes() == eager.read_bytes()

    s = read_split(lazy, "train")
    assert s["pixels"] is None and s["features"].shape == (7, 36, 2048)
    assert list(s["group"]) == [0, 0, 0, 1, 1, 1, 2]  # the last group is partial
    assert s["variant"][-1] == "base"
    assert read_split(lazy, "test")["variant"] == ["base", "binding"]
    # The file's features are what region_features gives each image's scene and boxes
    # (noise off here, so the comparison needs no knowledge of the random streams).
    quiet = synthetic.split_content(SceneSpec("q", (7, 3, 2), 36, 2048, 96, False, noise=0.0),
                                     4, "train")["features"]
    # The detector is the scenes' (its seed in the file), not the scene seed 4's (issue 29).
    with h5py.File(lazy, "r") as f:
        tables = appearance_tables(int(f.attrs["detector_seed"]), 2048)
    for i, (scene, boxes, mask) in enumerate(zip(s["scenes"], s["boxes"], s["mask"])):
        want = region_features(scene, boxes[mask], tables)
        np.testing.assert_allclose(quiet[i][mask], want, atol=1e-6)
        # With noise, the stored values are these plus noise of the stated size.
        resid = s["features"][i][mask].astype(np.float32) - want
        assert 0.2 < resid.std() < 0.3 and abs(resid.mean()) < 0.02
    # Any chunking gives the same numbers.
    feats = synthetic.split_content(spec, 4, "train")["features"]
    whole = feats[0:7]
    np.testing.assert_array_equal(np.concatenate([feats[0:2], feats[2:5], feats[5:7]]), whole)
    np.testing.assert_array_equal(feats[3], whole[3])
    np.testing.assert_array_equal(whole.astype(np.float16), s["features"])


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        make_synthetic(tmp_path / "x.h5", size="huge")
    assert not (tmp_path / "x.h5").exists()


def test_sizes_have_the_documented_shapes():
    assert SIZES["small"].images == (3000, 102, 201) and SIZES["small"].groups == (1000, 34, 67)
    assert SIZES["paper"].images == (29000, 1014, 1000)
    assert (SIZES["paper"].num_regions, SIZES["paper"].feature_dim) == (36, 2048)
    assert not SIZES["paper"].store_pixels
    assert SIZES["tiny"].groups == (20, 5, 5)


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def test_cli_writes_tiny(tmp_path):
    out = tmp_path / "cli.h5"
    run = subprocess.run([sys.executable, "data_scripts/make_synthetic.py", "--out", str(out),
                          "--seed", "0", "--size", "tiny"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert str(out) in run.stdout and "train" in run.stdout and "60 images" in run.stdout
    check_file(out).close()


def test_cli_rejects_a_bad_size(tmp_path):
    run = subprocess.run([sys.executable, "data_scripts/make_synthetic.py", "--out",
                          str(tmp_path / "x.h5"), "--size", "huge"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "invalid choice" in run.stderr
    assert not (tmp_path / "x.h5").exists()
