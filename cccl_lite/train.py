"""Training CCCL: Table 1's recipe, a warm-up epoch, checkpoints, resume, AMP, DDP.

Taught in chapter 6 ("Training and evaluation"). The recipe (Sec. 4.2,
Table 1): Adam at ``config.lr``, × 0.1 from epoch ``config.lr_decay_epoch``
on (0-based: lr 2e-4 for 15 epochs, then 2e-5), gradient norm clipped to
``config.grad_clip``, the hybrid loss L = L_t + λ L_c (eq 34) of each batch
with margin Δ and λ from the config, and the checkpoint of the best
validation R@sum (eq 36) kept.

One addition the paper does not print: the first ``warmup_epochs`` epochs
(default 1; None = every epoch) use :func:`alignment_term_all_negatives`,
the hinge summed over *every* negative of the batch, instead of eq 33's
hardest negative, as VSE∞ and HREM do. On the synthetic scenes (``small``,
lite, B = 32), from scratch, hardest negatives collapse the model (every
score equal, L_t stuck at exactly 2·B·Δ) and it stays at chance. Measured
here: they collapse it again after warm-up, too (L_t back to 2·B·Δ within
one or two epochs): after one sum-over-negatives epoch at lr 5e-4, 1.5e-4
or 5e-5, and with λ = 0 at 5e-4 (score spread 0.15 → 0.003 at 1.5e-4; val
R@sum 177.5 → 153-172), and after three at 5e-5 (val R@sum 227.5 → 181.4),
while the sum over negatives keeps improving it (val R@sum 177.5, 206.3,
227.5, 270.8, 288.0 over epochs 1-5). So the lite preset's recipe
(:data:`RECIPES`) uses the sum over negatives throughout, and the paper
preset trains as VSE∞ does (one warm-up epoch, then eq 33). False negatives
are not the cause: chapter 5's diagnosis (``python -m cccl_lite
diagnose``) collapses the model with eq 33 also when the scenes' truth
marks every true match as a positive (``positives="truth"``); the
collapse is in the encoders (the similarity vectors of all pairs become
nearly the same), not in a saturated sigmoid.

Not here: a lower learning rate for a fine-tuned text encoder (VSE∞'s 0.1×).
The word vectors are cached in the data file (``encode_words.py``), so no
text encoder is trained; the textual layers that are trained (eqs 11-12)
start from scratch like their visual twins and share the base lr.

Outputs, in ``out_dir`` (written by rank 0 only):

* ``config.json``: {"config": CCCLConfig dict, "options": TrainOptions dict,
  "data": path, "world_size": N};
* ``log.jsonl``: one object per epoch: epoch (1-based), step, lr,
  negatives ("all" or "hardest"), losses {total, alignment, coherence}
  (means per batch), val (every key of ``recall_at_k``), best, seconds;
* ``last.pt``: everything needed to resume (model, optimizer, scheduler,
  AMP scaler, RNG states, epoch, step, best R@sum, config, vocab, options);
* ``best.pt``: the model of the best validation R@sum (no optimizer).

Checkpoints are written to a temp file in ``out_dir`` and renamed
(``os.replace``): Ctrl-C or a crash never leaves a half-written ``last.pt``,
and ``--resume`` restarts from the last completed epoch. They hold only
tensors, numbers, strings, lists and dicts, and load with
``torch.load(weights_only=True)``. On the CPU with a fixed seed a resumed
run gives bit-identical weights to an uninterrupted one: the shuffle of
epoch e depends only on (seed, e), and every RNG state is restored. (This
needs the same thread count and math libraries: float sums in another
order differ in the last bits. One of our runs on a busy machine differed
from its repeats in the 4th digit of the loss, possibly MKL using fewer
threads; the test therefore runs on one thread.)

Multi-GPU: ``torchrun --nproc_per_node=N -m cccl_lite train ...`` runs the
same code under DistributedDataParallel (detected from RANK, WORLD_SIZE,
LOCAL_RANK; NCCL on CUDA, gloo on the CPU). ``batch_size`` is per rank:
each rank draws its own B captions (DistributedSampler), so the global batch
is N × B. The loss, hardest negatives included, is computed within each
rank's local batch: a caption's negatives are the other B − 1 of its rank,
not the N × B − 1 of the global batch, and DDP averages the ranks'
gradients, i.e. it minimises the mean of the N per-rank losses. So N ranks
see the same negative pool per caption as one process with batch B (not as
one process with batch N × B). Validation runs on rank 0 while the others
wait at a barrier; only rank 0 writes files and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cli import (CLIError, nonnegative_float, nonnegative_int, positive_float,
                  positive_int)
from .data.dataset import (CaptionDataset, SiblingSampler, SplitReader, build_vocab, collate,
                           model_inputs)
from .data.truth import SplitTruth
from .data.schema import SchemaError, check_file
from .files import RunLock, check_output_dir, remove_stale_temps, temp_path
from .loss import COHERENCE_REDUCTIONS, HybridLoss, alignment_term, hybrid_loss
from .model import ABLATIONS, CCCL, CCCLConfig
from .provenance import provenance

__all__ = [
    "CONFIGS",
    "AMP_MODES",
    "TrainOptions",
    "Trainer",
    "train",
    "load_model",
    "load_checkpoint",
    "make_reader",
    "resolve_config",
    "prepare_config",
    "alignment_term_all_negatives",
    "warmup_loss",
    "RECIPES",
    "recipe_options",
    "lite_options",
    "add_train_arguments",
    "run_train",
]

CONFIGS = {"lite": CCCLConfig.lite, "paper": CCCLConfig.paper}
AMP_MODES = ("auto", "bf16", "fp16", "off")
POSITIVES = ("image", "truth")
BATCHINGS = ("random", "siblings")
CHECKPOINT_FORMAT = 1
# Config fields a resumed run may change: only how long it runs.
_RESUMABLE_CHANGES = ("epochs",)
# Options that change what a resumed run would compute.
_TRAJECTORY_OPTIONS = ("warmup_epochs", "seed", "positives", "batching", "patience")


# --------------------------------------------------------------------------
# the warm-up loss
# --------------------------------------------------------------------------


def alignment_term_all_negatives(scores: torch.Tensor, margin: float = 0.2,
                                 positive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional hinge triplet loss summed over ALL negatives (warm-up):
    ``cccl_lite.loss.alignment_term(..., negatives="all")``.

    L = Σ_i Σ_{j ∉ P(i)} [Δ − F_ii + F_ij]_+ + Σ_j Σ_{i ∉ P(j)} [Δ − F_jj + F_ij]_+,
    eq 33 with the max over negatives replaced by a sum (VSE++'s "SH" loss,
    VSE∞'s warm-up). scores (B, B), positive_mask (B, B) bool with a True
    diagonal (None: the diagonal only). Returns the sum (a scalar).
    """
    return alignment_term(scores, margin, positive_mask, negatives="all")


def warmup_loss(s_s, s_o, s_r, margin: float = 0.2, coherence_weight: float = 0.5,
                positive_mask: torch.Tensor | None = None,
                coherence_reduction: str = "sum") -> HybridLoss:
    """L = L_t^all + λ L_c: eq 34 with :func:`alignment_term_all_negatives` as L_t.

    Each score (B, B) or None (an ablated branch); F is their mean (eq 32).
    """
    return hybrid_loss(s_s, s_o, s_r, margin, coherence_weight, positive_mask,
                       negatives="all", coherence_reduction=coherence_reduction)


# --------------------------------------------------------------------------
# the collapse guard
# --------------------------------------------------------------------------


class TrainingCollapsed(RuntimeError):
    """Raised inside an epoch when the collapse guard stops the run."""


class CollapseGuard:
    """Watches every training batch for the collapse of issue 13: all scores equal.

    A batch is *flat* when the fused scores F (eq 32) of its B_i x B_t pairs
    have a standard deviation below ``min_spread``, or when L_t (eq 33) sits
    within ``rel_tol`` (relative) of the value it takes for constant scores:
    Δ per row and per column that has a negative, 2·B·Δ with hardest
    negatives (Δ per negative pair, both ways, with the sum over negatives).
    That value is computed by the loss itself on a constant matrix with the
    batch's positive mask, not by a formula. Then every hinge is exactly Δ,
    the gradient of L_t pushes positives and negatives alike, and the model
    stays at chance.

    :meth:`update` returns True once, at the ``steps``-th flat batch in a row;
    ``report`` then holds the numbers (step, spread, L_t, the flat value).
    """

    def __init__(self, steps: int = 50, min_spread: float = 1e-3, rel_tol: float = 1e-3):
        self.steps, self.min_spread, self.rel_tol = steps, min_spread, rel_tol
        self.streak = 0
        self.report: dict | None = None

    @torch.no_grad()
    def update(self, fused: torch.Tensor, alignment: torch.Tensor, positive: torch.Tensor,
               negatives: str, margin: float, step: int) -> bool:
        """One batch: F (B_i, B_t), its L_t (scalar), positive mask (B_i, B_t)."""
        f = fused.detach().float()
        flat_value = alignment_term(torch.zeros_like(f), margin, positive, negatives)
        # One transfer for the three numbers (one GPU sync per step).
        spread, l_t, flat = torch.stack([f.std() if f.numel() > 1 else f.new_zeros(()),
                                         alignment.detach().float(), flat_value]).tolist()
        is_flat = spread < self.min_spread or (flat > 0 and abs(l_t - flat) <= self.rel_tol * flat)
        self.streak = self.streak + 1 if is_flat else 0
        if self.streak < self.steps or self.report is not None:
            return False
        self.report = {"step": step, "steps_in_a_row": self.streak, "spread": spread,
                       "alignment": l_t, "flat_alignment": flat, "negatives": negatives,
                       "batch": list(f.shape)}
        return True

    def message(self) -> str:
        r = self.report
        return (f"warning: training looks collapsed: {r['steps_in_a_row']} batches in a row up "
                f"to step {r['step']} had flat scores (std of F {r['spread']:.2e}, L_t "
                f"{r['alignment']:.6g} against {r['flat_alignment']:.6g} for constant scores, "
                f"{r['negatives']} negatives, batch {r['batch'][0]}x{r['batch'][1]}). Try: "
                f"--warmup-epochs all (the sum over negatives), a lower --lr, resuming from "
                f"an earlier last.pt, or check that captions match their images; "
                f"--stop-on-collapse stops such a run")


# --------------------------------------------------------------------------
# options, configs, data
# --------------------------------------------------------------------------


@dataclass
class TrainOptions:
    """How to train, as opposed to what (the model and Table 1's
    hyper-parameters live in :class:`CCCLConfig`).

    warmup_epochs: epochs with the sum-over-negatives loss before hardest
    negatives; None: the sum over negatives throughout, which the lite
    preset needs (module docstring; the CLI's default for it). device:
    "auto", "cpu", "cuda" or "cuda:K" (under torchrun, "cuda" means
    cuda:LOCAL_RANK). amp: "auto" (bf16 on a
    GPU that supports it, else fp16 with a GradScaler; off on the CPU),
    "bf16", "fp16" (CUDA only) or "off". max_steps: at most this many
    batches per epoch (smoke runs), None for all. log_every: batches between
    progress updates (a printed line when there is no progress bar).
    quiet: no progress bar nor per-batch lines. resume: continue from
    ``out_dir/last.pt``; overwrite: start afresh even if it exists.
    deterministic: on the CPU, ``torch.use_deterministic_algorithms``
    during training. pair_chunk: the memory-saving mode, at most this many
    (image, text) pairs of a batch scored at once, each block's activations
    recomputed in the backward pass (``CCCL.score``; the same loss and
    gradients up to float rounding, for the memory of one block instead of
    B x B pairs, at about one more forward pass of the per-pair work); None
    scores the whole batch at once.

    positives: "image" (a caption's positives are the pairs that share its
    image, eq 33 as in every paper) or "truth" (every image of the batch of
    which the caption is true, from the synthetic scenes' grammar,
    :class:`cccl_lite.data.truth.SplitTruth`: such pairs are then never used
    as negatives). batching: "random" (a shuffle of all captions) or
    "siblings" (:class:`cccl_lite.data.dataset.SiblingSampler`: the captions of
    a group's base, rebound and swapped images share a batch; synthetic
    scenes only). patience: stop when validation R@sum has not improved for
    this many epochs (None: run every epoch of the config).

    collapse_steps: batches in a row with flat scores (:class:`CollapseGuard`)
    before one warning; stop_on_collapse: then stop the run (its checkpoints
    stay those of the last finished epoch; ``Trainer.collapse`` holds the
    numbers).
    """

    warmup_epochs: int | None = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 0
    max_steps: int | None = None
    log_every: int = 50
    quiet: bool = False
    resume: bool = False
    overwrite: bool = False
    eval_batch_size: int = 256
    deterministic: bool = True
    pair_chunk: int | None = None
    positives: str = "image"
    batching: str = "random"
    patience: int | None = None
    collapse_steps: int = 50
    stop_on_collapse: bool = False

    def __post_init__(self):
        if self.positives not in POSITIVES:
            raise ValueError(f"unknown positives {self.positives!r}; expected one of: "
                             f"{', '.join(POSITIVES)}")
        if self.batching not in BATCHINGS:
            raise ValueError(f"unknown batching {self.batching!r}; expected one of: "
                             f"{', '.join(BATCHINGS)}")
        if self.patience is not None and (isinstance(self.patience, bool) or self.patience < 1):
            raise ValueError(f"patience must be >= 1 or None, got {self.patience!r}")
        if isinstance(self.collapse_steps, bool) or not isinstance(self.collapse_steps, int) \
                or self.collapse_steps < 1:
            raise ValueError(f"collapse_steps must be a positive int, got {self.collapse_steps!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown --amp {self.amp!r}; expected one of: {', '.join(AMP_MODES)}")
        for name in ("warmup_epochs", "num_workers", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.pair_chunk is not None and (isinstance(self.pair_chunk, bool)
                                            or not isinstance(self.pair_chunk, int)
                                            or self.pair_chunk < 1):
            raise ValueError(f"pair_chunk must be a positive int or None, got {self.pair_chunk!r}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _data_dims(path) -> dict:
    """The train split's d_F, n, d_E (None without cached word vectors), has_boxes."""
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such data file (make one with "
                       f"`python data_scripts/make_synthetic.py --out {path}`)")
    with check_file(path, "train") as f:
        if "val" not in f:
            raise SchemaError(f"{path}: no 'val' split to select the best epoch on")
        g = f["train"]
        _, n, d_f = g["images/features"].shape
        wv = g["captions"].get("word_vectors")
        return dict(region_dim=int(d_f), num_regions=int(n),
                    word_dim=None if wv is None else int(wv.shape[1]),
                    has_boxes=bool(f.attrs["has_boxes"]))


def data_dataset(path) -> str:
    """Which of Table 1's datasets a schema file holds, for λ (eq 34): "coco" when
    its ``dataset`` attribute names COCO (Karpathy's JSON and ``--name coco``
    write "coco"), else "f30k" (Flickr30K, and the synthetic scenes)."""
    with check_file(path) as f:
        name = str(f.attrs.get("dataset", "")).lower()
    return "coco" if "coco" in name else "f30k"


def resolve_config(name: str, data_path, ablation: str | None = None,
                   dataset: str | None = None, **overrides) -> CCCLConfig:
    """The CLI's config: preset ``name`` ("lite" or "paper") with ``overrides``
    and one Table 6 ``ablation``.

    "lite" is sized to the data: its region_dim d_F and word_dim d_E are read
    from the file (any synthetic size, MiniLM or BERT vectors; under "w/o
    BERT" d_E is the Bi-GRU's width and stays the preset's). "paper" keeps
    Table 1's d_F = 2048, d_E = 768, and :func:`prepare_config` refuses a
    file that differs. Unknown names raise CLIError listing the valid ones.
    "paper" takes Table 1's λ for ``dataset`` ("f30k" 0.5, "coco" 0.75),
    by default the one the data file holds (:func:`data_dataset`); an
    explicit ``coherence_weight`` override wins.
    """
    if name not in CONFIGS:
        raise CLIError(f"unknown config {name!r}; expected one of: {', '.join(CONFIGS)}")
    if ablation is not None and ablation not in ABLATIONS:
        raise CLIError(f"unknown ablation {ablation!r}; expected one of: "
                       + ", ".join(repr(a) for a in ABLATIONS))
    if name == "lite":
        dims = _data_dims(data_path)
        derived = {"region_dim": dims["region_dim"]}
        if dims["word_dim"] is not None and ablation != "w/o BERT":
            derived["word_dim"] = dims["word_dim"]
        overrides = {**derived, **overrides}
    if name == "paper":
        # Table 1's λ per dataset: --dataset, else what the data file holds.
        config = CCCLConfig.paper(dataset=dataset or data_dataset(data_path), **overrides)
    elif dataset is not None:
        raise CLIError(f"--dataset {dataset} sets Table 1's λ of the paper preset; with "
                       f"--config {name} use --coherence-weight")
    else:
        config = CONFIGS[name](**overrides)
    return config.with_ablation(ablation) if ablation else config


def prepare_config(config: CCCLConfig, data_path) -> tuple[CCCLConfig, dict | None]:
    """Check ``config`` against the data file; return (config, vocab).

    num_regions n is taken from the file; d_F and d_E must match it (a clear
    CLIError otherwise). Under "w/o BERT" the vocabulary is built from the
    train split (:func:`build_vocab`) and sets ``vocab_size``; d_E is then
    the Bi-GRU's width, not the file's. A file without boxes trains only
    "w/o POS". vocab is None when word vectors are used.
    """
    path = Path(data_path)
    dims = _data_dims(path)
    if not dims["has_boxes"] and config.use_position:
        raise CLIError(f"{path} has no boxes, so no position features (eq 9): train it "
                       f"with --ablation 'w/o POS'")
    if config.region_dim != dims["region_dim"]:
        raise CLIError(f"{path}: region features are {dims['region_dim']}-d but the config "
                       f"has region_dim {config.region_dim} (Table 1 needs 2048-d bottom-up "
                       f"features; use --config lite for other data)")
    vocab = None
    if config.use_bert:
        if dims["word_dim"] is None:
            raise SchemaError(f"{path}:/train/captions/word_vectors: missing; run "
                              f"`python data_scripts/encode_words.py {path}` first")
        if config.word_dim != dims["word_dim"]:
            raise CLIError(f"{path}: word vectors are {dims['word_dim']}-d but the config has "
                           f"word_dim {config.word_dim} (Table 1 needs 768-d BERT-base "
                           f"vectors; use --config lite for other encoders)")
    else:
        vocab = build_vocab(path)
        config = dataclasses.replace(config, vocab_size=len(vocab))
    config = dataclasses.replace(config, num_regions=dims["num_regions"])
    return config, vocab


def make_reader(path, split: str, config: CCCLConfig, vocab: dict | None = None) -> SplitReader:
    """The :class:`SplitReader` a model of ``config`` needs: word ids and
    ``vocab`` under "w/o BERT", no dependency heads when the text graph does
    not read them ("w/o S-NLP", "w/o B-3")."""
    with warnings.catch_warnings():
        if not config.use_position:  # "has no boxes" is expected under "w/o POS"
            warnings.simplefilter("ignore")
        return SplitReader(path, split, words="vectors" if config.use_bert else "ids",
                           vocab=vocab, syntax=config.use_syntax and config.use_branch3,
                           position_tuple=config.position_tuple)


# --------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------


def _atomic_save(obj, path: Path) -> None:
    """torch.save through a temp file in the same directory, then os.replace:
    ``path`` is either the old file or the complete new one, never a part.
    Temp files of killed writers of ``path`` are removed first
    (:func:`cccl_lite.files.remove_stale_temps`)."""
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write_text(text: str, path: Path) -> None:
    """``path.write_text(text)``, atomically, as :func:`_atomic_save`."""
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_failure(e: Exception) -> str:
    """Why torch.load(weights_only=True) failed, in a few words. Never torch's
    advice to retry with weights_only=False: that would run whatever code
    the file holds, and a checkpoint of ours never needs it."""
    text = str(e)
    if "WeightsUnpickler error" in text:  # not a file of tensors and numbers
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].strip()
        return (f"not a PyTorch file of tensors and numbers: {detail[:120] or 'unreadable'}; "
                f"cccl_lite never loads code from a checkpoint")
    if isinstance(e, EOFError):
        return "the file ends early: truncated?"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    first = first.split(". ")[0]  # torch's first sentence; its advice follows
    if "weights_only" in first:
        first = ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def load_checkpoint(path, device="cpu") -> dict:
    """A checkpoint of :class:`Trainer` as a dict, loaded with weights_only=True."""
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CLIError(f"{path}: is a folder; expected a checkpoint file (best.pt or last.pt)")
    if path.stat().st_size == 0:
        raise CLIError(f"{path}: empty file (0 bytes); not a checkpoint (an interrupted copy?)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated file or another program's pickle
        raise CLIError(f"{path}: not a readable cccl_lite checkpoint "
                       f"({_load_failure(e)})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CLIError(f"{path}: not a cccl_lite checkpoint (no config and model)")
    if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
        raise CLIError(f"{path}: checkpoint format {ckpt['format']} is newer than this "
                       f"cccl_lite ({CHECKPOINT_FORMAT}); upgrade cccl_lite")
    return ckpt


def _config_of(ckpt: dict, path) -> CCCLConfig:
    try:
        return CCCLConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CLIError(f"{path}: the checkpoint's config does not fit this cccl_lite ({e}); "
                       f"was it written by another version?") from None


def load_model(checkpoint_path, device="cpu") -> tuple[CCCL, CCCLConfig, dict | None]:
    """(model in eval mode on ``device``, its config, its vocab or None) from
    ``best.pt`` or ``last.pt``. Unknown config fields raise CLIError."""
    ckpt = load_checkpoint(checkpoint_path, device)
    config = _config_of(ckpt, checkpoint_path)
    model = CCCL(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CLIError(f"{checkpoint_path}: weights do not fit the config "
                       f"({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), config, ckpt.get("vocab")


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _rng_states(loader_gen: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_rng_state(),
        "python": _python_rng_state(),
        "loader": loader_gen.get_state(),
    }


def _restore_rng(states: dict, loader_gen: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    loader_gen.set_state(states["loader"])


# --------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds each worker's torch RNG from its generator; numpy's
    # and Python's follow, so any randomness in a worker is reproducible.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "_Dist":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _resolve_device(name: str, dist: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available here "
                           f"(torch {torch.__version__}); use --device cpu")
        if name == "cuda":
            name = f"cuda:{dist.local_rank}"
    elif name != "cpu":
        raise CLIError(f"unknown --device {name!r}; expected cpu, cuda, cuda:K or auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"--device {name}: {e}") from None


def _resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type == "cpu":
        if mode == "fp16":
            raise CLIError("--amp fp16 needs CUDA; on the CPU use bf16 or off")
        return torch.bfloat16 if mode == "bf16" else None
    if mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _data_identity(path) -> dict:
    """What makes a data file the same dataset for a resumed run: its path
    (resolved), name, seed and size attributes, word encoder, and the images
    and captions of the train and val splits (read from the file's header)."""
    path = Path(path)
    with check_file(path, "train") as f:
        wv = f["train/captions"].get("word_vectors")
        ident = {"path": str(path.resolve()), "dataset": str(f.attrs.get("dataset", "")),
                 "seed": _plain(f.attrs.get("seed")), "size": _plain(f.attrs.get("size")),
                 "encoder": None if wv is None else str(wv.attrs.get("encoder", ""))}
        for split in ("train", "val"):
            if split in f:
                ident[split] = [int(f[split]["images/features"].shape[0]),
                                int(f[split]["captions/text"].shape[0])]
    return ident


def _plain(value):
    """An HDF5 attribute as a JSON/checkpoint-safe value (numpy scalars, bytes)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.item() if hasattr(value, "item") else value


def _config_diff(old: dict, new: dict) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(_RESUMABLE_CHANGES))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class Trainer:
    """Trains a CCCL of ``config`` on ``data_path``'s train split, selects on val.

    ``Trainer(config, data_path, out_dir, options).fit()`` returns the path
    of ``best.pt``; afterwards ``trainer.model`` is the trained model (not
    the best one: load that with :func:`load_model`) and ``trainer.history``
    the log records. The config is checked against the data by
    :func:`prepare_config` at construction (no model is built before fit).
    """

    def __init__(self, config: CCCLConfig, data_path, out_dir, options: TrainOptions | None = None):
        self.options = options or TrainOptions()
        self.data_path, self.out_dir = Path(data_path), Path(out_dir)
        if config.epochs < 1 or config.batch_size < 1 or not config.lr > 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {config.epochs}, "
                             f"{config.batch_size}, {config.lr}")
        self.dist = _Dist.from_env()
        self.device = _resolve_device(self.options.device, self.dist)
        self.amp_dtype = _resolve_amp(self.options.amp, self.device)
        self.config, self.vocab = prepare_config(config, self.data_path)
        self.model: CCCL | None = None
        self.history: list[dict] = []
        self.last_path, self.best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        self.log_path = self.out_dir / "log.jsonl"
        if self.is_main:  # before any training: a folder under a file, read-only
            check_output_dir(self.out_dir, "output folder (--out)")
        if self.options.resume and not self.last_path.exists():
            raise CLIError(f"--resume: {self.last_path} does not exist; nothing to resume")
        self._check_not_a_run()
        self.data_identity = _data_identity(self.data_path)
        self._resume_ckpt = None
        if self.options.resume:
            self._resume_ckpt = self._check_resumable(load_checkpoint(self.last_path))

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def _check_not_a_run(self) -> None:
        """A new run never replaces another's results without --overwrite."""
        if self.options.resume or self.options.overwrite:
            return
        held = [p.name for p in (self.last_path, self.best_path) if p.exists()]
        if held:
            raise CLIError(f"{self.out_dir} already holds a run ({', '.join(held)}); pass "
                           f"--resume to continue it, --overwrite to start again, or another "
                           f"--out")

    def _check_resumable(self, ckpt: dict) -> dict:
        """The checkpoint to resume from, if it continues *this* run: the same
        training state (a last.pt, not a best.pt), config, recipe and data."""
        missing = [k for k in ("optimizer", "scheduler", "rng", "epoch", "step") if k not in ckpt]
        if missing:
            raise CLIError(f"--resume: {self.last_path} holds no training state (no "
                           f"{', '.join(missing)}; kind {ckpt.get('kind', '?')!r}): it is a "
                           f"model-only checkpoint such as best.pt; resume needs the last.pt "
                           f"that train wrote, or start again with --overwrite")
        self._check_same_data(ckpt)
        diff = _config_diff(ckpt["config"], self.config.to_dict())
        old_opts = ckpt.get("options", {})
        diff += [f"{k}: {old_opts.get(k)!r} -> {getattr(self.options, k)!r}"
                 for k in _TRAJECTORY_OPTIONS if old_opts.get(k) != getattr(self.options, k)]
        if ckpt.get("world_size", 1) != self.dist.world_size:
            diff.append(f"world_size: {ckpt.get('world_size', 1)} -> {self.dist.world_size}")
        if diff:
            raise CLIError(f"--resume: {self.last_path} was trained with another config "
                           f"({'; '.join(diff)}); rerun with the same settings or use "
                           f"another --out")
        return ckpt

    def _check_same_data(self, ckpt: dict) -> None:
        """Refuse to resume on other data: best.pt would then compare R@sum
        across two validation sets. The same dataset moved or copied is fine
        (every field of :func:`_data_identity` but its path agrees)."""
        old = ckpt.get("data")
        if old is None:  # a checkpoint from before the data was recorded in it
            info = self.out_dir / "config.json"
            try:
                old_path = json.loads(info.read_text()).get("data")
            except (OSError, ValueError, AttributeError):
                old_path = None
            if old_path and Path(old_path).exists() and not os.path.samefile(old_path,
                                                                             self.data_path):
                raise CLIError(f"--resume: {self.out_dir} was trained on {old_path}, not "
                               f"{self.data_path}; resume with --data {old_path}, or use "
                               f"another --out")
            return
        new = self.data_identity
        diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                if k != "path" and old.get(k) != new.get(k)]
        if diff:
            raise CLIError(f"--resume: {self.out_dir} was trained on other data "
                           f"({old.get('path')}; now {self.data_path}: {'; '.join(diff)}); "
                           f"resume with the run's own --data, or use another --out")
        if old.get("path") != new["path"]:
            self._print(f"note: resuming on {new['path']}; the run started on {old.get('path')} "
                        f"(the same dataset, seed and split sizes)")

    def _print(self, *args) -> None:
        if self.is_main:
            print(*args, flush=True)

    # ---- setup ------------------------------------------------------------
    def _setup(self) -> None:
        o, c = self.options, self.config
        random.seed(o.seed)
        np.random.seed(o.seed)
        torch.manual_seed(o.seed)
        self.model = CCCL(c).to(self.device)  # initialised from the seeded torch RNG
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr)
        decay = c.lr_decay_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: 0.1 if epoch >= decay else 1.0)
        # GradScaler only for fp16: bf16 has fp32's range and needs no scaling.
        self.scaler = None
        if self.amp_dtype == torch.float16:
            # torch.amp.GradScaler from torch 2.3; torch.cuda.amp's before.
            self.scaler = (torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler")
                           else torch.cuda.amp.GradScaler())
        self.loader_gen = torch.Generator().manual_seed(o.seed)
        self.collapse_guard = CollapseGuard(o.collapse_steps)
        self.collapse: dict | None = None
        self.epoch, self.step, self.best_rsum, self.best_epoch = 0, 0, -math.inf, 0
        if self._resume_ckpt is not None:
            ck = self._resume_ckpt
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            if self.scaler is not None and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            _restore_rng(ck["rng"], self.loader_gen)
            self.epoch, self.step = ck["epoch"], ck["step"]
            self.best_rsum, self.best_epoch = ck["best_rsum"], ck["best_epoch"]
            self._resume_ckpt = None
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Every parameter gets a gradient under every ablation (the model
            # builds no module it does not use), so no unused-parameter search.
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.train_reader = make_reader(self.data_path, "train", c, self.vocab)
        self.val_reader = make_reader(self.data_path, "val", c, self.vocab) if self.is_main \
            else None
        dataset = CaptionDataset(self.train_reader)
        truth = None
        if o.positives == "truth" or o.batching == "siblings":
            truth = SplitTruth(self.data_path, "train")
        # The shuffle of epoch e depends on (seed, e) only (set_epoch), with
        # one process as with N: what makes resume exact.
        if o.batching == "siblings":
            self.sampler = SiblingSampler(truth.group, self.train_reader.caption_image,
                                          seed=o.seed, num_replicas=self.dist.world_size,
                                          rank=self.dist.rank)
        else:
            self.sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True,
                seed=o.seed)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=c.batch_size, sampler=self.sampler,
            collate_fn=_Collate(self.train_reader, truth if o.positives == "truth" else None),
            num_workers=o.num_workers,
            worker_init_fn=_seed_worker, generator=self.loader_gen,
            pin_memory=self.device.type == "cuda")

    def _init_process_group(self) -> bool:
        if not self.dist.enabled:
            return False
        import torch.distributed as tdist
        if tdist.is_initialized():
            return False
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        tdist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                 rank=self.dist.rank, world_size=self.dist.world_size)
        return True

    def _barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as tdist
            if self.device.type == "cuda":
                tdist.barrier(device_ids=[self.device.index])
            else:
                tdist.barrier()

    # ---- files ------------------------------------------------------------
    def _write_config_json(self) -> None:
        info = {"config": self.config.to_dict(), "options": self.options.to_dict(),
                "provenance": provenance(),
                "data": str(self.data_path), "world_size": self.dist.world_size}
        _atomic_write_text(json.dumps(info, indent=2) + "\n", self.out_dir / "config.json")

    def _trim_log(self) -> None:
        # An interrupt between a log line and its last.pt leaves a line for
        # an epoch that resume redoes: keep only the epochs last.pt holds.
        if not self.log_path.exists():
            return
        lines = self.log_path.read_text().splitlines()
        keep = []
        for ln in lines:
            try:
                if json.loads(ln)["epoch"] <= self.epoch:
                    keep.append(ln)
            except (ValueError, KeyError, TypeError):  # a line cut by Ctrl-C
                pass
        self.history = [json.loads(ln) for ln in keep]
        if keep != lines:
            _atomic_write_text("".join(ln + "\n" for ln in keep), self.log_path)

    def _checkpoint(self, recalls: dict, best: bool) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "best" if best else "last",
            "config": self.config.to_dict(),
            "options": self.options.to_dict(),
            "vocab": self.vocab,
            "world_size": self.dist.world_size,
            "epoch": self.epoch,
            "step": self.step,
            "best_rsum": self.best_rsum,
            "best_epoch": self.best_epoch,
            "data": self.data_identity,
            "val": recalls,
            "model": self.model.state_dict(),
        }

    def _save(self, recalls: dict, improved: bool) -> None:
        if improved:
            _atomic_save(self._checkpoint(recalls, best=True), self.best_path)
        ckpt = self._checkpoint(recalls, best=False)
        ckpt.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler else None,
                    rng=_rng_states(self.loader_gen))
        _atomic_save(ckpt, self.last_path)

    # ---- the loop -----------------------------------------------------------
    def _train_epoch(self) -> dict:
        o, c = self.options, self.config
        net = self.ddp or self.model
        net.train()
        self.sampler.set_epoch(self.epoch)
        all_negatives = o.warmup_epochs is None or self.epoch < o.warmup_epochs
        n_steps = len(self.loader) if o.max_steps is None else min(o.max_steps, len(self.loader))
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        bar = None
        if self.is_main and not o.quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm
            bar = tqdm(total=n_steps, desc=f"epoch {self.epoch + 1}/{c.epochs}", leave=False,
                       dynamic_ncols=True)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        t0 = time.perf_counter()
        try:
            for i, batch in enumerate(self.loader):
                if i >= n_steps:
                    break
                positive = batch["positive_mask"].to(self.device, non_blocking=True)
                with autocast:
                    fused, scores = net(**model_inputs(batch, self.device),
                                        pair_chunk=o.pair_chunk)
                # The loss in fp32: sums over B² pairs lose precision in bf16.
                scores = tuple(None if s is None else s.float() for s in scores)
                loss = self.model.loss(scores, positive,
                                       negatives="all" if all_negatives else "hardest")
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss.total).backward()
                    self.scaler.unscale_(self.optimizer)  # clip the true gradients
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.total.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                    self.optimizer.step()
                self.step += 1
                self._check_collapse(fused, loss.alignment, positive,
                                     "all" if all_negatives else "hardest")
                sums += torch.stack([loss.total.detach(), loss.alignment.detach(),
                                     loss.coherence.detach(), torch.ones((), device=self.device)
                                     ]).double()
                if o.log_every and (i + 1) % o.log_every == 0 or i + 1 == n_steps:
                    mean = (sums[:3] / sums[3]).tolist()
                    if bar is not None:
                        bar.update(i + 1 - bar.n)
                        bar.set_postfix(loss=f"{mean[0]:.3g}", align=f"{mean[1]:.3g}")
                    elif self.is_main and not o.quiet and o.log_every:
                        # rank 0's batches only; the epoch line averages all ranks'
                        rate = (i + 1) / (time.perf_counter() - t0)
                        print(f"  epoch {self.epoch + 1} batch {i + 1}/{n_steps}: loss "
                              f"{mean[0]:.4g} (alignment {mean[1]:.4g}, coherence "
                              f"{mean[2]:.4g}), {rate:.1f} batch/s", flush=True)
        finally:
            if bar is not None:
                bar.close()
        if self.dist.enabled:
            import torch.distributed as tdist
            tdist.all_reduce(sums)  # the losses of every rank's batches
        total, alignment, coherence = (sums[:3] / sums[3].clamp(min=1)).tolist()
        return {"total": total, "alignment": alignment, "coherence": coherence,
                "negatives": "all" if all_negatives else "hardest"}

    def _check_collapse(self, fused, alignment, positive, negatives: str) -> None:
        """Feed one batch to the collapse guard: print its warning once (rank 0);
        with ``stop_on_collapse``, raise TrainingCollapsed, on every rank at the
        same step (the flag is all-reduced under DDP)."""
        if self.collapse_guard.update(fused, alignment, positive, negatives,
                                      self.config.margin, self.step):
            self.collapse = self.collapse_guard.report
            self._print(self.collapse_guard.message())
        if not self.options.stop_on_collapse:
            return
        stop = self.collapse_guard.report is not None
        if self.dist.enabled:
            import torch.distributed as tdist
            flag = torch.tensor(float(stop), device=self.device)
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            if self.collapse is None:  # another rank's batches went flat
                self.collapse = {"step": self.step, "rank": "another"}
            raise TrainingCollapsed(f"collapsed at step {self.step}")

    def _validate(self) -> dict:
        from .evaluate import evaluate_split
        # The run's own amp setting (evaluate's default would turn bf16 on for
        # any CUDA device, even under --amp off); scores are float32 either way.
        amp = self.amp_dtype if self.amp_dtype is not None else False
        recalls, _ = evaluate_split(self.model, self.val_reader, device=self.device,
                                    batch_size=self.options.eval_batch_size, amp=amp)
        return {k: float(v) for k, v in recalls.items()}

    def _patience_spent(self) -> bool:
        p = self.options.patience
        return p is not None and self.best_epoch > 0 and self.epoch - self.best_epoch >= p

    def fit(self) -> Path:
        """Train from epoch ``self.epoch`` to ``config.epochs``; return best.pt's path.

        Rank 0 owns ``out_dir`` meanwhile (:class:`cccl_lite.files.RunLock`):
        a second run into the same folder fails at once, naming this one,
        and a lock left by a killed run is taken over with a note."""
        lock = None
        if self.is_main:
            lock = RunLock(self.out_dir, log=self._print).acquire()
        try:
            return self._fit_locked()
        finally:
            if lock is not None:
                lock.release()

    def _fit_locked(self) -> Path:
        if self.is_main:
            # Checked again under the lock: a run that ended since __init__ may
            # have left results that only --overwrite may replace.
            self._check_not_a_run()
            for name in (self.last_path, self.best_path, self.log_path,
                         self.out_dir / "config.json"):
                for p in remove_stale_temps(name):
                    self._print(f"note: removed {p.name}, left by an interrupted run")
        created_group = self._init_process_group()
        deterministic = self.device.type == "cpu" and self.options.deterministic
        previous = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            self._setup()
            if self.is_main:
                self._write_config_json()
                self._trim_log()
            c = self.config
            if self.epoch >= c.epochs:
                self._print(f"{self.last_path}: already trained for {self.epoch} epochs")
            while self.epoch < c.epochs:
                if self._patience_spent():
                    self._print(f"stopped early: no better validation R@sum for "
                                f"{self.epoch - self.best_epoch} epochs (best "
                                f"{self.best_rsum:.1f} at epoch {self.best_epoch})")
                    break
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                try:
                    losses = self._train_epoch()
                except TrainingCollapsed:
                    self._print(f"stopped: training collapsed at step {self.step} "
                                f"(--stop-on-collapse); {self.last_path.name} and "
                                f"{self.best_path.name} stay those of epoch {self.epoch}")
                    break
                self.scheduler.step()
                self.epoch += 1
                if self.is_main:
                    recalls = self._validate()
                    improved = recalls["rsum"] > self.best_rsum
                    if improved:
                        self.best_rsum, self.best_epoch = recalls["rsum"], self.epoch
                    record = {"epoch": self.epoch, "step": self.step, "lr": lr,
                              "negatives": losses.pop("negatives"), "losses": losses,
                              "val": recalls, "best": improved,
                              "seconds": round(time.perf_counter() - t0, 3)}
                    # The log line first, then last.pt: resume trims lines
                    # past last.pt's epoch (see _trim_log).
                    with open(self.log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    self._save(recalls, improved)
                    self.history.append(record)
                    self._print(
                        f"epoch {self.epoch}/{c.epochs}: loss {losses['total']:.4g} "
                        f"(alignment {losses['alignment']:.4g}, coherence "
                        f"{losses['coherence']:.4g}, {record['negatives']} negatives), "
                        f"lr {lr:.3g}, val R@sum {recalls['rsum']:.1f} (i2t R@1 "
                        f"{recalls['i2t_r1']:.1f}, t2i R@1 {recalls['t2i_r1']:.1f})"
                        f"{' best' if improved else ''}, {record['seconds']:.0f} s")
                self._barrier()
            return self.best_path
        finally:
            if deterministic:
                torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            if created_group:
                import torch.distributed as tdist
                tdist.destroy_process_group()


class _Collate:
    """collate bound to a reader; a class (not a lambda) so that DataLoader
    workers started with spawn can pickle it. With ``truth`` (a
    :class:`SplitTruth`), the positive mask also holds every (image, caption)
    of the batch where the caption is true of the image."""

    def __init__(self, reader: SplitReader, truth: SplitTruth | None = None):
        self.reader, self.truth = reader, truth

    def __call__(self, items):
        batch = collate(self.reader, items)
        if self.truth is not None:
            true = torch.from_numpy(self.truth.truth(batch["image_index"].numpy(),
                                                     batch["caption_index"].numpy()))
            batch["positive_mask"] = batch["positive_mask"] | true
        return batch


def train(config: CCCLConfig, data_path, out_dir, options: TrainOptions | None = None) -> Path:
    """Train CCCL (see :class:`Trainer`); return the path of ``out_dir/best.pt``."""
    return Trainer(config, data_path, out_dir, options).fit()


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


# Each preset's training recipe: the TrainOptions it trains with unless told
# otherwise (command line, lite_options). The paper's: Table 1 plus a one-epoch
# warm-up (VSE∞'s). The lite one is what chapter 5's diagnosis measured on the
# synthetic scenes: the sum over negatives (eq 33's hardest negatives collapse
# the lite model from scratch), a group's siblings in every batch (under a
# shuffle 1.4 % of captions ever meet a binding or relation hard negative),
# the scenes' truth as positives (a test caption is true of ~13 images), and
# early stopping on validation R@sum. Data without scenes (Flickr30K) needs
# --positives image --batching random.
RECIPES = {
    "lite": {"warmup_epochs": None, "positives": "truth", "batching": "siblings",
             "patience": 3},
    "paper": {"warmup_epochs": 1},
}


def recipe_options(preset: str, **options) -> TrainOptions:
    """TrainOptions of ``preset``'s recipe (:data:`RECIPES`), ``options`` on top."""
    if preset not in RECIPES:
        raise ValueError(f"unknown preset {preset!r}; expected one of: {', '.join(RECIPES)}")
    return TrainOptions(**{**RECIPES[preset], **options})


def lite_options(**options) -> TrainOptions:
    """The lite preset's recipe (:data:`RECIPES`), ``options`` on top."""
    return recipe_options("lite", **options)


def _warmup_arg(text: str):
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of epochs >= 0 or 'all', "
                                         f"got {text!r}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m cccl_lite train``'s arguments (see :func:`run_train`)."""
    p = parser
    p.add_argument("--config", default="lite",
                   help=f"preset: {' or '.join(CONFIGS)} (default lite: sized to the data)")
    p.add_argument("--data", required=True, help="HDF5 file (cccl_lite.data.schema)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ablation", default=None, help="one Table 6 ablation, e.g. 'w/o POS'")
    # Every number is checked here, at the boundary: a negative margin or
    # weight would train without a word (issue 14).
    p.add_argument("--epochs", type=positive_int, default=None, help="default: the config's")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="per rank; default: config's")
    p.add_argument("--lr", type=positive_float, default=None, help="default: the config's")
    p.add_argument("--lr-decay-epoch", type=nonnegative_int, default=None,
                   help="lr × 0.1 from this 0-based epoch on; default: the config's")
    p.add_argument("--margin", type=nonnegative_float, default=None,
                   help="Δ of eq 33; default: the config's (0.2, Table 1)")
    p.add_argument("--dataset", choices=("f30k", "coco"), default=None,
                   help="--config paper: Table 1's λ for this dataset (f30k 0.5, coco 0.75); "
                        "default: from the data file's dataset attribute")
    p.add_argument("--coherence-weight", type=nonnegative_float, default=None,
                   help="λ of eq 34; default: the config's (Table 1: 0.5 for Flickr30K, "
                        "0.75 for MS-COCO, see --dataset)")
    p.add_argument("--coherence-reduction", choices=COHERENCE_REDUCTIONS, default=None,
                   help="L_c of eq 31 summed over the B² pairs (sum, as printed) or divided "
                        "by B (per_item); default: the config's")
    p.add_argument("--position-tuple", choices=("ours", "camera"), default=None,
                   help="eq 9's six-tuple: ours or CAMERA's (cccl_lite.perceive."
                        "position_features); default: the config's (ours)")
    p.add_argument("--position-fusion", choices=("product", "sum"), default=None,
                   help="eq 10: the region embedding times the position gate (product, as "
                        "printed) or plus a position embedding (sum); default: the config's")
    d = TrainOptions()
    p.add_argument("--warmup-epochs", type=_warmup_arg, default=None,
                   help="epochs with the sum over all negatives before hardest negatives, "
                        "or 'all' (default: all for lite, 1 for paper; see cccl_lite.train)")
    p.add_argument("--positives", choices=POSITIVES, default=None,
                   help="image: a caption matches the image it was written for; truth: every "
                        "image of the batch it is true of (synthetic scenes); default: the "
                        "preset's recipe")
    p.add_argument("--batching", choices=BATCHINGS, default=None,
                   help="random, or siblings (a scene's rebound and swapped variants in the "
                        "same batch; synthetic scenes); default: the preset's recipe")
    p.add_argument("--patience", type=positive_int, default=None,
                   help="stop after this many epochs without a better val R@sum; default: "
                        "the preset's recipe")
    p.add_argument("--seed", type=nonnegative_int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:K")
    p.add_argument("--amp", default=d.amp, help=f"{', '.join(AMP_MODES)} (default auto: "
                                                f"bf16 or fp16 on CUDA, off on the CPU)")
    p.add_argument("--num-workers", type=nonnegative_int, default=d.num_workers)
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="at most this many batches per epoch (smoke runs)")
    p.add_argument("--eval-batch-size", type=positive_int, default=d.eval_batch_size)
    p.add_argument("--pair-chunk", type=positive_int, default=None, metavar="N",
                   help="memory-saving mode: score at most N pairs of a batch at once and "
                        "recompute their activations in the backward pass (default: off)")
    p.add_argument("--collapse-steps", type=positive_int, default=d.collapse_steps,
                   help="warn after this many batches in a row with flat scores "
                        f"(default: {d.collapse_steps})")
    p.add_argument("--stop-on-collapse", action="store_true",
                   help="stop the run then; checkpoints stay those of the last epoch")
    p.add_argument("--log-every", type=nonnegative_int, default=d.log_every,
                   help="batches between progress lines when there is no progress bar")
    p.add_argument("--quiet", action="store_true", help="no progress bar nor batch lines")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an existing OUT")


def run_train(args) -> int:
    """Train as ``args`` say; print where best.pt is. Expected failures raise CLIError."""
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                   ("lr", args.lr), ("lr_decay_epoch", args.lr_decay_epoch),
                                   ("margin", args.margin),
                                   ("coherence_weight", args.coherence_weight),
                                   ("coherence_reduction", args.coherence_reduction),
                                   ("position_tuple", args.position_tuple),
                                   ("position_fusion", args.position_fusion))
                 if v is not None}
    config = resolve_config(args.config, args.data, args.ablation,
                            dataset=getattr(args, "dataset", None), **overrides)
    # Unset options come from the preset's recipe (RECIPES).
    chosen = {k: v for k, v in (("warmup_epochs", args.warmup_epochs),
                                ("positives", args.positives), ("batching", args.batching),
                                ("patience", args.patience)) if v is not None}
    if chosen.get("warmup_epochs") == "all":
        chosen["warmup_epochs"] = None
    options = recipe_options(args.config, **chosen, seed=args.seed,
                             device=args.device, amp=args.amp, num_workers=args.num_workers,
                             max_steps=args.max_steps, log_every=args.log_every,
                             quiet=args.quiet, resume=args.resume, overwrite=args.overwrite,
                             eval_batch_size=args.eval_batch_size, pair_chunk=args.pair_chunk,
                             collapse_steps=args.collapse_steps,
                             stop_on_collapse=args.stop_on_collapse)
    trainer = Trainer(config, args.data, args.out, options)
    best = trainer.fit()
    collapse = getattr(trainer, "collapse", None)
    if collapse is not None and trainer.options.stop_on_collapse:
        raise CLIError(f"training collapsed at step {collapse['step']} and was stopped; "
                       f"{trainer.last_path} holds epoch {trainer.epoch}")
    if trainer.is_main:
        print(f"best: {best} (epoch {trainer.best_epoch}, val R@sum {trainer.best_rsum:.1f})")
    return 0
