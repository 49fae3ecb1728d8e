"""Synthetic scenes, the layout: where objects sit, their groups of three, their pixels, their regions.

Each image is a light-grey canvas with 2-5 filled shapes, one per cell of a
3x3 grid (jittered inside its cell, so left/right/above/below are never
ambiguous). Objects are dicts {shape, colour, size, box, centre, cell}
(words from :mod:`cccl_lite.data.grammar`). :func:`make_group` samples a base
scene and its two hard negatives (``binding``: colours rebound;
``relation``: two objects swap places); :func:`region_boxes` gives a scene
the boxes a detector would. Random streams: each (seed, tag, split, index)
has its own generator (:func:`stream`), so any image can be regenerated on
its own. Part of :mod:`cccl_lite.data.synthetic`; taught in chapter 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from cccl_lite.data.grammar import COLOURS, OBJECT_SIZES, SHAPES

__all__ = [
    "read_scenes",
    "GRID",
    "VARIANTS",
    "stream",
    "Group",
    "make_group",
    "scene_json",
    "render_scene",
    "region_boxes",
]

BACKGROUND = (235, 235, 235)
VARIANTS = ("base", "binding", "relation")
GRID = 3
# Side of an object as a fraction of a grid cell.
_SIDE = {"small": 0.44, "large": 0.72}
# Tags that keep the random streams apart: each (seed, tag, split, index)
# has its own generator, so any image can be regenerated on its own.
TABLES, SCENE, REGIONS, NOISE, CAPTIONS = range(5)


def stream(seed: int, tag: int, split_id: int = 0, index: int = 0) -> np.random.Generator:
    """The generator of one (seed, tag, split, index); tag: TABLES, SCENE,
    REGIONS, NOISE or CAPTIONS."""
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


def read_scenes(dataset, where: str) -> list[list[dict]]:
    """The objects of every image from an ``images/scene`` dataset (JSON, as
    :func:`scene_json` writes it), each checked: a list of objects with a
    known shape, colour and size and a box of four numbers. A hand-edited or
    foreign file raises ValueError naming ``where`` (file:/split/images/scene)
    and the image, not a JSON or KeyError traceback (issue 29, 20)."""
    scenes = []
    for i, text in enumerate(dataset.asstr()[:]):
        try:
            objects = json.loads(text)
            ok = isinstance(objects, list) and all(
                isinstance(o, dict) and o.get("shape") in SHAPES and o.get("colour") in COLOURS
                and o.get("size") in OBJECT_SIZES and isinstance(o.get("box"), list)
                and len(o["box"]) == 4
                and all(isinstance(v, (int, float)) for v in o["box"]) for o in objects)
        except ValueError as e:
            raise ValueError(f"{where}[{i}]: not JSON ({e})") from None
        if not ok:
            raise ValueError(f"{where}[{i}]: expected a JSON list of objects with a known shape, "
                             f"colour, size and a box [x1, y1, x2, y2]; got {text[:80]!r}")
        scenes.append(objects)
    return scenes


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
# regions
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
