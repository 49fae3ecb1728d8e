"""How hard are the synthetic scenes' hard negatives? The measures that only read data.

The synthetic scenes (``cccl_lite.data.synthetic``) come in groups of three
images: a base, its colours rebound ("binding"), and two objects swapped
("relation"). This module reads a caption's structure off its gold
dependency heads (:func:`cccl_lite.data.grammar.caption_structure`,
re-exported here), finds the pairs (caption, sibling image) of which the
caption is false (:func:`hard_negative_pairs`, plus an easy comparison with
a random image of another group), and measures
how often a score matrix ranks a caption's own image above such a sibling
(:func:`pairwise_accuracy`, :func:`sibling_accuracy`, :func:`sibling_gap`).

Nothing here trains: the two baseline scorers measured on these pairs (a
bag of words and a syntax + position probe) are in :mod:`cccl_lite.engine.baselines`.
Taught in chapter 1 ("The task"); run by ``data_scripts/difficulty.py``.
"""

from __future__ import annotations


import h5py
import numpy as np

from cccl_lite.data.grammar import Phrase, Structure, caption_structure
from cccl_lite.data.layout import read_scenes
from cccl_lite.data.schema import SchemaError, check_file

__all__ = ["Phrase", "Structure", "caption_structure", "relation_holds", "structure_holds",
           "hard_negative_pairs", "pairwise_accuracy", "sibling_accuracy", "sibling_gap",
           "check_scenes"]

# What the measures read besides the schema: the groups of three, their scenes
# and the gold heads, which only make-synthetic writes.
SCENE_FIELDS = ("images/group", "images/variant", "images/scene", "captions/heads")


def check_scenes(path, splits) -> None:
    """Raise SchemaError, one line naming the file and the first missing field,
    unless every split of ``splits`` holds :data:`SCENE_FIELDS` (data that are
    not the synthetic scenes, such as Flickr30K, would otherwise be a KeyError)."""
    with check_file(path) as f:
        dataset = str(f.attrs.get("dataset", "?"))
        for split in splits:
            if split not in f:
                raise SchemaError(f"{path}: no split {split!r}")
            for name in SCENE_FIELDS:
                if name not in f[split]:
                    raise SchemaError(
                        f"{path}:/{split}/{name}: missing; these measures need the synthetic "
                        f"scenes' groups of three and gold heads (make-synthetic), and the file "
                        f"holds {dataset!r}")


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def relation_holds(a_box, b_box, word: str) -> bool:
    """Whether box a is ``word`` ("left", "right", "above", "below") of box b,
    from the boxes' centres (x1, y1, x2, y2 in pixels; y grows downwards)."""
    (ax, ay), (bx, by) = _centre(a_box), _centre(b_box)
    return {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[word]


def _fits(p: Phrase, o: dict) -> bool:
    return ((not p.shape or o["shape"] == p.shape) and p.colour in (None, o["colour"])
            and p.size in (None, o["size"]))


def structure_holds(s: Structure, objects: list[dict]) -> bool:
    """Whether every phrase names some object and every relation holds for
    some pair of objects that fit its phrases (counts are not checked: the
    three images of a group have the same shapes and sizes)."""
    fits = [[o for o in objects if _fits(p, o)] for p in s.phrases]
    if not all(fits):
        return False
    return all(any(a is not b and relation_holds(a["box"], b["box"], w)
                   for a in fits[i] for b in fits[j])
               for w, i, j in s.relations)


def hard_negative_pairs(path, split: str = "test", seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """(caption, negative image) pairs of each kind: "binding" (a base and its
    rebound image), "relation" (a base and its swapped image), both only where
    the caption is false of the negative, and "random" (an image of another
    group; false of it as well)."""
    check_scenes(path, [split])
    with h5py.File(path, "r") as f:
        g = f[split]
        group, variant = g["images/group"][:], g["images/variant"].asstr()[:]
        scenes = read_scenes(g["images/scene"], f"{path}:/{split}/images/scene")
        cap_image = g["captions/image"][:]
        tokens = [t.split(" ") for t in g["captions/tokens"].asstr()[:]]
        heads = list(g["captions/heads"][:])
    rng = np.random.default_rng(seed)
    pairs = {"binding": [], "relation": [], "random": []}
    for k, (i, tok, hd) in enumerate(zip(cap_image, tokens, heads)):
        s = caption_structure(tok, hd)
        siblings = np.flatnonzero((group == group[i]) & (np.arange(len(group)) != i))
        for j in siblings:
            # binding vs relation variant differ in two ways: not a clean pair.
            if "base" not in (variant[i], variant[j]):
                continue
            kind = variant[j] if variant[i] == "base" else variant[i]
            if not structure_holds(s, scenes[j]):
                pairs[kind].append((k, int(j)))
        others = np.flatnonzero(group != group[i])
        for j in rng.permutation(others):
            if not structure_holds(s, scenes[j]):
                pairs["random"].append((k, int(j)))
                break
    return pairs


def pairwise_accuracy(own: np.ndarray, negative: np.ndarray) -> float:
    """Percent of pairs where the own image scores higher (ties count half)."""
    return float(100 * (np.mean(own > negative) + 0.5 * np.mean(own == negative)))


def sibling_accuracy(sims, pairs: dict, caption_image) -> dict[str, float]:
    """{kind: :func:`pairwise_accuracy`} of a score matrix on :func:`hard_negative_pairs`.

    sims (N_img, N_cap) (row image, column caption); pairs: {kind: [(caption,
    negative image)]}; caption_image (N_cap,) each caption's own image. For
    each pair: does the caption score higher with its own image than with the
    sibling it is false of? Ties count half; 50 % is chance.
    """
    return {kind: pairwise_accuracy(own, neg)
            for kind, own, neg in _sibling_scores(sims, pairs, caption_image)}


def _sibling_scores(sims, pairs: dict, caption_image):
    """(kind, own scores, sibling scores) of each non-empty kind of pairs."""
    sims = np.asarray(sims)
    caption_image = np.asarray(caption_image)
    for kind, p in pairs.items():
        if p:
            k, j = np.array(p).T
            yield kind, sims[caption_image[k], k], sims[j, k]


def sibling_gap(sims, pairs: dict, caption_image) -> dict[str, dict[str, float]]:
    """How differently a model scores a caption with its own image and with a
    sibling it is false of: {kind: {"mean_abs": mean |ΔF|, "mean": mean ΔF}},
    ΔF = F(own image, caption) − F(sibling, caption).

    A model blind to the difference gives mean_abs ≈ 0; one that sees the
    difference but not which image fits the caption gives a large mean_abs
    with mean ≈ 0; one that knows gives mean ≈ mean_abs > 0.
    """
    return {kind: {"mean_abs": float(np.abs(own - neg).mean()), "mean": float((own - neg).mean())}
            for kind, own, neg in _sibling_scores(sims, pairs, caption_image)}
