"""The synthetic captions' grammar: its words, its templates, and how to read them back.

One module owns the grammar. The generator (:mod:`cccl_lite.data.captions`)
writes captions with :func:`build_caption`; the truth of a caption on any
scene (:mod:`cccl_lite.data.truth`) reads its meaning back with
:func:`parse_caption` and applies :func:`caption_holds`; the difficulty
measures (:mod:`cccl_lite.data.difficulty`) read its phrases and relations
off the gold dependency heads with :func:`caption_structure`. All of them
take their words from the vocabulary below.

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
``text`` is the caption as written, capitalised with a final period
(:func:`caption_text`). Taught in chapter 1 ("The task").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

__all__ = [
    "SHAPES",
    "COLOURS",
    "OBJECT_SIZES",
    "KINDS",
    "RELATIONS",
    "RELATION_WORDS",
    "noun_shape",
    "NounPhrase",
    "Caption",
    "build_caption",
    "caption_text",
    "parse_caption",
    "cells_related",
    "caption_holds",
    "Phrase",
    "Structure",
    "caption_structure",
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
KINDS = ("single", "conjunction", "relation", "copula", "existential", "count",
         "count_conjunction", "existential_count")
RELATIONS = ("left of", "right of", "above", "below")
#: The word that names each relation ("left" of "left of").
RELATION_WORDS = tuple(r.split()[0] for r in RELATIONS)
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}
_COUNTS = {word: n for n, word in _NUMBERS.items()}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "diamond": "diamonds", "cross": "crosses", None: "shapes"}
_GENERIC = ("shape", "shapes")


def noun_shape(word: str) -> str | None | bool:
    """The shape a noun names ("circles" -> "circle"), None for the generic
    noun "shape(s)", False for a word that is not a noun of the grammar."""
    if word in _GENERIC:
        return None
    for s in SHAPES:
        if word in (s, s + "s", s + "es"):
            return s
    return False


# --------------------------------------------------------------------------
# writing a caption: meaning -> words and heads
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


# --------------------------------------------------------------------------
# reading a caption back: words -> meaning, words + heads -> structure
# --------------------------------------------------------------------------


def parse_caption(tokens: str | Sequence[str], kind: str) -> Caption:
    """The meaning of a synthetic caption, read back from its words and template.

    tokens: the lower-case words (a string joined by spaces, or a list), as in
    ``captions/tokens``; kind: its ``captions/kind``. Inverts
    :func:`build_caption`. Raises ValueError, naming the
    caption, for words outside the grammar of ``kind``.
    """
    words = tokens.split() if isinstance(tokens, str) else list(tokens)
    pos = 0

    def fail(what: str):
        return ValueError(f"parse_caption: {' '.join(words)!r} ({kind}): {what} at word "
                          f"{pos + 1}")

    def take(*expected: str) -> str:
        nonlocal pos
        if pos >= len(words) or words[pos] not in expected:
            raise fail(f"expected {' or '.join(expected)}")
        pos += 1
        return words[pos - 1]

    def noun_phrase() -> NounPhrase:
        nonlocal pos
        if pos >= len(words):
            raise fail("expected a noun phrase")
        det: str | int = words[pos]
        if det in _COUNTS:
            det = _COUNTS[det]
        elif det in ("a", "an", "the"):
            det = "the" if det == "the" else "a"
        else:
            raise fail("expected a determiner")
        pos += 1
        size = colour = None
        if pos < len(words) and words[pos] in OBJECT_SIZES:
            size, pos = words[pos], pos + 1
        if pos < len(words) and words[pos] in COLOURS:
            colour, pos = words[pos], pos + 1
        shape = noun_shape(words[pos]) if pos < len(words) else False
        if shape is False:
            raise fail("expected a shape noun")
        pos += 1
        return NounPhrase(det, shape, colour, size)

    def relation() -> str:
        rel = take(*RELATION_WORDS)
        if rel in ("left", "right"):
            take("of")
            rel += " of"
        assert rel in RELATIONS
        return rel

    rel = None
    if kind in ("single", "count"):
        nps = [noun_phrase()]
    elif kind in ("conjunction", "count_conjunction"):
        first = noun_phrase()
        take("and")
        nps = [first, noun_phrase()]
    elif kind == "relation":
        first = noun_phrase()
        rel = relation()
        nps = [first, noun_phrase()]
    elif kind == "copula":
        first = noun_phrase()
        take("is")
        rel = relation()
        nps = [first, noun_phrase()]
    elif kind in ("existential", "existential_count"):
        take("there")
        take("is", "are")
        nps = [noun_phrase()]
        if kind == "existential":
            rel = relation()
            nps.append(noun_phrase())
    else:
        raise ValueError(f"parse_caption: unknown caption kind {kind!r}")
    if pos != len(words):
        raise fail("expected the end of the caption")
    return Caption(kind, tuple(nps), rel)


@dataclass
class Phrase:
    """A noun with its attributes, as the dependency tree attaches them."""

    word: int  # 0-based index of the noun
    shape: str  # "" for the generic noun "shape(s)"
    colour: str | None = None
    size: str | None = None


@dataclass
class Structure:
    """Noun phrases and relations (word, subject phrase, object phrase) of a caption."""

    phrases: list[Phrase] = field(default_factory=list)
    relations: list[tuple[str, int, int]] = field(default_factory=list)


def caption_structure(tokens: list[str], heads) -> Structure:
    """Read the phrases and relations of a caption off its dependency heads.

    An attribute belongs to the noun that is its head (so "a red circle and a
    blue square" binds red to circle). A relation word links the two nouns
    within two arcs of it in the tree, the earlier one as subject; this covers
    every analysis of the grammar ("left" heading the second noun, "above"
    as its case marker, copulas and existentials).
    """
    heads = [int(h) for h in heads]
    out = Structure()
    index = {}
    for i, w in enumerate(tokens):
        shape = noun_shape(w)
        if shape is not False:
            index[i] = len(out.phrases)
            out.phrases.append(Phrase(i, shape or ""))
    for i, w in enumerate(tokens):
        h = heads[i] - 1
        if h in index:
            if w in COLOURS:
                out.phrases[index[h]].colour = w
            elif w in OBJECT_SIZES:
                out.phrases[index[h]].size = w
    neighbours = {i: set() for i in range(len(tokens))}
    for i, h in enumerate(heads):
        if h:
            neighbours[i].add(h - 1)
            neighbours[h - 1].add(i)
    for r, w in enumerate(tokens):
        if w not in RELATION_WORDS:
            continue
        near = neighbours[r] | {k for j in neighbours[r] for k in neighbours[j]}
        nouns = sorted(i for i in near if i in index)
        if len(nouns) == 2:
            out.relations.append((w, index[nouns[0]], index[nouns[1]]))
    return out


# --------------------------------------------------------------------------
# the meaning of a caption on a scene
# --------------------------------------------------------------------------


def cells_related(x: dict, y: dict, rel: str) -> bool:
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
        return any(i != j and cells_related(objects[i], objects[j], cap.rel)
                   for i in matches[0] for j in matches[1])
    if len(singles) == 2:
        return any(i != j for i in singles[0] for j in singles[1])
    return all(singles)
