"""Sec. 4.4's sensitivity analysis scaled to the lite model: the MLP width P and λ.

Taught in chapter 7. The paper varies two hyper-parameters (Sec. 4.4): the
similarity vectors' width P of eq 28's MLP (the VSF's output, ``sim_dim``;
Figs 4-5, P in {1, 64, 128, 256, 512}, 256 chosen, d = 1024) and the
coherence term's weight λ of eq 34 (``coherence_weight``; Table 5, λ in
{0.25, 0.5, 0.75, 1.0}, 0.5 chosen for Flickr30K). Here the centre point is
the lite preset (``PRESETS["lite"]``: P = 64, λ = 0.5 with L_c per
item; its procedure with the sum over negatives in every
epoch, as it was when the study ran), and every other row changes ONE of the
two: P in {1, P/4, P/2, 2P} (the paper's grid relative to its chosen P)
at the lite λ, and λ in {0, 0.25, 0.75, 1.0} at the lite P. (The paper swept
P with λ = 0 first; this grid holds λ at the lite value instead, so that
each row differs from the centre in one thing.)

Each row is run by the diagnosis runner (:func:`cccl_lite.studies.diagnose.run_diagnosis`,
same budget: ``--epochs`` with no learning-rate drop, best validation epoch
tested), which records test / truth-aware R@K, sibling accuracies and the
rest per row and seed into one results file, rewritten atomically after
each row; a rerun with the same settings skips the rows it holds.
``python -m cccl_lite diagnose --rows sensitivity --data FILE --results
cccl_lite/results/sensitivity.json --seeds 0 1`` runs every point at seed 0
(centre first), then every point at seed 1.
"""

from __future__ import annotations

from cccl_lite.studies.diagnose import ROW_BASE, Row, run_diagnosis
from cccl_lite.engine.recipes import PRESETS

__all__ = ["STUDY", "LITE_P", "LITE_LAMBDA", "P_VALUES", "LAMBDA_VALUES", "CENTRE", "ROWS",
           "run_sensitivity", "point", "sweep"]

STUDY = "sensitivity"
_LITE = PRESETS["lite"]
LITE_P = _LITE.model.sim_dim
LITE_LAMBDA = _LITE.recipe.coherence_weight
# The paper's P grid {1, 64, 128, 256, 512} around its chosen 256 is
# {1, P/4, P/2, P, 2P}; its λ grid {0.25, 0.5, 0.75, 1.0}, plus 0 (the
# coherence term off, Table 6's "w/o SC-loss").
P_VALUES = (1, LITE_P // 4, LITE_P // 2, LITE_P, 2 * LITE_P)
LAMBDA_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)

# The lite preset as a diagnosis row: undo what the runner's ROW_BASE sets
# (the paper's L_c sum, no centre columns, MiniLM vectors) with the preset's
# own values, and name P and λ explicitly so every record holds its point.
_CENTRE_CONFIG = {**{k: _LITE.fields()[k] for k in ROW_BASE},
                  "sim_dim": LITE_P, "coherence_weight": LITE_LAMBDA}
# The recipe the study was recorded with: the lite one of its day, the sum over
# negatives in every epoch (the lite preset has since moved to one warm-up
# epoch, then eq 33: chapter 6's plateau study).
_CENTRE_OPTIONS = {**_LITE.recipe.procedure(), "warmup_epochs": None}


def _row(name: str, question: str, **change) -> Row:
    return Row(name, question, {**_CENTRE_CONFIG, **change}, dict(_CENTRE_OPTIONS),
               against=None if not change else CENTRE.name)


CENTRE = Row(f"centre (P {LITE_P}, λ {LITE_LAMBDA:g})", "the lite preset (its config "
             "and recipe) at the study's budget: both sweeps pass through it",
             dict(_CENTRE_CONFIG), dict(_CENTRE_OPTIONS))

# Run order: the centre, the paper's P grid but 1, the λ grid, then P = 1
# (a one-number similarity vector, the paper's extreme).
ROWS = (
    CENTRE,
    *(_row(f"P {p}", f"eq 28's similarity vectors {p} wide instead of {LITE_P}", sim_dim=p)
      for p in P_VALUES if p not in (1, LITE_P)),
    *(_row(f"λ {lam:g}", f"eq 34's coherence weight {lam:g} instead of {LITE_LAMBDA:g}",
           coherence_weight=lam) for lam in LAMBDA_VALUES if lam != LITE_LAMBDA),
    *(_row(f"P {p}", f"eq 28's similarity vectors {p} wide instead of {LITE_P}", sim_dim=p)
      for p in P_VALUES if p == 1),
)


def run_sensitivity(data, out_dir, results_path, epochs: int = 3, seed: int = 0,
                    seeds: list[int] | None = None, max_steps: int | None = None,
                    only: list[str] | None = None, overwrite: bool = False,
                    rerun: bool = False, log=print) -> dict:
    """Run :data:`ROWS` (or ``only`` those) through
    :func:`~cccl_lite.studies.diagnose.run_diagnosis`, seed by seed: every point at
    the first of ``seeds`` (default [``seed``]) before any at the next, so
    an interrupted study has the most points at one seed. Returns the
    results dict, also in ``results_path`` (settings with ``"study":
    "sensitivity"``: a diagnosis file is never mistaken for it)."""
    out = None
    for s in list(dict.fromkeys(seeds or [seed])):
        out = run_diagnosis(data, out_dir, results_path, epochs=epochs, seed=seed,
                            max_steps=max_steps, only=only, overwrite=overwrite, rerun=rerun,
                            log=log, seeds=[s], rows=ROWS, study=STUDY)
    return out


def point(record: dict) -> tuple[int, float]:
    """(P, λ) of a results record (its ``config`` names both)."""
    return int(record["config"]["sim_dim"]), float(record["config"]["coherence_weight"])


def sweep(results: dict, axis: str) -> list[tuple[float, list[dict]]]:
    """The records along one sweep, ``axis`` "P" (λ at the lite value) or "λ"
    (P at the lite value): [(value, [record per seed run])], by value, for the
    values with at least one record; the centre's records are in both."""
    if axis not in ("P", "λ"):
        raise ValueError(f"sweep: axis should be 'P' or 'λ', got {axis!r}")
    by_value: dict[float, list[dict]] = {}
    for rec in results.get("rows", []):
        p, lam = point(rec)
        if axis == "P" and lam == LITE_LAMBDA:
            by_value.setdefault(p, []).append(rec)
        elif axis == "λ" and p == LITE_P:
            by_value.setdefault(lam, []).append(rec)
    return sorted(by_value.items())
