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
to a shape and at least one that states a relation; a base's binding
(relation) captions are false of its binding (relation) variant, and
conversely.

What each part of CCCL has to do:

* Region features encode WHAT a box contains, never WHERE it is (the pair
  table binds colour to shape inside one region).
* Relations are only visible in the boxes: the position features (eq 9)
  are needed for the relation variant.
* Captions come with gold UD-style dependency heads, used by Branch 3.

The generator is split by job; this module writes the file and re-exports
the public names of the others, so ``from cccl_lite.data.synthetic import
...`` gives all of them:

* :mod:`cccl_lite.data.grammar`: the words, the caption templates and their
  heads, reading a caption back, a caption's truth on a scene;
* :mod:`cccl_lite.data.layout`: scenes, groups of three, pixels, region boxes
  (every object's box jittered like a detector's, then duplicates, unions,
  halves and background boxes, shuffled; padding follows, masked out);
* :mod:`cccl_lite.data.features`: the simulated detector's region features;
* :mod:`cccl_lite.data.captions`: which five captions each image gets.

Besides the fields of :mod:`cccl_lite.data.schema`, every split holds::

    /<split>/images/group     (N,) int64   group index; images of one group are
                                           hard negatives of each other
    /<split>/images/variant   (N,) UTF-8   "base", "binding" or "relation"
    /<split>/images/scene     (N,) UTF-8   JSON list of the objects
                                           {"shape", "colour", "size",
                                            "box": [x1, y1, x2, y2]} (pixels)
    /<split>/captions/kind    (M,) UTF-8   the grammar template of the caption

and the file attributes ``seed`` (int: the scenes), ``size`` (the size's name,
e.g. "small") and ``detector_seed`` (int: the simulated detector, the same
for every scene seed, :data:`~cccl_lite.data.features.DETECTOR_SEED`; a file
without it was written when the detector came from ``seed``). Groups never straddle splits; the last group of a split may be
partial (base, or base + binding) so that the image counts are exact.
``tokens`` are the lower-case words joined by single spaces (no
punctuation); ``text`` is the caption as written, capitalised with a final
period.

Sizes (:data:`SIZES`): ``tiny`` for unit tests, ``small`` the book's default
(about 5-8 s and 27 MiB on 2 CPU cores), ``paper`` with Flickr30K's shapes
(29000/1014/1000 images, 36 regions of 2048-d, ~4.6 GB of float16 features,
no pixels) whose features are generated chunk by chunk
(:class:`SyntheticFeatures`), never all in memory. The same seed and size
give a byte-identical file. Taught in chapter 1 ("The task").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cccl_lite.data.captions import CAPTIONS_PER_IMAGE, group_captions, image_captions
from cccl_lite.data.features import (DETECTOR_SEED, AppearanceTables, SyntheticFeatures,
                                     appearance_tables, region_features)
from cccl_lite.data.grammar import (COLOURS, KINDS, OBJECT_SIZES, RELATIONS, SHAPES, Caption,
                                    NounPhrase, build_caption, caption_holds, caption_text)
from cccl_lite.data.layout import (CAPTIONS, GRID, REGIONS, SCENE, VARIANTS, Group, make_group,
                                   region_boxes, render_scene, scene_json, stream)
from cccl_lite.data.schema import SPLITS, atomic_h5, write_split

__all__ = [
    "SHAPES",
    "COLOURS",
    "OBJECT_SIZES",
    "VARIANTS",
    "GRID",
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

_STR = h5py.string_dtype("utf-8")


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


# --------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------


def _resolve(size: str | SceneSpec) -> SceneSpec:
    if isinstance(size, SceneSpec):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)} or a SceneSpec")
    return SIZES[size]


def split_content(spec: SceneSpec, seed: int, split: str,
                  detector_seed: int = DETECTOR_SEED) -> dict:
    """Everything of one split that goes into the file, without writing it.

    ``seed`` draws the scenes, boxes, captions and feature noise;
    ``detector_seed`` the simulated detector's appearance tables, fixed
    for the scenes (:data:`DETECTOR_SEED`) like a real detector's weights.

    Keys: scenes (N lists of object dicts), variants, groups, boxes
    (N, n, 4), region_mask (N, n), features (a lazy
    :class:`SyntheticFeatures`), text, tokens, heads, kind, image (M each).
    """
    sid = SPLITS.index(split)
    n_img = spec.images[sid]
    scenes, variants, groups, caps, image = [], [], [], [], []
    for g in range(spec.groups[sid]):
        group = make_group(stream(seed, SCENE, sid, g), spec.canvas)
        # Captions of all three images even when the group is cut short, so
        # that a partial group's captions are those of a whole one.
        captions = group_captions(group, stream(seed, CAPTIONS, sid, g))
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
        b = region_boxes(objects, n, spec.canvas, stream(seed, REGIONS, sid, i))
        boxes[i, :len(b)], num_real[i] = b, len(b)
    words_heads = [c.words_heads() for c in caps]
    return {
        "scenes": scenes, "variants": variants, "groups": groups, "boxes": boxes,
        "region_mask": np.arange(n)[None, :] < num_real[:, None],
        "features": SyntheticFeatures(scenes, boxes, num_real,
                                      appearance_tables(detector_seed, spec.feature_dim), seed, sid,
                                      spec.noise),
        "text": [caption_text(w) for w, _ in words_heads],
        "tokens": [" ".join(w) for w, _ in words_heads],
        "heads": [h for _, h in words_heads],
        "kind": [c.kind for c in caps],
        "image": image,
    }


def expected_bytes(spec: SceneSpec) -> int:
    """An estimate of the file's size, for refusing a full disk before writing:
    float16 features, boxes and masks (exact), 1 KiB of captions and scene per
    image, the gzip'd pixels at an eighth of their bytes (flat shapes on a
    flat canvas), 1 MiB of HDF5's own. Files up to a few hundred MiB are
    built in memory anyway (:func:`~cccl_lite.data.schema.atomic_h5`), so an
    estimate a little low costs nothing there."""
    n, per_image = sum(spec.images), spec.num_regions * (2 * spec.feature_dim + 17) + 1024
    if spec.store_pixels:
        per_image += 3 * spec.canvas ** 2 // 8
    return n * per_image + 2**20


def make_synthetic(out: str | Path, seed: int = 0, size: str | SceneSpec = "small", *,
                   stream: bool | None = None, detector_seed: int = DETECTOR_SEED) -> Path:
    """Write the synthetic-scenes dataset of ``size`` (a name of :data:`SIZES` or a
    :class:`SceneSpec`) to ``out``; return its path.

    ``stream``: copy features into the file chunk by chunk as they are
    generated (default: only when a split's float32 features would exceed
    256 MiB). Both ways give the same bytes; so does the same seed and size.
    ``seed`` varies the scenes only; the simulated detector is
    ``detector_seed``'s (default: the scenes' one, :data:`DETECTOR_SEED`),
    recorded as the file attribute ``detector_seed``.
    """
    spec = _resolve(size)
    out = Path(out)
    with atomic_h5(out, dataset="synthetic-scenes", has_boxes=True,
                   expected_bytes=expected_bytes(spec)) as f:
        f.attrs["seed"] = int(seed)
        f.attrs["size"] = spec.name
        f.attrs["detector_seed"] = int(detector_seed)
        for split in SPLITS:
            c = split_content(spec, seed, split, detector_seed)
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
