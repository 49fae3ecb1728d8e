"""How to train, as opposed to what: :class:`TrainOptions` and each preset's recipe.

Taught in chapter 6 ("Training and evaluation"). The model and Table 1's
hyper-parameters live in :class:`~cccl_lite.model.cccl.CCCLConfig`; the options
here say how a run trains them (warm-up, positives, batches, early stopping,
device, AMP, ...). Each preset carries its own recipe (:data:`RECIPES`):
:func:`recipe_options` is the one way to get a preset's options, with any
option changed on top (``recipe_options("lite", max_steps=2)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["AMP_MODES", "POSITIVES", "BATCHINGS", "SELECTS", "SELECT_LABELS", "TrainOptions",
           "RECIPES", "recipe_options", "lite_options", "Departure", "AS_PRINTED",
           "DEPARTURES", "departures"]

AMP_MODES = ("auto", "bf16", "fp16", "off")
POSITIVES = ("image", "truth")
BATCHINGS = ("random", "siblings")
SELECTS = ("rsum", "truth_rsum")
# How log lines name each validation measure.
SELECT_LABELS = {"rsum": "R@sum", "truth_rsum": "truth-aware R@sum"}


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
    scenes only). patience: stop when the validation measure of ``select``
    has not improved for this many epochs (None: run every epoch of the
    config).

    select: the validation measure that picks ``best.pt`` and drives
    ``patience``: "rsum" (R@sum, eq 36: a hit only for the image a caption
    was written for) or "truth_rsum" (the truth-aware R@sum of
    :func:`cccl_lite.engine.metrics.truth_recall_at_k`: a hit for any image the
    caption is true of; synthetic scenes only). A run that trains with
    ``positives="truth"`` asks for the second; selecting it by the first
    rewards ranking the written-for image above others the caption fits,
    which nothing trained, and on the scenes it stopped one seed in three at
    epoch 1, before relations were learnt (chapter 6). Each epoch's log line
    holds both when "truth_rsum" is selected.

    sibling_weight: each negative pair of a caption with an image of its own
    image's group (the scene's rebound and swapped siblings, which differ
    from it in one binding or one relation) counts this many times in the
    sum over negatives (``cccl_lite.model.loss.alignment_term``'s
    ``negative_weight``); 1 is the plain sum. It needs the scenes' groups,
    and it weighs only epochs with the sum over negatives: after a warm-up,
    eq 33's hardest negative has no weight to share.

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
    select: str = "rsum"
    sibling_weight: float = 1.0
    collapse_steps: int = 50
    stop_on_collapse: bool = False

    def __post_init__(self):
        if self.positives not in POSITIVES:
            raise ValueError(f"unknown positives {self.positives!r}; expected one of: "
                             f"{', '.join(POSITIVES)}")
        if self.batching not in BATCHINGS:
            raise ValueError(f"unknown batching {self.batching!r}; expected one of: "
                             f"{', '.join(BATCHINGS)}")
        if self.select not in SELECTS:
            raise ValueError(f"unknown select {self.select!r}; expected one of: "
                             f"{', '.join(SELECTS)}")
        if self.patience is not None and (isinstance(self.patience, bool) or self.patience < 1):
            raise ValueError(f"patience must be >= 1 or None, got {self.patience!r}")
        if isinstance(self.sibling_weight, bool) or not isinstance(self.sibling_weight, (int, float)) \
                or not self.sibling_weight >= 0:
            raise ValueError(f"sibling_weight must be a number >= 0, got {self.sibling_weight!r}")
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




# Each preset's training recipe: the TrainOptions it trains with unless told
# otherwise (command line, lite_options). The paper's: Table 1 plus a one-epoch
# warm-up (VSE∞'s). The lite one is what chapter 11's diagnosis measured on the
# synthetic scenes; DEPARTURES below names each choice's reason and the rows that
# measured it. Data without scenes (Flickr30K) needs --positives image
# --batching random --sibling-weight 1 --select rsum.
RECIPES = {
    "lite": {"warmup_epochs": 1, "positives": "truth", "batching": "siblings",
             "patience": 3, "select": "truth_rsum", "sibling_weight": 10.0},
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


def hardest_after_warmup_risk(warmup_epochs: int | None, coherence_weight: float,
                              coherence_reduction: str, batch_size: int) -> str | None:
    """A warning when a run will switch to eq 33's hardest negatives where the
    recorded diagnosis saw that switch flatten the scores, else None.

    Why (cccl_lite/results/diagnosis.json; three epochs on the lite scenes
    with image positives and random batches, as the paper preset trains):
    after one warm-up epoch, eq 33 with the coherence term summed over the B²
    pairs flattened the scores at B = 32 ("warm-up 1, hardest", two seeds)
    and at the paper's B = 128 ("warm-up 1, hardest, B 128"); with L_c per
    item it trained at B = 32 and flattened at B = 128 ("warm-up 1, hardest,
    L_c per item, B 128"). With λ 0 it trained at B = 32; larger batches are
    not measured, so λ 0 gets no warning. Measured on the scenes, not on
    Flickr30K: a risk, not a verdict.
    """
    if warmup_epochs is None or coherence_weight == 0:
        return None
    if coherence_reduction == "sum":
        what = f"the coherence term summed over the B² pairs (λ {coherence_weight:g})"
    elif batch_size > 32:
        what = (f"L_c per item (λ {coherence_weight:g}) at B = {batch_size}, above the B = 32 "
                "where it trained")
    else:
        return None
    return (f"warning: after {warmup_epochs} warm-up epoch(s) this run trains eq 33's hardest "
            f"negatives with {what}: on the lite scenes that switch flattened the scores and "
            "lost what the warm-up had learnt (diagnosis rows 'warm-up 1, hardest' at B = 32 "
            "and B = 128, and with L_c per item at B = 128). Safer: --warmup-epochs all (the "
            "sum over negatives throughout), or --coherence-weight 0 (trained at B = 32, not "
            "measured above); --stop-on-collapse stops a collapsed run with its checkpoints "
            "intact.")


# ---- the lite preset against the paper ------------------------------------------------


@dataclass(frozen=True)
class Departure:
    """One way the lite preset differs from the paper as printed: the
    ``fields`` of :class:`~cccl_lite.model.cccl.CCCLConfig` or :class:`TrainOptions`
    it sets otherwise, ``why``, and the recorded evidence: ``evidence`` is
    ``(results file, row, row it changes one thing of)`` in
    ``cccl_lite/results/`` (a diagnosis-runner file), or None where the
    reason is the budget or a reading, which ``why`` then states."""

    what: str
    fields: tuple[str, ...]
    why: str
    evidence: tuple[str, str, str] | None = None


# The paper as printed: Table 1 (CCCLConfig.paper) with eq 33 from the first
# step, one positive per caption, random batches, the best validation R@sum
# kept after its 30 epochs, and no gradient clipping (the paper names none).
AS_PRINTED = {"grad_clip": None, "warmup_epochs": 0, "positives": "image", "batching": "random",
              "patience": None, "select": "rsum", "sibling_weight": 1.0}

DEPARTURES = (
    Departure("sizes", ("region_dim", "num_regions", "word_dim", "embed_dim", "sim_dim"),
              "the scenes' simulated detector gives 12 regions of 256-d features; d = P = 64 "
              "trains on 2 CPU cores (chapter 7's sensitivity study: twice the width P does not "
              "do better here)",
              ("sensitivity.json", "P 128", "centre (P 64, λ 0.5)")),
    Departure("batch and schedule", ("batch_size", "epochs", "lr_decay_epoch"),
              "the budget: B = 32 and the rate cut at epoch 7, on one CPU thread (the "
              "paper: B = 128, cut at 15); the runs stop on patience well before the "
              "paper's 30 epochs"),
    Departure("learning rate", ("lr",), "5e-4 learns more than the paper's 2e-4 in the "
              "short runs", ("diagnosis.json", "lr 2e-4", "reference")),
    Departure("gradient clipping", ("grad_clip",), "norm 2, as SCAN and VSE++ do; the paper "
              "names none (a reading; the paper preset clips too)"),
    Departure("L_c per item", ("coherence_reduction",), "eq 31 summed over the B² pairs "
              "brakes the alignment term; divided by B it does not (λ stays 0.5)",
              ("diagnosis.json", "L_c per item", "reference")),
    Departure("words through a Bi-GRU", ("use_bert",), "the paper's own 'w/o "
              "BERT' encoder (learned embeddings): with MiniLM's frozen vectors relations "
              "were never learnt",
              ("diagnosis.json", "siblings ×10, centre in eq 8, w/o BERT",
               "siblings ×10, centre in eq 8")),
    Departure("box centre in eq 8", ("centre_scale",), "eq 10's position gate alone never "
              "carried relations; the centre as two feature columns, with the Bi-GRU words "
              "and the weighted siblings, does: without it relations stay at chance",
              ("diagnosis.json", "siblings ×10, centre in eq 8, w/o BERT",
               "siblings ×10, w/o BERT")),
    Departure("one warm-up epoch", ("warmup_epochs",), "eq 33 from the first step flattens "
              "the lite model's scores; after one epoch of the sum over negatives (VSE∞'s "
              "warm-up, as the paper preset) it trains, and to the plateau it beat the sum "
              "in every epoch on test R@sum with the same truth-aware R@sum and sibling "
              "accuracies at three seeds (chapter 6's plateau study, plateau.json)",
              ("diagnosis.json", "siblings, warm-up 1, hardest, L_c per item",
               "siblings, hardest, L_c per item")),
    Departure("truth positives", ("positives",), "a test caption is true of ~13 images; "
              "those are never pushed away as negatives (synthetic scenes only)",
              ("diagnosis.json", "truth positives", "reference")),
    Departure("sibling batches", ("batching",), "under a shuffle almost no caption meets its "
              "rebound or swapped sibling in its batch (chapter 11 counts it), so the loss "
              "cannot ask for bindings or relations (synthetic scenes only)",
              ("diagnosis.json", "siblings in batch", "truth positives")),
    Departure("siblings weighted ×10", ("sibling_weight",), "the loss asks for the siblings "
              "(NegCLIP's idea); without the weight relations stayed at chance under the sum "
              "over negatives (with the warm-up it weighs the warm-up epoch only; not "
              "measured without it there)",
              ("diagnosis.json", "siblings ×10, centre in eq 8, w/o BERT",
               "centre in eq 8, w/o BERT")),
    Departure("early stopping on the truth-aware R@sum", ("patience", "select"),
              "keep the epoch the positives train for; selected by the standard R@sum one "
              "seed in three kept a model from before relations were learnt "
              "(cccl_lite/results/ablations-select-rsum.json, chapter 6)"),
)


def departures(config: dict, options: dict) -> list[dict]:
    """The :data:`DEPARTURES` a run's ``config`` (CCCLConfig fields) and
    ``options`` (TrainOptions fields) make from the paper as printed
    (``CCCLConfig.paper()`` for the run's λ, with :data:`AS_PRINTED`): each
    as {"what", "fields": {field: [paper, run]}, "why", "evidence"}, for the
    departures where at least one field differs. A field that differs from
    the paper but that no departure names raises ValueError: the table must
    list every departure (the Table 6 ablation switches, ``ablation`` and
    the ``use_*`` flags it sets, are the ablation's, and ``vocab_size`` is
    the data's, not departures)."""
    from cccl_lite.model.cccl import CCCLConfig

    paper = {**CCCLConfig.paper(coherence_weight=config.get("coherence_weight", 0.5)).to_dict(),
             **dataclasses.asdict(TrainOptions()), **AS_PRINTED}
    run = {**config, **options}
    named = {f for d in DEPARTURES for f in d.fields}
    ablation_fields = {"ablation", "vocab_size"} | {f for f in config if f.startswith("use_")
                                                    and f != "use_bert"}
    recipe_fields = set(RECIPES["lite"]) | {"grad_clip"} | set(config)
    unnamed = sorted(f for f in recipe_fields - named - ablation_fields
                     if f in run and f in paper and run[f] != paper[f])
    if unnamed:
        raise ValueError(f"departures: {', '.join(unnamed)} differ from the paper as printed "
                         "but no entry of DEPARTURES names them")
    out = []
    for d in DEPARTURES:
        changed = {f: [paper[f], run[f]] for f in d.fields if f in run and run[f] != paper[f]}
        if changed:
            out.append({"what": d.what, "fields": changed, "why": d.why,
                        "evidence": list(d.evidence) if d.evidence else None})
    return out
