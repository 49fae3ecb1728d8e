"""Baseline scorers that TRAIN, for the synthetic scenes' hard negatives.

The difficulty measures that only read data (caption structure, which
siblings a caption is false of, pairwise and sibling accuracy) live in
:mod:`cccl_lite.data.difficulty`; the two scorers measured against them
train, so they live here, above the data layer:

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

:func:`difficulty_report` measures both on a split (binding, relation and
random negatives). Taught in chapter 1 ("The task"); run by
``data_scripts/difficulty.py``.
"""

from __future__ import annotations

import functools

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cccl_lite.data.dataset import CaptionDataset, SplitReader, build_vocab, collate
from cccl_lite.data.difficulty import (check_scenes, hard_negative_pairs, pairwise_accuracy,
                                       relation_holds)
from cccl_lite.data.grammar import COLOURS, OBJECT_SIZES, SHAPES, Structure, caption_structure
from cccl_lite.data.layout import read_scenes
from cccl_lite.data.schema import check_file
from cccl_lite.model.loss import alignment_term
from cccl_lite.engine.metrics import recall_at_k

__all__ = ["BagOfWords", "train_bag_of_words", "training_loader", "train_epoch",
           "split_inputs", "StructureProbe", "probe_sims",
           "difficulty_report"]


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


def training_loader(path, batch_size: int = 128, seed: int = 0):
    """(vocab, reader, loader) over the train split in word ids: the data
    side every trained baseline here shares (:func:`train_bag_of_words`,
    :func:`cccl_lite.engine.dual.train_dual_encoder`). The loader's shuffle has its
    own generator (``seed``), so building it draws nothing from torch's global
    RNG and a model built afterwards initialises the same."""
    vocab = build_vocab(path)
    reader = SplitReader(path, "train", words="ids", vocab=vocab, syntax=False)
    loader = torch.utils.data.DataLoader(
        CaptionDataset(reader), batch_size=batch_size, shuffle=True,
        collate_fn=functools.partial(collate, reader),
        generator=torch.Generator().manual_seed(seed))
    return vocab, reader, loader


def train_epoch(loader, opt, loss_of) -> float:
    """One pass over ``loader``: ``loss_of(batch)`` -> scalar loss, one step per
    batch. Returns the mean loss."""
    total = n = 0
    for b in loader:
        loss = loss_of(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + float(loss.detach()), n + 1
    return total / max(n, 1)


def split_inputs(path, split: str, vocab: dict) -> tuple[SplitReader, dict, dict]:
    """(reader, images, captions) of a whole split in word ids: every image's
    ``regions`` (N_img, n, d_F), ``positions`` (N_img, n, 6) and
    ``region_mask``, every caption's ``words`` (N_cap, L) and ``word_mask``."""
    reader = SplitReader(path, split, words="ids", vocab=vocab, syntax=False)
    return (reader, reader.images(np.arange(reader.n_images)),
            reader.captions(np.arange(reader.n_captions)))


def train_bag_of_words(path, epochs: int = 10, batch_size: int = 128, lr: float = 2e-3,
                       seed: int = 0) -> tuple[BagOfWords, dict]:
    """Train :class:`BagOfWords` on the train split with eq 33's loss."""
    torch.manual_seed(seed)
    vocab, reader, loader = training_loader(path, batch_size, seed)
    model = BagOfWords(len(vocab), reader.region_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        train_epoch(loader, opt, lambda b: alignment_term(
            model(b["regions"], b["region_mask"], b["words"], b["word_mask"]), 0.2,
            b["positive_mask"]))
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
            scenes = read_scenes(g["images/scene"], f"{path}:/train/images/scene")
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
            total += np.log(0.95 if relation_holds(boxes[match[i]], boxes[match[j]], w) else 0.05)
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


def difficulty_report(path, split: str = "test", seed: int = 0, bow_epochs: int = 10) -> dict:
    """{scorer: {"binding", "relation", "random": accuracy in %}}, the pair counts,
    and the bag of words' R@K on the whole split (the baseline a trained CCCL
    must beat)."""
    check_file(path, split).close()  # one clear error for a missing or foreign file
    check_scenes(path, sorted({split, "train"}))  # the probe learns on train (issue 29, 18)
    pairs = hard_negative_pairs(path, split, seed)
    bow, vocab = train_bag_of_words(path, epochs=bow_epochs, seed=seed)
    probe = StructureProbe(path, seed=seed)
    reader, images, caps = split_inputs(path, split, vocab)
    with h5py.File(path, "r") as f:
        g = f[split]
        heads = list(g["captions/heads"][:])
        boxes, mask = g["images/boxes"][:], g["images/region_mask"][:]
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
