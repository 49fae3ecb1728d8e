"""Synthetic scenes: the book's offline default dataset, in which every part of CCCL has work to do.

Each image is a light-grey canvas with 2-5 filled shapes, one per cell of a
3x3 grid (jittered inside its cell, so left/right/above/below are never
ambiguous). Each object has a ``shape`` (circle, square, triangle, diamond,
cross), a ``colour`` (red, green, blue, yellow, purple, orange; all colours
of one image differ, so a colour names one object) and a ``size`` (small,
large). Images come in groups of three that are hard negatives of each other:

* ``base``: the scene as sampled;
* ``binding``: the same objects at the same places with their colours
  permuted, so that at least two (shape, colour) bindings change while the
  bag of shape words and colour words stays the same;
* ``relation``: two objects of different colours swap places (centres), so
  the relations between them flip.

Objects keep their index across the three variants. Every image has five
captions that are true of it, among them at least one that binds a colour
to a shape and at least one that states a relation. A caption of the base
that binds a colour to a shape is false of the binding variant, and a
relation caption of the base is false of the relation variant (and
conversely: the variants' binding/relation captions are false of the base).

What each part of CCCL has to do:

* Region features (``region_features``) encode WHAT a box contains, never
  WHERE it is: the sum over objects of (fraction of the object inside the
  box) x appearance, plus (background fraction) x a background vector, plus
  noise. Appearance = E_shape + E_colour + E_size + E_pair[shape, colour];
  the pair table binds colour to shape inside one region, so region-level
  alignment can tell "red circle + blue square" from "blue circle + red
  square" where bag-of-attributes cannot.
* Relations are only visible in the boxes: the position features (eq 9)
  are needed for the relation variant.
* Captions come with gold UD-style dependency heads, used by Branch 3.

Regions (up to ``num_regions`` per image): every object's box jittered like
a detector's, then extra boxes (duplicates, unions of two neighbouring
objects, halves of objects, background boxes), shuffled so that the index
of a region says nothing about what it is; padding follows, masked out.

Besides the fields of :mod:`cccl_lite.data.schema`, every split holds::

    /<split>/images/group     (N,) int64   group index; images of one group are
                                           hard negatives of each other
    /<split>/images/variant   (N,) UTF-8   "base", "binding" or "relation"
    /<split>/images/scene     (N,) UTF-8   JSON list of the objects
                                           {"shape", "colour", "size",
                                            "box": [x1, y1, x2, y2]} (pixels)
    /<split>/captions/kind    (M,) UTF-8   the grammar template of the caption

and the file attributes ``seed`` (int) and ``size`` (the size's name, e.g.
"small"). Groups never straddle splits; the last group of a split may be
partial (base, or base + binding) so that the image counts are exact.

Grammar templates (``captions/kind``), with the heads they get (1-based,
0 = root). Noun phrases are ``det [size] [colour] noun``: the determiner and
adjectives attach to the noun (det, nummod, amod).

* ``single``: "a small red circle" -> [4, 4, 4, 0].
* ``conjunction``: "a red circle and a blue square" -> [3, 3, 0, 7, 7, 7, 3]
  (second noun conj -> first noun, "and" cc -> second noun).
* ``relation``: "a red circle left of a blue square" -> [3, 3, 0, 3, 8, 8, 8, 4].
  "left"/"right" head a modifier of the first noun (amod, as in the reduced
  relative "a circle [that is] left of a square"); the second noun is obl of
  "left", and "of" is its case marker. "a red circle above a blue square" ->
  [3, 3, 0, 7, 7, 7, 3]: "above"/"below" are case markers of the second noun,
  which attaches nmod -> the first noun.
* ``copula``: "the red circle is left of the blue square" -> [3, 3, 5, 5, 0, 9, 9, 9, 5]
  ("left" is the root predicate: nsubj, cop and obl attach to it);
  "the red circle is above the blue square" -> [3, 3, 8, 8, 8, 8, 8, 0]
  (UD: the noun of a prepositional predicate is the root, "above" case,
  "is" cop, the subject nsubj).
* ``existential``: "there is a red circle above a green triangle" ->
  [2, 0, 5, 5, 2, 9, 9, 9, 5] ("is" root, "there" expl, the noun nsubj; the
  relation attaches to that noun exactly as in ``relation``).
* ``count``: "two circles" -> [2, 0]; "three shapes"; "two large shapes"
  (nummod; the count is exact).
* ``count_conjunction``: "two circles and a blue square" -> [2, 0, 6, 6, 6, 2].
* ``existential_count``: "there are three shapes" -> [2, 0, 4, 2].

``tokens`` are the lower-case words joined by single spaces (no punctuation);
``text`` is the caption as written, capitalised with a final period.

Sizes (:data:`SIZES`): ``tiny`` for unit tests, ``small`` the book's default
(about 5-8 s and 27 MiB on 2 CPU cores), ``paper`` with Flickr30K's shapes
(29000/1014/1000 images, 36 regions of 2048-d, ~4.6 GB of float16 features,
no pixels) whose features are generated chunk by chunk
(:class:`SyntheticFeatures`), never all in memory. The same seed and size
give a byte-identical file. Taught in chapter 1 ("The task").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
from PIL import Image, ImageDraw

from .schema import SPLITS, atomic_h5, write_split

__all__ = [
    "SHAPES",
    "COLOURS",
    "OBJECT_SIZES",
    "VARIANTS",
    "KINDS",
    "RELATIONS",
    "CAPTIONS_PER_IMAGE",
    "SceneSpec",
    "SIZES",
    "make_synthetic",
    "Group",
    "make_group",
    "scene_json",
    "render_scene",
    "region_boxes",
    "AppearanceTables",
    "appearance_tables",
    "region_features",
    "SyntheticFeatures",
    "NounPhrase",
    "Caption",
    "build_caption",
    "caption_text",
    "caption_holds",
    "image_captions",
    "group_captions",
    "split_content",
]

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {  # RGB; saturated and far apart so that every colour renders distinctly
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
OBJECT_SIZES = ("small", "large")
BACKGROUND = (235, 235, 235)
VARIANTS = ("base", "binding", "relation")
KINDS = ("single", "conjunction", "relation", "copula", "existential", "count",
         "count_conjunction", "existential_count")
RELATIONS = ("left of", "right of", "above", "below")
CAPTIONS_PER_IMAGE = 5
GRID = 3
# Side of an object as a fraction of a grid cell.
_SIDE = {"small": 0.44, "large": 0.72}
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "diamond": "diamonds", "cross": "crosses", None: "shapes"}
_STR = h5py.string_dtype("utf-8")
# Tags that keep the random streams apart: each (seed, tag, split, index)
# has its own generator, so any image can be regenerated on its own.
_TABLES, _SCENE, _REGIONS, _NOISE, _CAPTIONS = range(5)


# --------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSpec:
    """The shape of a synthetic file.

    ``images``: number of images per split (train, val, test); groups of 3,
    the last group of a split may be partial. ``num_regions`` n,
    ``feature_dim`` d_F, ``canvas`` the side of the square image in pixels,
    ``store_pixels`` whether ``images/pixels`` (N, canvas, canvas, 3) is
    written, ``noise`` the standard deviation of the feature noise.
    """

    name: str
    images: tuple[int, int, int]
    num_regions: int
    feature_dim: int
    canvas: int
    store_pixels: bool = True
    noise: float = 0.25

    def __post_init__(self):
        if len(self.images) != len(SPLITS) or min(self.images) < 1:
            raise ValueError(f"images: one positive count per split {SPLITS}, got {self.images}")
        if self.num_regions < 5:  # every object (up to 5) needs its own region
            raise ValueError(f"num_regions must be at least 5, got {self.num_regions}")
        if self.feature_dim < 1 or self.canvas < 24:
            raise ValueError(f"feature_dim >= 1 and canvas >= 24 needed, got "
                             f"{self.feature_dim}, {self.canvas}")

    @property
    def groups(self) -> tuple[int, int, int]:
        """Number of groups per split (train, val, test), a partial one included."""
        return tuple(-(-n // len(VARIANTS)) for n in self.images)


SIZES: dict[str, SceneSpec] = {
    "tiny": SceneSpec("tiny", (60, 15, 15), num_regions=12, feature_dim=256, canvas=64),
    "small": SceneSpec("small", (3000, 102, 201), num_regions=12, feature_dim=256, canvas=96),
    "paper": SceneSpec("paper", (29000, 1014, 1000), num_regions=36, feature_dim=2048,
                       canvas=96, store_pixels=False),
}


def _rng(seed: int, tag: int, split_id: int = 0, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, tag, split_id, index])


# --------------------------------------------------------------------------
# scenes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Three scenes that are hard negatives of each other.

    ``scenes``: (base, binding, relation), each a list of object dicts
    {shape, colour, size, box, centre, cell}; object i is the same object in
    all three. ``focus``: (a, b), the objects that swap places in the
    relation variant (a is one whose colour changes in the binding variant).
    """

    scenes: tuple[list[dict], list[dict], list[dict]]
    focus: tuple[int, int]


def _object(shape: str, colour: str, size: str, cell: tuple[int, int],
            centre: tuple[float, float], canvas: int) -> dict:
    """One object whose square box of its size is centred on ``centre``."""
    half = _SIDE[size] * canvas / GRID / 2
    cx, cy = centre
    box = [round(cx - half, 2), round(cy - half, 2), round(cx + half, 2), round(cy + half, 2)]
    return {"shape": shape, "colour": colour, "size": size, "box": box, "centre": centre,
            "cell": cell}


def _binding_permutation(shapes: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A permutation p (object i takes the colour of object p[i]) that moves at least
    two colours and only between objects of different shapes, or None.

    Moving a colour only to a different shape is what makes every changed
    (colour, shape) pair of one scene absent from the other.
    """
    for _ in range(100):
        p = rng.permutation(len(shapes))
        moved = p != np.arange(len(shapes))
        if moved.sum() >= 2 and (shapes[moved] != shapes[p[moved]]).all():
            return p
    return None


def make_group(rng: np.random.Generator, canvas: int) -> Group:
    """Sample a base scene and build its binding and relation variants."""
    colour_names = list(COLOURS)
    cell_px = canvas / GRID
    # Centres move at most this far so that even a large object stays in its cell.
    jitter = max(0.0, (1 - _SIDE["large"]) * cell_px / 2 - 1)
    while True:
        k = int(rng.integers(2, 6))
        cells = rng.choice(GRID * GRID, size=k, replace=False)
        shapes = rng.integers(0, len(SHAPES), size=k)
        colours = rng.choice(len(colour_names), size=k, replace=False)
        sizes = rng.integers(0, len(OBJECT_SIZES), size=k)
        perm = _binding_permutation(shapes, rng)
        if perm is not None:
            break
    grid = [(int(c) // GRID, int(c) % GRID) for c in cells]  # (row, column)
    offsets = rng.uniform(-jitter, jitter, size=(k, 2))
    centres = [(round(float((col + 0.5) * cell_px + dx), 2),
                round(float((row + 0.5) * cell_px + dy), 2))
               for (row, col), (dx, dy) in zip(grid, offsets)]

    def scene(colour_of, where):
        return [_object(SHAPES[shapes[i]], colour_names[colours[colour_of[i]]],
                        OBJECT_SIZES[sizes[i]], grid[where[i]], centres[where[i]], canvas)
                for i in range(k)]

    ident = list(range(k))
    moved = [i for i in range(k) if perm[i] != i]
    a = int(moved[rng.integers(len(moved))])
    others = [j for j in range(k) if j != a]
    b = int(others[rng.integers(len(others))])
    swapped = ident.copy()
    swapped[a], swapped[b] = b, a
    return Group((scene(ident, ident), scene(list(perm), ident), scene(ident, swapped)), (a, b))


def scene_json(objects: Sequence[dict]) -> str:
    """The public description of a scene: a JSON list of {shape, colour, size, box}."""
    return json.dumps([{key: o[key] for key in ("shape", "colour", "size", "box")}
                       for o in objects], separators=(",", ":"))


def render_scene(objects: Sequence[dict], canvas: int) -> np.ndarray:
    """Draw the objects (dicts with shape, colour, box) filled on a light-grey canvas.

    Returns (canvas, canvas, 3) uint8. Every shape covers the centre of its
    box, so the pixel there has the object's colour.
    """
    img = Image.new("RGB", (canvas, canvas), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        fill = COLOURS[o["colour"]]
        if o["shape"] == "circle":
            draw.ellipse([x1, y1, x2, y2], fill=fill)
        elif o["shape"] == "square":
            draw.rectangle([x1, y1, x2, y2], fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=fill)
        elif o["shape"] == "diamond":
            draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill)
        elif o["shape"] == "cross":
            arm = (x2 - x1) / 6
            draw.rectangle([x1, cy - arm, x2, cy + arm], fill=fill)
            draw.rectangle([cx - arm, y1, cx + arm, y2], fill=fill)
        else:
            raise ValueError(f"unknown shape {o['shape']!r}; expected one of {SHAPES}")
    return np.asarray(img, dtype=np.uint8)


# --------------------------------------------------------------------------
# regions and their features
# --------------------------------------------------------------------------


def _jitter(box: Sequence[float], scale: float, rng: np.random.Generator,
            canvas: int) -> list[float]:
    """Move each edge of ``box`` by N(0, scale x side), as a detector's box would be off."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    d = rng.normal(0.0, scale, size=4) * np.array([w, h, w, h])
    new = np.clip(np.array([x1, y1, x2, y2]) + d, 0, canvas)
    if new[2] - new[0] < 1 or new[3] - new[1] < 1:  # degenerate: keep the box itself
        new = np.clip(np.array([x1, y1, x2, y2], float), 0, canvas)
    return new.tolist()


def _neighbour_pairs(objects: Sequence[dict]) -> list[tuple[int, int]]:
    """Pairs of objects in adjacent cells (all pairs if no two are adjacent)."""
    k = len(objects)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    near = [(i, j) for i, j in pairs
            if max(abs(objects[i]["cell"][0] - objects[j]["cell"][0]),
                   abs(objects[i]["cell"][1] - objects[j]["cell"][1])) == 1]
    return near or pairs


def region_boxes(objects: Sequence[dict], num_regions: int, canvas: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Detector-like region boxes for one scene: (R, 4) float32 pixel x1, y1, x2, y2.

    R lies in [max(k + 2, 0.6 n), n] (at most n) for k objects: one jittered
    box per object, then duplicates, unions of neighbouring objects, halves of
    objects and background boxes, in a random order.
    """
    k = len(objects)
    if k > num_regions:
        raise ValueError(f"{k} objects do not fit in {num_regions} regions")
    lo = min(num_regions, max(k + 2, math.ceil(0.6 * num_regions)))
    count = int(rng.integers(lo, num_regions + 1))
    boxes = [_jitter(o["box"], 0.06, rng, canvas) for o in objects]
    pairs = _neighbour_pairs(objects)
    kinds = ("duplicate", "union", "partial", "background")
    while len(boxes) < count:
        kind = kinds[rng.choice(4, p=[0.25, 0.25 if k > 1 else 0.0, 0.3, 0.2 + (k == 1) * 0.25])]
        if kind == "duplicate":
            boxes.append(_jitter(objects[rng.integers(k)]["box"], 0.1, rng, canvas))
        elif kind == "union":
            i, j = pairs[rng.integers(len(pairs))]
            bi, bj = objects[i]["box"], objects[j]["box"]
            union = [min(bi[0], bj[0]), min(bi[1], bj[1]), max(bi[2], bj[2]), max(bi[3], bj[3])]
            boxes.append(_jitter(union, 0.04, rng, canvas))
        elif kind == "partial":
            x1, y1, x2, y2 = objects[rng.integers(k)]["box"]
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            half = ([x1, y1, mx, y2], [mx, y1, x2, y2], [x1, y1, x2, my], [x1, my, x2, y2])
            boxes.append(_jitter(half[rng.integers(4)], 0.04, rng, canvas))
        else:
            w, h = rng.uniform(0.15, 0.4, size=2) * canvas
            x1, y1 = rng.uniform(0, canvas - w), rng.uniform(0, canvas - h)
            boxes.append([x1, y1, x1 + w, y1 + h])
    order = rng.permutation(count)  # a region's index must not say what it is
    return np.asarray(boxes, dtype=np.float32)[order]


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
    """The tables of a dataset, drawn from its seed (float64, entries ~ N(0, w^2))."""
    rng = _rng(seed, _TABLES, 0, feature_dim)
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
                                  _rng(self.seed, _NOISE, self.split_id, i), self.noise)
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


# --------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NounPhrase:
    """``det [size] [colour] noun``: det "a" (written "an" before a vowel), "the" or
    a count 2..5 (plural noun, exact count); shape None is the generic noun "shape"."""

    det: str | int
    shape: str | None = None
    colour: str | None = None
    size: str | None = None

    def words(self) -> list[str]:
        counted = isinstance(self.det, int)
        noun = _PLURAL[self.shape] if counted else (self.shape or "shape")
        rest = [a for a in (self.size, self.colour) if a] + [noun]
        det = _NUMBERS[self.det] if counted else self.det
        if det == "a" and rest[0][0] in "aeiou":  # "an orange circle"
            det = "an"
        return [det] + rest

    def matches(self, obj: dict) -> bool:
        return all(want is None or obj[key] == want for key, want in
                   (("shape", self.shape), ("colour", self.colour), ("size", self.size)))

    @property
    def binds(self) -> bool:
        """True when the phrase binds a colour to a shape ("a red circle")."""
        return self.shape is not None and self.colour is not None


@dataclass(frozen=True)
class Caption:
    """A caption's meaning: its template, noun phrases and relation (nps[0] REL nps[1])."""

    kind: str
    nps: tuple[NounPhrase, ...]
    rel: str | None = None

    @property
    def binds(self) -> bool:
        return any(np_.binds for np_ in self.nps)

    def words_heads(self) -> tuple[list[str], list[int]]:
        """The caption's words and their heads (see :func:`build_caption`)."""
        return build_caption(self.kind, self.nps, self.rel)


def _add_np(words: list[str], heads: list, np_: NounPhrase) -> int:
    """Append a noun phrase whose words all depend on its noun; return the noun's index."""
    ws = np_.words()
    noun = len(words) + len(ws) - 1
    words += ws
    heads += [noun] * (len(ws) - 1) + [None]
    return noun


def _add(words: list[str], heads: list, word: str) -> int:
    words.append(word)
    heads.append(None)
    return len(words) - 1


def _attach_relation(words: list[str], heads: list, noun: int, rel: str, np_: NounPhrase):
    """Append "left of NP" / "above NP" as a modifier of the noun at ``noun``."""
    if rel in ("left of", "right of"):
        head = _add(words, heads, rel.split()[0])
        of = _add(words, heads, "of")
        other = _add_np(words, heads, np_)
        heads[head], heads[of], heads[other] = noun, other, head  # amod, case, obl
    else:
        case = _add(words, heads, rel)
        other = _add_np(words, heads, np_)
        heads[case], heads[other] = other, noun  # case, nmod


def build_caption(kind: str, nps: Sequence[NounPhrase],
                  rel: str | None = None) -> tuple[list[str], list[int]]:
    """The words of a caption and their UD-style heads (1-based, 0 = root).

    The analysis of each template is in the module docstring.
    """
    need = {"single": 1, "count": 1, "existential_count": 1}.get(kind, 2)
    if kind not in KINDS or len(nps) != need or (rel is not None) != (
            kind in ("relation", "copula", "existential")) or (rel and rel not in RELATIONS):
        raise ValueError(f"bad caption: kind {kind!r}, {len(nps)} noun phrases, relation {rel!r}")
    words: list[str] = []
    heads: list = []
    if kind in ("existential", "existential_count"):
        there = _add(words, heads, "there")
        root = _add(words, heads, "are" if isinstance(nps[0].det, int) else "is")
        subj = _add_np(words, heads, nps[0])
        heads[there], heads[root], heads[subj] = root, -1, root  # expl, root, nsubj
        if kind == "existential":
            _attach_relation(words, heads, subj, rel, nps[1])
    elif kind == "copula":
        subj = _add_np(words, heads, nps[0])
        cop = _add(words, heads, "is")
        if rel in ("left of", "right of"):
            pred = _add(words, heads, rel.split()[0])
            of = _add(words, heads, "of")
            other = _add_np(words, heads, nps[1])
            heads[of], heads[other] = other, pred
        else:
            case = _add(words, heads, rel)
            pred = _add_np(words, heads, nps[1])
            heads[case] = pred
        heads[subj], heads[cop], heads[pred] = pred, pred, -1
    else:
        first = _add_np(words, heads, nps[0])
        heads[first] = -1
        if kind in ("conjunction", "count_conjunction"):
            cc = _add(words, heads, "and")
            second = _add_np(words, heads, nps[1])
            heads[cc], heads[second] = second, first
        elif kind == "relation":
            _attach_relation(words, heads, first, rel, nps[1])
    return words, [h + 1 for h in heads]


def caption_text(words: Sequence[str]) -> str:
    """The caption as written: capitalised, with a final period."""
    s = " ".join(words)
    return s[:1].upper() + s[1:] + "."


def _related(x: dict, y: dict, rel: str) -> bool:
    """x REL y from the grid cells (row, column) the objects were placed in."""
    (rx, cx), (ry, cy) = x["cell"], y["cell"]
    return {"left of": cx < cy, "right of": cx > cy, "above": rx < ry, "below": rx > ry}[rel]


def caption_holds(cap: Caption, objects: Sequence[dict]) -> bool:
    """Whether ``cap`` is true of a scene (objects with their grid cells).

    A counted phrase ("two circles") needs exactly that many matches, "the"
    exactly one, "a" at least one; two phrases with "a"/"the" need two
    distinct objects, and a relation needs such a pair in that relation.
    """
    matches = [[i for i, o in enumerate(objects) if np_.matches(o)] for np_ in cap.nps]
    for np_, m in zip(cap.nps, matches):
        if isinstance(np_.det, int) and len(m) != np_.det:
            return False
        if np_.det == "the" and len(m) != 1:
            return False
    singles = [m for np_, m in zip(cap.nps, matches) if not isinstance(np_.det, int)]
    if cap.rel is not None:
        return any(i != j and _related(objects[i], objects[j], cap.rel)
                   for i in matches[0] for j in matches[1])
    if len(singles) == 2:
        return any(i != j for i in singles[0] for j in singles[1])
    return all(singles)


def _describe(obj: dict, rng: np.random.Generator, det: str | int = "a", colour_p: float = 0.85,
              size_p: float = 0.4, generic_p: float = 0.1) -> NounPhrase:
    """A phrase that ``obj`` matches; without a colour it always names the shape
    (with one, it says "shape" with probability ``generic_p``)."""
    colour = obj["colour"] if rng.random() < colour_p else None
    generic = colour is not None and rng.random() < generic_p
    size = obj["size"] if rng.random() < size_p else None
    return NounPhrase(det, None if generic else obj["shape"], colour, size)


def _pair_relations(x: dict, y: dict) -> list[str]:
    return [r for r in RELATIONS if _related(x, y, r)]


def _count_phrases(objects: Sequence[dict]) -> list[NounPhrase]:
    """Every counted phrase that is exactly true of the scene (count >= 2)."""
    out = []
    for shape in (None, *SHAPES):
        for size in (None, *OBJECT_SIZES):
            probe = NounPhrase("a", shape, None, size)
            n = sum(probe.matches(o) for o in objects)
            if n >= 2:
                out.append(NounPhrase(n, shape, None, size))
    return out


def _sample_caption(kind: str, objects: Sequence[dict], rng: np.random.Generator,
                    pair: tuple[int, int] | None = None) -> Caption | None:
    """A caption of template ``kind`` that is true of ``objects``, or None if the
    scene has none (or this draw was degenerate)."""
    k = len(objects)
    if kind == "single":
        return Caption(kind, (_describe(objects[rng.integers(k)], rng),))
    if kind == "conjunction":
        i, j = rng.choice(k, size=2, replace=False)
        a, b = _describe(objects[i], rng), _describe(objects[j], rng)
        return None if a.words() == b.words() else Caption(kind, (a, b))
    if kind in ("relation", "copula", "existential"):
        i, j = pair if pair is not None else rng.choice(k, size=2, replace=False)
        if rng.random() < 0.5:
            i, j = j, i
        rels = _pair_relations(objects[i], objects[j])
        det = "the" if kind == "copula" else "a"
        # Colour and shape in both phrases: a relation between bound objects.
        a = _describe(objects[i], rng, det, colour_p=1.0, size_p=0.3, generic_p=0.0)
        b = _describe(objects[j], rng, det, colour_p=1.0, size_p=0.3, generic_p=0.0)
        return Caption(kind, (a, b), rels[rng.integers(len(rels))])
    if kind in ("count", "existential_count"):
        options = _count_phrases(objects)
        return Caption(kind, (options[rng.integers(len(options))],)) if options else None
    if kind == "count_conjunction":
        options = [p for p in _count_phrases(objects) if p.shape is not None and p.size is None]
        if not options:
            return None
        counted = options[rng.integers(len(options))]
        rest = [o for o in objects if o["shape"] != counted.shape]
        if not rest:
            return None
        other = _describe(rest[rng.integers(len(rest))], rng, colour_p=1.0, generic_p=0.0)
        return Caption(kind, (counted, other))
    raise ValueError(f"unknown caption kind {kind!r}; expected one of {KINDS}")


# How often each template fills the three free caption slots of an image.
_WEIGHTS = {"single": 1.0, "conjunction": 1.5, "relation": 1.5, "copula": 1.0,
            "existential": 1.0, "count": 1.0, "count_conjunction": 1.0,
            "existential_count": 0.5}

Constraint = tuple[Callable[[Caption], bool], Sequence[dict]]


def image_captions(objects: Sequence[dict], rng: np.random.Generator, pair: tuple[int, int],
                   false_in: Sequence[Constraint] = ()) -> list[Caption]:
    """Five captions true of ``objects`` (distinct when the scene allows) in a random order.

    The first is a relation caption about ``pair``, the second binds a
    colour to a shape; three more from all templates. ``false_in``: (which
    captions, other scene) pairs; every caption that ``which`` selects must
    be false of the other scene (that is what makes the variants hard negatives).
    """
    def allowed(cap: Caption | None) -> bool:
        return cap is not None and caption_holds(cap, objects) and not any(
            which(cap) and caption_holds(cap, other) for which, other in false_in)

    kinds, p = list(_WEIGHTS), np.array(list(_WEIGHTS.values()))
    slots = [("relation", "copula", "existential"), ("single", "conjunction")]
    caps: list[Caption] = []
    seen: set[tuple[str, ...]] = set()
    for attempt in range(2000):
        slot = len(caps)
        if slot < len(slots):
            kind = slots[slot][rng.integers(len(slots[slot]))]
            cap = _sample_caption(kind, objects, rng, pair if slot == 0 else None)
            if cap is not None and slot == 1 and not cap.binds:
                continue
        else:
            cap = _sample_caption(kinds[rng.choice(len(kinds), p=p / p.sum())], objects, rng)
        if not allowed(cap):
            continue
        words = tuple(cap.words_heads()[0])
        if words in seen and attempt < 1000:  # repeat a caption only if nothing else is left
            continue
        seen.add(words)
        caps.append(cap)
        if len(caps) == CAPTIONS_PER_IMAGE:
            return [caps[i] for i in rng.permutation(len(caps))]
    raise RuntimeError(f"could not caption the scene {scene_json(objects)}")


def _is_relation(cap: Caption) -> bool:
    return cap.rel is not None


def _is_binding(cap: Caption) -> bool:
    return cap.binds


def group_captions(group: Group, rng: np.random.Generator) -> tuple[list[Caption], ...]:
    """Five captions for each image of a group (base, binding, relation).

    The base's binding captions are false of the binding variant and its
    relation captions false of the relation variant; each variant's
    binding (resp. relation) captions are false of the base.
    """
    base, binding, relation = group.scenes
    return (image_captions(base, rng, group.focus,
                           [(_is_binding, binding), (_is_relation, relation)]),
            image_captions(binding, rng, group.focus, [(_is_binding, base)]),
            image_captions(relation, rng, group.focus, [(_is_relation, base)]))


# --------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------


def _resolve(size: str | SceneSpec) -> SceneSpec:
    if isinstance(size, SceneSpec):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)} or a SceneSpec")
    return SIZES[size]


def split_content(spec: SceneSpec, seed: int, split: str) -> dict:
    """Everything of one split that goes into the file, without writing it.

    Keys: scenes (N lists of object dicts), variants, groups, boxes
    (N, n, 4), region_mask (N, n), features (a lazy
    :class:`SyntheticFeatures`), text, tokens, heads, kind, image (M each).
    """
    sid = SPLITS.index(split)
    n_img = spec.images[sid]
    scenes, variants, groups, caps, image = [], [], [], [], []
    for g in range(spec.groups[sid]):
        group = make_group(_rng(seed, _SCENE, sid, g), spec.canvas)
        # Captions of all three images even when the group is cut short, so
        # that a partial group's captions are those of a whole one.
        captions = group_captions(group, _rng(seed, _CAPTIONS, sid, g))
        for v in range(min(len(VARIANTS), n_img - len(scenes))):
            image += [len(scenes)] * len(captions[v])
            scenes.append(group.scenes[v])
            variants.append(VARIANTS[v])
            groups.append(g)
            caps += captions[v]
    n = spec.num_regions
    boxes = np.zeros((n_img, n, 4), dtype=np.float32)
    num_real = np.zeros(n_img, dtype=np.int64)
    for i, objects in enumerate(scenes):
        b = region_boxes(objects, n, spec.canvas, _rng(seed, _REGIONS, sid, i))
        boxes[i, :len(b)], num_real[i] = b, len(b)
    words_heads = [c.words_heads() for c in caps]
    return {
        "scenes": scenes, "variants": variants, "groups": groups, "boxes": boxes,
        "region_mask": np.arange(n)[None, :] < num_real[:, None],
        "features": SyntheticFeatures(scenes, boxes, num_real,
                                      appearance_tables(seed, spec.feature_dim), seed, sid,
                                      spec.noise),
        "text": [caption_text(w) for w, _ in words_heads],
        "tokens": [" ".join(w) for w, _ in words_heads],
        "heads": [h for _, h in words_heads],
        "kind": [c.kind for c in caps],
        "image": image,
    }


def make_synthetic(out: str | Path, seed: int = 0, size: str | SceneSpec = "small", *,
                   stream: bool | None = None) -> Path:
    """Write the synthetic-scenes dataset of ``size`` (a name of :data:`SIZES` or a
    :class:`SceneSpec`) to ``out``; return its path.

    ``stream``: copy features into the file chunk by chunk as they are
    generated (default: only when a split's float32 features would exceed
    256 MiB). Both ways give the same bytes; so does the same seed and size.
    """
    spec = _resolve(size)
    out = Path(out)
    with atomic_h5(out, dataset="synthetic-scenes", has_boxes=True) as f:
        f.attrs["seed"] = int(seed)
        f.attrs["size"] = spec.name
        for split in SPLITS:
            c = split_content(spec, seed, split)
            feats = c["features"]
            big = np.prod(feats.shape) * 4 > 2**28
            if not (big if stream is None else stream):
                feats = feats[:]
            pixels = (np.stack([render_scene(s, spec.canvas) for s in c["scenes"]])
                      if spec.store_pixels else None)
            write_split(f, split, features=feats,
                        size=np.full((len(c["scenes"]), 2), spec.canvas, dtype=np.float32),
                        region_mask=c["region_mask"], text=c["text"], image=c["image"],
                        tokens=c["tokens"], heads=c["heads"], boxes=c["boxes"], pixels=pixels)
            im = f[split]["images"]
            im.create_dataset("group", data=np.asarray(c["groups"], dtype=np.int64))
            im.create_dataset("variant", data=c["variants"], dtype=_STR)
            im.create_dataset("scene", data=[scene_json(s) for s in c["scenes"]], dtype=_STR)
            f[split]["captions"].create_dataset("kind", data=c["kind"], dtype=_STR)
    return out
