"""Dependency graphs (eq 23): stanza heads for each caption's stored words and
the symmetric word graph W^D of Branch 3.

Taught in chapter 3. :func:`parse_captions` stores ``captions/heads`` in a
schema file (for Flickr30K and COCO: the synthetic scenes come with gold
heads); :func:`heads_to_adjacency` turns heads into W^D, and the data
loader (:mod:`cccl_lite.data.dataset`) calls it for every batch, so stanza
is imported only inside the functions that need it. The words themselves
and the pieces shared with the word vectors: :mod:`cccl_lite.data.text`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cccl_lite.data.schema import check_heads, write_heads
from cccl_lite.data.text import ModelUnavailableError, _drop, _first_line, _splits_of

if TYPE_CHECKING:
    import stanza

__all__ = ["heads_to_adjacency", "dependency_adjacency", "align_heads",
           "load_parser", "parse_heads", "parse_captions"]

_TMP_HEADS = ".heads.tmp"


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


def _word_heads(sentence) -> list[int]:
    heads = [w.head for w in sentence.words]
    words = [w.text for w in sentence.words]
    if any(h is None for h in heads):
        raise ValueError(f"sentence {words} has no dependency heads (was depparse run?)")
    heads = [int(h) for h in heads]
    if any(not 0 <= h <= len(heads) for h in heads):
        raise ValueError(f"sentence {words}: heads {heads} outside [0, {len(heads)}]")
    return heads


def dependency_adjacency(sentence: "stanza.models.common.doc.Sentence") -> np.ndarray:
    """W^D of eq 23 for one parsed stanza sentence: (m, m) bool over its m WORDS.

    ``sentence.words`` expands multi-word tokens ("don't" → "do", "n't"), and
    ``word.head`` is 1-based with 0 = root; the graph is symmetric with
    self-loops (:func:`heads_to_adjacency`).
    """
    return heads_to_adjacency(_word_heads(sentence))


def _depths(heads: Sequence[int], words: Sequence[str]) -> list[int]:
    """Distance of each word from the root (the root has 0); ValueError on a cycle."""
    depth: list[int | None] = [None] * len(heads)
    for i in range(len(heads)):
        path, j = [], i
        while j >= 0 and depth[j] is None:
            path.append(j)
            if len(path) > len(heads):
                raise ValueError(f"sentence {list(words)}: heads {list(heads)} contain a cycle")
            j = heads[j] - 1
        d = -1 if j < 0 else depth[j]
        for p in reversed(path):
            d += 1
            depth[p] = d
    return depth  # type: ignore[return-value]


def align_heads(tokens: Sequence[str], sentence) -> list[int]:
    """Heads (1-based, 0 = root) of the caption's stored words from one parse.

    tokens: the caption's words as stored (``captions/tokens``); sentence: a
    stanza Sentence parsed from them. If the parser's words equal the tokens,
    their heads are returned. If they differ only because the parser expanded
    multi-word tokens (its ``sentence.tokens`` equal ``tokens``; "del" → "de",
    "el"), each token becomes one node: its head word is its word closest to
    the root (that word's head lies outside the token), and the token's head
    is the token holding that word's head. Choosing the word closest to the
    root keeps the result a tree (a token's head is always nearer the root).
    Anything else raises ValueError naming both word lists: heads are never
    shifted onto the wrong words.
    """
    tokens = list(tokens)
    words = [w.text for w in sentence.words]
    heads = _word_heads(sentence)
    if words == tokens:
        return heads
    token_texts = [t.text for t in sentence.tokens]
    if token_texts != tokens:
        raise ValueError(f"the parser's words {words} (tokens {token_texts}) do not match the "
                         f"caption's tokens {tokens}")
    # Word position (0-based, in sentence.words order) -> token number (1-based).
    position = {id(w): i for i, w in enumerate(sentence.words)}
    token_of = [0] * len(words)
    members = []
    for t_num, token in enumerate(sentence.tokens, start=1):
        ids = [position[id(w)] for w in token.words]
        for i in ids:
            token_of[i] = t_num
        members.append(ids)
    depth = _depths(heads, words)
    out = []
    for ids in members:
        top = min(ids, key=lambda i: depth[i])
        out.append(0 if heads[top] == 0 else token_of[heads[top] - 1])
    return out


def load_parser(lang: str = "en", use_gpu: bool | None = None,
                dir: str | os.PathLike | None = None, **kwargs):
    """A stanza dependency parser for pretokenized captions (one caption = one sentence).

    ``stanza.Pipeline(lang, processors="tokenize,pos,lemma,depparse",
    tokenize_pretokenized=True, download_method=None)``: nothing is downloaded.
    Models are looked for in ``dir``, else $STANZA_RESOURCES_DIR, else stanza's
    default directory. If they are missing, :class:`ModelUnavailableError` says
    how to install them; there is no fallback graph (eq 23 needs real parses).
    use_gpu: None lets stanza choose. ``kwargs`` go to ``stanza.Pipeline``.
    """
    import stanza
    from stanza.resources.common import DEFAULT_MODEL_DIR

    where = str(dir if dir is not None else
                os.environ.get("STANZA_RESOURCES_DIR") or DEFAULT_MODEL_DIR)
    # stanza 1.15 applies logging_level only while the pipeline is built; its own
    # log lines about missing files would duplicate the one error raised below.
    options = dict(processors="tokenize,pos,lemma,depparse", tokenize_pretokenized=True,
                   download_method=None, use_gpu=use_gpu, logging_level="CRITICAL")
    options.update(kwargs)
    try:
        return stanza.Pipeline(lang, dir=where, **options)
    except (OSError, ValueError) as e:
        # OSError covers stanza's ResourcesFileNotFoundError / LanguageNotDownloadedError
        # and a missing HF model; ValueError("No processors to load ...") a resources.json
        # that lacks the language.
        if isinstance(e, ValueError) and "No processors to load" not in str(e):
            raise
        target = "" if dir is None and not os.environ.get("STANZA_RESOURCES_DIR") else \
            f", model_dir={where!r}"
        raise ModelUnavailableError(
            f"stanza models for {lang!r} are not installed in {where} (the dir= argument, "
            f"else $STANZA_RESOURCES_DIR, else stanza's default); install them "
            f"once with internet: python -c \"import stanza; stanza.download('{lang}'"
            f"{target})\" [stanza: {_first_line(e)}]") from None


def parse_heads(parser, token_lists: Sequence[Sequence[str]], batch_size: int = 256,
                desc: str = "parsing") -> list[list[int]]:
    """Dependency heads of each caption's stored words (eq 23's W^D input).

    parser: a stanza Pipeline from :func:`load_parser` (or any callable taking a
    list of word lists and returning a stanza Document with one sentence per
    caption). token_lists: M captions of m_k words. Returns M head lists of
    length m_k (1-based, 0 = root), via :func:`align_heads`.
    """
    from tqdm.auto import tqdm

    lists = [list(t) for t in token_lists]
    out: list[list[int]] = []
    with tqdm(total=len(lists), desc=desc, unit="caption") as bar:
        for s in range(0, len(lists), batch_size):
            batch = lists[s:s + batch_size]
            sentences = parser(batch).sentences
            if len(sentences) != len(batch):
                raise ValueError(f"captions {s}..{s + len(batch) - 1}: the parser returned "
                                 f"{len(sentences)} sentences for {len(batch)} captions; each "
                                 f"caption must stay one sentence (tokenize_pretokenized=True)")
            for k, (tokens, sentence) in enumerate(zip(batch, sentences)):
                try:
                    out.append(align_heads(tokens, sentence))
                except ValueError as e:
                    raise ValueError(f"caption {s + k}: {e}") from None
            bar.update(len(batch))
    return out


def parse_captions(path: str | os.PathLike, parser=None, splits: Sequence[str] | None = None,
                   batch_size: int = 256, overwrite: bool = False,
                   use_gpu: bool | None = None) -> dict[str, bool]:
    """Parse a schema file's captions and store ``captions/heads`` (eq 23's W^D).

    For Flickr30K / COCO (the synthetic scenes come with gold heads). A split
    that already has heads is skipped unless ``overwrite``. parser: None loads
    ``load_parser(use_gpu=use_gpu)``, only if some split needs parsing. Every
    head list is validated with ``check_heads`` before anything is written;
    the heads go to a temporary group and are moved into place, so an
    interrupted run leaves no partial ``heads``. Returns {split: True if
    written, False if skipped}.
    """
    import h5py

    splits = _splits_of(path, splits)
    with h5py.File(path, "r") as f:
        todo = [s for s in splits if overwrite or "heads" not in f[s]["captions"]]
    if todo and parser is None:
        parser = load_parser(use_gpu=use_gpu)
    for s in todo:
        with h5py.File(path, "r") as f:
            tokens = [t.split(" ") for t in f[s]["captions/tokens"].asstr()[:]]
        heads = parse_heads(parser, tokens, batch_size, desc=f"{s}: parsing")
        for k, (t, h) in enumerate(zip(tokens, heads)):
            check_heads(h, len(t), f"{path}:/{s}/captions/heads[{k}]")
        with h5py.File(path, "r+") as f:
            cap = f[s]["captions"]
            _drop(cap, _TMP_HEADS)
            try:
                write_heads(cap.create_group(_TMP_HEADS), heads)
            except BaseException:
                _drop(cap, _TMP_HEADS)
                raise
            _drop(cap, "heads")
            cap.move(f"{_TMP_HEADS}/heads", "heads")
            _drop(cap, _TMP_HEADS)
    return {s: s in todo for s in splits}
