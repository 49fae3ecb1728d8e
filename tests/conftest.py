"""Fixtures shared by several test files (plain helpers and constants: helpers.py)."""

import h5py
import numpy as np
import pytest

from cccl_lite.data.synthetic import make_synthetic

from helpers import WORD_DIM


@pytest.fixture(scope="session")
def tiny_words_h5(tmp_path_factory):
    """The tiny synthetic scenes plus random WORD_DIM-d word vectors in the schema's layout."""
    path = make_synthetic(tmp_path_factory.mktemp("data") / "tiny.h5", seed=0, size="tiny")
    rng = np.random.default_rng(0)
    with h5py.File(path, "a") as f:
        for split in ("train", "val", "test"):
            g = f[split]["captions"]
            counts = [len(t.split(" ")) for t in g["tokens"].asstr()[:]]
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            g.create_dataset("word_vectors",
                             data=rng.normal(size=(offsets[-1], WORD_DIM)).astype(np.float16))
            g.create_dataset("word_offsets", data=offsets)
            g["word_vectors"].attrs["encoder"] = "random"
    return path


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny tensors: faster, and immune to a
    busy machine's thread contention. Use with pytest.mark.usefixtures."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
