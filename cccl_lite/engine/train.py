"""Training CCCL: the loop of Table 1's recipe, a warm-up epoch, checkpoints, resume, AMP, DDP.

Taught in chapter 6 ("Training and evaluation"). A run trains a model
(:class:`~cccl_lite.model.cccl.CCCLConfig`) with a recipe
(:class:`~cccl_lite.engine.recipes.Recipe`; Sec. 4.2, Table 1): Adam at
``recipe.lr``, × 0.1 from epoch ``recipe.lr_decay_epoch`` on (0-based: lr
2e-4 for 15 epochs, then 2e-5), gradient norm clipped to
``recipe.grad_clip``, the hybrid loss L = L_t + λ L_c (eq 34) of each
batch, built once from the recipe (``recipe.objective()``: Δ, λ and L_c's
reduction), and the checkpoint of the best validation R@sum (eq 36) kept
(or of the best truth-aware R@sum: ``recipe.select``). Where and how it
runs is its :class:`~cccl_lite.engine.recipes.RunOptions`.

One addition the paper does not print: the first ``warmup_epochs`` epochs
(default 1; None = every epoch) use :func:`alignment_term_all_negatives`,
the hinge summed over *every* negative of the batch, instead of eq 33's
hardest negative, as VSE∞ does. What eq 33 does to the lite model on the
synthetic scenes (from the first step, after a warm-up, at several batch
sizes, with the in-batch win rate of ``log.jsonl``) is measured, not stated
here: chapter 11's diagnosis and chapter 6's plateau study
(``cccl_lite/results/diagnosis.json``, ``plateau.json``), and
:data:`cccl_lite.engine.departures.DEPARTURES` names the rows behind the lite
preset's choice of the sum over negatives.

Not here: a lower learning rate for a fine-tuned text encoder (VSE∞'s 0.1×).
The word vectors are cached in the data file (``encode_words.py``), so no
text encoder is trained; the textual layers that are trained (eqs 11-12)
start from scratch like their visual twins and share the base lr.

Outputs, in ``out_dir`` (written by rank 0 only):

* ``config.json``: {"config": CCCLConfig dict, "recipe": Recipe dict,
  "options": RunOptions dict, "provenance", "data": path, "world_size": N};
* ``log.jsonl``: one object per epoch: epoch (1-based), step, lr,
  negatives ("all" or "hardest"), win_rate {images, captions, both}: the
  percent of the epoch's image rows / caption columns / both whose positive
  scored above the batch's hardest negative (eq 33's, counted in every
  epoch; :func:`cccl_lite.model.loss.hardest_negative_wins`), losses {total,
  alignment, coherence} (means per batch), val (every key of ``recall_at_k``), val_truth (the
  same, truth-aware; only under ``select="truth_rsum"``), best, seconds;
* ``last.pt``: everything needed to resume (model, optimizer, scheduler,
  AMP scaler, RNG states, epoch, step, the best value of the selected
  measure (``best_rsum``), config, recipe, vocab, options);
* ``best.pt``: the model of the best validation measure (no optimizer).

Checkpoints are written to a temp file in ``out_dir`` and renamed
(``os.replace``): Ctrl-C or a crash never leaves a half-written ``last.pt``,
and ``--resume`` restarts from the last completed epoch. They hold only
tensors, numbers, strings, lists and dicts, and load with
``torch.load(weights_only=True)``. On the CPU with a fixed seed a resumed
run gives bit-identical weights to an uninterrupted one: the shuffle of
epoch e depends only on (seed, e), and every RNG state is restored. (This
needs the same thread count and math libraries: float sums in another
order differ in the last bits; the test therefore runs on one thread.)

Where the rest lives: how to train (:class:`Recipe`, :class:`RunOptions`,
:data:`PRESETS`) in :mod:`cccl_lite.engine.recipes`; configs, checkpoints
and the checks that they fit the data in :mod:`cccl_lite.engine.checkpoint`; the
collapse guard in :mod:`cccl_lite.engine.collapse`; device, AMP, ranks and RNG
states in :mod:`cccl_lite.engine.runtime`; the command line in :mod:`cccl_lite.cli`.
Their public names are importable from here too, as the book does.

Why over 500 lines: one class, the Trainer, whose loop, resume and
checkpoint writing share its state.

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

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from cccl_lite.engine.checkpoint import (CHECKPOINT_FORMAT, check_resumable, data_dataset,
                                          data_identity, load_checkpoint, load_model, make_reader,
                                          prepare_config, resolve_config, save_atomic)
from cccl_lite.engine.collapse import CollapseGuard, TrainingCollapsed
from cccl_lite.data.dataset import (CaptionDataset, SiblingSampler, SplitReader, collate,
                                    model_inputs)
from cccl_lite.data.truth import SplitTruth
from cccl_lite.errors import InputError, field, one_line
from cccl_lite.engine import evaluate
from cccl_lite.files import RunLock, check_output_dir, remove_stale_temps, write_text_atomic
from cccl_lite.model.loss import HybridLoss, alignment_term, hardest_negative_wins, hybrid_loss
from cccl_lite.engine.metrics import truth_recall_at_k
from cccl_lite.model.cccl import CCCL, CCCLConfig
from cccl_lite.provenance import provenance
from cccl_lite.engine.recipes import (AMP_MODES, BATCHINGS, POSITIVES, PRESETS, SELECT_LABELS,
                                      Preset, Recipe, RunOptions)
from cccl_lite.engine.runtime import (Dist, resolve_amp, resolve_device, restore_rng, rng_states,
                                      seed_worker)

# The loop's own names, then those of the modules it drives that the book and
# the tests import from here (one import line for a chapter).
__all__ = [
    "Trainer",
    "train",
    "read_log",
    "best_record",
    "stopped_on_patience",
    "alignment_term_all_negatives",
    "warmup_loss",
    "AMP_MODES",
    "POSITIVES",
    "BATCHINGS",
    "Recipe",
    "RunOptions",
    "Preset",
    "PRESETS",
    "CollapseGuard",
    "TrainingCollapsed",
    "load_model",
    "load_checkpoint",
    "make_reader",
    "resolve_config",
    "prepare_config",
    "data_dataset",
]



# --------------------------------------------------------------------------
# the warm-up loss
# --------------------------------------------------------------------------


def alignment_term_all_negatives(scores: torch.Tensor, margin: float = 0.2,
                                 positive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional hinge triplet loss summed over ALL negatives (warm-up):
    ``cccl_lite.model.loss.alignment_term(..., negatives="all")``.

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
# the trainer
# --------------------------------------------------------------------------


class Trainer:
    """Trains a CCCL of ``config`` with ``recipe`` on ``data_path``'s train
    split, selects on val.

    ``Trainer(config, recipe, data_path, out_dir, run).fit()`` returns the
    path of ``best.pt``; afterwards ``trainer.model`` is the trained model
    (not the best one: load that with :func:`load_model`) and
    ``trainer.history`` the log records. The config is checked against the
    data by :func:`prepare_config` at construction (no model is built
    before fit). ``run``: :class:`RunOptions` (default: its defaults).
    """

    def __init__(self, config: CCCLConfig, recipe: Recipe, data_path, out_dir,
                 run: RunOptions | None = None):
        if not isinstance(recipe, Recipe):
            raise TypeError(f"Trainer(config, recipe, data_path, out_dir, run): recipe must be "
                            f"a Recipe, got {type(recipe).__name__}")
        self.recipe, self.options = recipe, run or RunOptions()
        self.objective = recipe.objective()  # eq 34 with the recipe's Δ, λ, reduction
        self.data_path, self.out_dir = Path(data_path), Path(out_dir)
        if recipe.batch_size < 2:
            # eq 33's negatives are the batch's other pairs: with one pair the
            # alignment term is identically zero and only L_c would train.
            raise InputError(f"--batch-size (recipe batch_size) {recipe.batch_size}: the "
                             f"alignment term (eq 33) takes its negatives from the batch's other "
                             f"pairs, so it needs a batch of at least 2 (per process)")
        self.dist = Dist.from_env()
        self.device = resolve_device(self.options.device, self.dist)
        self.amp_dtype = resolve_amp(self.options.amp, self.device)
        self.config, self.vocab = prepare_config(config, self.data_path)
        self.model: CCCL | None = None
        self.history: list[dict] = []
        self.last_path, self.best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        self.log_path = self.out_dir / "log.jsonl"
        if self.is_main:  # before any training: a folder under a file, read-only
            check_output_dir(self.out_dir, "output folder (--out)")
        if self.options.resume and not self.last_path.exists():
            raise InputError(f"--resume: {self.last_path} does not exist; nothing to resume")
        self._check_not_a_run()
        self.data_identity = data_identity(self.data_path)
        self._resume_ckpt = None
        if self.options.resume:
            self._resume_ckpt = check_resumable(
                load_checkpoint(self.last_path), self.last_path, self.config, self.recipe,
                self.options.seed, self.dist.world_size, self.data_path,
                self.data_identity, self._print)
        # The epoch fit() starts from: last.pt's when resuming, else 0.
        self.start_epoch = self._resume_ckpt["epoch"] if self._resume_ckpt else 0

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def _check_not_a_run(self) -> None:
        """A new run never replaces another's results without --overwrite."""
        if self.options.resume or self.options.overwrite:
            return
        # config.json and log.jsonl too: a run killed before its first
        # checkpoint still holds its record (issue 29 #2).
        held = [p.name for p in (self.last_path, self.best_path, self.log_path,
                                 self.out_dir / "config.json") if p.exists()]
        if held:
            raise InputError(f"{self.out_dir} already holds a run ({', '.join(held)}); pass "
                             f"--resume to continue it, --overwrite to start again, or another "
                             f"--out")

    def _print(self, *args) -> None:
        if self.is_main:
            print(*args, flush=True)

    # ---- setup ------------------------------------------------------------
    def _setup(self) -> None:
        o, c, r = self.options, self.config, self.recipe
        random.seed(o.seed)
        np.random.seed(o.seed)
        torch.manual_seed(o.seed)
        self.model = CCCL(c).to(self.device)  # initialised from the seeded torch RNG
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=r.lr)
        decay = r.lr_decay_epoch
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
            for key in ("best_rsum", "best_epoch"):  # an edited last.pt: one line
                field(ck, key, self.last_path, "--resume")
            try:
                self.model.load_state_dict(ck["model"])
                self.optimizer.load_state_dict(ck["optimizer"])
                self.scheduler.load_state_dict(ck["scheduler"])
                if self.scaler is not None and ck.get("scaler"):
                    self.scaler.load_state_dict(ck["scaler"])
                restore_rng(ck["rng"], self.loader_gen)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                # torch's message names neither the file nor which state.
                raise InputError(f"--resume: {self.last_path}: its model, optimizer, "
                                 f"scheduler or RNG state does not fit this run "
                                 f"({one_line(e)[:200]}); start again with --overwrite"
                                 ) from None
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
        # The validation truth (every image each caption is true of), for
        # select="truth_rsum"; computed once.
        self.val_truth = None
        if self.is_main and r.select == "truth_rsum":
            t = SplitTruth(self.data_path, "val")
            self.val_truth = t.truth(np.arange(t.n_images), np.arange(t.n_captions))
        dataset = CaptionDataset(self.train_reader)
        truth = None
        if r.positives == "truth" or r.batching == "siblings" or r.sibling_weight != 1:
            truth = SplitTruth(self.data_path, "train")
        # The shuffle of epoch e depends on (seed, e) only (set_epoch), with
        # one process as with N: what makes resume exact.
        if r.batching == "siblings":
            self.sampler = SiblingSampler(truth.group, self.train_reader.caption_image,
                                          seed=o.seed, num_replicas=self.dist.world_size,
                                          rank=self.dist.rank)
        else:
            self.sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True,
                seed=o.seed)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=r.batch_size, sampler=self.sampler,
            collate_fn=_Collate(self.train_reader, truth if r.positives == "truth" else None,
                                truth.group if r.sibling_weight != 1 else None,
                                r.sibling_weight),
            num_workers=o.num_workers,
            worker_init_fn=seed_worker, generator=self.loader_gen,
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
        info = {"config": self.config.to_dict(), "recipe": self.recipe.to_dict(),
                "options": self.options.to_dict(),
                "provenance": provenance(),
                "data": str(self.data_path), "world_size": self.dist.world_size}
        write_text_atomic(json.dumps(info, indent=2) + "\n", self.out_dir / "config.json")

    def _remove_old_run(self) -> None:
        """--overwrite: remove the old run's files before anything new is
        written, checkpoints first, so that a run killed before its first
        epoch ends leaves no old last.pt for --resume to take as its own (with
        an empty log it would report the old run as finished; issue 29 #9)."""
        for p in (self.last_path, self.best_path, self.log_path, self.out_dir / "config.json"):
            if p.exists():
                p.unlink()

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
            write_text_atomic("".join(ln + "\n" for ln in keep), self.log_path)

    def _checkpoint(self, recalls: dict, best: bool) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "best" if best else "last",
            "config": self.config.to_dict(),
            "recipe": self.recipe.to_dict(),
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
            save_atomic(self._checkpoint(recalls, best=True), self.best_path)
        ckpt = self._checkpoint(recalls, best=False)
        ckpt.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler else None,
                    rng=rng_states(self.loader_gen))
        save_atomic(ckpt, self.last_path)

    # ---- the loop -----------------------------------------------------------
    def _train_epoch(self) -> dict:
        o, r = self.options, self.recipe
        net = self.ddp or self.model
        net.train()
        self.sampler.set_epoch(self.epoch)
        all_negatives = r.warmup_epochs is None or self.epoch < r.warmup_epochs
        n_steps = len(self.loader) if o.max_steps is None else min(o.max_steps, len(self.loader))
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        # eq 33's in-batch win rate, counted whatever the epoch's negatives
        # (loss.hardest_negative_wins): [image rows won, counted, captions won, counted]
        wins = torch.zeros(4, dtype=torch.float64, device=self.device)
        bar = None
        if self.is_main and not o.quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm
            bar = tqdm(total=n_steps, desc=f"epoch {self.epoch + 1}/{r.epochs}", leave=False,
                       dynamic_ncols=True)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        t0 = time.perf_counter()
        try:
            for i, batch in enumerate(self.loader):
                if i >= n_steps:
                    break
                if batch["positive_mask"].shape[0] < 2:
                    # A last batch of one pair (the split's size, not --batch-size:
                    # that is refused): eq 33 has no negative there, so it would
                    # train L_c alone; skipped, as drop_last would.
                    continue
                positive = batch["positive_mask"].to(self.device, non_blocking=True)
                # sibling_weight weighs the sum over negatives only (Recipe).
                weight = batch.get("negative_weight") if all_negatives else None
                if weight is not None:
                    weight = weight.to(self.device, non_blocking=True)
                with autocast:
                    fused, scores = net(**model_inputs(batch, self.device),
                                        pair_chunk=o.pair_chunk)
                # The loss in fp32: sums over B² pairs lose precision in bf16.
                scores = tuple(None if s is None else s.float() for s in scores)
                loss = self.objective(scores, positive,
                                      negatives="all" if all_negatives else "hardest",
                                      negative_weight=weight)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss.total).backward()
                    self.scaler.unscale_(self.optimizer)  # clip the true gradients
                    self._clip()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.total.backward()
                    self._clip()
                    self.optimizer.step()
                self.step += 1
                self._check_collapse(fused, loss.alignment, positive,
                                     "all" if all_negatives else "hardest")
                sums += torch.stack([loss.total.detach(), loss.alignment.detach(),
                                     loss.coherence.detach(), torch.ones((), device=self.device)
                                     ]).double()
                wins += hardest_negative_wins(fused, positive)
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
            tdist.all_reduce(wins)
        total, alignment, coherence = (sums[:3] / sums[3].clamp(min=1)).tolist()
        w = wins.tolist()
        win_rate = {"images": 100 * w[0] / max(w[1], 1), "captions": 100 * w[2] / max(w[3], 1),
                    "both": 100 * (w[0] + w[2]) / max(w[1] + w[3], 1)}
        return {"total": total, "alignment": alignment, "coherence": coherence,
                "negatives": "all" if all_negatives else "hardest", "win_rate": win_rate}

    def _clip(self) -> None:
        if self.recipe.grad_clip is not None:  # None: no clipping, as printed
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)

    def _check_collapse(self, fused, alignment, positive, negatives: str) -> None:
        """Feed one batch to the collapse guard: print its warning once (rank 0);
        with ``stop_on_collapse``, raise TrainingCollapsed, on every rank at the
        same step (the flag is all-reduced under DDP)."""
        if self.collapse_guard.update(fused, alignment, positive, negatives,
                                      self.recipe.margin, self.step):
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

    def _validate(self) -> tuple[dict, dict | None]:
        """(R@K of the validation split, its truth-aware R@K or None): the
        second only under ``select="truth_rsum"``."""
        # The run's own amp setting (evaluate's default would turn bf16 on for
        # any CUDA device, even under --amp off); scores are float32 either way.
        amp = self.amp_dtype if self.amp_dtype is not None else False
        # Through the module: a test may stand in for evaluate_split.
        recalls, sims = evaluate.evaluate_split(self.model, self.val_reader, device=self.device,
                                    batch_size=self.options.eval_batch_size, amp=amp)
        recalls = {k: float(v) for k, v in recalls.items()}
        if self.val_truth is None:
            return recalls, None
        return recalls, {k: float(v) for k, v in truth_recall_at_k(sims, self.val_truth).items()}

    def _patience_spent(self) -> bool:
        p = self.recipe.patience
        return p is not None and self.best_epoch > 0 and self.epoch - self.best_epoch >= p

    def fit(self) -> Path:
        """Train from epoch ``self.epoch`` to ``recipe.epochs``; return best.pt's path.

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
            if self.options.overwrite:
                self._remove_old_run()
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
            c = self.recipe
            if self.epoch >= c.epochs:
                self._print(f"{self.last_path}: already trained for {self.epoch} epochs")
            while self.epoch < c.epochs:
                if self._patience_spent():
                    self._print(f"stopped early: no better validation "
                                f"{SELECT_LABELS[self.recipe.select]} for "
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
                    recalls, truth_recalls = self._validate()
                    # best_rsum: the best value of the selected measure so far.
                    selected = (truth_recalls or recalls)["rsum"]
                    improved = selected > self.best_rsum
                    if improved:
                        self.best_rsum, self.best_epoch = selected, self.epoch
                    record = {"epoch": self.epoch, "step": self.step, "lr": lr,
                              "negatives": losses.pop("negatives"),
                              "win_rate": losses.pop("win_rate"), "losses": losses,
                              "val": recalls,
                              **({"val_truth": truth_recalls} if truth_recalls else {}),
                              "best": improved,
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
                        + (f", truth-aware R@sum {truth_recalls['rsum']:.1f}"
                           if truth_recalls else "")
                        + f"{' best' if improved else ''}, {record['seconds']:.0f} s")
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
    of the batch where the caption is true of the image. With ``group`` (each
    image's scene group) and ``sibling_weight``, ``negative_weight`` (B, B)
    is ``sibling_weight`` where image i and caption j's image share a group,
    1 elsewhere (positives are excluded by the loss, weight or not)."""

    def __init__(self, reader: SplitReader, truth: SplitTruth | None = None,
                 group=None, sibling_weight: float = 1.0):
        self.reader, self.truth = reader, truth
        self.group, self.sibling_weight = group, sibling_weight

    def __call__(self, items):
        batch = collate(self.reader, items)
        if self.truth is not None:
            true = torch.from_numpy(self.truth.truth(batch["image_index"].numpy(),
                                                     batch["caption_index"].numpy()))
            batch["positive_mask"] = batch["positive_mask"] | true
        if self.group is not None:
            # Row i's image and column j's caption's image (pair j's image).
            g = self.group[batch["image_index"].numpy()]
            same = torch.from_numpy(g[:, None] == g[None, :])
            batch["negative_weight"] = torch.where(same, float(self.sibling_weight), 1.0)
        return batch


def read_log(run_dir) -> list[dict]:
    """The epoch records of a run's ``log.jsonl`` (see the module docstring), in order."""
    return [json.loads(ln) for ln in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def best_record(log: list[dict]) -> dict:
    """The record of the epoch ``best.pt`` holds: the last one the trainer
    flagged best, under whichever validation measure its recipe selects by
    (``Recipe.select``)."""
    return [r for r in log if r["best"]][-1]


def stopped_on_patience(record: dict, patience: int) -> bool:
    """Whether a finished run was ended by its recipe's patience: ``patience``
    epochs without a better validation measure after its best, read from a
    results record's ``best_epoch`` and ``last_epoch`` (1-based). False: the
    epoch cap ended it first, so its best epoch may not be its plateau."""
    return record["last_epoch"] - record["best_epoch"] >= patience


def train(config: CCCLConfig, recipe: Recipe, data_path, out_dir,
          run: RunOptions | None = None) -> Path:
    """Train CCCL of ``config`` with ``recipe`` (see :class:`Trainer`); return
    the path of ``out_dir/best.pt``."""
    return Trainer(config, recipe, data_path, out_dir, run).fit()
