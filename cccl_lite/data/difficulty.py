"""How hard are the synthetic scenes' hard negatives? Two scorers, measured.

The synthetic scenes (``cccl_lite.data.synthetic``) come in groups of three
images: a base, its colours rebound ("binding"), and two objects swapped
("relation"). This module measures, on a split, how often a scorer ranks a
caption's own image above a sibling of which the caption is false:

* :class:`BagOfWords`, a mean-pooled dual encoder: mean of learned word
  embeddings (order and syntax thrown away) against the mean of the region
  features, trained with the hardest-negative triplet loss of eq 33. A bag
  of words cannot tell "a red circle and a blue square" from "a blue circle
  and a red square", so on binding negatives it should sit near chance.
* :class:`StructureProbe`, a structure-aware scorer: the gold dependency
  heads group each noun with its colour and size words and link the two
  nouns of a relation; linear probes (trained on the train split's regions,
  labelled by overlap with the scene's objects) say how well a region fits
  a phrase, and the matched regions' boxes decide a relation. It uses exactly
  what CCCL's Branch 3 and eq 9 give it access to: syntax and position.

A third, easy comparison uses a random image of another group as the
negative. Taught in chapter 1 ("The task"); run by ``data_scripts/difficulty.py``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..loss import alignment_term
from ..metrics import recall_at_k
from .dataset import CaptionDataset, SplitReader, build_vocab, collate
from .schema import check_file
from .synthetic import COLOURS, OBJECT_SIZES, SHAPES

__all__ = ["Phrase", "Structure", "caption_structure", "structure_holds", "hard_negative_pairs",
           "BagOfWords", "train_bag_of_words", "StructureProbe", "pairwise_accuracy",
           "sibling_accuracy", "sibling_gap", "probe_sims",
           "difficulty_report"]

_RELATION_WORDS = ("left", "right", "above", "below")
_GENERIC = ("shape", "shapes", "object", "objects")


def _noun(word: str) -> str | None:
    """The shape a noun names, "" for a generic noun, None for a non-noun."""
    if word in _GENERIC:
        return ""
    for s in SHAPES:
        if word in (s, s + "s", s + "es"):
            return s
    return None


@dataclass
class Phrase:
    """A noun with its attributes, as the dependency tree attaches them."""

    word: int  # 0-based index of the noun
    shape: str  # "" for "shape"/"object"
    colour: str | None = None
    size: str | None = None


@dataclass
class Structure:
    """Noun phrases and relations (word, subject phrase, object phrase) of a caption."""

    phrases: list[Phrase] = field(default_factory=list)
    relations: list[tuple[str, int, int]] = field(default_factory=list)


def caption_structure(tokens: list[str], heads) -> Structure:
    """Read the phrases and relations of a caption off its dependency heads.

    An attribute belongs to the noun that is its head (so "a red circle and a
    blue square" binds red to circle). A relation word links the two nouns
    within two arcs of it in the tree, the earlier one as subject; this covers
    every analysis of the grammar ("left" heading the second noun, "above"
    as its case marker, copulas and existentials).
    """
    heads = [int(h) for h in heads]
    out = Structure()
    index = {}
    for i, w in enumerate(tokens):
        shape = _noun(w)
        if shape is not None:
            index[i] = len(out.phrases)
            out.phrases.append(Phrase(i, shape))
    for i, w in enumerate(tokens):
        h = heads[i] - 1
        if h in index:
            if w in COLOURS:
                out.phrases[index[h]].colour = w
            elif w in OBJECT_SIZES:
                out.phrases[index[h]].size = w
    neighbours = {i: set() for i in range(len(tokens))}
    for i, h in enumerate(heads):
        if h:
            neighbours[i].add(h - 1)
            neighbours[h - 1].add(i)
    for r, w in enumerate(tokens):
        if w not in _RELATION_WORDS:
            continue
        near = neighbours[r] | {k for j in neighbours[r] for k in neighbours[j]}
        nouns = sorted(i for i in near if i in index)
        if len(nouns) == 2:
            out.relations.append((w, index[nouns[0]], index[nouns[1]]))
    return out


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _related(a_box, b_box, word: str) -> bool:
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
    return all(any(a is not b and _related(a["box"], b["box"], w) for a in fits[i] for b in fits[j])
               for w, i, j in s.relations)


def hard_negative_pairs(path, split: str = "test", seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """(caption, negative image) pairs of each kind: "binding" (a base and its
    rebound image), "relation" (a base and its swapped image), both only where
    the caption is false of the negative, and "random" (an image of another
    group; false of it as well)."""
    with h5py.File(path, "r") as f:
        g = f[split]
        group, variant = g["images/group"][:], g["images/variant"].asstr()[:]
        scenes = [json.loads(s) for s in g["images/scene"].asstr()[:]]
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


class BagOfWords(nn.Module):
    """Mean of learned word embeddings vs mean of region features, cosine score."""

    def __init__(self, vocab_size: int, region_dim: int, dim: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.image = nn.Linear(region_dim, dim)

    def encode_images(self, regions, region_mask):
        m = region_mask[..., None].float()
        return F.normalize(self.image((regions * m).sum(1) / m.sum(1).clamp(min=1)), dim=-1)

    def encode_texts(self, ids, word_mask):
        m = word_mask[..., None].float()
        return F.normalize((self.embed(ids) * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def forward(self, regions, region_mask, ids, word_mask):
        return self.encode_images(regions, region_mask) @ self.encode_texts(ids, word_mask).T


def train_bag_of_words(path, epochs: int = 10, batch_size: int = 128, lr: float = 2e-3,
                       seed: int = 0) -> tuple[BagOfWords, dict]:
    """Train :class:`BagOfWords` on the train split with eq 33's loss."""
    torch.manual_seed(seed)
    vocab = build_vocab(path)
    reader = SplitReader(path, "train", words="ids", vocab=vocab, syntax=False)
    model = BagOfWords(len(vocab), reader.region_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(
        CaptionDataset(reader), batch_size=batch_size, shuffle=True,
        collate_fn=functools.partial(collate, reader),
        generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        for b in loader:
            sims = model(b["regions"], b["region_mask"], b["words"], b["word_mask"])
            loss = alignment_term(sims, 0.2, b["positive_mask"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), vocab


def _region_labels(objects: list[dict], boxes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Index of the object each region shows (IoU >= 0.5 with its box), or -1."""
    labels = np.full(len(boxes), -1)
    for r in np.flatnonzero(mask):
        best, arg = 0.5, -1
        for k, o in enumerate(objects):
            a, b = np.asarray(o["box"]), boxes[r]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union >= best:
                best, arg = inter / union, k
        labels[r] = arg
    return labels


class StructureProbe:
    """Syntax + position scorer: linear attribute probes on regions, phrases
    from the dependency tree, relations from the matched regions' boxes."""

    ATTRS = (("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", OBJECT_SIZES))

    def __init__(self, path, epochs: int = 30, lr: float = 1e-2, seed: int = 0):
        torch.manual_seed(seed)
        with h5py.File(path, "r") as f:
            g = f["train"]
            x = g["images/features"][:].astype(np.float32)
            boxes, mask = g["images/boxes"][:], g["images/region_mask"][:]
            scenes = [json.loads(s) for s in g["images/scene"].asstr()[:]]
        feats, ys = [], {name: [] for name, _ in self.ATTRS}
        for i, objects in enumerate(scenes):
            lab = _region_labels(objects, boxes[i], mask[i])
            for r in np.flatnonzero(mask[i]):
                feats.append(x[i, r])
                for name, values in self.ATTRS:
                    # The last class is "no object": background and partial boxes.
                    ys[name].append(values.index(objects[lab[r]][name]) if lab[r] >= 0
                                    else len(values))
        xt = torch.from_numpy(np.stack(feats))
        self.heads = nn.ModuleDict({n: nn.Linear(xt.shape[1], len(v) + 1) for n, v in self.ATTRS})
        opt = torch.optim.Adam(self.heads.parameters(), lr=lr)
        targets = {n: torch.tensor(ys[n]) for n in ys}
        for _ in range(epochs):
            loss = sum(F.cross_entropy(self.heads[n](xt), targets[n]) for n in targets)
            opt.zero_grad()
            loss.backward()
            opt.step()

    @torch.no_grad()
    def log_probs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per region, log p(attribute value), the last column "no object"."""
        x = torch.from_numpy(np.asarray(features, dtype=np.float32))
        return {n: F.log_softmax(self.heads[n](x), -1).numpy() for n, _ in self.ATTRS}

    def score(self, s: Structure, lp: dict, boxes: np.ndarray, mask: np.ndarray) -> float:
        """Σ over phrases of the best region's log-probability, plus log 0.95
        or log 0.05 per relation that the matched regions' boxes satisfy or not."""
        total, match = 0.0, []
        for p in s.phrases:
            fit = np.zeros(len(mask))
            if p.shape:
                fit += lp["shape"][:, SHAPES.index(p.shape)]
            else:
                fit += np.log1p(-np.exp(lp["shape"][:, -1]).clip(max=1 - 1e-6))
            if p.colour:
                fit += lp["colour"][:, tuple(COLOURS).index(p.colour)]
            if p.size:
                fit += lp["size"][:, OBJECT_SIZES.index(p.size)]
            fit[~mask] = -np.inf
            match.append(int(fit.argmax()))
            total += fit.max()
        for w, i, j in s.relations:
            total += np.log(0.95 if _related(boxes[match[i]], boxes[match[j]], w) else 0.05)
        return float(total)


def probe_sims(probe: StructureProbe, path, split: str = "test") -> np.ndarray:
    """(N_img, N_cap) scores of :class:`StructureProbe` for every pair of a split:
    the ceiling of what syntax + position + linear region probes can do.

    The probe's score is a sum of log-probabilities, lower for a caption with
    more phrases, so scores of different captions are not comparable (an
    image would rank its shortest captions first). Each caption's column is
    therefore shifted so that its best image scores 0: the order of images
    for one caption (t2i, sibling accuracy) is unchanged, and an image's
    captions (i2t) are compared by how far each falls short of its best fit.
    """
    with h5py.File(path, "r") as f:
        g = f[split]
        heads = list(g["captions/heads"][:])
        tokens = [t.split(" ") for t in g["captions/tokens"].asstr()[:]]
        x = g["images/features"][:].astype(np.float32)
        boxes, mask = g["images/boxes"][:], g["images/region_mask"][:]
    structures = [caption_structure(t, h) for t, h in zip(tokens, heads)]
    lps = [probe.log_probs(x[i]) for i in range(len(x))]
    sims = np.array([[probe.score(s, lps[i], boxes[i], mask[i]) for s in structures]
                     for i in range(len(x))])
    return sims - sims.max(axis=0, keepdims=True)


def pairwise_accuracy(own: np.ndarray, negative: np.ndarray) -> float:
    """Percent of pairs where the own image scores higher (ties count half)."""
    return float(100 * (np.mean(own > negative) + 0.5 * np.mean(own == negative)))


def difficulty_report(path, split: str = "test", seed: int = 0, bow_epochs: int = 10) -> dict:
    """{scorer: {"binding", "relation", "random": accuracy in %}}, the pair counts,
    and the bag of words' R@K on the whole split (the baseline a trained CCCL
    must beat)."""
    check_file(path, split).close()  # one clear error for a missing or foreign file
    pairs = hard_negative_pairs(path, split, seed)
    bow, vocab = train_bag_of_words(path, epochs=bow_epochs, seed=seed)
    probe = StructureProbe(path, seed=seed)
    reader = SplitReader(path, split, words="ids", vocab=vocab, syntax=False)
    with h5py.File(path, "r") as f:
        g = f[split]
        heads = list(g["captions/heads"][:])
        boxes, mask = g["images/boxes"][:], g["images/region_mask"][:]
    images = reader.images(np.arange(reader.n_images))
    caps = reader.captions(np.arange(reader.n_captions))
    with torch.no_grad():
        bow_sims = bow(images["regions"], images["region_mask"], caps["words"],
                       caps["word_mask"]).numpy()
    lps = [probe.log_probs(images["regions"][i].numpy()) for i in range(reader.n_images)]
    structures = [caption_structure(t, h) for t, h in zip(reader.tokens, heads)]

    def probe_score(k, i):
        return probe.score(structures[k], lps[i], boxes[i], mask[i])

    report = {"pairs": {kind: len(p) for kind, p in pairs.items()}, "bag_of_words": {},
              "structure_probe": {}, "bag_of_words_recall": recall_at_k(bow_sims)}
    for kind, p in pairs.items():
        k, j = np.array(p).T
        own = reader.caption_image[k]
        report["bag_of_words"][kind] = pairwise_accuracy(bow_sims[own, k], bow_sims[j, k])
        report["structure_probe"][kind] = pairwise_accuracy(
            np.array([probe_score(a, b) for a, b in zip(k, own)]),
            np.array([probe_score(a, b) for a, b in zip(k, j)]))
    return report


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
