"""Text pipeline: words, word vectors from a BERT-family encoder, dependency graphs.

Taught in chapters 2 (word vectors, eqs 11-12) and 3 (dependency graphs,
eq 23). A caption is stored as its *words* (``captions/tokens``, joined by
single spaces); every later step (word vectors, parses, the graph of
Branch 3) has exactly one row per word.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

__all__ = ["simple_tokenize", "heads_to_adjacency"]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def simple_tokenize(text: str) -> list[str]:
    """Lower-cased words of a raw caption, punctuation dropped (as Karpathy's
    split JSON tokens are): "A dog's ball, red." → ["a", "dog's", "ball", "red"]."""
    return _WORD.findall(text.lower())


def heads_to_adjacency(heads: Sequence[int], size: int | None = None) -> np.ndarray:
    """Dependency heads → the symmetric word graph W^D of eq 23, with self-loops.

    heads: one entry per word, 1-based, 0 = root (CoNLL-U / stanza). Returns
    an (m, m) bool matrix (or (size, size), zero-padded): True where a
    dependency arc links words i and j, in either direction, and on the
    diagonal so that no word is left without a neighbour.
    """
    m = len(heads)
    size = m if size is None else size
    if size < m:
        raise ValueError(f"heads_to_adjacency: size {size} < number of words {m}")
    adj = np.zeros((size, size), dtype=bool)
    idx = np.arange(m)
    adj[idx, idx] = True
    for i, h in enumerate(heads):
        if not 0 <= h <= m:
            raise ValueError(f"heads_to_adjacency: head {h} of word {i + 1} outside [0, {m}]")
        if h:
            adj[i, h - 1] = adj[h - 1, i] = True
    return adj
