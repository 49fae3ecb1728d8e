"""SplitReader / CaptionDataset / collate on a small hand-written schema file."""

import functools

import h5py
import numpy as np
import pytest
import torch

from helpers import lite_vectors
from cccl_lite.data import SchemaError, atomic_h5, write_split
from cccl_lite.data.dataset import (CaptionDataset, SplitReader, build_vocab, collate,
                                    model_inputs)
from cccl_lite.model.cccl import CCCL, CCCLConfig
from cccl_lite.model.loss import HybridObjective

TOKENS = ["a red circle", "a blue square left of a red circle", "two circles",
          "a square", "a green triangle above a square"]
HEADS = [[3, 3, 0], [3, 3, 0, 3, 8, 8, 8, 4], [2, 0], [2, 0], [3, 3, 0, 6, 6, 3]]
IMAGE = [0, 0, 1, 2, 2]
D_E = 4


def write_file(path, boxes=True, vectors=True, heads=True):
    rng = np.random.default_rng(0)
    n_img, n = 3, 4
    with atomic_h5(path, "unit", has_boxes=boxes) as f:
        write_split(
            f, "train", features=rng.normal(size=(n_img, n, 6)),
            size=[[100, 50], [200, 100], [10, 10]],
            region_mask=np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool),
            text=[t.capitalize() + "." for t in TOKENS], image=IMAGE, tokens=TOKENS,
            heads=HEADS if heads else None,
            boxes=np.tile(np.array([10, 5, 60, 25], np.float32), (n_img, n, 1)) if boxes else None)
        if vectors:
            counts = [len(t.split()) for t in TOKENS]
            g = f["train/captions"]
            # Word w of caption k gets the vector (k, w, k + w, 1): easy to check.
            rows = [[k, w, k + w, 1] for k, c in enumerate(counts) for w in range(c)]
            g.create_dataset("word_vectors", data=np.array(rows, np.float16))
            g.create_dataset("word_offsets", data=np.concatenate([[0], np.cumsum(counts)]))
            g["word_vectors"].attrs["encoder"] = "hand-made"
    return path


@pytest.fixture
def reader(tmp_path):
    return SplitReader(write_file(tmp_path / "d.h5"), "train")


def test_batch_shapes_padding_and_values(reader, tmp_path):
    batch = collate(reader, [CaptionDataset(reader)[k] for k in (1, 0, 3)])
    assert batch["regions"].shape == (3, 4, 6) and batch["regions"].dtype == torch.float32
    with h5py.File(tmp_path / "d.h5") as f:
        feats = f["train/images/features"][:].astype(np.float32)
    # Captions 1, 0, 3 belong to images 0, 0, 2.
    assert np.array_equal(batch["regions"].numpy(), feats[[0, 0, 2]])
    assert batch["region_mask"].tolist()[2] == [True, False, False, False]
    m = 8  # longest caption of the batch
    assert batch["words"].shape == (3, m, D_E)
    assert batch["word_mask"].sum(1).tolist() == [8, 3, 2]
    assert batch["words"][1, 2].tolist() == [0, 2, 2, 1]  # caption 0, word 2
    assert batch["words"][0, 7].tolist() == [1, 7, 8, 1]
    assert batch["words"][1, 3:].abs().sum() == 0  # padding stays zero


def test_positions_follow_the_boxes(reader):
    batch = collate(reader, [(0, 0), (1, 2)])
    # Box (10, 5, 60, 25) in a 100 x 50 image and in a 200 x 100 image.
    w0, h0 = 50 / 100, 20 / 50
    assert torch.allclose(batch["positions"][0, 0], torch.tensor(
        [0.1, 0.1, 0.6, 0.5, w0 * h0, w0 / (w0 + h0)]))
    w1, h1 = 50 / 200, 20 / 100
    assert torch.allclose(batch["positions"][1, 3], torch.tensor(
        [0.05, 0.05, 0.3, 0.25, w1 * h1, w1 / (w1 + h1)]))


def test_camera_position_tuple_reaches_the_batch(tmp_path):
    reader = SplitReader(write_file(tmp_path / "d.h5"), "train", position_tuple="camera")
    batch = collate(reader, [(0, 0), (1, 2)])
    # CAMERA: x1/W, y1/H, w/W, h/H, w/h in pixels (50 / 20 in both images), area.
    assert torch.allclose(batch["positions"][0, 0], torch.tensor(
        [0.1, 0.1, 0.5, 0.4, 2.5, 0.5 * 0.4]))
    assert torch.allclose(batch["positions"][1, 3], torch.tensor(
        [0.05, 0.05, 0.25, 0.2, 2.5, 0.25 * 0.2]))
    with pytest.raises(ValueError, match="position_tuple"):
        SplitReader(tmp_path / "d.h5", "train", position_tuple="pfan")


def test_adjacency_from_the_gold_heads(reader):
    batch = collate(reader, [(2, 4), (0, 0)])
    adj = batch["word_adjacency"]
    # "a green triangle above a square": arcs a-triangle, green-triangle,
    # above-square, a-square, square-triangle, plus self-loops.
    arcs = {(0, 2), (1, 2), (3, 5), (4, 5), (5, 2)}
    expected = torch.eye(6, dtype=torch.bool)
    for i, j in arcs:
        expected[i, j] = expected[j, i] = True
    assert torch.equal(adj[0], expected)
    assert not adj[1, 3:].any() and not adj[1, :, 3:].any()  # padding has no arcs


def test_positive_mask_marks_captions_of_one_image(reader):
    items = [CaptionDataset(reader)[k] for k in range(5)]
    mask = collate(reader, items)["positive_mask"]
    for i in range(5):
        for j in range(5):
            assert bool(mask[i, j]) == (IMAGE[i] == IMAGE[j])


def test_batches_run_through_the_model(reader):
    loader = torch.utils.data.DataLoader(CaptionDataset(reader), batch_size=5,
                                         collate_fn=functools.partial(collate, reader))
    batch = next(iter(loader))
    cfg = lite_vectors(region_dim=6, word_dim=D_E, embed_dim=8, sim_dim=8)
    model = CCCL(cfg)
    _, scores = model(**model_inputs(batch))
    loss = HybridObjective()(scores, batch["positive_mask"])
    assert scores[0].shape == (5, 5) and torch.isfinite(loss.total)


def test_word_ids_use_the_train_vocabulary(tmp_path):
    path = write_file(tmp_path / "d.h5", vectors=False)
    vocab = build_vocab(path)
    words = sorted({w for t in TOKENS for w in t.split()})
    assert vocab == {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    reader = SplitReader(path, "train", words="ids", vocab=vocab)
    ids = reader.captions([0])["words"]
    assert ids.tolist() == [[vocab["a"], vocab["red"], vocab["circle"]]]


def test_missing_pieces_say_which_step_to_run(tmp_path):
    with pytest.raises(SchemaError, match="encode_words.py"):
        SplitReader(write_file(tmp_path / "a.h5", vectors=False), "train")
    with pytest.raises(SchemaError, match="parse_captions.py"):
        SplitReader(write_file(tmp_path / "b.h5", heads=False), "train")
    reader = SplitReader(tmp_path / "b.h5", "train", syntax=False)
    assert reader.captions([0])["word_adjacency"] is None
    with pytest.raises(SchemaError, match="no split 'val'"):
        SplitReader(tmp_path / "b.h5", "val", syntax=False)
    with pytest.raises(FileNotFoundError):
        SplitReader(tmp_path / "missing.h5", "train")


def test_images_and_heads_without_words(tmp_path):
    reader = SplitReader(write_file(tmp_path / "d.h5", vectors=False), "train", words=None)
    assert reader.images([2])["regions"].shape == (1, 4, 6)
    assert list(reader.heads[4]) == HEADS[4] and reader.tokens[1][3] == "left"
    with pytest.raises(ValueError, match="words=None"):
        reader.captions([0])


def test_without_boxes_positions_are_none_with_a_warning(tmp_path):
    path = write_file(tmp_path / "d.h5", boxes=False)
    with pytest.warns(UserWarning, match="w/o POS"):
        reader = SplitReader(path, "train")
    assert reader.images([0, 1])["positions"] is None
