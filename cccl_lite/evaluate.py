"""Evaluation: encode every item once, score all pairs in chunks, R@K (eqs 35-36).

Taught in chapter 6 ("Training and evaluation").

Scoring is split as :class:`~cccl_lite.model.CCCL` splits it: everything that
depends on one item only (the encoders, v^S and t^S, the graphs V̂ and T̂, the
GRUs' node projections and cross states of eq 26) is computed once per image
and once per caption by :func:`encode_all_images` / :func:`encode_all_texts`;
:func:`score_matrix` then runs only the per-pair work (Branch 2's attention,
eq 26's recurrence, the VSFs and the shared MLP) on blocks of
``image_chunk x text_chunk`` pairs, so memory stays bounded whatever the
split's size. Blocks group items of similar length (regions, words) and are
trimmed to their longest item: padding never changes a score, so this only
skips work. On CUDA the work runs under bf16 autocast (``amp``); on the CPU in
the model's own dtype. Scores are float32 under any autocast (``_autocast``).

Protocols (:data:`PROTOCOLS`, NOTES.md "Training and evaluation"): ``f30k``
is the Flickr30K 1K test (1,000 images x 5,000 captions), ``coco1k`` the
mean over 5 folds of 1,000 COCO images, ``coco5k`` all 5,000 COCO images.

The command-line side (``python -m cccl_lite evaluate | retrieve``) is at
the end of the module (:func:`run_evaluate`, :func:`run_retrieve`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import h5py
import numpy as np
import torch

from .fast import fused
from .data.dataset import SplitReader
from .files import check_output_file, remove_stale_temps, temp_path
from .metrics import KEYS, coco_1k_recall, format_recalls, recall_at_k
from .model import CCCL, ImageEncoding, TextEncoding

__all__ = [
    "PROTOCOLS",
    "Hit",
    "encode_all_images",
    "encode_all_texts",
    "score_matrix",
    "per_caption_scores",
    "cheap_scores",
    "score_pairs",
    "TwoStageScores",
    "two_stage_scores",
    "caption_layout",
    "check_protocol",
    "protocol_recalls",
    "save_sims_npy",
    "evaluate_split",
    "retrieve",
    "add_evaluate_arguments",
    "run_evaluate",
    "add_retrieve_arguments",
    "run_retrieve",
]

PROTOCOLS = ("f30k", "coco1k", "coco5k")
COCO_FOLDS = 5

# Fields of an encoding with a sequence axis (B, L, ...): padded, trimmed, sorted by L.
_SEQUENCE_FIELDS = frozenset({"v", "t", "mask", "graph", "gru_input"})

# Default blocks: (elements of the largest per-pair tensor, pairs x L x d; most
# captions per block). CPU: 3 MiB fp32 tensors, about 1K lite pairs, where the
# PyTorch Branch 2 and GRUs ran fastest per pair in our measurements (larger
# blocks were slower: their gates no longer stay in cache; smaller ones pay
# the per-operation cost more often). CPU with the fused kernels
# (cccl_lite.fast.fused), which tile the pairs themselves: 16 times that, about 16K
# lite pairs, so Python's per-block work is spread over more pairs (1.25x
# faster here than 1K-pair blocks, at one and at two threads). GPU: 1 GiB,
# fewer and larger blocks keep it busy. Short text blocks group captions of
# similar length (less padding to step over).
_BLOCKS = {"cpu": (3 * 2**18, 128), "cpu_fused": (3 * 2**22, 256), "cuda": (2**28, 1024)}


def _autocast(device, amp: bool | torch.dtype | None):
    """bf16 autocast on CUDA by default (fp16 on a GPU without bf16 units);
    ``amp=True`` forces bf16 autocast on any device, ``amp=False`` keeps the
    model's dtype (always the default on the CPU), a dtype (torch.bfloat16,
    torch.float16) autocasts to that dtype.

    Whatever the setting, scores come out in float32: the shared MLP, its
    sigmoid and the fusion (eqs 28, 32) run with autocast off
    (:class:`~cccl_lite.loss.SimilarityMLP`), so only the similarity vectors
    see the reduced precision, and ranking never sees bf16's 0.004-wide
    grid near 1 (the ties it made cost R@sum up to 140 points).
    """
    kind = torch.device(device).type
    if isinstance(amp, torch.dtype):
        return torch.autocast(kind, dtype=amp)
    enabled = (kind == "cuda") if amp is None else bool(amp)
    dtype = torch.bfloat16
    if enabled and kind == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16  # e.g. a T4: no bf16 units (as the trainer's --amp auto)
    return torch.autocast(kind, dtype=dtype, enabled=enabled)


def _to(batch: dict, model: torch.nn.Module, device) -> tuple:
    """A reader's batch as model inputs on ``device``; float inputs in the model's
    dtype (a float64 model reads the float32 files too), ids and masks as they are."""
    dtype = next(model.parameters()).dtype
    return tuple(None if v is None else v.to(device, dtype if v.is_floating_point() else None)
                 for v in batch.values())


def _lean(enc, keep_graph: bool):
    """Drop V̂ / T̂ once their GRU parts are kept: scoring reads only those."""
    if keep_graph or enc.graph is None or (enc.gru_input is None and enc.relation is None):
        return enc
    return enc._replace(graph=None)


def _cat(parts, pad_to=None):
    """Concatenate per-batch encodings along the batch axis (None stays None);
    with ``pad_to``, sequence fields (B, L, ...) are zero-padded to L = pad_to."""
    fields = []
    for name, *values in zip(parts[0]._fields, *parts):
        if values[0] is None:
            fields.append(None)
            continue
        if pad_to is not None and name in _SEQUENCE_FIELDS:
            values = [torch.cat([v, v.new_zeros(v.shape[0], pad_to - v.shape[1], *v.shape[2:])], 1)
                      for v in values]
        fields.append(torch.cat(values))
    return fields


def _encode_parts(encode, fetch, idx, model, batch_size, device, amp, keep_graph) -> list:
    """``encode`` (a CCCL encoder) over the items ``idx`` fetched by ``fetch`` (a
    reader method) in batches of ``batch_size``: the lean encodings, in order."""
    parts = []
    with _autocast(device, amp):
        for s in range(0, len(idx), batch_size):
            parts.append(_lean(encode(*_to(fetch(idx[s:s + batch_size]), model, device)),
                               keep_graph))
    return parts


@torch.no_grad()
def encode_all_images(model: CCCL, reader: SplitReader, batch_size: int = 256, device="cpu",
                      amp: bool | None = None, keep_graph: bool = False,
                      indices=None) -> ImageEncoding:
    """Every image of the split (or those of ``indices``) encoded once: eqs 8-14, 21-25
    and eq 26's per-image GRU parts. Fields (N_img, n, ...) on ``device``; V̂ is
    dropped (None) unless ``keep_graph``, as scoring needs only its GRU parts."""
    idx = np.arange(reader.n_images) if indices is None else np.asarray(indices)
    parts = _encode_parts(model.encode_images, reader.images, idx, model, batch_size, device,
                          amp, keep_graph)
    return ImageEncoding(*_cat(parts))


@torch.no_grad()
def encode_all_texts(model: CCCL, reader: SplitReader, batch_size: int = 256, device="cpu",
                     amp: bool | None = None, keep_graph: bool = False,
                     indices=None) -> TextEncoding:
    """Every caption of the split (or those of ``indices``) encoded once: eqs 11-14, 22-25
    and eq 26's per-text GRU parts. Fields (N_txt, m, ...) on ``device``, padded to the
    longest caption (padding never changes a score); T̂ dropped unless ``keep_graph``."""
    idx = np.arange(reader.n_captions) if indices is None else np.asarray(indices)
    parts = _encode_parts(model.encode_texts, reader.captions, idx, model, batch_size, device,
                          amp, keep_graph)
    m = max(p.t.shape[1] for p in parts)
    return TextEncoding(*_cat(parts, pad_to=m))


def _lengths(mask: torch.Tensor) -> torch.Tensor:
    """1 + the last valid position of each item (its length for prefix masks): (B,) on CPU."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask * pos).amax(1).cpu()


def _take(enc, idx: torch.Tensor, length: int):
    """Items ``idx`` of an encoding, sequence fields trimmed to ``length`` steps."""
    fields = []
    for name, x in zip(enc._fields, enc):
        if x is not None and name in _SEQUENCE_FIELDS:
            x = x[:, :length]
        fields.append(None if x is None else x[idx])
    return type(enc)(*fields)


def _slice(enc, start: int, size: int, length: int):
    """Items start..start+size of an encoding as views, sequence fields cut to ``length``."""
    return type(enc)(*(None if x is None else
                       x[start:start + size, :length] if name in _SEQUENCE_FIELDS else
                       x[start:start + size] for name, x in zip(enc._fields, enc)))


def _default_chunks(images, texts, device) -> tuple[int, int]:
    """(image_chunk, text_chunk) whose block holds about _BLOCKS' elements in
    its largest per-pair tensor (Branch 2's attended vectors, pairs x L x d)."""
    length = max(images.mask.shape[1], texts.mask.shape[1], 1)
    dim = max(images.v.shape[-1], 1)
    kind = torch.device(device).type
    if kind == "cpu" and fused.available():
        kind = "cpu_fused"
    budget, most_texts = _BLOCKS.get(kind, _BLOCKS["cuda"])
    pairs = max(1, budget // (length * dim))
    text_chunk = max(1, min(texts.t.shape[0], most_texts, pairs))
    return max(1, pairs // text_chunk), text_chunk


@torch.no_grad()
def score_matrix(model: CCCL, images: ImageEncoding, texts: TextEncoding,
                 image_chunk: int | None = None, text_chunk: int | None = None,
                 amp: bool | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """F (eq 32) for every (image, text) pair: (N_img, N_txt) of ``dtype`` on the CPU.

    ``images``, ``texts`` from :func:`encode_all_images` / :func:`encode_all_texts`
    (any CCCL encodings work; missing GRU parts are then recomputed per block).
    Pairs are scored in blocks of ``image_chunk x text_chunk`` (default: sized to
    the device, see ``_BLOCKS``), items of similar length together, each
    block trimmed to its longest item. ``amp``: see ``_autocast``.
    """
    n_img, n_txt = images.v.shape[0], texts.t.shape[0]
    device = images.v.device
    for name, value in (("image_chunk", image_chunk), ("text_chunk", text_chunk)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    auto = _default_chunks(images, texts, device)
    image_chunk, text_chunk = image_chunk or auto[0], text_chunk or auto[1]
    img_len, txt_len = _lengths(images.mask), _lengths(texts.mask)
    img_order = torch.sort(img_len, stable=True).indices
    txt_order = torch.sort(txt_len, stable=True).indices
    sims = torch.empty(n_img, n_txt, dtype=dtype)
    txt_blocks = [txt_order[s:s + text_chunk] for s in range(0, n_txt, text_chunk)]
    # On the CPU, text blocks are gathered once, not once per image block (the
    # copies cost as much as a few passes over a block's gates); on a GPU the
    # gathers are cheap and a second copy of every text would cost memory.
    txt_taken = None
    if torch.device(device).type == "cpu" and len(txt_blocks) > 1 and n_img > image_chunk:
        txt_taken = [_take(texts, tt, int(txt_len[tt].max())) for tt in txt_blocks]
    with _autocast(device, amp):
        for s in range(0, n_img, image_chunk):
            ii = img_order[s:s + image_chunk]
            img = _take(images, ii.to(device), int(img_len[ii].max()))
            for k, tt in enumerate(txt_blocks):
                txt = txt_taken[k] if txt_taken is not None else \
                    _take(texts, tt.to(device), int(txt_len[tt].max()))
                sims[ii[:, None], tt[None, :]] = model.score(img, txt)[0].to("cpu", dtype)
    return sims


@torch.no_grad()
def per_caption_scores(model: CCCL, images: ImageEncoding, texts: TextEncoding, captions=None,
                       shard: int = 100, *, fast: bool = False, amp: bool | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """F (eq 32) of every image against each caption of ``captions``, the naive way:
    (N_img, len(captions)) of ``dtype`` on the CPU.

    SGRAF's evaluation loop, the baseline of chapter 10 and benchmarks/: one
    caption at a time (trimmed to its length), against the images in shards
    of ``shard``. ``fast=False`` runs the equations as printed; with encodings
    that lack eq 26's per-item parts (gru_input, cross_state None) the GRUs
    then read their inputs on every call, as a per-pair implementation would.
    ``captions``: indices (default: all).
    """
    if not isinstance(shard, int) or shard < 1:
        raise ValueError(f"shard must be a positive int, got {shard!r}")
    n_img = images.v.shape[0]
    captions = list(range(texts.t.shape[0]) if captions is None else captions)
    device = images.v.device
    txt_len, img_len = _lengths(texts.mask), _lengths(images.mask)
    out = torch.empty(n_img, len(captions), dtype=dtype)
    with _autocast(device, amp):
        for k, j in enumerate(captions):
            txt = _take(texts, torch.tensor([j], device=device), int(txt_len[j]))
            for s in range(0, n_img, shard):
                img = _slice(images, s, shard, int(img_len[s:s + shard].max()))
                out[s:s + shard, k] = model.score(img, txt, fast=fast)[0][:, 0].to("cpu", dtype)
    return out


# ---- two-stage retrieval --------------------------------------------------


@torch.no_grad()
def cheap_scores(model: CCCL, images: ImageEncoding, texts: TextEncoding,
                 amp: bool | None = None) -> torch.Tensor:
    """The first stage's score for every pair: (N_img, N_txt) float32 on the CPU.

    Branch 1's score S^S = MLP(VSF(v^S, t^S)) (eqs 16, 28), which needs only
    the per-item vectors v^S, t^S: per pair d·P + P² multiply-adds, against
    thousands of times more for Branch 3's recurrences at the paper's size.
    Under "w/o B-1" (no S^S) the cosine of v^S and t^S, one matrix product.
    Computed in blocks of images (the (block, N_txt, P) tensor is bounded).
    """
    n_img, n_txt = images.global_vec.shape[0], texts.global_vec.shape[0]
    device = images.global_vec.device
    out = torch.empty(n_img, n_txt, dtype=torch.float32)
    if not model.config.use_branch1:
        a = torch.nn.functional.normalize(images.global_vec.float(), dim=-1)
        b = torch.nn.functional.normalize(texts.global_vec.float(), dim=-1)
        for s in range(0, n_img, 1024):
            out[s:s + 1024] = (a[s:s + 1024] @ b.t()).cpu()
        return out
    budget = _BLOCKS.get(device.type, _BLOCKS["cuda"])[0]
    width = max(images.global_vec.shape[-1], model.config.sim_dim)
    rows = max(1, budget // (n_txt * width))
    with _autocast(device, amp):
        for s in range(0, n_img, rows):
            sim = model.global_branch(images.global_vec[s:s + rows], texts.global_vec)
            out[s:s + rows] = model.mlp(sim).to("cpu", torch.float32)
    return out


@torch.no_grad()
def score_pairs(model: CCCL, images: ImageEncoding, texts: TextEncoding, image_index,
                text_index, chunk: int | None = None, amp: bool | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """F (eq 32) of the listed pairs (image_index[p], text_index[p]) only: (P,) on the CPU.

    Pairs are sorted by length (regions, words), gathered into chunks of at
    most ``chunk`` (default: sized to the device as :func:`score_matrix`'s
    blocks) and scored by :meth:`CCCL.score_pairs`, each chunk trimmed to
    its longest item.
    """
    ii = torch.as_tensor(image_index, dtype=torch.long).cpu()
    tt = torch.as_tensor(text_index, dtype=torch.long).cpu()
    if ii.shape != tt.shape or ii.dim() != 1:
        raise ValueError(f"score_pairs: image_index and text_index must be 1-D of one length, "
                         f"got {tuple(ii.shape)} and {tuple(tt.shape)}")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")
    device = images.v.device
    if chunk is None:
        length = max(images.mask.shape[1], texts.mask.shape[1], 1)
        budget = _BLOCKS.get(device.type, _BLOCKS["cuda"])[0]
        chunk = max(1, budget // (length * images.v.shape[-1]))
    img_len, txt_len = _lengths(images.mask), _lengths(texts.mask)
    # Sort by (image length, text length): chunks of similar lengths pad little.
    key = img_len[ii] * (int(txt_len.max()) + 1) + txt_len[tt] if len(ii) else ii
    order = torch.sort(key, stable=True).indices
    out = torch.empty(len(ii), dtype=dtype)
    with _autocast(device, amp):
        for s in range(0, len(order), chunk):
            sel = order[s:s + chunk]
            a, b = ii[sel], tt[sel]
            img = _take(images, a.to(device), int(img_len[a].max()))
            txt = _take(texts, b.to(device), int(txt_len[b].max()))
            out[sel] = model.score_pairs(img, txt)[0].to("cpu", dtype)
    return out


class TwoStageScores(NamedTuple):
    """Scores of two-stage retrieval (:func:`two_stage_scores`), all (N_img, N_txt).

    ``sims``: F (eq 32) for every pair some shortlist kept, elsewhere
    ``below``; ``below``: the cheap score shifted under every F (F lies in
    [0, 1]: pairs outside a shortlist rank after it, in the cheap order);
    ``i2t``, ``t2i``: bool, each image's shortlisted captions (rows) and each
    caption's shortlisted images (columns); ``reranked``: pairs scored by the
    full model.
    """

    sims: torch.Tensor
    below: torch.Tensor
    i2t: torch.Tensor
    t2i: torch.Tensor
    reranked: int

    def direction(self, which: str) -> torch.Tensor:
        """The matrix one direction ranks by: F on that direction's shortlist only."""
        if which not in ("i2t", "t2i"):
            raise ValueError(f"direction must be 'i2t' or 't2i', got {which!r}")
        return torch.where(self.i2t if which == "i2t" else self.t2i, self.sims, self.below)


_NO_COCO1K_SHORTLIST = ("shortlist is not available with --protocol coco1k (its folds rank "
                        "within 1K images); use f30k, coco5k or no shortlist")


def _check_shortlist(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"shortlist must be a positive int (candidates re-ranked per "
                         f"query), got {k!r}")
    return int(k)


@torch.no_grad()
def two_stage_scores(model: CCCL, images: ImageEncoding, texts: TextEncoding, shortlist: int,
                     amp: bool | None = None, chunk: int | None = None) -> TwoStageScores:
    """Shortlist with :func:`cheap_scores`, re-rank the shortlist with the full CCCL.

    Each image keeps its top-``shortlist`` captions and each caption its
    top-``shortlist`` images by the cheap score (capped at the candidates
    there are); every pair either kept is scored once by
    :func:`score_pairs`. With ``shortlist`` >= N_img and N_txt every pair is
    re-ranked: the full ranking.
    """
    k = _check_shortlist(shortlist)
    cheap = cheap_scores(model, images, texts, amp)
    n_img, n_txt = cheap.shape
    i2t = torch.zeros(n_img, n_txt, dtype=torch.bool)
    t2i = torch.zeros(n_img, n_txt, dtype=torch.bool)
    i2t.scatter_(1, cheap.topk(min(k, n_txt), dim=1).indices, True)
    t2i.scatter_(0, cheap.topk(min(k, n_img), dim=0).indices, True)
    ii, tt = (i2t | t2i).nonzero(as_tuple=True)
    below = cheap - cheap.max() - 1.0  # every value <= -1 < 0 <= F
    sims = below.clone()
    sims[ii, tt] = score_pairs(model, images, texts, ii, tt, chunk, amp)
    return TwoStageScores(sims, below, i2t, t2i, len(ii))


def _two_stage_recalls(scores: TwoStageScores, order, cpi: int, protocol, fold_size: int):
    """Recalls (eqs 35-36) with each direction ranked by its own shortlist."""
    if protocol == "coco1k":
        raise ValueError(_NO_COCO1K_SHORTLIST)
    parts = {}
    for which in ("i2t", "t2i"):
        m = scores.direction(which)
        parts[which], _ = protocol_recalls(m if order is None else m[:, order], cpi, protocol,
                                           fold_size)
    out = {key: parts[key[:3]][key] for key in KEYS[:-1]}
    out["rsum"] = float(sum(out[key] for key in KEYS[:-1]))  # eq 36, as metrics sums it
    return out


# ---- protocols ------------------------------------------------------------


def caption_layout(caption_image, n_images: int) -> tuple[int, np.ndarray | None]:
    """(captions_per_image, column order) for the metrics, which want caption j
    to belong to image j // captions_per_image (``cccl_lite.metrics``).

    The order is None when the split is laid out that way already, else the
    stable permutation of the captions that groups them by image. Raises
    ValueError unless every image has the same number (>= 1) of captions.
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    counts = np.bincount(caption_image, minlength=n_images)
    if n_images == 0:
        raise ValueError("R@K needs at least one image; this split has none")
    if len(counts) != n_images or counts.min() < 1 or counts.min() != counts.max():
        raise ValueError(f"R@K needs the same number of captions for every image; this split "
                         f"has {len(caption_image)} captions for {n_images} images "
                         f"({int(counts.min())} to {int(counts.max())} per image)")
    cpi = int(counts[0])
    if np.array_equal(caption_image, np.arange(len(caption_image)) // cpi):
        return cpi, None
    return cpi, np.argsort(caption_image, kind="stable")


def check_protocol(protocol: str | None, n_images: int, n_captions: int,
                   fold_size: int = 1000) -> str | None:
    """Check a split's size against ``protocol`` before any scoring.

    f30k expects ``fold_size`` images x 5 captions each, coco5k 5 folds of
    them; other sizes are evaluated on all images and the returned note says
    so (None when the size is as expected). coco1k needs exactly
    ``COCO_FOLDS * fold_size`` images: ValueError otherwise.
    """
    if protocol is None:
        return None
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if protocol == "coco1k":
        if n_images != COCO_FOLDS * fold_size:
            raise ValueError(f"coco1k needs {COCO_FOLDS} folds of {fold_size} images = "
                             f"{COCO_FOLDS * fold_size} images; this split has {n_images}")
        return None
    want = fold_size if protocol == "f30k" else COCO_FOLDS * fold_size
    if (n_images, n_captions) == (want, 5 * want):
        return None
    return (f"{protocol}: expected {want} images x {5 * want} captions, this split has "
            f"{n_images} x {n_captions}; recalls are over all {n_images} images")


def protocol_recalls(sims, captions_per_image: int = 5, protocol: str | None = None,
                     fold_size: int = 1000) -> tuple[dict[str, float], str | None]:
    """(recalls, note) of a grouped score matrix (N_img, N_img * captions_per_image)
    under ``protocol`` (eqs 35-36): coco1k averages :func:`coco_1k_recall` over 5
    folds of ``fold_size`` images, the others rank against all images. ``note``
    as :func:`check_protocol`."""
    note = check_protocol(protocol, sims.shape[0], sims.shape[1], fold_size)
    if protocol == "coco1k":
        return coco_1k_recall(sims, COCO_FOLDS, captions_per_image), note
    return recall_at_k(sims, captions_per_image), note


def save_sims_npy(path, sims) -> Path:
    """Write the score matrix to ``path`` as .npy (float32), atomically: a temp
    file in the same folder renamed over ``path`` once complete."""
    path = Path(path)
    arr = (sims.detach().cpu().float().numpy() if isinstance(sims, torch.Tensor)
           else np.asarray(sims, dtype=np.float32))
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr)  # a file object: np.save would append ".npy" to a name
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _check_writable(path, overwrite: bool = True) -> None:
    """Fail before minutes of scoring, not after, if ``path`` cannot be
    written: a folder, a folder that does not exist or is not writable, or
    (``overwrite=False``, the command line without --overwrite) a file that
    exists. Raises :class:`cccl_lite.files.OutputError` (a ValueError)."""
    folder = Path(path).resolve().parent
    if not folder.is_dir() and not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: folder {folder} does not exist")
    check_output_file(path, overwrite, "score matrix (--save-sims)")


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate_split(model: CCCL, reader: SplitReader, device="cpu", batch_size: int = 256, *,
                   protocol: str | None = None, save_sims=None, amp: bool | None = None,
                   image_chunk: int | None = None, text_chunk: int | None = None,
                   fold_size: int = 1000, log: Callable[[str], None] | None = None,
                   shortlist: int | None = None):
    """(recalls, sims) of ``model`` (already on ``device``) on one split (eqs 35-36).

    sims: F (eq 32) for every image x caption of the split, (N_img, N_txt)
    float32 on the CPU, in the file's order; recalls: the dict of
    :func:`~cccl_lite.metrics.recall_at_k` under ``protocol`` (None: all
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
    cpi, order = caption_layout(reader.caption_image, reader.n_images)
    note = check_protocol(protocol, reader.n_images, reader.n_captions, fold_size)
    if shortlist is not None:
        _check_shortlist(shortlist)
        if protocol == "coco1k":  # before any scoring
            raise ValueError(_NO_COCO1K_SHORTLIST)
    if save_sims is not None:
        _check_writable(save_sims)
    with _eval_mode(model):
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


def _caption_texts(reader: SplitReader) -> np.ndarray:
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
    if shortlist is not None and _check_shortlist(shortlist) < k:
        raise ValueError(f"shortlist ({shortlist}) must be >= k ({k}): only shortlisted "
                         f"candidates are ranked")
    owner = np.asarray(reader.caption_image)
    with _eval_mode(model):
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
    texts = _caption_texts(reader)
    if image is not None:
        return [Hit(j, float(scores[j]), str(texts[j]), bool(owner[j] == image)) for j in top]
    hits = []
    for i in top:
        own = [j for j in np.flatnonzero(owner == i) if j != caption] or \
              list(np.flatnonzero(owner == i))
        hits.append(Hit(i, float(scores[i]), str(texts[own[0]]) if own else "",
                        bool(owner[caption] == i)))
    return hits


# ---- command line (cccl_lite.cli) -------------------------------------------


def _common_arguments(p) -> None:
    from .cli import positive_int

    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train (best.pt)")
    p.add_argument("--data", required=True, help="the dataset's HDF5 file")
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="items per encoding batch (default: 256)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="no bf16 autocast on CUDA (the CPU always runs fp32)")


def add_evaluate_arguments(p) -> None:
    """Arguments of ``python -m cccl_lite evaluate``."""
    from .cli import positive_int

    _common_arguments(p)
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="f30k: 1K test; coco1k: mean of 5 folds of 1K; coco5k: all 5K images "
                        "(default: all images of the split)")
    p.add_argument("--save-sims", metavar="FILE.npy", default=None,
                   help="also write the (N_img, N_txt) score matrix there")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --save-sims file (default: refuse)")
    p.add_argument("--fold-size", type=positive_int, default=1000,
                   help="images per 1K fold of the protocols (default: 1000)")
    p.add_argument("--image-chunk", type=positive_int, default=None,
                   help="images per scoring block (default: sized to the device)")
    p.add_argument("--text-chunk", type=positive_int, default=None,
                   help="captions per scoring block (default: sized to the device)")
    p.add_argument("--shortlist", type=positive_int, default=None, metavar="K",
                   help="two-stage: re-rank only each query's top K candidates by Branch 1's "
                        "cheap score with the full model (default: score every pair)")


def add_retrieve_arguments(p) -> None:
    """Arguments of ``python -m cccl_lite retrieve``."""
    from .cli import positive_int

    _common_arguments(p)
    p.add_argument("--image", type=int, default=None, help="query: this image's index")
    p.add_argument("--caption", type=int, default=None, help="query: this caption's index")
    p.add_argument("--k", type=positive_int, default=5, help="results to show (default: 5)")
    p.add_argument("--shortlist", type=positive_int, default=None, metavar="S",
                   help="two-stage: score only the top S (>= k) candidates by Branch 1's "
                        "cheap score with the full model (default: every candidate)")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _device(name: str) -> torch.device:
    from .cli import CLIError

    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"--device {name}: {_one_line(e)}") from None
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {name}: expected cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return device


def _load(args):
    """(model, config, reader) for a command, after checking that they fit."""
    from .cli import CLIError

    ckpt, data = Path(args.checkpoint), Path(args.data)
    if not ckpt.is_file():
        raise CLIError(f"{ckpt}: no such checkpoint file")
    if not data.is_file():
        raise CLIError(f"{data}: no such data file")
    device = _device(args.device)
    try:
        from .train import load_model, make_reader
    except ImportError as e:
        raise CLIError(f"cannot read checkpoints: cccl_lite.train is unavailable ({e})") from None
    try:
        model, config, vocab = load_model(ckpt, device=device)
    except (CLIError, ValueError, FileNotFoundError):
        raise
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as e:
        raise CLIError(f"{ckpt}: not a readable CCCL checkpoint ({_one_line(e)})") from None
    if not config.use_bert and vocab is None:
        raise CLIError(f"{ckpt}: a 'w/o BERT' checkpoint without its vocabulary")
    # The reader training used: no parse heads where the model reads none
    # ("w/o S-NLP", "w/o B-3"), so such a checkpoint runs on unparsed data.
    reader = make_reader(data, args.split, config, vocab)
    where = f"{data}:/{args.split}"
    if reader.region_dim != config.region_dim:
        raise CLIError(f"checkpoint and data do not fit: the checkpoint's region_dim is "
                       f"{config.region_dim}, {where} has {reader.region_dim}-d region features")
    if config.use_bert and reader.word_dim != config.word_dim:
        raise CLIError(f"checkpoint and data do not fit: the checkpoint's word_dim is "
                       f"{config.word_dim}, {where} has {reader.word_dim}-d word vectors "
                       f"({reader.encoder or 'unknown encoder'})")
    if config.use_position and not reader.has_boxes:
        raise CLIError(f"{data} has no boxes: this checkpoint needs them (only 'w/o POS' can "
                       f"run without)")
    return model, config, reader, device


def run_evaluate(args) -> int:
    """``evaluate``: the recall table (eqs 35-36), then one JSON line of its numbers."""
    from .cli import CLIError

    model, config, reader, device = _load(args)
    # evaluate_split checks these too; here they also come before any output.
    caption_layout(reader.caption_image, reader.n_images)
    check_protocol(args.protocol, reader.n_images, reader.n_captions, args.fold_size)
    if args.shortlist is not None and args.protocol == "coco1k":
        raise CLIError(f"--{_NO_COCO1K_SHORTLIST}")
    if args.save_sims:  # never replaces an existing file without --overwrite
        _check_writable(args.save_sims, overwrite=args.overwrite)
    print(f"evaluate {args.checkpoint} on {args.data}:/{args.split} ({reader.n_images} images, "
          f"{reader.n_captions} captions), protocol {args.protocol or 'all images'}, "
          f"{config.ablation or 'full model'}, {device}"
          + (f", shortlist {args.shortlist}" if args.shortlist else ""))
    start = time.perf_counter()
    recalls, sims = evaluate_split(model, reader, device, args.batch_size,
                                   protocol=args.protocol, save_sims=args.save_sims, amp=args.amp,
                                   image_chunk=args.image_chunk, text_chunk=args.text_chunk,
                                   fold_size=args.fold_size, log=lambda s: print(f"note: {s}"),
                                   shortlist=args.shortlist)
    seconds = time.perf_counter() - start
    if args.shortlist:
        print(f"two-stage: {sims.numel():,} pairs shortlisted by Branch 1, the top "
              f"{args.shortlist} per query re-ranked by the full model, in {seconds:.1f} s")
    else:
        print(f"scored {sims.numel():,} pairs in {seconds:.1f} s "
              f"({sims.numel() / max(seconds, 1e-9):,.0f} pairs/s)")
    if args.save_sims:
        print(f"score matrix {tuple(sims.shape)} written to {args.save_sims}")
    print(format_recalls(recalls))
    print(json.dumps({key: recalls[key] for key in KEYS}))
    return 0


def _image_label(reader: SplitReader) -> Callable[[Hit], str]:
    """How a retrieved image is shown: one of its captions for synthetic scenes
    (they describe the scene), else its source id when the file has one."""
    with h5py.File(reader.path, "r") as f:
        synthetic = f.attrs.get("dataset") == "synthetic-scenes"
        ids = f[reader.split]["images/id"][:] if "images/id" in f[reader.split] else None
    if synthetic:
        return lambda hit: f'e.g. "{hit.text}"'
    if ids is not None:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        return lambda hit: f"id {ids[hit.index]}"
    return lambda hit: ""


def run_retrieve(args) -> int:
    """``retrieve``: the top-k captions of an image, or images of a caption, with scores."""
    from .cli import CLIError

    if (args.image is None) == (args.caption is None):
        raise CLIError("retrieve needs exactly one of --image I and --caption J")
    model, _, reader, device = _load(args)
    n, what = ((reader.n_images, "image") if args.image is not None
               else (reader.n_captions, "caption"))
    index = args.image if args.image is not None else args.caption
    if not 0 <= index < n:
        raise CLIError(f"--{what} {index} out of range: {args.data}:/{args.split} has {n} "
                       f"{what}s (0..{n - 1})")
    if args.shortlist is not None and args.shortlist < args.k:
        raise CLIError(f"--shortlist {args.shortlist} must be >= --k {args.k}")
    hits = retrieve(model, reader, image=args.image, caption=args.caption, k=args.k,
                    device=device, batch_size=args.batch_size, amp=args.amp,
                    shortlist=args.shortlist)
    if args.image is not None:
        print(f"image {args.image} of {args.split}: top {len(hits)} of {reader.n_captions} "
              f"captions (* = a caption of this image)")
        for r, h in enumerate(hits, 1):
            mark = "*" if h.match else " "
            print(f"{r:>3}. caption {h.index:>6}  {h.score:+.4f} {mark} {h.text}")
    else:
        text = _caption_texts(reader)[args.caption]
        print(f'caption {args.caption} of {args.split}: "{text}" (image '
              f"{int(reader.caption_image[args.caption])}): top {len(hits)} of "
              f"{reader.n_images} images (* = its image)")
        label = _image_label(reader)
        for r, h in enumerate(hits, 1):
            print(f"{r:>3}. image {h.index:>6}  {h.score:+.4f} {'*' if h.match else ' '} "
                  f"{label(h)}".rstrip())
    return 0
