"""A dual encoder for the synthetic scenes: the cheap end of the accuracy-cost line.

Taught in chapters 1 (where CCCL sits among dual encoders and cross-attention
models) and 10 (accuracy against scoring cost; the shortlister of two-stage
retrieval); measured by ``python -m cccl_lite dual-encoder``
(:mod:`cccl_lite.studies.dual_study`).

A dual encoder embeds every image and every caption once, on its own, and
scores a pair by one dot product, so scoring N_img x N_cap pairs is one
matrix product (VSE++, Faghri et al. 2018; VSE∞, Chen et al. 2021; CLIP,
Radford et al. 2021). CCCL instead reads each image against each caption
(cross attention, a GRU per pair), like SCAN (Lee et al. 2018) and SGRAF
(Diao et al. 2021). :class:`DualEncoder` is the lite counterpart:

* text tower: learned word embeddings (the lite model's vocabulary,
  :func:`cccl_lite.data.dataset.build_vocab`) read by a Bi-GRU; the two
  directions' outputs are averaged (as VSE∞'s GRU does) and mean-pooled over
  the caption's words;
* image tower: each region's feature with its box centre appended
  (x, y in [0, 1], times ``centre_scale`` so that the two columns are on the
  scale of the features, as ``CCCLConfig.centre_scale`` does for CCCL), a
  two-layer MLP per region (so that where a region is can interact with
  what it shows before pooling), mean-pooled over the valid regions
  (``region_mask``);
* both l2-normalised; the score is the cosine s(i, t) ∈ [-1, 1];
* loss: InfoNCE in both directions (:func:`info_nce`) with CLIP's learned
  temperature: logits = exp(log_scale) · s, exp(log_scale) clamped at 100.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cccl_lite.engine.baselines import split_inputs, train_epoch, training_loader
from cccl_lite.engine.metrics import recall_at_k
from cccl_lite.model.cccl import LITE_CENTRE_SCALE

__all__ = ["info_nce", "DualEncoder", "box_centres", "train_dual_encoder", "dual_sims",
           "save_dual", "load_dual", "MAX_SCALE"]

#: CLIP clips its logit scale so that logits are never scaled by more than 100.
MAX_SCALE = 100.0


def info_nce(sims: torch.Tensor, scale: torch.Tensor | float,
             positive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss) over a (B_img, B_cap) matrix of cosines.

    logits = scale · sims. Image row i: −log(Σ_{j∈P(i)} e^{logit_ij} / Σ_j e^{logit_ij});
    caption column j likewise over the rows; the loss is the mean of the two
    directions' means. ``positive_mask`` (B_img, B_cap) marks P (default: the
    diagonal, CLIP's one positive per row). With one positive per row and
    column this is exactly CLIP's (cross-entropy against the diagonal, both
    ways, averaged); a row with several positives (two captions of one image
    in a batch) sums their probabilities (the multiple-instance form of
    MIL-NCE, Miech et al. 2020) rather than counting one as a negative.
    """
    if positive_mask is None:
        positive_mask = torch.eye(*sims.shape, dtype=torch.bool, device=sims.device)
    logits = sims * scale
    pos = logits.masked_fill(~positive_mask, float("-inf"))
    i2t = torch.logsumexp(logits, 1) - torch.logsumexp(pos, 1)
    t2i = torch.logsumexp(logits, 0) - torch.logsumexp(pos, 0)
    return (i2t.mean() + t2i.mean()) / 2


def box_centres(positions: torch.Tensor) -> torch.Tensor:
    """(..., 2) box centres x, y in [0, 1] from position tuples (..., 6) of the
    "ours" variant (x1/W, y1/H, x2/W, y2/H first: :func:`cccl_lite.model.perceive.position_features`)."""
    return (positions[..., 0:2] + positions[..., 2:4]) / 2


class DualEncoder(nn.Module):
    """Bi-GRU over word ids against pooled regions with box centres; cosine score.

    ``encode_images(regions (B, n, d_F), positions (B, n, 6), region_mask (B, n))``
    -> (B, dim); ``encode_texts(words (B, L), word_mask (B, L))`` -> (B, dim),
    both unit length; ``forward`` -> (B_img, B_cap) cosines; :meth:`scale` the
    clamped temperature exp(log_scale), initialised to 1/0.07 as in CLIP.
    """

    def __init__(self, vocab_size: int, region_dim: int, dim: int = 128, word_dim: int = 64,
                 centre_scale: float = LITE_CENTRE_SCALE):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, region_dim=region_dim, dim=dim,
                           word_dim=word_dim, centre_scale=centre_scale)
        self.centre_scale = centre_scale
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, dim, batch_first=True, bidirectional=True)
        self.image = nn.Sequential(nn.Linear(region_dim + 2, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scale(self) -> torch.Tensor:
        # CLIP clamps the parameter itself after each step; clamping on use gives
        # the same logits and needs no hook in the training loop.
        return self.log_scale.clamp(max=math.log(MAX_SCALE)).exp()

    def encode_images(self, regions, positions, region_mask):
        x = torch.cat([regions, box_centres(positions) * self.centre_scale], -1)
        m = region_mask[..., None].to(x.dtype)
        # padded regions are zeroed AFTER the MLP (its bias would leak otherwise)
        pooled = (self.image(x) * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(pooled, dim=-1)

    def encode_texts(self, words, word_mask):
        lengths = word_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(words), lengths,
                                                   batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=words.shape[1])
        out = (out[..., :out.shape[-1] // 2] + out[..., out.shape[-1] // 2:]) / 2
        m = word_mask[..., None].to(out.dtype)
        return F.normalize((out * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def forward(self, regions, positions, region_mask, words, word_mask):
        return (self.encode_images(regions, positions, region_mask)
                @ self.encode_texts(words, word_mask).T)


@torch.no_grad()
def dual_sims(model: DualEncoder, images: dict, captions: dict) -> torch.Tensor:
    """(N_img, N_cap) cosines of a whole split: each side embedded once, then one
    matrix product (``images``, ``captions`` from
    :func:`cccl_lite.engine.baselines.split_inputs`)."""
    v = model.encode_images(images["regions"], images["positions"], images["region_mask"])
    t = model.encode_texts(captions["words"], captions["word_mask"])
    return v @ t.T


def train_dual_encoder(path, max_epochs: int = 30, patience: int = 4, batch_size: int = 128,
                       lr: float = 2e-3, seed: int = 0, log=None, **config):
    """Train :class:`DualEncoder` on the train split with :func:`info_nce`
    (image-id positives: the batch's pairs that share an image), one epoch at a
    time, until the validation R@sum has not improved for ``patience`` epochs
    (or ``max_epochs``). Returns (the best epoch's model in eval mode, vocab,
    curve [{"epoch", "loss", "val_rsum", "scale"}], best epoch)."""
    torch.manual_seed(seed)
    vocab, reader, loader = training_loader(path, batch_size, seed)
    model = DualEncoder(len(vocab), reader.region_dim, **config)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    val, val_images, val_caps = split_inputs(path, "val", vocab)
    cpi = len(val.caption_image) // val.n_images  # the scenes group captions by image
    best, best_epoch, best_state, curve = -1.0, 0, None, []
    for epoch in range(1, max_epochs + 1):
        model.train()
        loss = train_epoch(loader, opt, lambda b: info_nce(
            model(b["regions"], b["positions"], b["region_mask"], b["words"], b["word_mask"]),
            model.scale(), b["positive_mask"]))
        model.eval()
        rsum = recall_at_k(dual_sims(model, val_images, val_caps).numpy(), cpi)["rsum"]
        curve.append({"epoch": epoch, "loss": round(loss, 4), "val_rsum": round(float(rsum), 2),
                      "scale": round(float(model.scale().detach()), 2)})
        if log:
            log(curve[-1])
        if rsum > best:
            best, best_epoch, best_state = rsum, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return model.eval(), vocab, curve, best_epoch


def save_dual(model: DualEncoder, vocab: dict, path) -> None:
    """Write {"config", "vocab", "state"} with :func:`torch.save` (tensors, str,
    numbers only, so :func:`load_dual` can read it with ``weights_only=True``).
    The caller makes it atomic."""
    torch.save({"config": model.config, "vocab": dict(vocab), "state": model.state_dict()}, path)


def load_dual(path) -> tuple[DualEncoder, dict]:
    """(model in eval mode, vocab) from a :func:`save_dual` file."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = DualEncoder(**blob["config"])
    model.load_state_dict(blob["state"])
    return model.eval(), blob["vocab"]


def scores_numpy(model: DualEncoder, path, split: str, vocab: dict) -> np.ndarray:
    """(N_img, N_cap) numpy cosines of ``model`` on a split of the data file."""
    _, images, caps = split_inputs(path, split, vocab)
    return dual_sims(model, images, caps).numpy()
