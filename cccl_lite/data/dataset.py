"""Reading a split for CCCL: padded batches with masks, positions and graphs.

:class:`SplitReader` reads images and captions of one split of a schema file
(``cccl_lite.data.schema``) on demand: region features stay on disk and are
read per batch (HDF5 reads only the rows asked for), so COCO's 31 GiB of
features never have to fit in memory. :class:`CaptionDataset` and
:func:`collate` turn it into PyTorch batches ready for ``CCCL.forward``;
evaluators call :meth:`SplitReader.images` and :meth:`SplitReader.captions`
directly to encode every item once. Taught in chapter 1 ("The task").
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import torch

from cccl_lite.model.perceive import POSITION_TUPLES, position_features
from cccl_lite.data.parsing import heads_to_adjacency
from cccl_lite.data.schema import SchemaError, check_file

__all__ = ["build_vocab", "word_ids", "SplitReader", "CaptionDataset", "collate", "model_inputs",
           "SiblingSampler"]

PAD, UNK = 0, 1


def build_vocab(path, min_count: int = 1) -> dict[str, int]:
    """Word → id over the train split's tokens, for the "w/o BERT" Bi-GRU.

    Ids 0 and 1 are padding and unknown; words sorted so the ids are stable.
    """
    with check_file(path, "train") as f:
        counts = Counter(w for t in f["train/captions/tokens"].asstr()[:] for w in t.split(" "))
    words = sorted(w for w, c in counts.items() if c >= min_count)
    return {"<pad>": PAD, "<unk>": UNK, **{w: i + 2 for i, w in enumerate(words)}}


# Fields scanned whole for NaN and inf when a reader opens (issue 29, 19): up to
# this many bytes each (all of the synthetic scenes, Flickr30K's word vectors);
# larger ones are checked batch by batch as they are read.
SCAN_LIMIT = 2**30


def _nonfinite(where: str, row: int, what: str = "image") -> SchemaError:
    return SchemaError(f"{where}: {what} {row} holds NaN or inf; expected finite values "
                       f"(re-create or re-encode the file)")


def check_finite(ds: h5py.Dataset, where: str, offsets: np.ndarray | None = None) -> None:
    """Raise SchemaError naming the first image (``features``) or caption
    (``word_vectors``, rows mapped through ``offsets``) that holds NaN or inf,
    reading ``ds`` in blocks of about 64 MiB."""
    per_row = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
    step = max(1, 2**26 // per_row)
    for s in range(0, ds.shape[0], step):
        block = ds[s:s + step]
        bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if bad.any():
            row = s + int(np.flatnonzero(bad)[0])
            if offsets is None:
                raise _nonfinite(where, row)
            raise _nonfinite(where, int(np.searchsorted(offsets, row, "right")) - 1, "caption")


def _read_rows(dataset: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """dataset[idx] for any index order (h5py wants increasing, unique indices)."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    return dataset[uniq][inverse]


class SplitReader:
    """Lazy access to one split: images and captions by index.

    ``words``: "vectors" reads the cached word vectors (``encode_words.py``
    must have run), "ids" maps tokens through ``vocab`` ("w/o BERT"), None
    reads no words (images, boxes, tokens and heads only: for figures).
    ``syntax``: read the dependency heads (False only for "w/o S-NLP", where
    the text graph is fully connected by design). Positions come from the
    boxes; a file without boxes gives ``positions=None`` and a warning: the
    model must then run "w/o POS" (boxes are never invented).
    ``position_tuple``: which six-tuple of eq 9 (``"ours"`` or CAMERA's
    ``"camera"``, see :func:`position_features`); a model reads the one its
    ``CCCLConfig.position_tuple`` names.
    """

    def __init__(self, path, split: str, words: str = "vectors", vocab: dict | None = None,
                 syntax: bool = True, position_tuple: str = "ours"):
        self.path, self.split = Path(path), split
        if words not in ("vectors", "ids", None):
            raise ValueError(f"words must be 'vectors', 'ids' or None, got {words!r}")
        if words == "ids" and vocab is None:
            raise ValueError("words='ids' needs a vocab (see build_vocab)")
        if position_tuple not in POSITION_TUPLES:
            raise ValueError(f"position_tuple must be one of {POSITION_TUPLES}, "
                             f"got {position_tuple!r}")
        self.words, self.vocab, self.syntax = words, vocab, syntax
        self.position_tuple = position_tuple
        with check_file(self.path, split) as f:
            g = f[split]
            self.has_boxes = bool(f.attrs["has_boxes"])
            self.n_images, self.num_regions, self.region_dim = g["images/features"].shape
            self.caption_image = g["captions/image"][:]
            self.tokens = [t.split(" ") for t in g["captions/tokens"].asstr()[:]]
            # Small per-image arrays live in memory; features stay on disk.
            self.region_mask = g["images/region_mask"][:]
            self.size = g["images/size"][:]
            self.boxes = g["images/boxes"][:] if self.has_boxes else None
            if syntax and "heads" not in g["captions"]:
                raise SchemaError(f"{self.path}:/{split}/captions/heads: missing; run "
                                  f"`python data_scripts/parse_captions.py {self.path}` first")
            self.heads = list(g["captions/heads"][:]) if syntax else None
            if words == "vectors":
                if "word_vectors" not in g["captions"]:
                    raise SchemaError(
                        f"{self.path}:/{split}/captions/word_vectors: missing; run "
                        f"`python data_scripts/encode_words.py {self.path}` first")
                self.offsets = g["captions/word_offsets"][:]
                self.word_dim = g["captions/word_vectors"].shape[1]
                self.encoder = str(g["captions/word_vectors"].attrs.get("encoder", ""))
            # NaN refused before any training step, naming file, split and field.
            for name in ("images/features", "captions/word_vectors"):
                if (name in g and (words == "vectors" or name == "images/features")
                        and g[name].nbytes <= SCAN_LIMIT):
                    check_finite(g[name], self._where(name),
                                 self.offsets if name.startswith("captions") else None)
        if not self.has_boxes:
            warnings.warn(f"{self.path} has no boxes: run the model 'w/o POS'", stacklevel=2)
        self._file = None

    def _where(self, name: str) -> str:
        return f"{self.path}:/{self.split}/{name}"

    @property
    def n_captions(self) -> int:
        return len(self.caption_image)

    def _h5(self) -> h5py.Group:
        # Opened lazily, so each DataLoader worker process gets its own handle.
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file[self.split]

    def images(self, idx) -> dict:
        """regions (B, n, d_F) float32, positions (B, n, 6) or None, region_mask (B, n)."""
        idx = np.asarray(idx, dtype=np.int64)
        regions = _read_rows(self._h5()["images/features"], idx).astype(np.float32)
        bad = ~np.isfinite(regions.reshape(len(idx), -1)).all(axis=1)
        if bad.any():  # a file too large to scan when the reader opened
            raise _nonfinite(self._where("images/features"), int(idx[np.flatnonzero(bad)[0]]))
        regions = torch.from_numpy(regions)
        positions = None
        if self.has_boxes:
            positions = position_features(torch.from_numpy(self.boxes[idx]),
                                          torch.from_numpy(self.size[idx]),
                                          variant=self.position_tuple)
        return dict(regions=regions, positions=positions,
                    region_mask=torch.from_numpy(self.region_mask[idx]))

    def _word_rows(self, k: int) -> np.ndarray:
        if self.words == "ids":
            return word_ids(self.tokens[k], self.vocab)
        start, stop = self.offsets[k], self.offsets[k + 1]
        rows = self._h5()["captions/word_vectors"][start:stop].astype(np.float32)
        if not np.isfinite(rows).all():
            raise _nonfinite(self._where("captions/word_vectors"), int(k), "caption")
        return rows

    def captions(self, idx) -> dict:
        """words (B, m, d_E) float32 or (B, m) int64 ids, word_mask (B, m), word_adjacency
        (B, m, m) bool (None without syntax); m = the longest caption of the batch."""
        if self.words is None:
            raise ValueError(f"{self.path}: this reader was opened with words=None")
        return self._captions(idx)

    def _captions(self, idx) -> dict:
        idx = np.asarray(idx, dtype=np.int64)
        rows = [self._word_rows(k) for k in idx]
        m = max(len(r) for r in rows)
        mask = torch.zeros(len(idx), m, dtype=torch.bool)
        if self.words == "ids":
            words = torch.zeros(len(idx), m, dtype=torch.int64)
        else:
            words = torch.zeros(len(idx), m, self.word_dim)
        adjacency = torch.zeros(len(idx), m, m, dtype=torch.bool) if self.syntax else None
        for b, (k, r) in enumerate(zip(idx, rows)):
            if len(r) != len(self.tokens[k]):
                raise SchemaError(f"{self.path}:/{self.split}/captions/word_offsets[{k}]: "
                                  f"{len(r)} vectors for {len(self.tokens[k])} words")
            words[b, :len(r)] = torch.from_numpy(r)
            mask[b, :len(r)] = True
            if adjacency is not None:
                adjacency[b] = torch.from_numpy(heads_to_adjacency(self.heads[k], size=m))
        return dict(words=words, word_mask=mask, word_adjacency=adjacency)


def word_ids(tokens, vocab: dict) -> np.ndarray:
    """(m,) int64 ids of ``tokens`` in ``vocab`` (:func:`build_vocab`; unknown
    words get UNK)."""
    return np.array([vocab.get(w, UNK) for w in tokens], dtype=np.int64)


class CaptionDataset(torch.utils.data.Dataset):
    """One item per caption, with its image's index: the training set of eq 33."""

    def __init__(self, reader: SplitReader):
        self.reader = reader

    def __len__(self) -> int:
        return self.reader.n_captions

    def __getitem__(self, k: int) -> tuple[int, int]:
        return int(self.reader.caption_image[k]), int(k)


def collate(reader: SplitReader, items) -> dict:
    """Batch of (image, caption) pairs → inputs of ``CCCL.forward`` plus
    ``positive_mask`` (B, B): True where two pairs share an image, so a second
    caption of the same image is never used as a negative (eq 33; readings
    appendix, "Eqs 32–33")."""
    image_idx = torch.tensor([i for i, _ in items])
    caption_idx = torch.tensor([k for _, k in items])
    batch = {**reader.images(image_idx.numpy()), **reader.captions(caption_idx.numpy())}
    batch["positive_mask"] = image_idx[:, None] == image_idx[None, :]
    batch["image_index"], batch["caption_index"] = image_idx, caption_idx
    return batch


_INPUTS = ("regions", "positions", "region_mask", "words", "word_mask", "word_adjacency")


def model_inputs(batch: dict, device=None) -> dict:
    """The six keyword arguments of ``CCCL.forward``, moved to ``device``."""
    return {k: None if batch[k] is None else batch[k].to(device) for k in _INPUTS}


class SiblingSampler(torch.utils.data.Sampler):
    """Caption order that puts siblings in the same batch (hard negatives by design).

    The synthetic scenes come in groups (a base, its rebound and its swapped
    variant, ``images/group``): under a random order, two siblings share a
    batch of 32 out of 15,000 captions almost never, so the batch's
    negatives differ from the positive in their bag of objects and a model
    that ignores binding and position already wins the triplet loss. Here
    every epoch still visits each caption once, but in *tuples*: for each
    group, the captions of each image are shuffled and the t-th caption of
    every image of the group forms a tuple; tuples are shuffled and laid end
    to end, so consecutive captions (one batch) hold whole groups.

    Like ``DistributedSampler``: the order of epoch e depends on (seed, e)
    only (``set_epoch``), so a resumed run sees the same batches; with
    ``num_replicas`` > 1 each rank takes every num_replicas-th tuple.
    ``group`` (N_img,) and ``caption_image`` (N_cap,) int arrays.
    """

    def __init__(self, group, caption_image, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        self.group = np.asarray(group)
        self.caption_image = np.asarray(caption_image)
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        by_image: dict[int, list[int]] = {}
        for k, i in enumerate(self.caption_image):
            by_image.setdefault(int(i), []).append(k)
        self._groups: list[list[list[int]]] = []
        members: dict[int, list[int]] = {}
        for i in sorted(by_image):
            members.setdefault(int(self.group[i]), []).append(i)
        for g in sorted(members):
            self._groups.append([by_image[i] for i in members[g]])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        """This rank's caption indices for the current epoch (tuples laid end to end)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        tuples = []
        for images in self._groups:
            caps = [list(rng.permutation(c)) for c in images]
            for t in range(max(len(c) for c in caps)):
                tuples.append([int(c[t]) for c in caps if t < len(c)])
        order = rng.permutation(len(tuples))
        ranks = [[k for j in order[r::self.num_replicas] for k in tuples[j]]
                 for r in range(self.num_replicas)]
        # Every rank the same number of captions, or DDP's ranks would wait
        # for a batch that one of them never has.
        size = min(len(r) for r in ranks)
        return ranks[self.rank][:size]

    def __iter__(self):
        return iter(self._order())

    def __len__(self) -> int:
        return len(self._order())
