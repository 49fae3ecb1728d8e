"""Scoring: encode every item once, score all pairs in blocks; the two-stage shortcut.

Taught in chapters 6 and 10. Scoring is split as
:class:`~cccl_lite.model.cccl.CCCL` splits it: everything that depends on one
item only (the encoders, v^S and t^S, the graphs V̂ and T̂, the GRUs' node
projections and cross states of eq 26) is computed once per image and once
per caption by :func:`encode_all_images` / :func:`encode_all_texts`;
:func:`score_matrix` then runs only the per-pair work (Branch 2's attention,
eq 26's recurrence, the VSFs and the shared MLP) on blocks of
``image_chunk x text_chunk`` pairs, so memory stays bounded whatever the
split's size. Blocks group items of similar length (regions, words) and are
trimmed to their longest item: padding never changes a score, so this only
skips work. On CUDA the work runs under bf16 autocast (``amp``); on the CPU in
the model's own dtype. Scores are float32 under any autocast (``autocast_for``).

Two-stage retrieval (:func:`two_stage_scores`): Branch 1's cheap score
(:func:`cheap_scores`) shortlists, the full model re-ranks the shortlist
(:func:`score_pairs`). :func:`per_caption_scores` is the naive baseline
(one caption at a time) that chapter 10 and ``benchmarks/`` time.

The recalls of a split (eqs 35-36) are :mod:`cccl_lite.engine.evaluate`'s.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from cccl_lite.data.dataset import SplitReader
from cccl_lite.model.fast import fused
from cccl_lite.model.cccl import CCCL, SEQUENCE_FIELDS, ImageEncoding, TextEncoding, select_rows

__all__ = [
    "autocast_for",
    "lean_encoding",
    "concat_encodings",
    "check_shortlist",
    "encode_all_images",
    "encode_all_texts",
    "score_matrix",
    "per_caption_scores",
    "cheap_scores",
    "score_pairs",
    "TwoStageScores",
    "two_stage_scores",
]

# Default blocks: (elements of the largest per-pair tensor, pairs x L x d; most
# captions per block). CPU: 3 MiB fp32 tensors, about 1K lite pairs, where the
# PyTorch Branch 2 and GRUs ran fastest per pair in our measurements (larger
# blocks were slower: their gates no longer stay in cache; smaller ones pay
# the per-operation cost more often). CPU with the fused kernels
# (cccl_lite.model.fast.fused), which tile the pairs themselves: 16 times that, about 16K
# lite pairs, so Python's per-block work is spread over more pairs (1.25x
# faster here than 1K-pair blocks, at one and at two threads). GPU: 1 GiB,
# fewer and larger blocks keep it busy. Short text blocks group captions of
# similar length (less padding to step over).
_BLOCKS = {"cpu": (3 * 2**18, 128), "cpu_fused": (3 * 2**22, 256), "cuda": (2**28, 1024)}


def autocast_for(device, amp: bool | torch.dtype | None):
    """bf16 autocast on CUDA by default (fp16 on a GPU without bf16 units);
    ``amp=True`` forces bf16 autocast on any device, ``amp=False`` keeps the
    model's dtype (always the default on the CPU), a dtype (torch.bfloat16,
    torch.float16) autocasts to that dtype.

    Whatever the setting, scores come out in float32: the shared MLP, its
    sigmoid and the fusion (eqs 28, 32) run with autocast off
    (:class:`~cccl_lite.model.loss.SimilarityMLP`), so only the similarity vectors
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


def lean_encoding(enc, keep_graph: bool):
    """Drop V̂ / T̂ once their GRU parts are kept: scoring reads only those."""
    if keep_graph or enc.graph is None or (enc.gru_input is None and enc.relation is None):
        return enc
    return enc._replace(graph=None)


def concat_encodings(parts, pad_to=None):
    """Concatenate per-batch encodings along the batch axis (None stays None);
    with ``pad_to``, sequence fields (B, L, ...) are zero-padded to L = pad_to."""
    fields = []
    for name, *values in zip(parts[0]._fields, *parts):
        if values[0] is None:
            fields.append(None)
            continue
        if pad_to is not None and name in SEQUENCE_FIELDS:
            values = [torch.cat([v, v.new_zeros(v.shape[0], pad_to - v.shape[1], *v.shape[2:])], 1)
                      for v in values]
        fields.append(torch.cat(values))
    return fields


def _encode_parts(encode, fetch, idx, model, batch_size, device, amp, keep_graph) -> list:
    """``encode`` (a CCCL encoder) over the items ``idx`` fetched by ``fetch`` (a
    reader method) in batches of ``batch_size``: the lean encodings, in order."""
    parts = []
    with autocast_for(device, amp):
        for s in range(0, len(idx), batch_size):
            parts.append(lean_encoding(encode(*_to(fetch(idx[s:s + batch_size]), model, device)),
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
    return ImageEncoding(*concat_encodings(parts))


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
    return TextEncoding(*concat_encodings(parts, pad_to=m))


def _lengths(mask: torch.Tensor) -> torch.Tensor:
    """1 + the last valid position of each item (its length for prefix masks): (B,) on CPU."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask * pos).amax(1).cpu()


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
    block trimmed to its longest item. ``amp``: see ``autocast_for``.
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
        txt_taken = [select_rows(texts, tt, int(txt_len[tt].max())) for tt in txt_blocks]
    with autocast_for(device, amp):
        for s in range(0, n_img, image_chunk):
            ii = img_order[s:s + image_chunk]
            img = select_rows(images, ii.to(device), int(img_len[ii].max()))
            for k, tt in enumerate(txt_blocks):
                txt = txt_taken[k] if txt_taken is not None else \
                    select_rows(texts, tt.to(device), int(txt_len[tt].max()))
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
    with autocast_for(device, amp):
        for k, j in enumerate(captions):
            txt = select_rows(texts, torch.tensor([j], device=device), int(txt_len[j]))
            for s in range(0, n_img, shard):
                img = select_rows(images, slice(s, s + shard), int(img_len[s:s + shard].max()))
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
    with autocast_for(device, amp):
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
    with autocast_for(device, amp):
        for s in range(0, len(order), chunk):
            sel = order[s:s + chunk]
            a, b = ii[sel], tt[sel]
            img = select_rows(images, a.to(device), int(img_len[a].max()))
            txt = select_rows(texts, b.to(device), int(txt_len[b].max()))
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


def check_shortlist(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"shortlist must be a positive int (candidates re-ranked per "
                         f"query), got {k!r}")
    return int(k)


@torch.no_grad()
def two_stage_scores(model: CCCL, images: ImageEncoding, texts: TextEncoding, shortlist: int,
                     amp: bool | None = None, chunk: int | None = None,
                     first_stage: torch.Tensor | None = None) -> TwoStageScores:
    """Shortlist with :func:`cheap_scores`, re-rank the shortlist with the full CCCL.

    Each image keeps its top-``shortlist`` captions and each caption its
    top-``shortlist`` images by the cheap score (capped at the candidates
    there are); every pair either kept is scored once by
    :func:`score_pairs`. With ``shortlist`` >= N_img and N_txt every pair is
    re-ranked: the full ranking. ``first_stage``: (N_img, N_txt) scores of
    another shortlister to use instead of Branch 1's (chapter 10: a dual
    encoder's, :func:`cccl_lite.engine.dual.dual_sims`), same order as the encodings.
    """
    k = check_shortlist(shortlist)
    if first_stage is None:
        cheap = cheap_scores(model, images, texts, amp)
    else:
        cheap = torch.as_tensor(first_stage, dtype=torch.float32).cpu()
        want = (images.global_vec.shape[0], texts.global_vec.shape[0])
        if tuple(cheap.shape) != want:
            raise ValueError(f"first_stage must be (N_img, N_txt) = {want}, "
                             f"got {tuple(cheap.shape)}")
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
