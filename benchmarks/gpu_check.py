"""One prepared check of the GPU path at the paper's shape, one JSON row per result.

    python benchmarks/gpu_check.py                          # CUDA, paper shape (Table 1)
    python benchmarks/gpu_check.py --device cpu --shape lite  # the same on a CPU, small

Paper shape: d_F 2048, n 36, d_E 768, d 1024, P 256, B 128. Rows, in order
(each printed as soon as it is measured, so a run cut short keeps them):

* ``environment``: device, torch, autocast dtype, sizes.
* ``train_step`` (``mode`` plain and pair_chunk): seconds per optimiser
  step at B (forward on B images x B captions, eq 34's loss, backward,
  Adam; mean of 3 after a warm-up) under autocast, and peak GPU memory
  (``benchmarks/scoring.py``'s ``train_step_seconds``; null on the CPU,
  "out of memory" when the plain step does not fit).
* ``train_200``: ``--train-steps`` steps of the training recipe's first
  epoch (Adam at the config's lr, clipping, the hinge summed over all
  negatives) on random paper-shaped data that has a signal to learn
  (captions are noisy projections of their image's latent vector); the mean
  loss of the first and last 20 steps, and the trainer's collapse guard
  (``cccl_lite.engine.train.CollapseGuard``): ``loss_down`` and ``collapsed``.
* ``scoring``: encoding and ``evaluate.score_matrix`` of ``--eval-images``
  images x 5 captions each (1K x 5K at the paper shape) with the trained
  weights, under autocast; seconds and pairs/s.
* ``precision``: the same pairs in float32; ε = max |F_amp − F_fp32|,
  R@K both ways, and the check of issue 13: scores float32, every changed
  query had a float32 gap within 2ε, no new exact ties.
* ``summary``: whether every check passed, wall seconds.

Exit status 0 when every check passed. Sized to finish in under 8 minutes
on one A100 or H100 (estimates: benchmarks/README.md); on a T4 pass a
smaller ``--eval-images`` and ``--train-steps``. Reuses
``benchmarks/scoring.py``'s input and timing helpers.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scoring import _sync, _timed, train_step_seconds  # noqa: E402

from cccl_lite.engine import evaluate as ev  # noqa: E402
from cccl_lite.engine.metrics import recall_at_k  # noqa: E402
from cccl_lite.model.cccl import CCCL, CCCLConfig, ImageEncoding, TextEncoding  # noqa: E402
from cccl_lite.model.perceive import position_features  # noqa: E402
from cccl_lite.engine.scoring import autocast_for, concat_encodings, lean_encoding  # noqa: E402
from cccl_lite.engine.recipes import PRESETS, Recipe  # noqa: E402
from cccl_lite.engine.train import CollapseGuard  # noqa: E402

SHAPES = {
    # words: caption lengths drawn uniformly (Flickr30K's are mostly 8-24 words)
    "paper": dict(preset=lambda: PRESETS["paper"], words=(8, 24), eval_images=1000),
    # Random word vectors in (use_bert): what a caption costs to score does not
    # depend on how its words were encoded; the shipped lite model's Bi-GRU
    # runs once per caption, before any pair.
    "lite": dict(preset=lambda: PRESETS["lite"].replace(use_bert=True), words=(4, 12),
                 eval_images=100),
}
LATENT = 32  # the size of each image's latent vector in the synthetic data
NOISE = 2.0  # noise / signal per feature: retrieval must be learnt, and stays imperfect


class SignalData:
    """Paper-shaped random data with something to learn: image i has a latent
    z_i (LATENT,); its regions are relu(z_i A + noise), its captions' words
    z_i B + noise (A, B fixed random projections), so that a caption matches
    its own image better than others, as real data does."""

    def __init__(self, config: CCCLConfig, words: tuple[int, int], seed: int, device):
        g = torch.Generator().manual_seed(seed)
        self.config, self.words, self.device = config, words, device
        scale = LATENT ** -0.5
        self.a = torch.randn(LATENT, config.region_dim, generator=g) * scale
        self.b = torch.randn(LATENT, config.word_dim, generator=g) * scale
        self.gen = torch.Generator().manual_seed(seed + 1)

    def images(self, z: torch.Tensor) -> dict:
        n, g = self.config.num_regions, self.gen
        b = z.shape[0]
        regions = (z[:, None, :] @ self.a + NOISE * torch.randn(
            b, n, self.config.region_dim, generator=g)).relu()
        xy = torch.rand(b, n, 2, generator=g) * 400
        wh = torch.rand(b, n, 2, generator=g) * 200 + 8
        return dict(regions=regions,
                    positions=position_features(torch.cat([xy, xy + wh], -1),
                                                torch.full((b, 2), 600.0)),
                    region_mask=torch.ones(b, n, dtype=torch.bool))

    def captions(self, z: torch.Tensor) -> dict:
        lo, hi = self.words
        b = z.shape[0]
        lengths = torch.randint(lo, hi + 1, (b,), generator=self.gen)
        mask = torch.arange(hi)[None] < lengths[:, None]
        k = torch.arange(hi - 1)
        adjacency = torch.zeros(b, hi, hi, dtype=torch.bool)
        adjacency[:, k, k + 1] = adjacency[:, k + 1, k] = True
        adjacency &= mask[:, :, None] & mask[:, None, :]
        words = (z[:, None, :] @ self.b + NOISE * torch.randn(
            b, hi, self.config.word_dim, generator=self.gen)) * mask[..., None]
        return dict(words=words, word_mask=mask, word_adjacency=adjacency)

    def batch(self, b: int) -> dict:
        """B images with one caption each: the positives are the diagonal."""
        z = torch.randn(b, LATENT, generator=self.gen)
        return {k: v.to(self.device) for k, v in {**self.images(z), **self.captions(z)}.items()}

    def eval_set(self, n_img: int, per_image: int = 5) -> tuple[dict, dict]:
        z = torch.randn(n_img, LATENT, generator=self.gen)
        images = {k: v.to(self.device) for k, v in self.images(z).items()}
        texts = {k: v.to(self.device)
                 for k, v in self.captions(z.repeat_interleave(per_image, 0)).items()}
        return images, texts


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cpu":
            return None  # CPU training and timing in float32; the precision row still compares
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def train_steps(model: CCCL, recipe: Recipe, data: SignalData, batch: int, steps: int, dtype,
                pair_chunk, device, deadline: float) -> dict:
    """The recipe's first epoch on fresh batches: Adam at the recipe's lr,
    gradients clipped, the hinge summed over all negatives; the collapse guard
    watches every batch."""
    c, objective = recipe, recipe.objective()
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    guard = CollapseGuard(steps=min(50, max(1, steps // 4)))
    positive = torch.eye(batch, dtype=torch.bool, device=device)
    losses, spread = [], None
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        if time.perf_counter() > deadline:
            break
        b = data.batch(batch)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            fused, scores = model(**b, pair_chunk=pair_chunk)
        loss = objective(tuple(None if s is None else s.float() for s in scores), positive,
                         negatives="all")
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        opt.step()
        guard.update(fused, loss.alignment, positive, "all", c.margin, step + 1)
        losses.append(loss.total.item())
        spread = float(fused.detach().float().std())
    _sync(device)
    model.eval()
    k = max(1, min(20, len(losses) // 4))
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    return {"check": "train_200", "steps": len(losses), "steps_asked": steps,
            "seconds": round(time.perf_counter() - start, 2),
            "loss_first": round(first, 4), "loss_last": round(last, 4),
            "loss_down": bool(last < first), "score_spread_last": spread,
            "collapsed": guard.report is not None, "collapse": guard.report,
            "pair_chunk": pair_chunk}


@torch.no_grad()
def encode(model: CCCL, images: dict, texts: dict, dtype, batch: int = 256):
    device = images["regions"].device
    parts_i, parts_t = [], []
    with autocast_for(device, dtype if dtype is not None else False):
        for s in range(0, images["regions"].shape[0], batch):
            parts_i.append(lean_encoding(model.encode_images(
                *(images[k][s:s + batch] for k in ("regions", "positions", "region_mask"))),
                False))
        for s in range(0, texts["words"].shape[0], batch):
            parts_t.append(lean_encoding(model.encode_texts(
                *(texts[k][s:s + batch] for k in ("words", "word_mask", "word_adjacency"))),
                False))
    return ImageEncoding(*concat_encodings(parts_i)), TextEncoding(*concat_encodings(parts_t))


def ranks(sims: np.ndarray, per_image: int):
    """Rank of each query's match (ties count against it), both directions."""
    n_img, n_txt = sims.shape
    owner = np.arange(n_txt) // per_image
    best = np.stack([sims[i, owner == i].max() for i in range(n_img)])
    i2t = np.array([(sims[i, owner != i] >= best[i]).sum() for i in range(n_img)])
    gt = sims[owner, np.arange(n_txt)]
    t2i = np.array([(np.delete(sims[:, j], owner[j]) >= gt[j]).sum() for j in range(n_txt)])
    return i2t, t2i


def gaps(sims: np.ndarray, per_image: int, k: int):
    """Per query, |its match − the k-th best other item| in float32."""
    n_img, n_txt = sims.shape
    owner = np.arange(n_txt) // per_image
    i2t = np.array([abs(sims[i, owner == i].max() - np.sort(sims[i, owner != i])[::-1][k - 1])
                    for i in range(n_img)])
    t2i = np.array([abs(sims[owner[j], j] - np.sort(np.delete(sims[:, j], owner[j]))[::-1][k - 1])
                    for j in range(n_txt)])
    return i2t, t2i


def positive_ties(sims: np.ndarray, per_image: int) -> int:
    owner = np.arange(sims.shape[1]) // per_image
    return int(sum((sims[i] == v).sum() - 1 for i in range(sims.shape[0])
                   for v in sims[i, owner == i]))


def precision_row(s_amp: torch.Tensor, s32: torch.Tensor, per_image: int, dtype) -> dict:
    a, b = s_amp.numpy(), s32.numpy()
    eps = float(np.abs(a - b).max())
    r_amp, r32 = ranks(a, per_image), ranks(b, per_image)
    rec_amp, rec32 = recall_at_k(s_amp, per_image), recall_at_k(s32, per_image)
    within = True
    changed_total = 0
    for d in range(2):
        for k in (1, 5, 10):
            if k > (a.shape[1] if d == 0 else a.shape[0]) - per_image:
                continue
            changed = (r_amp[d] < k) != (r32[d] < k)
            changed_total += int(changed.sum())
            within &= bool(np.all(gaps(b, per_image, k)[d][changed] <= 2 * eps + 1e-7))
    ties_amp, ties32 = positive_ties(a, per_image), positive_ties(b, per_image)
    ok = s_amp.dtype == torch.float32 and within and ties_amp <= ties32
    return {"check": "precision", "autocast": str(dtype).replace("torch.", ""),
            "scores_dtype": str(s_amp.dtype).replace("torch.", ""), "max_abs_diff": eps,
            "rsum_amp": round(rec_amp["rsum"], 3), "rsum_fp32": round(rec32["rsum"], 3),
            "recalls_amp": {k: round(v, 3) for k, v in rec_amp.items()},
            "recalls_fp32": {k: round(v, 3) for k, v in rec32.items()},
            "changed_queries": changed_total, "changes_within_2eps": within,
            "positive_ties_amp": ties_amp, "positive_ties_fp32": ties32, "passed": bool(ok)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default="paper")
    p.add_argument("--batch", type=int, default=None, help="default: the config's B")
    p.add_argument("--pair-chunk", type=int, default=None, help="default: B*B/8")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--eval-images", type=int, default=None,
                   help="images of the scoring set, 5 captions each (default: 1000 for "
                        "paper, 100 for lite)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="autocast of training and scoring (auto: bf16, fp16 on a GPU "
                        "without bf16, off on the CPU)")
    p.add_argument("--max-minutes", type=float, default=8.0,
                   help="training stops early to leave the scoring rows time (default: 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    for name in ("batch", "pair_chunk", "train_steps", "eval_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    shape = SHAPES[args.shape]
    config, recipe = shape["preset"]()
    batch = args.batch or recipe.batch_size
    pair_chunk = args.pair_chunk or max(1, batch * batch // 8)
    n_eval = args.eval_images or shape["eval_images"]
    dtype = autocast_dtype(device, args.amp)
    # The precision check compares reduced precision with float32 even where the
    # timing runs in float32 (the CPU): bf16, or fp16 on a GPU without bf16.
    check_dtype = dtype or (torch.float16 if device.type == "cuda"
                            and not torch.cuda.is_bf16_supported() else torch.bfloat16)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu ({torch.get_num_threads()} threads, "
                  f"{platform.processor() or platform.machine()})")
    emit({"check": "environment", "device": where, "torch": torch.__version__,
          "shape": args.shape, "autocast": str(dtype).replace("torch.", "") if dtype else "off",
          "batch": batch, "pair_chunk": pair_chunk, "train_steps": args.train_steps,
          "eval": f"{n_eval}x{5 * n_eval}",
          **{k: getattr(config, k) for k in ("region_dim", "num_regions", "word_dim",
                                              "embed_dim", "sim_dim")}})
    torch.manual_seed(args.seed)
    data = SignalData(config, shape["words"], args.seed, device)
    model = CCCL(config).to(device)
    b = data.batch(batch)
    amp_flag = dtype is not None
    plain_ok = True
    for mode, chunk in (("plain", None), ("pair_chunk", pair_chunk)):
        if dtype == torch.float16:  # scoring.py's helper autocasts to bf16 only
            secs, peak, saved = "skipped (fp16 card)", None, None
        else:
            secs, peak, saved = train_step_seconds(model, b, batch, amp_flag, chunk)
        if mode == "plain":
            plain_ok = not isinstance(secs, str)
        emit({"check": "train_step", "mode": mode, "batch": batch, "pair_chunk": chunk,
              "seconds": secs if isinstance(secs, str) else round(secs, 4),
              "peak_mem_gib": None if peak is None else round(peak, 3),
              "saved_for_backward_mib": saved if isinstance(saved, (str, type(None)))
              else round(saved, 1)})
    torch.manual_seed(args.seed)
    model = CCCL(config).to(device)  # fresh weights for the recipe's first steps
    deadline = t0 + 60 * args.max_minutes * 0.6
    train = train_steps(model, recipe, data, batch, args.train_steps, dtype,
                        None if plain_ok else pair_chunk, device, deadline)
    emit(train)
    images, texts = data.eval_set(n_eval)
    (enc_i, enc_t), enc_s = _timed(lambda: encode(model, images, texts, dtype), device)
    s_amp, score_s = _timed(lambda: ev.score_matrix(model, enc_i, enc_t, amp=dtype or False),
                            device)
    pairs = n_eval * 5 * n_eval
    emit({"check": "scoring", "images": n_eval, "captions": 5 * n_eval, "pairs": pairs,
          "autocast": str(dtype).replace("torch.", "") if dtype else "off",
          "encode_s": round(enc_s, 3), "score_s": round(score_s, 3),
          "pairs_per_s": round(pairs / score_s, 1)})
    if dtype != check_dtype:  # timing ran in float32: score once more under autocast
        enc_i, enc_t = encode(model, images, texts, check_dtype)
        s_amp = ev.score_matrix(model, enc_i, enc_t, amp=check_dtype)
    enc_i, enc_t = encode(model, images, texts, None)
    s32 = ev.score_matrix(model, enc_i, enc_t, amp=False)
    prec = emit(precision_row(s_amp, s32, 5, check_dtype))
    passed = train["loss_down"] and not train["collapsed"] and prec["passed"] \
        and math.isfinite(train["loss_last"])
    emit({"check": "summary", "passed": bool(passed), "wall_s": round(time.perf_counter() - t0, 1)})
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
