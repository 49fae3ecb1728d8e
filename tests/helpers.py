"""Helpers shared by several test modules: one place, so that no test module
imports another (pytest puts tests/ on sys.path: ``from helpers import ...``).

Fixtures stay in conftest.py; these are plain functions, classes and constants.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml
from torch import nn

from cccl_lite.model.cccl import CCCLConfig  # noqa: F401  (re-used by test modules)
from cccl_lite.model.perceive import position_features
from cccl_lite.model.reason import CrossGRU


def lite_vectors(**kw) -> CCCLConfig:
    """The lite preset's model reading word *vectors* with eq 8 as printed
    (use_bert, no centre columns): the path most tests exercise, whatever the
    lite preset's text encoder. ``kw``: model fields."""
    import dataclasses

    from cccl_lite.engine.recipes import PRESETS

    return dataclasses.replace(PRESETS["lite"].model, **{"use_bert": True, "centre_scale": 0.0,
                                                         **kw})


ROOT = Path(__file__).resolve().parent.parent
WORD_DIM = 16  # random word vectors: the tests need their shape, not their meaning


# ---- the book ----------------------------------------------------------------


def notebook_chapters() -> list[Path]:
    """The chapters that run code (jupytext MyST notebooks) listed in _toc.yml, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = []

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(ROOT / (e["file"] + ".md"))
            walk(e.get("sections"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return [f for f in files if "jupytext" in f.read_text()[:400]]


# ---- random model inputs (test_model, test_perf, test_fused) ------------------

VOCAB = 40


def tiny_config(**kw):
    return lite_vectors(region_dim=10, word_dim=8, embed_dim=6, sim_dim=12,
                           vocab_size=VOCAB, **kw)


def make_batch(cfg, n_img=3, n_txt=4, n=5, m=6, seed=0):
    """Random inputs with ragged masks; padded slots hold garbage on purpose."""
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(n_img, n, cfg.region_dim, generator=g, dtype=torch.float64)
    xy = torch.rand(n_img, n, 2, generator=g) * 50
    wh = torch.rand(n_img, n, 2, generator=g) * 50 + 1
    positions = position_features(torch.cat([xy, xy + wh], -1), torch.full((n_img, 2), 100.0))
    region_len = torch.randint(2, n + 1, (n_img,), generator=g)
    region_len[0] = n
    region_mask = torch.arange(n)[None] < region_len[:, None]
    word_len = torch.randint(2, m + 1, (n_txt,), generator=g)
    word_len[0] = m
    word_mask = torch.arange(m)[None] < word_len[:, None]
    if cfg.use_bert:
        words = torch.randn(n_txt, m, cfg.word_dim, generator=g, dtype=torch.float64)
    else:
        words = torch.randint(1, VOCAB, (n_txt, m), generator=g) * word_mask
    # A chain of dependency arcs (word k linked to k+1) plus one random arc.
    adjacency = torch.zeros(n_txt, m, m, dtype=torch.bool)
    for b in range(n_txt):
        for k in range(int(word_len[b]) - 1):
            adjacency[b, k, k + 1] = adjacency[b, k + 1, k] = True
        adjacency[b, 0, int(word_len[b]) - 1] = adjacency[b, int(word_len[b]) - 1, 0] = True
    return dict(regions=regions, positions=positions.double(), region_mask=region_mask,
                words=words, word_mask=word_mask, word_adjacency=adjacency)


# ---- evaluation (test_evaluate, test_perf) -------------------------------------

READER_VOCAB = 30  # MemoryReader's word ids for "w/o BERT" lie in [2, READER_VOCAB)


class MemoryReader:
    """The parts of SplitReader the evaluator uses, over random in-memory items.

    Ragged lengths; ``captions(idx)`` pads to the longest caption of ``idx`` only,
    as SplitReader does, so encodings of different batches differ in length.
    Padded slots hold garbage on purpose.
    """

    split = "test"

    def __init__(self, cfg, n_img=5, cpi=2, n=5, m=7, seed=0, caption_image=None):
        g = torch.Generator().manual_seed(seed)
        self.n_images, self.cfg = n_img, cfg
        self.caption_image = (np.repeat(np.arange(n_img), cpi) if caption_image is None
                              else np.asarray(caption_image))
        n_txt = len(self.caption_image)
        self.regions = torch.randn(n_img, n, cfg.region_dim, generator=g, dtype=torch.float64)
        xy = torch.rand(n_img, n, 2, generator=g) * 50
        wh = torch.rand(n_img, n, 2, generator=g) * 50 + 1
        self.positions = position_features(torch.cat([xy, xy + wh], -1),
                                           torch.full((n_img, 2), 100.0)).double()
        region_len = torch.randint(2, n + 1, (n_img,), generator=g)
        region_len[0] = n
        self.region_mask = torch.arange(n)[None] < region_len[:, None]
        self.word_len = torch.randint(2, m + 1, (n_txt,), generator=g)
        self.word_len[-1] = m
        self.word_mask = torch.arange(m)[None] < self.word_len[:, None]
        if cfg.use_bert:
            self.words = torch.randn(n_txt, m, cfg.word_dim, generator=g, dtype=torch.float64)
        else:
            self.words = torch.randint(2, READER_VOCAB, (n_txt, m), generator=g)
        # A chain of dependency arcs plus one random arc per caption.
        self.adjacency = torch.zeros(n_txt, m, m, dtype=torch.bool)
        for b in range(n_txt):
            k_last = int(self.word_len[b]) - 1
            for k in range(k_last):
                self.adjacency[b, k, k + 1] = self.adjacency[b, k + 1, k] = True
            j = int(torch.randint(0, k_last + 1, (1,), generator=g))
            self.adjacency[b, 0, j] = self.adjacency[b, j, 0] = True
        self.fail = False

    @property
    def n_captions(self):
        return len(self.caption_image)

    def images(self, idx):
        assert not self.fail, "the evaluator read images"
        idx = torch.as_tensor(np.asarray(idx))
        return dict(regions=self.regions[idx], positions=self.positions[idx],
                    region_mask=self.region_mask[idx])

    def captions(self, idx):
        assert not self.fail, "the evaluator read captions"
        idx = torch.as_tensor(np.asarray(idx))
        m = int(self.word_len[idx].max())
        return dict(words=self.words[idx, :m], word_mask=self.word_mask[idx, :m],
                    word_adjacency=self.adjacency[idx, :m, :m])

    def forward(self, model):
        """The training forward on the full batch: F (N_img, N_txt)."""
        with torch.no_grad():
            return model(self.regions, self.positions, self.region_mask, self.words,
                         self.word_mask, self.adjacency)[0]


def brute_force_recalls(sims, owner):
    """R@1/5/10 both ways and rsum by looping over queries; caption j belongs to
    image owner[j]; ties count against the model (pessimistic)."""
    sims = np.asarray(sims, dtype=np.float64)
    n_img, n_cap = sims.shape
    i2t, t2i = [], []
    for i in range(n_img):
        best = max(sims[i, j] for j in range(n_cap) if owner[j] == i)
        i2t.append(sum(1 for j in range(n_cap) if owner[j] != i and sims[i, j] >= best))
    for j in range(n_cap):
        gt = sims[owner[j], j]
        t2i.append(sum(1 for i in range(n_img) if i != owner[j] and sims[i, j] >= gt))
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
    out["rsum"] = sum(out.values())
    return out


def add_word_vectors(path, dim=WORD_DIM, seed=0):
    """captions/word_vectors (W, dim) float16 and word_offsets (M + 1,) per split."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r+") as f:
        for split in ("train", "val", "test"):
            cap = f[split]["captions"]
            lengths = [len(t.split(" ")) for t in cap["tokens"].asstr()[:]]
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            vec = cap.create_dataset("word_vectors", data=rng.normal(
                size=(int(offsets[-1]), dim)).astype(np.float16))
            vec.attrs["encoder"] = "random-test-vectors"
            cap.create_dataset("word_offsets", data=offsets)


def synthetic_config(**kw):
    return lite_vectors(**{"word_dim": WORD_DIM, "embed_dim": 8, "sim_dim": 8, **kw})


# ---- eq 26's GRU against torch's own (test_perf, test_fused) -------------------


def nn_gru_states(gru: CrossGRU, nodes, cross, lengths) -> torch.Tensor:
    """(B_x, B_y, d): the last state of torch's own nn.GRU, with gru's weights, run
    on each pair's sequence [cross_y, x_1, ..., x_{lengths[x]}] one at a time."""
    d = gru.dim
    ref = nn.GRU(d, d, batch_first=True).to(nodes.dtype)
    out = torch.empty(nodes.shape[0], cross.shape[0], d, dtype=nodes.dtype)
    with torch.no_grad():
        for ours, theirs in (("weight_ih", "weight_ih_l0"), ("weight_hh", "weight_hh_l0"),
                             ("bias_ih", "bias_ih_l0"), ("bias_hh", "bias_hh_l0")):
            getattr(ref, theirs).copy_(getattr(gru.cell, ours))
        for x in range(nodes.shape[0]):
            for y in range(cross.shape[0]):
                _, h = ref(torch.cat([cross[y:y + 1], nodes[x, :lengths[x]]])[None])
                out[x, y] = h[0, 0]
    return out


# ---- SCAN files in the real formats (test_converters, test_reliability) --------

N, R, D, CPI = 4, 36, 16, 5
SIZES = np.array([[500, 375], [640, 480], [333, 500], [1024, 768]], np.float32)
IDS = [1000092795, 10002456, 1000268201, 1000344755]


def caption(i, j):
    return f"Image {i}: A dog's ball, red (take {j})."


def tokens(i, j):  # simple_tokenize of caption(i, j), written out by hand
    return f"image {i} a dog's ball red take {j}"


def random_boxes(rng, sizes, n=R):
    """Pixel boxes inside each image: (len(sizes), n, 4) x1, y1, x2, y2."""
    w, h = sizes[:, None, 0], sizes[:, None, 1]
    x1 = rng.uniform(0, 0.5, (len(sizes), n)) * w
    y1 = rng.uniform(0, 0.5, (len(sizes), n)) * h
    x2 = x1 + rng.uniform(0.1, 0.5, (len(sizes), n)) * w
    y2 = y1 + rng.uniform(0.1, 0.5, (len(sizes), n)) * h
    return np.stack([x1, y1, x2, y2], -1).astype(np.float32)


def write_scan(d: Path, split="test", layout="image", boxes="camera", seed=0):
    """SCAN files (+ CAMERA or GSMN boxes) for N images; returns what was written."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(N, R, D)).astype(np.float32)
    bxs = random_boxes(rng, SIZES)
    rep = (lambda a: np.repeat(a, CPI, axis=0)) if layout == "caption" else (lambda a: a)
    np.save(d / f"{split}_ims.npy", rep(feats))
    (d / f"{split}_caps.txt").write_text(
        "".join(caption(i, j) + "\n" for i in range(N) for j in range(CPI)))
    ids = [str(i) for i in IDS]
    (d / f"{split}_ids.txt").write_text("\n".join(rep(np.array(ids)).tolist()) + "\n")
    if boxes == "camera":
        np.save(d / f"{split}_boxes.npy", rep(bxs))
        np.save(d / f"{split}_img_sizes.npy", rep(SIZES))
    elif boxes == "gsmn":
        np.save(d / f"{split}_ims_bbx.npy", rep(bxs))
        # GSMN's size file: a pickled object array of {image_h, image_w} dicts.
        sz = np.empty(len(rep(SIZES)), dtype=object)
        for k, (w, h) in enumerate(rep(SIZES)):
            sz[k] = {"image_h": int(h), "image_w": int(w)}
        np.save(d / f"{split}_ims_size.npy", sz, allow_pickle=True)
    return {"features": feats, "boxes": bxs}


# ---- training (test_train, test_reliability) ------------------------------------


def small(**kw):
    """(model config, recipe) of a small fast run: the lite model reading
    word vectors at d = P = 16, the lite recipe's numbers at B = 8, 2 epochs,
    lr 1e-3 cut after one, with the paper preset's procedure (one warm-up
    epoch, image positives, random batches, no early stopping); ``kw``:
    fields of either half (:meth:`cccl_lite.engine.recipes.Preset.replace`)."""
    # Imported here, not at the top: the data tests import this module too and
    # must not depend on the engine importing.
    from cccl_lite.engine.recipes import PRESETS, Preset

    model = lite_vectors(region_dim=256, word_dim=WORD_DIM, embed_dim=16, sim_dim=16)
    recipe = PRESETS["lite"].recipe.replace(batch_size=8, epochs=2, lr=1e-3, lr_decay_epoch=1,
                                            **PRESETS["paper"].recipe.procedure())
    return Preset(model, recipe).replace(**kw)


def small_config(**kw) -> CCCLConfig:
    """The model of :func:`small`; ``kw``: model fields."""
    return small(**kw).model


def quick(**kw):
    """RunOptions of a test run: at most 3 batches an epoch, quiet, on the CPU."""
    from cccl_lite.engine.recipes import RunOptions

    return RunOptions(**{**dict(max_steps=3, quiet=True, device="cpu"), **kw})


# ---- command-line errors (test_reliability, test_reliability_engine) ------------


def one_error_line(capsys, *needles):
    """stderr holds exactly one line, an error, containing every needle; returns it."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---- a local HTTP server (test_download, test_reliability_download) ------------

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY")


def no_proxies(monkeypatch):
    """A proxy from the environment must not see requests meant for 127.0.0.1."""
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def send_range(handler, data: bytes, honour_range: bool = True):
    """The status line and range headers of a GET for ``data`` (headers not ended,
    no Content-Length yet): 206 from N for "Range: bytes=N-" when honoured, 200 with
    the whole of ``data`` otherwise. Returns (body, whole); None after a complete
    416 answer (N at or past the end), as a server tells a finished download."""
    rng = handler.headers.get("Range")
    if rng and honour_range:
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
        if start >= len(data):
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(data)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        return data[start:], False
    handler.send_response(200)
    return data, True


@contextmanager
def local_server(handler, **attrs):
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) serving with ``handler`` in a
    thread; the server carries ``attrs``, ``log`` (a list for the handler to append
    to) and ``base`` (its URL). Shut down and joined on leaving."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in attrs.items():
        setattr(srv, name, value)
    srv.log = []
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# ---- chapter sources (test_grade, test_course, test_repo) ----------------------

_FRONT_MATTER = """\
---
jupytext:
  formats: {formats}
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def myst_chapter(body: str, formats: str = "md:myst,ipynb") -> str:
    """The source of a chapter that runs code: the jupytext MyST front matter the
    book's chapters carry (``formats`` as given), then ``body``."""
    return _FRONT_MATTER.format(formats=formats) + body


def resolved_row(row, data, epochs: int) -> tuple[dict, dict]:
    """(model config dict, recipe dict) a diagnosis-runner row trains with
    (cccl_lite.studies.diagnose, .sensitivity, .plateau), for comparing rows field by field."""
    from cccl_lite.studies import diagnose

    config, recipe = diagnose.resolve_row(row, data, epochs)
    return config.to_dict(), recipe.to_dict()
