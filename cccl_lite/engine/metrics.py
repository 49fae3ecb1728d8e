"""Retrieval metrics of the paper: R@K (eq. 35) and R@sum (eq. 36), in percent.

All functions take a similarity matrix ``sims`` of shape
``(N_img, N_img * captions_per_image)``: row ``i`` is image ``i``, column ``j``
is caption ``j``, and caption ``j`` belongs to image ``j // captions_per_image``.
A numpy array or a torch tensor is accepted.

Conventions (SCAN / VSE++):

* image-to-text (i2t): an image's rank is the best (smallest) rank among its own
  captions;
* text-to-image (t2i): a caption's rank is the rank of its image among all
  images.

Ties count against the model (pessimistic): the 0-based rank of the ground
truth is the number of NON-matching items whose score is ``>=`` the ground
truth's score (for i2t, ``>=`` the best score among the image's own captions).
A constant matrix therefore gets the worst possible ranks, never 100 % for free;
an optimistic (``>``) rule would give it a perfect score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is only needed to type-hint; tensors are duck-typed
    import torch

    ArrayLike = np.ndarray | torch.Tensor
else:
    ArrayLike = Any

__all__ = ["ranks", "recall_at_k", "truth_recall_at_k", "coco_1k_recall", "format_recalls", "KEYS",
           "PROTOCOLS", "COCO_FOLDS", "caption_layout", "check_protocol", "protocol_recalls"]

KS = (1, 5, 10)
KEYS = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "rsum",
)


def _check_cpi(captions_per_image: int) -> int:
    if (
        isinstance(captions_per_image, bool)
        or not isinstance(captions_per_image, (int, np.integer))
        or captions_per_image < 1
    ):
        raise ValueError(
            f"captions_per_image must be a positive int, got {captions_per_image!r}"
        )
    return int(captions_per_image)


def _as_sims(sims: ArrayLike, captions_per_image: int) -> np.ndarray:
    """Convert to a 2-D finite float numpy array and check its shape."""
    cpi = _check_cpi(captions_per_image)
    if hasattr(sims, "detach"):  # torch.Tensor, without importing torch here
        sims = sims.detach().cpu().float().numpy()
    sims = np.asarray(sims)
    if not np.issubdtype(sims.dtype, np.floating):
        sims = sims.astype(np.float64)
    n_img = sims.shape[0] if sims.ndim >= 1 else 0
    if sims.ndim != 2 or n_img < 1 or sims.shape[1] != n_img * cpi:
        raise ValueError(
            "sims must have shape (N_img, N_img * captions_per_image) = "
            f"(N_img, N_img * {cpi}) with N_img >= 1; got shape {tuple(sims.shape)}"
        )
    # min/max propagate NaN and expose +-inf without allocating a full-size
    # boolean mask (np.isfinite would, 125 MB for COCO 5K).
    if not (np.isfinite(sims.min()) and np.isfinite(sims.max())):
        raise ValueError("sims must be finite; got NaN or inf entries")
    return sims


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return int(chunk)


def ranks(
    sims: ArrayLike, captions_per_image: int = 5, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ground-truth ranks for both directions (input to eq. 35).

    Args:
        sims: similarities, shape ``(N_img, N_img * captions_per_image)``.
        captions_per_image: captions per image; caption ``j`` belongs to image
            ``j // captions_per_image``.
        chunk: images (for i2t) or captions (for t2i) processed at once; bounds
            the temporary boolean mask to ``chunk * N_img * captions_per_image``
            (i2t) or ``N_img * chunk`` (t2i) bytes.

    Returns:
        ``(i2t_ranks, t2i_ranks)``: int64 arrays of shape ``(N_img,)`` and
        ``(N_img * captions_per_image,)``. Ties are pessimistic: the rank is the
        number of non-matching items scoring ``>=`` the ground truth (for i2t,
        ``>=`` the best of the image's own captions).
    """
    s = _as_sims(sims, captions_per_image)
    chunk = _check_chunk(chunk)
    cpi = int(captions_per_image)
    n_img, n_cap = s.shape

    i2t = np.empty(n_img, dtype=np.int64)
    for a in range(0, n_img, chunk):
        b = min(a + chunk, n_img)
        rows = np.arange(b - a)
        block = s[a:b]  # (n, n_cap)
        own = block.reshape(b - a, n_img, cpi)[rows, np.arange(a, b)]  # (n, cpi)
        best = own.max(axis=1)
        ge = block >= best[:, None]
        # Own captions tying with the best are matches, not competitors, so
        # they must not push the rank down.
        n_own_ge = (own >= best[:, None]).sum(axis=1)
        i2t[a:b] = ge.sum(axis=1) - n_own_ge

    t2i = np.empty(n_cap, dtype=np.int64)
    for a in range(0, n_cap, chunk):
        b = min(a + chunk, n_cap)
        cols = np.arange(a, b)
        block = s[:, a:b]  # (n_img, m)
        gt = s[cols // cpi, cols]
        # The ground-truth image always ties with itself (entries are finite),
        # so exactly one match is counted and removed.
        t2i[a:b] = (block >= gt[None, :]).sum(axis=0) - 1

    return i2t, t2i


def _recalls_from_ranks(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in KS:
            out[f"{name}_r{k}"] = float(100.0 * np.mean(r < k))  # eq. 35
    out["rsum"] = float(sum(out[key] for key in KEYS[:-1]))  # eq. 36
    return out


def recall_at_k(
    sims: ArrayLike, captions_per_image: int = 5, *, chunk: int = 1024
) -> dict[str, float]:
    """R@1/5/10 in both directions (eq. 35) and their sum R@sum (eq. 36), in %.

    Args:
        sims: similarities, shape ``(N_img, N_img * captions_per_image)``;
            caption ``j`` belongs to image ``j // captions_per_image``.
        captions_per_image: captions per image.
        chunk: rows / columns processed at once (memory bound, see `ranks`).

    Returns:
        ``{"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}``
        as plain floats; recalls in [0, 100], rsum in [0, 600]. i2t uses the best
        of the image's captions; ties are pessimistic (see `ranks`).

    Raises:
        ValueError: if ``sims`` is not 2-D, not finite, or its second dimension
            is not ``N_img * captions_per_image``.
    """
    return _recalls_from_ranks(*ranks(sims, captions_per_image, chunk=chunk))


def coco_1k_recall(
    sims: ArrayLike,
    folds: int = 5,
    captions_per_image: int = 5,
    *,
    chunk: int = 1024,
) -> dict[str, float]:
    """COCO 1K protocol: eq. 35 averaged over ``folds`` diagonal blocks, eq. 36.

    ``sims`` has shape ``(N_img, N_img * captions_per_image)`` (5K test:
    ``(5000, 25000)``). Fold ``f`` is images ``f*n .. (f+1)*n`` with
    ``n = N_img // folds`` and their captions; entries outside the diagonal
    blocks are ignored. Each of the six recalls is averaged over folds, and
    ``rsum`` is the sum of the six averages (some reference code instead
    reports a mislabelled quantity here). Ties are pessimistic (see `ranks`).

    Returns:
        A dict with the same keys as `recall_at_k`.

    Raises:
        ValueError: on a malformed ``sims`` (as `recall_at_k`) or if ``N_img`` is
            not divisible by ``folds``.
    """
    s = _as_sims(sims, captions_per_image)
    cpi = int(captions_per_image)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 1:
        raise ValueError(f"folds must be a positive int, got {folds!r}")
    n_img = s.shape[0]
    if n_img % folds:
        raise ValueError(
            f"N_img = {n_img} (sims shape {tuple(s.shape)}) is not divisible by "
            f"folds = {folds}"
        )
    n = n_img // folds
    per_fold = [
        recall_at_k(
            s[f * n : (f + 1) * n, f * n * cpi : (f + 1) * n * cpi],
            cpi,
            chunk=chunk,
        )
        for f in range(folds)
    ]
    out = {
        key: float(np.mean([r[key] for r in per_fold])) for key in KEYS[:-1]
    }
    out["rsum"] = float(sum(out.values()))
    return out


def format_recalls(r: dict[str, float]) -> str:
    """Fixed-width text table of R@1/5/10 per direction (eq. 35) and rsum (36).

    ``r`` is a dict as returned by `recall_at_k` or `coco_1k_recall`.
    """
    lines = [f"{'':<6}{'R@1':>8}{'R@5':>8}{'R@10':>8}"]
    for name in ("i2t", "t2i"):
        lines.append(
            f"{name:<6}" + "".join(f"{r[f'{name}_r{k}']:>8.2f}" for k in KS)
        )
    lines.append(f"{'rsum':<6}{r['rsum']:>8.2f}")
    return "\n".join(lines)


def truth_recall_at_k(sims: ArrayLike, truth) -> dict[str, float]:
    """R@K (eq 35) and R@sum (eq 36) where a match is any TRUE pair, in percent.

    sims (N_img, N_cap) scores; truth (N_img, N_cap) bool, True where caption
    j is true of image i (on the synthetic scenes, from
    :class:`cccl_lite.data.truth.SplitTruth`; it holds each caption's own
    image, and often others). i2t: an image's rank is the number of captions
    NOT true of it that score >= its best true caption; t2i: a caption's rank
    is the number of images it is NOT true of that score >= the best image it
    is true of. Ties are pessimistic, as in :func:`ranks`. With the standard
    truth (caption j true of image j // 5 only) this equals
    :func:`recall_at_k`. Keys as :data:`KEYS`. An image with no true caption
    (or a caption true of no image) raises ValueError.
    """
    if hasattr(sims, "detach"):
        sims = sims.detach().cpu().double().numpy()
    s = np.asarray(sims, dtype=np.float64)
    t = np.asarray(truth, dtype=bool)
    if s.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"truth_recall_at_k: sims and truth must be (N_img, N_cap) alike, "
                         f"got {s.shape} and {t.shape}")
    if not np.isfinite(s).all():
        raise ValueError("sims must be finite; got NaN or inf entries")
    if not (t.any(axis=1).all() and t.any(axis=0).all()):
        raise ValueError("truth_recall_at_k: every image needs a true caption and every "
                         "caption a true image")
    best_i = np.where(t, s, -np.inf).max(axis=1)  # per image
    r_i2t = ((s >= best_i[:, None]) & ~t).sum(axis=1)
    best_t = np.where(t, s, -np.inf).max(axis=0)  # per caption
    r_t2i = ((s >= best_t[None, :]) & ~t).sum(axis=0)
    out = {}
    for name, r in (("i2t", r_i2t), ("t2i", r_t2i)):
        for k in KS:
            out[f"{name}_r{k}"] = float(100.0 * np.mean(r < k))
    out["rsum"] = float(sum(out[k] for k in KEYS[:-1]))
    return out


# ---- protocols --------------------------------------------------------------
# Which images a split's recalls rank against (SCAN's protocols; chapter 6).

PROTOCOLS = ("f30k", "coco1k", "coco5k")
COCO_FOLDS = 5


def caption_layout(caption_image, n_images: int) -> tuple[int, np.ndarray | None]:
    """(captions_per_image, column order) for the metrics, which want caption j
    to belong to image j // captions_per_image (``cccl_lite.engine.metrics``).

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
