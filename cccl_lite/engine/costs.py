"""What the paper configuration costs on a GPU: a cost model, for ESTIMATES only.

Used by chapter 9 ("Flickr30K on a GPU") and ``benchmarks/gpu_check.py``;
chapters 3 and 10 also count with it and time with :func:`best_time`. No
figure computed here is a measurement of a GPU: it is arithmetic on the
model's shapes and a card's spec sheet, and every place that prints one says
"estimate".

The model, per (image, text) pair of the per-pair work (what grows with the
number of pairs; the per-item encoders, eqs 1-14 and 21-25, run once per
item and are left out):

* **FLOPs** = 2 x :func:`macs_per_pair`: eq 26's two GRUs over (n − 1) +
  (m − 1) steps (the first step of each depends on one item only), the VSFs
  of eqs 18-19 on every region and word, the attention of eq 17 and the
  small rest (eqs 16, 27, 28); the same count as chapter 10's.
* **Bytes** of memory traffic = :func:`bytes_per_pair`: on a GPU the PyTorch
  path runs (the fused kernels are CPU only), and each GRU step is one
  matrix product and seven elementwise passes over the pair's gates
  (:func:`cccl_lite.model.fast.relation_recur`), counted in :data:`GRU_STEP_BYTES_PER_D` bytes
  per unit of d under bf16 autocast; Branch 2's attended vectors add about
  eight bytes per element of its (n + m) x d rows. Weights are read once per
  block and are left out.
* **Time** on a card: compute time = FLOPs / its dense bf16 (fp16 on a T4)
  tensor throughput, memory time = bytes / its bandwidth; the bound is the
  larger (a roofline at 100 % of peak: no run can be faster), and the
  estimate divides the bound by :data:`EFFICIENCY` (our assumption, not a
  measurement: real kernels reach a fraction of peak).
* **Training**: one step = forward + backward, about 3x the forward's FLOPs
  and bytes (the usual rule: the backward pass costs about twice the
  forward); with ``pair_chunk``, one more forward (4x). Peak memory = the
  tensors autograd keeps per pair (:func:`saved_bytes_per_pair`, measured on
  the CPU with ``saved_tensors_hooks`` under bf16 autocast, which keeps the
  same tensors as CUDA's) x B², plus the weights and Adam's two moments.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from cccl_lite.model.cccl import CCCL, CCCLConfig
from cccl_lite.model.loss import HybridObjective

__all__ = ["GPU", "GPUS", "EFFICIENCY", "GRU_STEP_BYTES_PER_D", "macs_per_pair",
           "gru_macs_per_pair", "bytes_per_pair", "saved_bytes_per_pair", "estimate",
           "training_memory_bytes", "best_time"]


@dataclass(frozen=True)
class GPU:
    """A card's spec-sheet numbers: dense tensor TFLOP/s in the autocast dtype
    (bf16, or fp16 where the card has no bf16), memory bandwidth GB/s,
    memory GiB, whether it has bf16, and where the numbers come from."""

    name: str
    tflops: float
    bandwidth_gbs: float
    memory_gib: float
    bf16: bool
    source: str


GPUS = {
    "T4": GPU("NVIDIA T4", 65.0, 320.0, 16.0, False,
              "NVIDIA T4 datasheet: 65 TFLOPS mixed-precision FP16 tensor, 320 GB/s GDDR6, "
              "16 GB; no bf16 (cccl_lite autocasts to fp16 there)"),
    "A100": GPU("NVIDIA A100 40GB", 312.0, 1555.0, 40.0, True,
                "NVIDIA A100 datasheet: 312 TFLOPS BF16 tensor (dense), 1,555 GB/s HBM2 "
                "(40 GB)"),
    "H100": GPU("NVIDIA H100 SXM", 989.0, 3350.0, 80.0, True,
                "NVIDIA H100 SXM datasheet: 989 TFLOPS BF16 tensor dense (1,979 with "
                "sparsity), 3,350 GB/s HBM3, 80 GB"),
}

# Fraction of peak a real run reaches, for the estimate (an assumption).
EFFICIENCY = 0.5

# Bytes moved per GRU step and pair, in units of d, under bf16 autocast
# (cccl_lite.model.fast.relation_recur, no fused kernel): the state g cast to bf16 for the
# product (read 4, write 2) and read by it (2), the product's 3d bf16 gates
# written (6); add (read 2d bf16, write 2d fp32: 12); sigmoid in place
# (2d fp32 read and written: 16); the n-gate bias in place (d bf16: 4);
# addcmul (read r fp32 and h_n bf16, write fp32: 10); sigmoid (8); lerp
# (read three d fp32, write one: 16). Sum: 80.
GRU_STEP_BYTES_PER_D = 4 + 2 + 2 + 6 + 12 + 16 + 4 + 10 + 8 + 16


def macs_per_pair(config: CCCLConfig, n: int, m: int) -> dict[str, int]:
    """Multiply-adds of one pair's per-pair work, by part (chapter 10's count):
    n regions, m words, d = embed_dim, P = sim_dim."""
    d, p = config.embed_dim, config.sim_dim
    return {
        "eq 26 GRUs": 3 * d * d * ((n - 1) + (m - 1)),
        "eqs 18-19 VSFs": (n + m) * d * p,
        "eq 17 attention": 3 * n * m * d,
        "eqs 16, 27, 28": 2 * d * p + 3 * (p * p + p),
    }


def gru_macs_per_pair(d: int, n: int, m: int) -> int:
    """Multiply-adds of W_hh h over eq 26's (n + 1) + (m + 1) steps of one pair,
    3d² per step (three gates), read as printed: every step per pair (chapters
    3 and 9; :func:`macs_per_pair` counts the n − 1 and m − 1 steps an
    evaluator cannot share between pairs)."""
    return 3 * d * d * ((n + 1) + (m + 1))


def best_time(fn, repeats: int = 2, threads: int | None = None):
    """(seconds of the fastest of ``repeats`` runs of fn(), the last run's result).

    The fastest run is the one least disturbed by other programs. ``threads``:
    run with this many torch threads (then restore the previous count); None
    keeps the current setting. Chapters 3 and 10 time with it.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        best, out = float("inf"), None
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
    finally:
        if threads is not None:
            torch.set_num_threads(before)
    return best, out


def bytes_per_pair(config: CCCLConfig, n: int, m: int) -> dict[str, int]:
    """Memory traffic of one pair's per-pair work on a GPU, by part (module docstring)."""
    d, p = config.embed_dim, config.sim_dim
    return {
        "eq 26 GRUs": GRU_STEP_BYTES_PER_D * d * ((n - 1) + (m - 1)),
        # u − x written (bf16), squared in place (read + write), read by the
        # product with W: 8 bytes per element; the product's (n + m) x P output.
        "eqs 17-19 Branch 2": 8 * (n + m) * d + 4 * (n + m) * p,
    }


def estimate(config: CCCLConfig, gpu: GPU, pairs: int, n: int, m: int,
             passes: float = 1.0) -> dict[str, float]:
    """Seconds for ``pairs`` pairs of per-pair work on ``gpu`` (an ESTIMATE).

    ``passes``: 1 for scoring, 3 for a training step (forward + backward),
    4 with ``pair_chunk`` (one more forward). Returns flops, bytes,
    compute_s, memory_s, bound_s (the larger: the roofline at 100 % of peak)
    and estimate_s (bound_s / EFFICIENCY).
    """
    flops = 2 * sum(macs_per_pair(config, n, m).values()) * pairs * passes
    nbytes = sum(bytes_per_pair(config, n, m).values()) * pairs * passes
    compute = flops / (gpu.tflops * 1e12)
    memory = nbytes / (gpu.bandwidth_gbs * 1e9)
    bound = max(compute, memory)
    return {"flops": flops, "bytes": nbytes, "compute_s": compute, "memory_s": memory,
            "bound_s": bound, "estimate_s": bound / EFFICIENCY}


def _inputs(config: CCCLConfig, batch: int, n: int, m: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(m - 1)
    adjacency = torch.zeros(batch, m, m, dtype=torch.bool)
    adjacency[:, k, k + 1] = adjacency[:, k + 1, k] = True
    xy = torch.rand(batch, n, 2, generator=g)
    return dict(regions=torch.randn(batch, n, config.region_dim, generator=g).relu(),
                positions=torch.cat([xy, xy + 0.1, torch.full((batch, n, 2), 0.01)], -1),
                region_mask=torch.ones(batch, n, dtype=torch.bool),
                words=torch.randn(batch, m, config.word_dim, generator=g),
                word_mask=torch.ones(batch, m, dtype=torch.bool), word_adjacency=adjacency)


def saved_bytes_per_pair(config: CCCLConfig, n: int, m: int,
                         autocast: bool = True) -> tuple[float, float]:
    """(bytes per pair, bytes per item) that autograd keeps for the backward
    pass of a training step, measured on the CPU.

    A step on B images x B captions keeps c + a·B + b·B² bytes (autocast's
    bf16 copies of the weights, the per-item encoders, the per-pair work);
    three forward passes at B = 2, 3, 4 under ``saved_tensors_hooks`` give b
    (per pair, from the second difference) and a (per item: an image and a
    caption). Under bf16 autocast (the default) the CPU keeps the same dtypes
    as CUDA's autocast for these operations.
    """
    def saved(batch: int) -> int:
        torch.manual_seed(0)
        model = CCCL(config).train()
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
                 else contextlib.nullcontext()):
            _, scores = model(**_inputs(config, batch, n, m))
            # eq 34 with the warm-up's sum over negatives; what it keeps for the
            # backward pass does not depend on Δ or λ.
            HybridObjective()(tuple(None if s is None else s.float() for s in scores),
                              negatives="all")
        return total[0]

    s2, s3, s4 = saved(2), saved(3), saved(4)
    per_pair = (s4 - 2 * s3 + s2) / 2  # the second difference of c + aB + bB² is 2b
    per_item = (s3 - s2) - 5 * per_pair
    return per_pair, per_item


def training_memory_bytes(config: CCCLConfig, batch: int, per_pair: float, per_item: float,
                          pair_chunk: int | None = None) -> float:
    """Peak bytes of a training step (an ESTIMATE): saved activations (all B²
    pairs, or one block of ``pair_chunk`` pairs in the memory-saving mode)
    plus weights, their gradients and Adam's two moments (4 float32 copies)."""
    weights = sum(p.numel() for p in CCCL(config).parameters()) * 4 * 4
    pairs = batch * batch if pair_chunk is None else min(pair_chunk, batch * batch)
    return per_pair * pairs + per_item * batch + weights
