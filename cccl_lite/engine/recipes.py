"""How a model trains, as opposed to what it is: Recipe, RunOptions and PRESETS.

Taught in chapter 6 ("Training and evaluation"). Three things describe a
training run:

* the model (:class:`~cccl_lite.model.cccl.CCCLConfig`: sizes, readings,
  Table 6 switches), what a checkpoint needs to rebuild it;
* the :class:`Recipe`: everything that changes what training computes
  (learning rate and schedule, epochs, batch size, clipping, Δ, λ and its
  reduction, warm-up, positives, batching, early stopping, sibling weight);
* the :class:`RunOptions`: where and how it runs (device, AMP, workers,
  logging, resume, memory-saving mode), which change no number it learns
  (but the seed).

:data:`PRESETS` holds each preset as a :class:`Preset` (model, recipe):
"lite" (the synthetic scenes on 2 CPU cores), "paper" (Table 1 with one
warm-up epoch) and "as printed" (Table 1 as the paper prints it).
``PRESETS["lite"].replace(epochs=2, use_bert=True)`` changes any field of
either half.

A training option is a field of :class:`Recipe` with its metadata (help,
kind of value, choices, whether a resumed run may change it, and the value
a checkpoint written before it existed trained with). From these fields,
and nowhere else, come the ``train`` command's recipe flags
(:func:`cccl_lite.cli.engine.add_train_arguments`), the resume check
(:func:`cccl_lite.engine.checkpoint.check_resumable`) and the migration of
files written before the recipe was its own object (:func:`split_settings`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

from cccl_lite.model.cccl import LITE_CENTRE_SCALE, CCCLConfig
from cccl_lite.model.loss import COHERENCE_REDUCTIONS, HybridObjective

__all__ = ["AMP_MODES", "POSITIVES", "BATCHINGS", "SELECTS", "SELECT_LABELS", "KINDS", "Recipe",
           "RunOptions", "Preset", "PRESETS", "PAPER_COHERENCE_WEIGHT", "paper_preset",
           "ABLATION_RECIPE_CHANGES", "recipe_fields", "trajectory_fields", "split_settings",
           "settings_of", "hardest_after_warmup_risk"]

AMP_MODES = ("auto", "bf16", "fp16", "off")
POSITIVES = ("image", "truth")
BATCHINGS = ("random", "siblings")
SELECTS = ("rsum", "truth_rsum")
# How log lines name each validation measure.
SELECT_LABELS = {"rsum": "R@sum", "truth_rsum": "truth-aware R@sum"}
# λ of eq 34 per dataset, Table 1 (Table 5's sweep picks the same values).
PAPER_COHERENCE_WEIGHT = {"f30k": 0.5, "coco": 0.75}

# The kinds of value a recipe field takes: each has its check here and its
# argparse type in the CLI (cccl_lite.cli.engine).
KINDS = ("positive_float", "nonnegative_float", "positive_float_or_none", "positive_int",
         "nonnegative_int", "positive_int_or_none", "epochs_or_all", "choice")
_SAME = object()


def _option(default, help: str, kind: str, choices: tuple | None = None,
            resumable: bool = False, legacy=_SAME, procedure: bool = False):
    """A :class:`Recipe` field: ``help`` (the CLI's), ``kind`` (one of
    :data:`KINDS`), ``choices``, ``resumable`` (a resumed run may change it),
    ``legacy`` (the value of a run recorded before the field existed; by
    default the field's default) and ``procedure`` (a choice of how to train,
    rather than one of Table 1's numbers: :meth:`Recipe.procedure`)."""
    assert kind in KINDS and (choices is not None) == (kind == "choice")
    return dataclasses.field(default=default, metadata={
        "help": help, "kind": kind, "choices": choices, "resumable": resumable,
        "legacy": default if legacy is _SAME else legacy, "procedure": procedure})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fits(kind: str, value, choices) -> bool:
    """Whether ``value`` is a value of ``kind``."""
    if kind == "choice":
        return value in choices
    if value is None:
        return kind in ("positive_float_or_none", "positive_int_or_none", "epochs_or_all")
    if kind.endswith("int") or kind in ("positive_int_or_none", "epochs_or_all"):
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return value >= (1 if kind.startswith("positive") else 0)
    if not _is_number(value):
        return False
    return value > 0 if kind.startswith("positive") else value >= 0


@dataclass(frozen=True)
class Recipe:
    """How a model trains: every choice that changes what training computes.

    The defaults are Table 1's (Sec. 4.2: Adam at 2e-4, × 0.1 from epoch 15,
    30 epochs, B = 128, Δ 0.2, λ 0.5 for Flickr30K with L_c summed over the
    B² pairs) with gradient clipping at norm 2 and one warm-up epoch, which
    the paper does not print (``cccl_lite.engine.departures.DEPARTURES``); eq 33's positives are the
    pairs of one image, batches a shuffle, and ``best.pt`` the best
    validation R@sum. Each field's ``metadata["help"]`` says what it does.
    """

    lr: float = _option(2e-4, "Adam's learning rate (Table 1: 2e-4)", "positive_float")
    lr_decay_epoch: int = _option(15, "lr × 0.1 from this 0-based epoch on (Sec. 4.2: 15)",
                                  "nonnegative_int")
    epochs: int = _option(30, "at most this many epochs (a resumed run may change it)",
                          "positive_int", resumable=True)
    batch_size: int = _option(128, "captions per batch and process; eq 33 takes a "
                              "caption's negatives from its batch", "positive_int")
    grad_clip: float | None = _option(2.0, "clip the gradient norm to this; none (None): "
                                      "no clipping, as printed", "positive_float_or_none")
    margin: float = _option(0.2, "Δ of eq 33 (Table 1: 0.2)", "nonnegative_float")
    coherence_weight: float = _option(0.5, "λ of eq 34 (Table 1: 0.5 for Flickr30K, 0.75 "
                                      "for MS-COCO; 0 is 'w/o SC-loss')", "nonnegative_float")
    coherence_reduction: str = _option("sum", "L_c of eq 31 summed over the B² pairs (sum, "
                                       "as printed) or divided by B (per_item)", "choice",
                                       COHERENCE_REDUCTIONS)
    warmup_epochs: int | None = _option(1, "epochs with the hinge summed over every negative "
                                        "before eq 33's hardest negative; all (None): the sum "
                                        "in every epoch", "epochs_or_all", legacy=None,
                                        procedure=True)
    positives: str = _option("image", "image: a caption's positives share its image (eq 33); "
                             "truth: every image of the batch it is true of (synthetic scenes; "
                             "cccl_lite.data.truth.SplitTruth)", "choice", POSITIVES,
                             procedure=True)
    batching: str = _option("random", "random (a shuffle), or siblings: a scene's rebound and "
                            "swapped variants share a batch (synthetic scenes; "
                            "cccl_lite.data.dataset.SiblingSampler)", "choice", BATCHINGS,
                            procedure=True)
    patience: int | None = _option(None, "stop after this many epochs without a better "
                                   "validation measure (select); none (None): every epoch",
                                   "positive_int_or_none", procedure=True)
    select: str = _option("rsum", "the validation measure that picks best.pt and drives "
                          "patience: rsum (eq 36) or truth_rsum (every image a caption is true "
                          "of counts; synthetic scenes)", "choice", SELECTS, procedure=True)
    sibling_weight: float = _option(1.0, "each negative pair of a caption with its scene's "
                                    "rebound or swapped sibling counts this many times in the "
                                    "sum over negatives (synthetic scenes; warm-up epochs only "
                                    "after a warm-up)", "nonnegative_float", procedure=True)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _fits(f.metadata["kind"], value, f.metadata["choices"]):
                want = (f"one of {', '.join(map(str, f.metadata['choices']))}"
                        if f.metadata["choices"] else f"a {f.metadata['kind'].replace('_', ' ')}")
                raise ValueError(f"recipe field {f.name}: expected {want}, got {value!r}")

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def procedure(self) -> dict:
        """{name: value} of the fields that choose how to train (warm-up,
        positives, batching, early stopping, selection, sibling weight), as
        opposed to Table 1's numbers; a study that trains one preset's numbers
        with another's procedure combines the two
        (``lite.replace(**paper.procedure())``)."""
        return {name: getattr(self, name) for name, f in recipe_fields(type(self)).items()
                if f.metadata["procedure"]}

    def objective(self) -> HybridObjective:
        """The loss of this recipe: eq 34 with its Δ, λ and L_c reduction."""
        return HybridObjective(self.margin, self.coherence_weight, self.coherence_reduction)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """A recipe from its dict; a field missing gets its legacy value (a
        run recorded before the field existed), an unknown one raises."""
        names = recipe_fields(cls)
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"Recipe: unknown fields {unknown}")
        return cls(**{name: d.get(name, f.metadata["legacy"]) for name, f in names.items()})


def recipe_fields(recipe_class=Recipe) -> dict[str, dataclasses.Field]:
    """{name: field} of the recipe's fields, in order (their metadata: see
    :func:`_option`)."""
    return {f.name: f for f in dataclasses.fields(recipe_class)}


@dataclass
class RunOptions:
    """Where and how a run trains; nothing here changes what it learns but
    the ``seed`` (the one field a resumed run must keep:
    ``metadata["trajectory"]``).

    device: "auto", "cpu", "cuda" or "cuda:K" (under torchrun, "cuda" means
    cuda:LOCAL_RANK). amp: "auto" (bf16 on a GPU that supports it, else fp16
    with a GradScaler; off on the CPU), "bf16", "fp16" (CUDA only) or "off".
    max_steps: at most this many batches per epoch (smoke runs), None for
    all. log_every: batches between progress updates (a printed line when
    there is no progress bar). quiet: no progress bar nor per-batch lines.
    resume: continue from ``out_dir/last.pt``; overwrite: start afresh even
    if it exists. deterministic: on the CPU,
    ``torch.use_deterministic_algorithms`` during training. pair_chunk: the
    memory-saving mode, at most this many (image, text) pairs of a batch
    scored at once, each block's activations recomputed in the backward pass
    (``CCCL.score``; the same loss and gradients up to float rounding, for
    the memory of one block instead of B x B pairs, at about one more
    forward pass of the per-pair work); None scores the whole batch at once.
    collapse_steps: batches in a row with flat scores (``CollapseGuard``)
    before one warning; stop_on_collapse: then stop the run (its checkpoints
    stay those of the last finished epoch; ``Trainer.collapse`` holds the
    numbers).
    """

    seed: int = dataclasses.field(default=0, metadata={"trajectory": True, "legacy": None})
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
    collapse_steps: int = 50
    stop_on_collapse: bool = False

    def __post_init__(self):
        if isinstance(self.collapse_steps, bool) or not isinstance(self.collapse_steps, int) \
                or self.collapse_steps < 1:
            raise ValueError(f"collapse_steps must be a positive int, got {self.collapse_steps!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown --amp {self.amp!r}; expected one of: {', '.join(AMP_MODES)}")
        for name in ("num_workers", "log_every", "seed"):
            if getattr(self, name) < 0:
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


def trajectory_fields(recipe_class=Recipe) -> dict[str, object]:
    """{name: legacy value} of every field a resumed run must keep: the
    recipe's fields that are not ``resumable``, and the run options marked
    ``trajectory`` (the seed)."""
    out = {n: f.metadata["legacy"] for n, f in recipe_fields(recipe_class).items()
           if not f.metadata["resumable"]}
    out.update({f.name: f.metadata["legacy"] for f in dataclasses.fields(RunOptions)
                if f.metadata.get("trajectory")})
    return out


# ---- presets ------------------------------------------------------------------------------


# Table 6's ablations that change the recipe rather than the model (the model
# records the ablation's name; cccl_lite.model.cccl.ABLATIONS lists them all).
ABLATION_RECIPE_CHANGES = {"w/o SC-loss": {"coherence_weight": 0.0}}


class Preset(NamedTuple):
    """A model and the recipe it trains with: ``config, recipe = PRESETS["lite"]``."""

    model: CCCLConfig
    recipe: Recipe

    def replace(self, **changes) -> "Preset":
        """This preset with ``changes`` to fields of the model or of the recipe
        (each name goes to the half that has it; an unknown one raises)."""
        model_names = {f.name for f in dataclasses.fields(CCCLConfig)}
        recipe_names = set(recipe_fields())
        unknown = sorted(set(changes) - model_names - recipe_names)
        if unknown:
            raise ValueError(f"unknown fields {unknown}: neither the model's (CCCLConfig) nor "
                             f"the recipe's (Recipe)")
        model = {k: v for k, v in changes.items() if k in model_names}
        recipe = {k: v for k, v in changes.items() if k in recipe_names}
        return Preset(dataclasses.replace(self.model, **model) if model else self.model,
                      self.recipe.replace(**recipe) if recipe else self.recipe)

    def fields(self) -> dict:
        """Every field of the model and of the recipe, by name."""
        return {**self.model.to_dict(), **self.recipe.to_dict()}

    def with_ablation(self, name: str) -> "Preset":
        """This preset with one Table 6 ablation: the model's switches
        (:meth:`CCCLConfig.with_ablation`) and the recipe's
        (:data:`ABLATION_RECIPE_CHANGES`)."""
        return Preset(self.model.with_ablation(name),
                      self.recipe.replace(**ABLATION_RECIPE_CHANGES.get(name, {})))


# Sized for 2 CPU cores: the synthetic scenes' 256-d region features, 12
# regions, d = P = 64; words read by the Bi-GRU of the paper's "w/o BERT"
# ablation (learned embeddings) and the box centre as two more eq 8 columns
# at the features' scale. Its recipe: B = 32, lr 5e-4 for 7 epochs, then
# 5e-5, at most 30 epochs (early stopping ends runs well before; chapter 6's
# plateau study), L_c per item, one warm-up epoch, truth positives, sibling
# batches weighted ×10, early stopping on the truth-aware R@sum. Every
# difference from the paper is a departure with its reason and evidence
# (DEPARTURES). Data without scenes (Flickr30K) needs --positives image
# --batching random --sibling-weight 1 --select rsum.
_LITE = Preset(
    CCCLConfig(region_dim=256, num_regions=12, word_dim=384, embed_dim=64, sim_dim=64,
               use_bert=False, centre_scale=LITE_CENTRE_SCALE),
    Recipe(batch_size=32, lr=5e-4, epochs=30, lr_decay_epoch=7, coherence_reduction="per_item",
           warmup_epochs=1, positives="truth", batching="siblings", patience=3,
           select="truth_rsum", sibling_weight=10.0))

PRESETS = {
    "lite": _LITE,
    # Table 1 (Flickr30K's λ; paper_preset for MS-COCO's) with VSE∞'s one
    # warm-up epoch, which the paper does not print.
    "paper": Preset(CCCLConfig(), Recipe()),
    # The paper as printed: eq 33 from the first step, no gradient clipping
    # (the paper names none), one positive per caption, random batches, the
    # best validation R@sum kept after its 30 epochs.
    "as printed": Preset(CCCLConfig(), Recipe(grad_clip=None, warmup_epochs=0)),
}


def paper_preset(dataset: str = "f30k") -> Preset:
    """The paper preset with Table 1's λ for ``dataset``: 0.5 for Flickr30K
    ("f30k"), 0.75 for MS-COCO ("coco")."""
    if dataset not in PAPER_COHERENCE_WEIGHT:
        raise ValueError(f"paper preset: unknown dataset {dataset!r}; expected one of: "
                         f"{', '.join(PAPER_COHERENCE_WEIGHT)}")
    return PRESETS["paper"].replace(coherence_weight=PAPER_COHERENCE_WEIGHT[dataset])


# ---- files written before the recipe was its own object ------------------------------------


def split_settings(config: dict, options: dict | None = None, recipe: dict | None = None
                   ) -> tuple[dict, dict, dict]:
    """(model dict, recipe dict, run options dict) of a recorded run.

    A record of this version has all three (``recipe`` given). One written
    before (checkpoint format 1, a run's ``config.json``, a shipped record,
    a study's settings) kept the recipe's numbers (lr, schedule, epochs,
    batch size, clipping, Δ, λ and its reduction) in ``config`` and its
    choices (warm-up, positives, batching, patience, select, sibling weight)
    in ``options``: they are moved to the recipe, and a field the record
    lacks gets its legacy value (:meth:`Recipe.from_dict`). Fields of
    neither kind stay where they were, for the classes to refuse."""
    options = dict(options or {})
    if recipe is not None:
        return dict(config), dict(recipe), options
    names = recipe_fields()
    recipe = {k: v for src in (config, options) for k, v in src.items() if k in names}
    return ({k: v for k, v in config.items() if k not in names}, recipe,
            {k: v for k, v in options.items() if k not in names})


def settings_of(record: dict) -> tuple[CCCLConfig, Recipe, dict]:
    """(model config, recipe, run options dict) of a checkpoint, a run's
    ``config.json`` or a shipped model's record, of this version's shape or
    the one before (:func:`split_settings`). Raises ValueError (or
    TypeError) on fields that fit neither."""
    model, recipe, run = split_settings(record["config"], record.get("options"),
                                        record.get("recipe"))
    return CCCLConfig.from_dict(model), Recipe.from_dict(recipe), run


def hardest_after_warmup_risk(recipe: Recipe) -> str | None:
    """A warning when a run of ``recipe`` will switch to eq 33's hardest negatives where the
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
    warmup_epochs, coherence_weight = recipe.warmup_epochs, recipe.coherence_weight
    coherence_reduction, batch_size = recipe.coherence_reduction, recipe.batch_size
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
