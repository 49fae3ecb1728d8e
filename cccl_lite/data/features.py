"""Synthetic scenes, the features: what a simulated detector sees in each region.

Region features encode WHAT a box contains, never WHERE it is: the sum over
objects of (fraction of the object inside the box) x appearance, plus
(background fraction) x a background vector, plus noise. Appearance =
E_shape + E_colour + E_size + E_pair[shape, colour]; the pair table binds
colour to shape inside one region, so region-level alignment can tell "red
circle + blue square" from "blue circle + red square" where
bag-of-attributes cannot. :class:`SyntheticFeatures` computes a split's
features image by image, so the ``paper`` size never holds them all in
memory. Part of :mod:`cccl_lite.data.synthetic`; taught in chapter 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cccl_lite.data.grammar import COLOURS, OBJECT_SIZES, SHAPES
from cccl_lite.data.layout import NOISE, TABLES, stream

__all__ = ["AppearanceTables", "appearance_tables", "region_features", "SyntheticFeatures",
           "DETECTOR_SEED", "detector_name", "file_detector"]

# The simulated detector of the scenes (version 1): its appearance tables come
# from this seed, never from a file's scene seed, so that ``--seed`` varies the
# scenes and not the world a model has learnt to see (issue 29). 0 keeps the
# files of seed 0 byte for byte what they were when the tables came from the
# scene seed.
DETECTOR_SEED = 0


def detector_name(detector_seed: int) -> str:
    """How messages and checkpoints name the simulated detector of ``detector_seed``."""
    return f"synthetic-scenes detector {int(detector_seed)}"


def file_detector(attrs) -> str | None:
    """The simulated detector whose features a file holds (:func:`detector_name`),
    from its HDF5 attributes: ``detector_seed``; for a synthetic file written
    before that attribute existed, its scene ``seed`` (the tables came from it
    then); None for data of a real detector (Flickr30K, COCO)."""
    if "detector_seed" in attrs:
        return detector_name(int(attrs["detector_seed"]))
    if str(attrs.get("dataset", "")) == "synthetic-scenes" and "seed" in attrs:
        return detector_name(int(attrs["seed"]))
    return None


@dataclass(frozen=True)
class AppearanceTables:
    """Fixed embedding tables of the simulated detector.

    shape (5, d), colour (6, d), size (2, d), pair (5, 6, d) indexed
    [shape, colour], background (d,); rows follow SHAPES, COLOURS, OBJECT_SIZES.
    """

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    pair: np.ndarray
    background: np.ndarray

    @property
    def dim(self) -> int:
        return self.background.shape[0]

    def appearance(self, obj: dict) -> np.ndarray:
        """(d,) float64: what a box that holds exactly ``obj`` looks like."""
        s, c = SHAPES.index(obj["shape"]), list(COLOURS).index(obj["colour"])
        z = OBJECT_SIZES.index(obj["size"])
        return self.shape[s] + self.colour[c] + self.size[z] + self.pair[s, c]


def appearance_tables(seed: int, feature_dim: int) -> AppearanceTables:
    """The tables of the simulated detector of ``seed`` (:data:`DETECTOR_SEED` for
    the scenes; float64, entries ~ N(0, w^2))."""
    rng = stream(seed, TABLES, 0, feature_dim)
    ns, nc, nz, d = len(SHAPES), len(COLOURS), len(OBJECT_SIZES), feature_dim
    # The pair term is weaker than shape and colour but far above the noise:
    # enough to bind colour to shape inside one region.
    return AppearanceTables(shape=rng.normal(0, 1.0, (ns, d)), colour=rng.normal(0, 1.0, (nc, d)),
                            size=rng.normal(0, 0.5, (nz, d)), pair=rng.normal(0, 0.75, (ns, nc, d)),
                            background=rng.normal(0, 1.0, d))


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def region_features(objects: Sequence[dict], boxes, tables: AppearanceTables,
                    rng: np.random.Generator | None = None, noise: float = 0.0) -> np.ndarray:
    """Simulated detector features of the regions ``boxes`` (R, 4) of one scene.

    feature_r = sum_o frac(o in r) * appearance(o) + bg(r) * E_background
    + noise * N(0, I), where frac is the fraction of the object's box inside
    the region and bg the fraction of the region that no object covers.
    Only what is inside a box matters, never where the box is. Returns
    (R, d) float32; ``rng`` is needed when ``noise`` > 0.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    obj = np.asarray([o["box"] for o in objects], dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(boxes[:, None, :2], obj[None, :, :2])
    hi = np.minimum(boxes[:, None, 2:], obj[None, :, 2:])
    inter = _area(np.concatenate([lo, hi], axis=-1))  # (R, k)
    frac = inter / _area(obj)[None, :]
    # Objects never overlap (one per cell), so the covered area is a plain sum.
    bg = np.clip(1.0 - inter.sum(1) / np.maximum(_area(boxes), 1e-9), 0.0, 1.0)
    app = np.stack([tables.appearance(o) for o in objects]) if len(objects) else \
        np.zeros((0, tables.dim))
    feats = frac @ app + bg[:, None] * tables.background[None, :]
    if noise > 0:
        if rng is None:
            raise ValueError("noise > 0 needs an rng")
        feats = feats + noise * rng.standard_normal(feats.shape)
    return feats.astype(np.float32)


class SyntheticFeatures:
    """The (N, n, d_F) region features of one split, computed on demand.

    Array-like (``shape``, ``ndim``, ``dtype``, ``len``, integer and slice
    indexing), so that :func:`write_split` can copy it chunk by chunk and the
    ``paper`` size never holds its 4.6 GB in memory. Image i's features
    depend only on its scene, its boxes and the generator seeded with
    (seed, split, i): any chunking gives the same numbers. Padded regions
    are zero.
    """

    def __init__(self, objects: Sequence[Sequence[dict]], boxes: np.ndarray,
                 num_real: np.ndarray, tables: AppearanceTables, seed: int, split_id: int,
                 noise: float):
        self.objects, self.boxes, self.num_real = objects, boxes, num_real
        self.tables, self.seed, self.split_id, self.noise = tables, seed, split_id, noise
        self.shape = (len(objects), boxes.shape[1], tables.dim)
        self.ndim = 3
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def image(self, i: int) -> np.ndarray:
        """(n, d_F) float32 features of image i."""
        out = np.zeros(self.shape[1:], dtype=np.float32)
        r = int(self.num_real[i])
        out[:r] = region_features(self.objects[i], self.boxes[i, :r], self.tables,
                                  stream(self.seed, NOISE, self.split_id, i), self.noise)
        return out

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.shape[0] if index < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"image {index} out of range for {self.shape[0]} images")
            return self.image(i)
        if isinstance(index, slice):
            rows = range(*index.indices(self.shape[0]))
            out = np.zeros((len(rows),) + self.shape[1:], dtype=np.float32)
            for k, i in enumerate(rows):
                out[k] = self.image(i)
            return out
        raise TypeError(f"SyntheticFeatures takes an int or a slice, got {type(index).__name__}")
