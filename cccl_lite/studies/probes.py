"""What the inputs and parts of CCCL carry about relations, read with probes (chapter 11).

A relation caption ("a red circle left of a blue square") is only true of
its image if the model knows two things: from the text, which object is on
which side; from the image, where each object is. Two measurements, one per
half:

* :func:`word_side_probe`: a linear probe (softmax regression, as in
  Alain & Bengio's "linear classifier probes") reads each noun's side
  ("left", "right", "above", "below" of the other object) from its cached
  word vector — the text half, before any training of CCCL;
* :func:`position_share`: how far a region's position moves its embedding
  at eq 10 (before the CPC) — the image half, on a trained model;
* :func:`encoded_side_probe` and :func:`region_position_r2`: the same two
  halves read after a trained model's encoders (T of eqs 11-12, V of eq 10):
  what the model kept of each;
* :func:`write_oracle`: a copy of a scenes file in which one or both halves
  are handed to the model (each relation noun's side appended to its word
  vector; each region's box centre appended to its features), to ask
  whether CCCL learns relations once a half no longer has to be found
  (``python -m cccl_lite diagnose``'s oracle rows);
* :func:`fit_sibling_pairs`: after training, ask the model for relations
  directly: Adam on the hinge of eq 33 over the training split's relation
  sibling pairs alone, with the accuracy on the training pairs (can it fit
  them?) and on the test pairs (does what it learns carry over?) as it goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch

from cccl_lite.data.grammar import noun_shape
from cccl_lite.data.truth import parse_caption
from cccl_lite.files import atomic_path
from cccl_lite.engine.runtime import eval_mode

__all__ = ["SIDES", "noun_sides", "linear_probe_accuracy", "word_side_probe", "position_share",
           "encoded_side_probe", "region_position_r2", "ORACLES", "write_oracle",
           "sibling_pair_scores", "pair_accuracy", "fit_sibling_pairs"]

# What write_oracle hands the model: the text half, the image half, or both.
ORACLES = ("side", "centre", "side+centre")

# The side of each noun of "X REL Y": X's side, then Y's.
SIDES = ("left", "right", "above", "below")
_SIDE_OF = {"left of": (0, 1), "right of": (1, 0), "above": (2, 3), "below": (3, 2)}


def noun_sides(tokens: Sequence[str], kind: str) -> list[tuple[int, int]]:
    """[(word index, side index into :data:`SIDES`)] of the two nouns of a
    relation caption; [] for a caption without a relation.

    tokens: the caption's words; kind: its template (``captions/kind``). The
    relation is read back with :func:`cccl_lite.data.truth.parse_caption`; its
    first noun phrase is the subject ("X" of "X left of Y").
    """
    cap = parse_caption(list(tokens), kind)
    if cap.rel is None:
        return []
    nouns = [i for i, w in enumerate(tokens) if noun_shape(w) is not False]
    if len(nouns) != 2:
        raise ValueError(f"noun_sides: {' '.join(tokens)!r} ({kind}): expected two nouns, "
                         f"found {len(nouns)}")
    return list(zip(nouns, _SIDE_OF[cap.rel]))


def linear_probe_accuracy(x, y, x_test, y_test, classes: int, steps: int = 500,
                          lr: float = 1e-2, seed: int = 0) -> tuple[float, float]:
    """(train, test) accuracy in percent of a softmax regression fitted on (x, y).

    x (N, D), y (N,) int in [0, classes); features standardised with the
    training set's mean and sd; Adam, full batch, a little weight decay.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    x_test = torch.as_tensor(x_test, dtype=torch.float32)
    y, y_test = torch.as_tensor(y, dtype=torch.long), torch.as_tensor(y_test, dtype=torch.long)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mu) / sd, (x_test - mu) / sd
    gen = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=gen)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x), y).backward()
        opt.step()
    with torch.no_grad():
        return tuple(100.0 * float((lin(a).argmax(1) == b).float().mean())
                     for a, b in ((x, y), (x_test, y_test)))


def _noun_rows(path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        c = f[split]["captions"]
        tokens = [t.split(" ") for t in c["tokens"].asstr()[:]]
        kinds = list(c["kind"].asstr()[:])
        offsets = c["word_offsets"][:]
        rows, sides = [], []
        for k, (tok, kind) in enumerate(zip(tokens, kinds)):
            for i, side in noun_sides(tok, kind):
                rows.append(offsets[k] + i)
                sides.append(side)
        vectors = c["word_vectors"][:][np.array(rows, dtype=np.int64)].astype(np.float32)
    return vectors, np.array(sides, dtype=np.int64)


def _side_report(x, y, xt, yt) -> dict:
    """The side probes' record: noun counts, train/test accuracy, commonest side %."""
    tr, te = linear_probe_accuracy(x, y, xt, yt, classes=len(SIDES))
    chance = 100.0 * np.bincount(yt, minlength=len(SIDES)).max() / max(len(yt), 1)
    return {"nouns": (len(y), len(yt)), "train": tr, "test": te, "chance": chance}


def word_side_probe(path, train: str = "train", test: str = "test",
                    project: int | None = None, seed: int = 0) -> dict:
    """Can the cached word vectors say which side each noun of a relation is on?

    Fits :func:`linear_probe_accuracy` on the nouns of ``train``'s relation
    captions and tests it on ``test``'s. ``project=d``: first multiply the
    vectors by a random d × d_E matrix drawn as ``torch.nn.Linear`` draws its
    weights (uniform in ±1/√d_E, generator seeded with ``seed``): what eq 12's
    W_E passes on before any training. Returns {"nouns": (train, test)
    counts, "train", "test": accuracy %, "chance": % of the commonest side in
    test}.
    """
    x, y = _noun_rows(path, train)
    xt, yt = _noun_rows(path, test)
    if project is not None:
        bound = 1.0 / np.sqrt(x.shape[1])
        gen = torch.Generator().manual_seed(seed)
        w = torch.empty(project, x.shape[1]).uniform_(-bound, bound, generator=gen).numpy()
        x, xt = x @ w.T, xt @ w.T
    return _side_report(x, y, xt, yt)


@torch.no_grad()
def position_share(model, reader, batch_size: int = 256) -> float:
    """How far positions move region embeddings, in percent (eq 10, before the CPC).

    For each real region, x(s) is eq 10's fused embedding with its own
    position s and x(s̄) the same with the split's mean position s̄ (a region
    "nowhere in particular"); the share is mean ‖x(s) − x(s̄)‖ / mean ‖x(s)‖.
    0 for a model that ignores positions (or "w/o POS"). Works for either
    ``position_fusion``.
    """
    visual = model.visual
    if visual.position is None:
        return 0.0
    pos_all, feats, masks = [], [], []
    for start in range(0, reader.n_images, batch_size):
        batch = reader.images(np.arange(start, min(start + batch_size, reader.n_images)))
        feats.append(batch["regions"])
        pos_all.append(batch["positions"])
        masks.append(batch["region_mask"])
    regions, positions, mask = torch.cat(feats), torch.cat(pos_all), torch.cat(masks)
    mean_pos = positions[mask].mean(0).expand_as(positions)
    visual_cpc, visual.cpc = visual.cpc, None  # the fused embedding, before the CPC
    try:
        with eval_mode(visual):
            own = visual(regions, positions)[mask]
            nowhere = visual(regions, mean_pos)[mask]
    finally:
        visual.cpc = visual_cpc
    return 100.0 * float((own - nowhere).norm(dim=-1).mean() / own.norm(dim=-1).mean())


@torch.no_grad()
def _encoded_nouns(model, reader, limit: int | None, batch_size: int = 256):
    """(T rows of the relation nouns (N, d), their sides (N,)) of a reader's captions."""
    n = reader.n_captions if limit is None else min(limit, reader.n_captions)
    with h5py.File(reader.path, "r") as f:
        kinds = list(f[reader.split]["captions/kind"].asstr()[:n])
    rows, sides = [], []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batch = reader.captions(idx)
        t = model.encode_texts(batch["words"], batch["word_mask"], batch["word_adjacency"]).t
        for b, k in enumerate(idx):
            for i, side in noun_sides(reader.tokens[k], kinds[k]):
                rows.append(t[b, i])
                sides.append(side)
    return torch.stack(rows).numpy(), np.array(sides, dtype=np.int64)


def encoded_side_probe(model, train_reader, test_reader, limit: int | None = 6000) -> dict:
    """:func:`word_side_probe` on a trained model's word embeddings T (eqs 11-12).

    The probe reads each relation noun's side from its row of T instead of
    its cached word vector: how much of what the text encoder was given
    about "who is left of whom" it kept. ``limit``: at most this many
    captions of ``train_reader`` (the probe's training set). Returns the
    same dict as :func:`word_side_probe`.
    """
    with eval_mode(model):
        x, y = _encoded_nouns(model, train_reader, limit)
        xt, yt = _encoded_nouns(model, test_reader, None)
    return _side_report(x, y, xt, yt)


def _r2(a: np.ndarray, target: np.ndarray, fit: np.ndarray) -> float:
    """Held-out R² of a least-squares line from a's columns (plus a constant) to target."""
    a = np.c_[a, np.ones(len(a))]
    w = np.linalg.lstsq(a[fit], target[fit], rcond=None)[0]
    rest = ~fit
    resid = target[rest] - a[rest] @ w
    return float(1.0 - (resid ** 2).mean() / target[rest].var())


@torch.no_grad()
def region_position_r2(model, reader, batch_size: int = 256) -> dict:
    """How well a line reads each region's box centre from its row of V (eq 10,
    after the CPC): {"x": R², "y": R²} on held-out regions (every other image
    fits the line, the rest test it). 1: V holds where a region is; 0: it does not.
    """
    vs, centres, image_of = [], [], []
    with eval_mode(model):
        for start in range(0, reader.n_images, batch_size):
            idx = np.arange(start, min(start + batch_size, reader.n_images))
            b = reader.images(idx)
            v = model.encode_images(b["regions"], b["positions"], b["region_mask"]).v
            mask = b["region_mask"]
            vs.append(v[mask].numpy())
            boxes = torch.as_tensor(reader.boxes[idx])[mask].numpy()
            size = np.repeat(np.asarray(reader.size[idx]), mask.sum(1).numpy(), axis=0)
            centres.append(np.c_[(boxes[:, 0] + boxes[:, 2]) / 2 / size[:, 0],
                                 (boxes[:, 1] + boxes[:, 3]) / 2 / size[:, 1]])
            image_of.append(np.repeat(idx, mask.sum(1).numpy()))
    v, centre, image_of = np.concatenate(vs), np.concatenate(centres), np.concatenate(image_of)
    fit = image_of % 2 == 0
    return {"x": _r2(v, centre[:, 0], fit), "y": _r2(v, centre[:, 1], fit)}


def _append_columns(group, name: str, extra: np.ndarray) -> None:
    """Replace dataset ``name`` of ``group`` by itself with ``extra`` appended on its last axis."""
    old = group[name]
    attrs, dtype = dict(old.attrs), old.dtype
    data = np.concatenate([old[:].astype(np.float32), extra.astype(np.float32)], axis=-1)
    del group[name]
    group.create_dataset(name, data=data.astype(dtype))
    for key, value in attrs.items():
        group[name].attrs[key] = value


def write_oracle(src, dst, oracle: str = "side") -> Path:
    """Copy the scenes file ``src`` to ``dst`` with one or both halves of every
    relation handed to the model, in every split:

    * "side": 4 columns appended to every word vector: for each noun of a
      relation caption a one-hot of its side (:data:`SIDES`) times half the
      mean word-vector norm of the split, zeros for every other word;
    * "centre": 2 columns appended to every region's features: its box
      centre (x/W − 0.5, y/H − 0.5) times the mean norm of the real regions'
      features (zeros for padded regions); word vectors unchanged;
    * "side+centre": both.

    Scenes, boxes, captions and truth are unchanged, so every metric reads the
    copy as it reads ``src``. Written to a temporary name and renamed
    (:func:`cccl_lite.files.atomic_path`): a killed run leaves no
    half-written ``dst``. Returns ``dst``.
    """
    if oracle not in ORACLES:
        raise ValueError(f"write_oracle: oracle must be one of {ORACLES}, got {oracle!r}")
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        with h5py.File(src, "r") as f, h5py.File(tmp, "w") as g:
            for key, value in f.attrs.items():
                g.attrs[key] = value
            g.attrs["oracle"] = oracle
            for split in f:
                f.copy(f[split], g, name=split)
                cap, img = g[split]["captions"], g[split]["images"]
                if "side" in oracle:
                    vectors = cap["word_vectors"][:].astype(np.float32)
                    offsets = cap["word_offsets"][:]
                    extra = np.zeros((len(vectors), len(SIDES)), np.float32)
                    scale = float(np.linalg.norm(vectors, axis=1).mean()) / 2
                    tokens = [t.split(" ") for t in cap["tokens"].asstr()[:]]
                    for k, (tok, kind) in enumerate(zip(tokens, cap["kind"].asstr()[:])):
                        for i, side in noun_sides(tok, kind):
                            extra[offsets[k] + i, side] = scale
                    _append_columns(cap, "word_vectors", extra)
                if "centre" in oracle:
                    feats, mask = img["features"][:].astype(np.float32), img["region_mask"][:]
                    boxes, size = img["boxes"][:], img["size"][:]
                    cx = (boxes[..., 0] + boxes[..., 2]) / 2 / size[:, None, 0] - 0.5
                    cy = (boxes[..., 1] + boxes[..., 3]) / 2 / size[:, None, 1] - 0.5
                    scale = float(np.linalg.norm(feats[mask], axis=1).mean())
                    _append_columns(img, "features",
                                    np.stack([cx, cy], -1) * scale * mask[..., None])
    return dst


def sibling_pair_scores(model, reader, pairs):
    """Scores of caption k with its own image and with image j, for each pair
    (k, j) of ``pairs`` ((N, 2) int, e.g. ``hard_negative_pairs(...)["relation"]``):
    two tuples ``(F, (S^S, S^O, S^R))`` of (N,) tensors (None for a branch the
    model lacks), from :meth:`cccl_lite.model.cccl.CCCL.score_pairs`. Under
    autograd if the caller enables it (:func:`fit_sibling_pairs` trains on them).
    """
    pairs = np.asarray(pairs)
    k, j = pairs[:, 0], pairs[:, 1]
    own_img = reader.images(np.asarray(reader.caption_image)[k])
    other_img = reader.images(j)
    cap = reader.captions(k)
    texts = model.encode_texts(cap["words"], cap["word_mask"], cap["word_adjacency"])

    def score(img):
        enc = model.encode_images(img["regions"], img["positions"], img["region_mask"])
        return model.score_pairs(enc, texts)

    return score(own_img), score(other_img)


def pair_accuracy(own, other) -> dict:
    """Percent of pairs whose caption scores higher with its own image, for
    the fused score F and each branch's score (S, O, R) that exists; ties
    count as failures. ``own``, ``other``: :func:`sibling_pair_scores`' tuples."""
    out = {"F": 100.0 * float((own[0] > other[0]).float().mean())}
    for name, a, b in zip(("S", "O", "R"), own[1], other[1]):
        if a is not None:
            out[name] = 100.0 * float((a > b).float().mean())
    return {key: round(value, 1) for key, value in out.items()}


@torch.no_grad()
def _eval_pairs(model, reader, pairs, batch_size: int = 300) -> dict:
    with eval_mode(model):
        parts = [sibling_pair_scores(model, reader, pairs[s:s + batch_size])
                 for s in range(0, len(pairs), batch_size)]

    def cat(i, b=None):
        xs = [p[i][0] if b is None else p[i][1][b] for p in parts]
        return None if xs[0] is None else torch.cat(xs)

    own = (cat(0), tuple(cat(0, b) for b in range(3)))
    other = (cat(1), tuple(cat(1, b) for b in range(3)))
    return pair_accuracy(own, other)


def fit_sibling_pairs(model, train, test, steps: int = 2000, lr: float = 5e-4,
                      batch_size: int = 32, margin: float = 0.2, every: int = 250,
                      eval_pairs: int = 600, seed: int = 0, log=None) -> list[dict]:
    """Ask a trained model for relations directly, and see whether it can.

    ``train``, ``test``: (reader, pairs) with pairs (N, 2) of (caption k,
    sibling image j), e.g. :func:`cccl_lite.data.difficulty.hard_negative_pairs`'
    "relation" pairs of each split. ``steps`` Adam steps (``lr``) on
    mean_k [Δ − F(own image, k) + F(image j, k)]_+ over ``batch_size`` training
    pairs drawn at random: eq 33's hinge with the sibling as the only
    negative. Dropout and the like are on while fitting (``model.train()``).

    Returns the curve [{"step", "train", "test"}] at step 0 and every
    ``every`` steps, each a :func:`pair_accuracy` dict over the first
    ``eval_pairs`` pairs of the split. Changes ``model`` in place.
    """
    (train_reader, train_pairs), (test_reader, test_pairs) = train, test
    train_pairs, test_pairs = np.asarray(train_pairs), np.asarray(test_pairs)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def point(step):
        rec = {"step": step,
               "train": _eval_pairs(model, train_reader, train_pairs[:eval_pairs]),
               "test": _eval_pairs(model, test_reader, test_pairs[:eval_pairs])}
        if log is not None:
            log(f"relation fit, step {step}: train {rec['train']}, test {rec['test']}")
        return rec

    curve = [point(0)]
    model.train()
    for step in range(1, steps + 1):
        batch = train_pairs[rng.choice(len(train_pairs), min(batch_size, len(train_pairs)),
                                       replace=False)]
        own, other = sibling_pair_scores(model, train_reader, batch)
        loss = (margin - own[0] + other[0]).clamp(min=0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            curve.append(point(step))
    model.eval()
    return curve
