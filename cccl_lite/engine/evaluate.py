"""Evaluation: the recalls of a model on a split (eqs 35-36), and retrieval.

Taught in chapter 6 ("Training and evaluation"). :func:`evaluate_split`
encodes every item once and scores every pair (:mod:`cccl_lite.engine.scoring`),
then computes R@K under a protocol (:mod:`cccl_lite.engine.metrics`: ``f30k``, the
Flickr30K 1K test of 1,000 images x 5,000 captions; ``coco1k``, the mean
over 5 folds of 1,000 COCO images; ``coco5k``, all 5,000 COCO images).
:func:`retrieve` answers one query (an image or a caption) from scratch.

The command line (``python -m cccl_lite evaluate | retrieve``) is in
:mod:`cccl_lite.cli`. The scoring names (:func:`score_matrix`, ...) and the
protocols (:func:`caption_layout`, ...) are importable from here too, as the
book and benchmarks do.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import h5py
import numpy as np
import torch

from cccl_lite.data.dataset import SplitReader
from cccl_lite.files import check_output_file, write_atomic
from cccl_lite.engine.metrics import (COCO_FOLDS, KEYS, PROTOCOLS, caption_layout, check_protocol,
                                      protocol_recalls)
from cccl_lite.model.cccl import CCCL
from cccl_lite.engine.runtime import eval_mode
from cccl_lite.engine.scoring import (TwoStageScores, check_shortlist, cheap_scores,
                                      encode_all_images, encode_all_texts, per_caption_scores,
                                      score_matrix, score_pairs, two_stage_scores)

__all__ = [
    "Hit",
    "check_evaluation",
    "check_writable",
    "evaluate_split",
    "retrieve",
    "caption_texts",
    "save_sims_npy",
    "NO_COCO1K_SHORTLIST",
    # from cccl_lite.engine.scoring and cccl_lite.engine.metrics, for the book and benchmarks
    "encode_all_images",
    "encode_all_texts",
    "score_matrix",
    "per_caption_scores",
    "cheap_scores",
    "score_pairs",
    "TwoStageScores",
    "two_stage_scores",
    "PROTOCOLS",
    "COCO_FOLDS",
    "caption_layout",
    "check_protocol",
    "protocol_recalls",
]


NO_COCO1K_SHORTLIST = ("shortlist is not available with --protocol coco1k (its folds rank "
                       "within 1K images); use f30k, coco5k or no shortlist")


def _two_stage_recalls(scores: TwoStageScores, order, cpi: int, protocol, fold_size: int):
    """Recalls (eqs 35-36) with each direction ranked by its own shortlist."""
    if protocol == "coco1k":
        raise ValueError(NO_COCO1K_SHORTLIST)
    parts = {}
    for which in ("i2t", "t2i"):
        m = scores.direction(which)
        parts[which], _ = protocol_recalls(m if order is None else m[:, order], cpi, protocol,
                                           fold_size)
    out = {key: parts[key[:3]][key] for key in KEYS[:-1]}
    out["rsum"] = float(sum(out[key] for key in KEYS[:-1]))  # eq 36, as metrics sums it
    return out


def save_sims_npy(path, sims) -> Path:
    """Write the score matrix to ``path`` as .npy (float32), atomically: a temp
    file in the same folder renamed over ``path`` once complete."""
    path = Path(path)
    arr = (sims.detach().cpu().float().numpy() if isinstance(sims, torch.Tensor)
           else np.asarray(sims, dtype=np.float32))
    # A file object: np.save would append ".npy" to a name.
    write_atomic(path, lambda f: np.save(f, arr))
    return path


def check_writable(path, overwrite: bool = True) -> None:
    """Fail before minutes of scoring, not after, if ``path`` cannot be
    written: a folder, a folder that does not exist or is not writable, or
    (``overwrite=False``, the command line without --overwrite) a file that
    exists. Raises :class:`cccl_lite.files.OutputError` (a ValueError)."""
    folder = Path(path).resolve().parent
    if not folder.is_dir() and not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: folder {folder} does not exist")
    check_output_file(path, overwrite, "score matrix (--save-sims)")



def check_evaluation(reader: SplitReader, protocol: str | None = None, fold_size: int = 1000,
                     shortlist: int | None = None):
    """Everything :func:`evaluate_split` checks before it scores anything, so
    that a command line can check it before it prints: the captions' layout
    (:func:`~cccl_lite.engine.metrics.caption_layout`), the protocol against the
    split's size (:func:`~cccl_lite.engine.metrics.check_protocol`) and the
    shortlist. Returns (captions per image, caption order or None, the
    protocol's note or None); raises ValueError naming what is wrong."""
    cpi, order = caption_layout(reader.caption_image, reader.n_images)
    note = check_protocol(protocol, reader.n_images, reader.n_captions, fold_size)
    if shortlist is not None:
        check_shortlist(shortlist)
        if protocol == "coco1k":
            raise ValueError(NO_COCO1K_SHORTLIST)
    return cpi, order, note


def evaluate_split(model: CCCL, reader: SplitReader, device="cpu", batch_size: int = 256, *,
                   protocol: str | None = None, save_sims=None, amp: bool | None = None,
                   image_chunk: int | None = None, text_chunk: int | None = None,
                   fold_size: int = 1000, log: Callable[[str], None] | None = None,
                   shortlist: int | None = None):
    """(recalls, sims) of ``model`` (already on ``device``) on one split (eqs 35-36).

    sims: F (eq 32) for every image x caption of the split, (N_img, N_txt)
    float32 on the CPU, in the file's order; recalls: the dict of
    :func:`~cccl_lite.engine.metrics.recall_at_k` under ``protocol`` (None: all
    images; see :func:`check_protocol`, checked before scoring). Captions are
    grouped per image from ``captions/image``. ``save_sims``: also write sims
    there (.npy, atomic). ``batch_size``: items per encoding batch;
    ``image_chunk``, ``text_chunk``, ``amp``: see :func:`score_matrix`.
    ``log``: where a protocol note goes (default: a warning).

    ``shortlist=k``: two-stage retrieval (:func:`two_stage_scores`): each
    image re-ranks only its top-k captions by Branch 1's cheap score, each
    caption its top-k images; sims then hold F for the re-ranked pairs and
    the shifted cheap score elsewhere (see :class:`TwoStageScores`). Not
    with ``protocol="coco1k"``.
    """
    cpi, order, note = check_evaluation(reader, protocol, fold_size, shortlist)
    if save_sims is not None:
        check_writable(save_sims)
    with eval_mode(model):
        images = encode_all_images(model, reader, batch_size, device, amp)
        texts = encode_all_texts(model, reader, batch_size, device, amp)
        if shortlist is None:
            sims = score_matrix(model, images, texts, image_chunk, text_chunk, amp)
        else:
            two = two_stage_scores(model, images, texts, shortlist, amp)
            sims = two.sims
    del images, texts
    if save_sims is not None:
        save_sims_npy(save_sims, sims)
    if shortlist is None:
        recalls, _ = protocol_recalls(sims if order is None else sims[:, order], cpi, protocol,
                                      fold_size)
    else:
        recalls = _two_stage_recalls(two, order, cpi, protocol, fold_size)
    if note:
        (log or (lambda s: warnings.warn(s, stacklevel=3)))(note)
    return recalls, sims


# ---- retrieval ------------------------------------------------------------


class Hit(NamedTuple):
    """One retrieved item, best first.

    ``index``: a caption (image query) or an image (caption query) of the
    split; ``score``: F (eq 32); ``text``: that caption, or for an image one
    of its captions (not the query itself when it has another); ``match``:
    True for the ground truth (a caption of the query image, the query
    caption's image).
    """

    index: int
    score: float
    text: str
    match: bool


def _check_index(value, n: int, what: str, split: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} index must be an int, got {value!r}")
    if not 0 <= value < n:
        raise ValueError(f"{what} index {value} out of range: split {split!r} has {n} "
                         f"{what}s (0..{n - 1})")
    return int(value)


def caption_texts(reader: SplitReader) -> np.ndarray:
    """The caption strings of ``reader``'s split, in the file's order."""
    with h5py.File(reader.path, "r") as f:
        return f[reader.split]["captions/text"].asstr()[:]


@torch.no_grad()
def retrieve(model: CCCL, reader: SplitReader, image: int | None = None,
             caption: int | None = None, k: int = 5, device="cpu", batch_size: int = 256,
             amp: bool | None = None, shortlist: int | None = None) -> list[Hit]:
    """The top-``k`` captions for ``image``, or images for ``caption`` (exactly one).

    An image query encodes that image once and scores it against every caption
    of the split; a caption query scores that caption against every image.
    Ranked by F (eq 32), ties in index order; ``k`` is capped at the number of
    candidates. ``shortlist=s`` (>= k): two-stage, only the top-s candidates
    by Branch 1's cheap score (:func:`cheap_scores`) are scored by the full
    model and ranked. Raises ValueError on a bad index, k or shortlist.
    """
    if (image is None) == (caption is None):
        raise ValueError("retrieve needs exactly one of image= and caption=")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if shortlist is not None and check_shortlist(shortlist) < k:
        raise ValueError(f"shortlist ({shortlist}) must be >= k ({k}): only shortlisted "
                         f"candidates are ranked")
    owner = np.asarray(reader.caption_image)
    with eval_mode(model):
        if image is not None:
            image = _check_index(image, reader.n_images, "image", reader.split)
            images = encode_all_images(model, reader, 1, device, amp, indices=[image])
            texts = encode_all_texts(model, reader, batch_size, device, amp)
        else:
            caption = _check_index(caption, reader.n_captions, "caption", reader.split)
            images = encode_all_images(model, reader, batch_size, device, amp)
            texts = encode_all_texts(model, reader, 1, device, amp, indices=[caption])
        if shortlist is None:
            scores = score_matrix(model, images, texts, amp=amp)
            scores = scores[0] if image is not None else scores[:, 0]
        else:
            cheap = cheap_scores(model, images, texts, amp)
            cheap = cheap[0] if image is not None else cheap[:, 0]
            keep = torch.sort(cheap, descending=True, stable=True).indices[:shortlist]
            zeros = torch.zeros_like(keep)
            pairs = (zeros, keep) if image is not None else (keep, zeros)
            scores = torch.full_like(cheap, -math.inf)
            scores[keep] = score_pairs(model, images, texts, *pairs, amp=amp)
            k = min(k, len(keep))
    top = torch.sort(scores, descending=True, stable=True).indices[:k].tolist()
    texts = caption_texts(reader)
    if image is not None:
        return [Hit(j, float(scores[j]), str(texts[j]), bool(owner[j] == image)) for j in top]
    hits = []
    for i in top:
        own = [j for j in np.flatnonzero(owner == i) if j != caption] or \
              list(np.flatnonzero(owner == i))
        hits.append(Hit(i, float(scores[i]), str(texts[own[0]]) if own else "",
                        bool(owner[caption] == i)))
    return hits
