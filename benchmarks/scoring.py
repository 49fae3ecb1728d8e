"""Scoring and training speed of CCCL: the naive per-caption loop against the batched scorer.

One JSON line per case (a size: images x captions), every number measured in
this run (see benchmarks/README.md for what each field means):

    python benchmarks/scoring.py                        # lite shape, CPU
    python benchmarks/scoring.py --device cuda --shape paper --sizes 1000x5000

Inputs are random tensors of the right shapes (region features, position
features, word vectors, a chain of dependency arcs), the model is freshly
initialised (seeded): speed does not depend on training, and both scorers
read the same weights, so their scores must agree (``max_abs_diff``).

* naive: SGRAF's evaluation loop. The per-item encodings (V, T, v^S, t^S,
  V̂, T̂; eqs 1-25) are computed once; then each caption is scored against
  the images in shards of 100 with the equations as printed
  (``CCCL.score(fast=False)``), eq 26's GRUs reading their inputs per call.
  Measured on the first ``--naive-captions`` captions (a rate, pairs/s).
* per_caption_fast: the same loop over the batched scorer's encodings and
  code (per-item GRU parts, ``fast=True``, the fused kernels on the CPU):
  what batching alone adds.
* batched: ``cccl_lite.engine.evaluate.score_matrix`` on every pair, blocks sized
  to the device (under bf16 autocast on CUDA; on the CPU with the fused
  kernels of ``cccl_lite.model.fast.fused`` where they build, ``fused_cpu_kernels``).
* train_step: one optimiser step (forward on a batch of B images x B
  captions, the hybrid loss of eq 34, backward, Adam), plain and with
  ``pair_chunk`` (checkpointed blocks of pairs); peak memory on CUDA only.

Rates are the best of ``--repeats`` rounds (the least disturbed by other
work on a shared machine); each round runs every scorer once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cccl_lite.engine import evaluate as ev  # noqa: E402
from cccl_lite.model.fast import fused  # noqa: E402
from cccl_lite.model.cccl import CCCL, CCCLConfig, ImageEncoding, TextEncoding, select_rows  # noqa: E402
from cccl_lite.model.loss import HybridObjective  # noqa: E402
from cccl_lite.engine.recipes import PRESETS  # noqa: E402
from cccl_lite.model.perceive import position_features  # noqa: E402
from cccl_lite.engine.scoring import autocast_for, concat_encodings, lean_encoding  # noqa: E402

# Caption lengths (words) drawn uniformly per shape: the synthetic scenes'
# captions have 2-12 words; Flickr30K's are mostly 8-24.
SHAPES = {
    # Random word vectors in (use_bert): what a caption costs to score does not
    # depend on how its words were encoded; the shipped lite model's Bi-GRU
    # runs once per caption, before any pair.
    "lite": dict(preset=lambda: PRESETS["lite"].replace(use_bert=True), words=(4, 12),
                 sizes=["100x500", "200x1000"],
                 naive_captions=100, repeats=3),
    "paper": dict(preset=lambda: PRESETS["paper"], words=(8, 24), sizes=["1000x5000"],
                  naive_captions=20, repeats=2),
}


def parse_size(text: str) -> tuple[int, int]:
    try:
        n_img, n_txt = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IMAGESxCAPTIONS such as 100x500, got {text!r}")
    if n_img < 1 or n_txt < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return n_img, n_txt


def random_inputs(config: CCCLConfig, n_img: int, n_txt: int, words: tuple[int, int],
                  seed: int, device) -> dict:
    """Model inputs of the right shapes: every image has n regions; captions
    have uniform random lengths in ``words`` and a chain of dependency arcs."""
    g = torch.Generator().manual_seed(seed)
    n, m = config.num_regions, words[1]
    xy = torch.rand(n_img, n, 2, generator=g) * 400
    wh = torch.rand(n_img, n, 2, generator=g) * 200 + 8
    lengths = torch.randint(words[0], words[1] + 1, (n_txt,), generator=g)
    word_mask = torch.arange(m)[None] < lengths[:, None]
    k = torch.arange(m - 1)
    adjacency = torch.zeros(n_txt, m, m, dtype=torch.bool)
    adjacency[:, k, k + 1] = adjacency[:, k + 1, k] = True
    adjacency &= word_mask[:, :, None] & word_mask[:, None, :]
    inputs = dict(
        regions=torch.randn(n_img, n, config.region_dim, generator=g).relu(),
        positions=position_features(torch.cat([xy, xy + wh], -1), torch.full((n_img, 2), 600.0)),
        region_mask=torch.ones(n_img, n, dtype=torch.bool),
        words=torch.randn(n_txt, m, config.word_dim, generator=g) * word_mask[..., None],
        word_mask=word_mask,
        word_adjacency=adjacency,
    )
    return {k: v.to(device) for k, v in inputs.items()}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def encode(model: CCCL, inputs: dict, amp: bool | None, batch: int = 256):
    """(images, texts) encodings of every item, in batches, with eq 26's per-item
    GRU parts and V̂, T̂ kept (the naive loop reads V̂, T̂; the batched one the parts)."""
    device = inputs["regions"].device
    parts_i, parts_t = [], []
    with autocast_for(device, amp):
        for s in range(0, inputs["regions"].shape[0], batch):
            parts_i.append(model.encode_images(inputs["regions"][s:s + batch],
                                               inputs["positions"][s:s + batch],
                                               inputs["region_mask"][s:s + batch]))
        for s in range(0, inputs["words"].shape[0], batch):
            parts_t.append(model.encode_texts(inputs["words"][s:s + batch],
                                              inputs["word_mask"][s:s + batch],
                                              inputs["word_adjacency"][s:s + batch]))
    return ImageEncoding(*concat_encodings(parts_i)), TextEncoding(*concat_encodings(parts_t))


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def train_step_seconds(model: CCCL, inputs: dict, batch: int, amp: bool | None,
                       pair_chunk: int | None, steps: int = 3) -> tuple[float, float | None, float]:
    """(mean seconds per optimiser step after one warm-up step, peak CUDA GiB or
    None, MiB of tensors autograd kept for the backward pass of one step).

    The last is measured on any device with ``saved_tensors_hooks``: what the
    memory-saving mode saves (inside a checkpointed block, tensors are not
    kept but recomputed, so they are not counted).
    """
    device = inputs["regions"].device
    cuda = device.type == "cuda"
    b = {k: v[:batch] for k, v in inputs.items()}
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    enabled = cuda if amp is None else amp
    times, saved = [], [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        return _train_steps(model, b, opt, enabled, pair_chunk, steps, pack, saved, times,
                            device)
    except torch.cuda.OutOfMemoryError:
        # The plain step at the paper's B may not fit: what the memory-saving mode is for.
        opt.zero_grad(set_to_none=True)
        model.eval()
        torch.cuda.empty_cache()
        return "out of memory", torch.cuda.max_memory_allocated(device) / 2**30, "out of memory"


def _train_steps(model, b, opt, enabled, pair_chunk, steps, pack, saved, times, device):
    cuda = device.type == "cuda"
    for step in range(steps + 1):
        _sync(device)
        t = time.perf_counter()
        # Step 0 (a warm-up, not timed) counts the saved tensors.
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x) if step == 0 \
            else contextlib.nullcontext()
        with hooks, torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            _, scores = model(**b, pair_chunk=pair_chunk)
            # eq 34 at Table 1's Δ and λ: the cost of a step does not depend on them
            loss = HybridObjective()(tuple(None if s is None else s.float() for s in scores))
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        _sync(device)
        if step:
            times.append(time.perf_counter() - t)
    model.eval()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return sum(times) / len(times), peak, saved[0] / 2**20


def _round(x, digits):
    return x if x is None or isinstance(x, str) else round(x, digits)


def run_case(model, config, images, texts, n_naive: int, device, amp, repeats: int) -> dict:
    n_img, n_txt = images.v.shape[0], texts.t.shape[0]
    # The naive loop reads what SGRAF's would: the encodings without eq 26's parts.
    plain_i = images._replace(gru_input=None, cross_state=None, relation=None)
    plain_t = texts._replace(gru_input=None, cross_state=None, relation=None)
    lean_i, lean_t = lean_encoding(images, False), lean_encoding(texts, False)
    captions = list(range(min(n_naive, n_txt)))
    best = {"naive": float("inf"), "per_caption_fast": float("inf"), "batched": float("inf")}
    for _ in range(repeats):
        naive, t = _timed(lambda: ev.per_caption_scores(model, plain_i, plain_t, captions,
                                                        fast=False, amp=amp), device)
        best["naive"] = min(best["naive"], t)
        fast, t = _timed(lambda: ev.per_caption_scores(model, lean_i, lean_t, captions,
                                                       fast=True, amp=amp), device)
        best["per_caption_fast"] = min(best["per_caption_fast"], t)
        sims, t = _timed(lambda: ev.score_matrix(model, lean_i, lean_t, amp=amp), device)
        best["batched"] = min(best["batched"], t)
    pairs_naive = n_img * len(captions)
    out = {
        "naive_pairs_per_s": round(pairs_naive / best["naive"], 1),
        "per_caption_fast_pairs_per_s": round(pairs_naive / best["per_caption_fast"], 1),
        "batched_pairs_per_s": round(n_img * n_txt / best["batched"], 1),
    }
    out["speedup"] = round(out["batched_pairs_per_s"] / out["naive_pairs_per_s"], 2)
    out["max_abs_diff"] = float((naive - sims[:, captions]).abs().max())
    out["max_abs_diff_per_caption_fast"] = float((fast - sims[:, captions]).abs().max())
    out["naive_captions"] = len(captions)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="lite",
                   help="lite: the lite preset (n 12, d = P = 64); paper: Table 1 "
                        "(n 36, d 1024, P 256)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                   help="cases, IMAGESxCAPTIONS (default: 100x500 200x1000 for lite, "
                        "1000x5000 for paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive-captions", type=int, default=None,
                   help="captions the per-caption loops score, against every image "
                        "(default: 100 for lite, 20 for paper)")
    p.add_argument("--train-batch", type=int, default=None,
                   help="batch of the training step (default: the config's B)")
    p.add_argument("--pair-chunk", type=int, default=None,
                   help="pairs per checkpointed block in the memory-saving step "
                        "(default: B*B/8)")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds; the best is kept (default: 3 for lite, 2 for paper)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for both scorers (default: torch's default, one "
                        "per core; --threads 1 measures one core)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="no bf16 autocast on CUDA")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    # Built (or found in the cache) before any timing; False: the PyTorch paths run.
    kernels = device.type == "cpu" and fused.available()
    shape = SHAPES[args.shape]
    config, recipe = shape["preset"]()
    sizes = args.sizes or [parse_size(s) for s in shape["sizes"]]
    n_naive = args.naive_captions or shape["naive_captions"]
    repeats = args.repeats or shape["repeats"]
    torch.manual_seed(args.seed)
    model = CCCL(config).to(device).eval()
    batch = args.train_batch or recipe.batch_size
    pair_chunk = args.pair_chunk or max(1, batch * batch // 8)

    need = max(max(n for n, _ in sizes), batch), max(max(m for _, m in sizes), batch)
    inputs = random_inputs(config, *need, shape["words"], args.seed, device)
    step_s, peak, saved = train_step_seconds(model, inputs, batch, args.amp, None)
    chunk_s, chunk_peak, chunk_saved = train_step_seconds(model, inputs, batch, args.amp,
                                                          pair_chunk)
    model.zero_grad(set_to_none=True)
    images, texts = encode(model, inputs, args.amp)
    amp_on = device.type == "cuda" if args.amp is None else args.amp
    arch = platform.processor() or platform.machine()
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu ({torch.get_num_threads()} threads, {arch})")
    for n_img, n_txt in sizes:
        sub_i = select_rows(images, torch.arange(n_img, device=device))
        sub_t = select_rows(texts, torch.arange(n_txt, device=device))
        result = {
            "device": where,
            "shape": args.shape,
            "images": n_img,
            "captions": n_txt,
            "dtype": "bf16 autocast" if amp_on else "float32",
            "fused_cpu_kernels": kernels,
            **run_case(model, config, sub_i, sub_t, n_naive, device, args.amp, repeats),
            "train_batch": batch,
            "train_step_s": _round(step_s, 4),
            "peak_mem_gb": _round(peak, 3),
            "saved_for_backward_mb": _round(saved, 1),
            "pair_chunk": pair_chunk,
            "train_step_pair_chunk_s": _round(chunk_s, 4),
            "peak_mem_pair_chunk_gb": _round(chunk_peak, 3),
            "saved_for_backward_pair_chunk_mb": _round(chunk_saved, 1),
            "torch": torch.__version__,
        }
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
