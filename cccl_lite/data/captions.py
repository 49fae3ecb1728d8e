"""Synthetic scenes, the captions: five true captions per image, false of its hard negatives.

Every image has five captions that are true of it, among them at least one
that binds a colour to a shape and at least one that states a relation. A
caption of the base that binds a colour to a shape is false of the binding
variant, and a relation caption of the base is false of the relation variant
(and conversely: the variants' binding/relation captions are false of the
base). The words, templates and truth rule are the grammar's
(:mod:`cccl_lite.data.grammar`); this module only chooses which captions an
image gets. Part of :mod:`cccl_lite.data.synthetic`; taught in chapter 1.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cccl_lite.data.grammar import (KINDS, OBJECT_SIZES, RELATIONS, SHAPES, Caption, NounPhrase,
                                    caption_holds, cells_related)
from cccl_lite.data.layout import Group, scene_json

__all__ = ["CAPTIONS_PER_IMAGE", "image_captions", "group_captions"]

CAPTIONS_PER_IMAGE = 5


def _describe(obj: dict, rng: np.random.Generator, det: str | int = "a", colour_p: float = 0.85,
              size_p: float = 0.4, generic_p: float = 0.1) -> NounPhrase:
    """A phrase that ``obj`` matches; without a colour it always names the shape
    (with one, it says "shape" with probability ``generic_p``)."""
    colour = obj["colour"] if rng.random() < colour_p else None
    generic = colour is not None and rng.random() < generic_p
    size = obj["size"] if rng.random() < size_p else None
    return NounPhrase(det, None if generic else obj["shape"], colour, size)


def _pair_relations(x: dict, y: dict) -> list[str]:
    return [r for r in RELATIONS if cells_related(x, y, r)]


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
