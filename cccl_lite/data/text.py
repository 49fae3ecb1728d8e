"""Text pipeline: a caption's words, and what its two halves share.

Taught in chapters 2 (word vectors, eqs 11-12) and 3 (dependency graphs,
eq 23). A caption is stored as its *words* (``captions/tokens``, joined by
single spaces; :func:`simple_tokenize` makes them from raw text); every
later step (word vectors, parses, the graph of Branch 3) has exactly one
row per word.

The two halves, each its own module: :mod:`cccl_lite.data.vectors` (word
vectors from a BERT-family encoder, eqs 11-12) and
:mod:`cccl_lite.data.parsing` (stanza dependency heads and the word graph
W^D, eq 23). Both write into a schema file the same way, with what this
module holds: the splits to do, datasets dropped before they are replaced,
and :class:`ModelUnavailableError` for a model that is not installed.
Each half's names are imported from the half itself.
"""

from __future__ import annotations

import re
import unicodedata

from cccl_lite.data.schema import SPLITS, SchemaError, check_file

__all__ = ["simple_tokenize", "ModelUnavailableError"]

# A word: letters and digits of any script (\w without "_"), optionally an
# apostrophe and letters ("dog's"). Unicode-aware, so that "café", "São
# Paulo" and "jalapeño" stay whole words (Flickr30K captions have them).
_WORD = re.compile(r"[^\W_]+(?:'[^\W\d_]+)?")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2018": "'"})


def simple_tokenize(text: str) -> list[str]:
    """Lower-cased words of a raw caption, punctuation dropped (as Karpathy's
    split JSON tokens are): "A dog's ball, red." → ["a", "dog's", "ball", "red"].

    Letters outside ASCII are letters: "Café in São Paulo" → ["café", "in",
    "são", "paulo"]. The text is NFC-normalised first, so an accent typed as
    a separate combining mark ("e" + U+0301) joins its letter instead of
    splitting the word, and typographic apostrophes (’) count as "'".
    """
    text = unicodedata.normalize("NFC", text.translate(_APOSTROPHES))
    return _WORD.findall(unicodedata.normalize("NFC", text.lower()))


class ModelUnavailableError(RuntimeError):
    """A model the text pipeline needs is not installed here; the message says how to get it."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _drop(group, *names: str) -> None:
    for name in names:
        if name in group:
            del group[name]


def _splits_of(path, splits) -> list[str]:
    """The splits to process: ``splits`` (checked to exist) or all the file has."""
    with check_file(path) as f:
        present = [s for s in SPLITS if s in f]
    if splits is None:
        return present
    splits = [splits] if isinstance(splits, str) else list(splits)
    for s in splits:
        if s not in present:
            raise SchemaError(f"{path}: no split {s!r}; the file has {present}")
    return splits
