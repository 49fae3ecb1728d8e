"""The lite preset against the paper as printed: each departure, its reason and its evidence.

Taught in chapter 6 ("The lite recipe against the paper"). :data:`DEPARTURES`
names every way the lite preset (``cccl_lite.engine.recipes.PRESETS["lite"]``)
differs from ``PRESETS["as printed"]``, with why and the recorded pair of
diagnosis rows that measured it; :func:`departures` derives a run's list from
its model and recipe and refuses a difference no entry names. ``ship`` writes
the list into every shipped record (``data_scripts/record_departures.py`` adds
it to one shipped before).
"""

from __future__ import annotations

from dataclasses import dataclass

from cccl_lite.engine.recipes import PRESETS, Recipe
from cccl_lite.model.cccl import CCCLConfig

__all__ = ["Departure", "DEPARTURES", "departures"]


@dataclass(frozen=True)
class Departure:
    """One way the lite preset differs from the paper as printed: the
    ``fields`` of :class:`~cccl_lite.model.cccl.CCCLConfig` or :class:`Recipe`
    it sets otherwise, ``why``, and the recorded evidence: ``evidence`` is
    ``(results file, row, row it changes one thing of)`` in
    ``cccl_lite/results/`` (a diagnosis-runner file), or None where the
    reason is the budget or a reading, which ``why`` then states."""

    what: str
    fields: tuple[str, ...]
    why: str
    evidence: tuple[str, str, str] | None = None


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


def departures(model, recipe) -> list[dict]:
    """The :data:`DEPARTURES` a run of ``model`` (a CCCLConfig or its dict)
    trained with ``recipe`` (a Recipe or its dict) makes from the paper as
    printed (``PRESETS["as printed"]`` with the run's λ): each as {"what",
    "fields": {field: [paper, run]}, "why", "evidence"}, for the departures
    where at least one field differs. A field that differs from the paper
    but that no departure names raises ValueError: the table must list every
    departure (the Table 6 ablation switches, ``ablation`` and the ``use_*``
    flags it sets, are the ablation's, and ``vocab_size`` is the data's)."""
    model = model.to_dict() if isinstance(model, CCCLConfig) else dict(model)
    recipe = recipe.to_dict() if isinstance(recipe, Recipe) else dict(recipe)
    printed = PRESETS["as printed"].replace(coherence_weight=recipe.get("coherence_weight", 0.5))
    paper = {**printed.model.to_dict(), **printed.recipe.to_dict()}
    run = {**model, **recipe}
    named = {f for d in DEPARTURES for f in d.fields}
    ablation_fields = {"ablation", "vocab_size"} | {f for f in model if f.startswith("use_")
                                                    and f != "use_bert"}
    unnamed = sorted(f for f in set(run) - named - ablation_fields
                     if f in paper and run[f] != paper[f])
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
