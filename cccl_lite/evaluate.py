"""Evaluation: encode every item once, score all pairs in chunks, R@K (eqs 35-36).

Taught in chapter 6 ("Training and evaluation").
"""

from __future__ import annotations

import numpy as np
import torch

from .data.dataset import SplitReader
from .metrics import recall_at_k
from .model import CCCL, ImageEncoding, TextEncoding

__all__ = ["encode_all_images", "encode_all_texts", "score_matrix", "evaluate_split"]


def _cat(parts, pad_to=None):
    """Concatenate per-chunk encodings along the batch axis (None stays None);
    with ``pad_to``, sequence fields (B, L, ...) are zero-padded to L = pad_to."""
    fields = []
    for name, *values in zip(parts[0]._fields, *parts):
        if values[0] is None:
            fields.append(None)
            continue
        if pad_to is not None and name != "global_vec":
            values = [torch.cat([v, v.new_zeros(v.shape[0], pad_to - v.shape[1], *v.shape[2:])], 1)
                      for v in values]
        fields.append(torch.cat(values))
    return fields


@torch.no_grad()
def encode_all_images(model: CCCL, reader: SplitReader, batch_size: int = 256,
                      device="cpu") -> ImageEncoding:
    """Every image of the split encoded once (eqs 8-14, 21-25)."""
    parts = []
    for s in range(0, reader.n_images, batch_size):
        b = reader.images(np.arange(s, min(s + batch_size, reader.n_images)))
        parts.append(model.encode_images(*(None if v is None else v.to(device)
                                           for v in b.values())))
    return ImageEncoding(*_cat(parts))


@torch.no_grad()
def encode_all_texts(model: CCCL, reader: SplitReader, batch_size: int = 256,
                     device="cpu") -> TextEncoding:
    """Every caption of the split encoded once (eqs 11-14, 22-25), padded to the
    longest caption (padding never changes a score)."""
    parts = []
    for s in range(0, reader.n_captions, batch_size):
        b = reader.captions(np.arange(s, min(s + batch_size, reader.n_captions)))
        parts.append(model.encode_texts(*(None if v is None else v.to(device)
                                          for v in b.values())))
    m = max(p.t.shape[1] for p in parts)
    return TextEncoding(*_cat(parts, pad_to=m))


@torch.no_grad()
def score_matrix(model: CCCL, images: ImageEncoding, texts: TextEncoding,
                 image_chunk: int = 64) -> torch.Tensor:
    """F (eq 32) for every (image, text) pair: (N_img, N_txt) float32 on the CPU."""
    rows = []
    for s in range(0, images.v.shape[0], image_chunk):
        chunk = ImageEncoding(*(None if x is None else x[s:s + image_chunk] for x in images))
        rows.append(model.score(chunk, texts)[0].float().cpu())
    return torch.cat(rows)


def evaluate_split(model: CCCL, reader: SplitReader, device="cpu", batch_size: int = 256):
    """(recalls, sims) of ``model`` on one split; captions_per_image from the file."""
    was_training = model.training
    model.eval()
    try:
        sims = score_matrix(model, encode_all_images(model, reader, batch_size, device),
                            encode_all_texts(model, reader, batch_size, device))
    finally:
        model.train(was_training)
    cpi = reader.n_captions // reader.n_images
    return recall_at_k(sims, cpi), sims
