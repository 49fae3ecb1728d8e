"""Eq 33 after a warm-up against the lite recipe, each run trained to its plateau.

Taught in chapter 6 (the lite recipe and its departures from the paper).
Chapter 11's diagnosis found, at its three-epoch budget, that eq 33's
hardest negatives train the lite model after one warm-up epoch of the sum
over negatives, with λ 0 or with L_c per item (rows "warm-up 1, hardest,
λ 0" and "warm-up 1, hardest, L_c per item"). Whether the lite recipe should
then use them is a question for runs that reach their plateau: this study
trains the lite preset (its config and recipe: L_c per item, the truth as
positives, sibling batches, siblings weighted in the summed epochs, early
stopping on the truth-aware R@sum) with the preset's learning-rate drop, an
epoch cap well above where patience stops it, and three rows:

* "lite recipe": the sum over negatives in every epoch (the lite recipe when
  the study started);
* "lite, warm-up 1, eq 33": one epoch of the sum, then eq 33 (L_c per item,
  λ as the preset): the lite recipe since, and the shipped model's;
* "lite, warm-up 1, eq 33, λ 0": the same without the coherence term.

Each row is run by the diagnosis runner (:func:`cccl_lite.studies.diagnose.run_diagnosis`),
which records test and truth-aware R@K, sibling accuracies, the win rate per
epoch and the last epoch trained (:func:`cccl_lite.engine.train.stopped_on_patience`
reads how a run ended), per row and seed, into one results file
rewritten atomically after each row (a rerun with the same settings skips
the rows it holds). ``python -m cccl_lite diagnose --rows plateau --data FILE
--results cccl_lite/results/plateau.json --epochs 30 --seeds 0 1 2``.
"""

from __future__ import annotations

from cccl_lite.studies.diagnose import ROW_BASE, Row, run_diagnosis
from cccl_lite.engine.recipes import PRESETS

__all__ = ["STUDY", "EPOCH_CAP", "LITE", "WARM_UP", "WARM_UP_LAMBDA_0", "ROWS", "run_plateau"]

STUDY = "plateau"
# Room for patience: the lite runs of Table 6 stopped between epoch 4 and the
# old cap of 10; with the learning rate cut at the preset's epoch, a run that
# has not improved for `patience` epochs stops long before 30.
EPOCH_CAP = 30
_LITE = PRESETS["lite"]
# The lite preset as a diagnosis row: the preset's own values for what the
# runner's ROW_BASE sets, and the preset's learning-rate drop (the runner's
# default has none within its short budget).
_CONFIG = {**{k: _LITE.fields()[k] for k in ROW_BASE},
           "lr_decay_epoch": _LITE.recipe.lr_decay_epoch}
# The lite procedure the study started from, with the negatives named in every
# row: the rows keep their meaning (and their recorded results their match)
# whatever the lite preset's default becomes.
_OPTIONS = {**_LITE.recipe.procedure(), "warmup_epochs": None}

LITE = Row("lite recipe", "the lite preset as the study found it: the sum over negatives "
           "in every epoch", dict(_CONFIG), dict(_OPTIONS))
WARM_UP = Row("lite, warm-up 1, eq 33", "the lite preset with eq 33's hardest negatives "
              "after one warm-up epoch of the sum (L_c per item)", dict(_CONFIG),
              {**_OPTIONS, "warmup_epochs": 1}, against=LITE.name)
WARM_UP_LAMBDA_0 = Row("lite, warm-up 1, eq 33, λ 0", "the same without the coherence term",
                       {**_CONFIG, "coherence_weight": 0.0}, {**_OPTIONS, "warmup_epochs": 1},
                       against=WARM_UP.name)
ROWS = (LITE, WARM_UP, WARM_UP_LAMBDA_0)


def run_plateau(data, out_dir, results_path, epochs: int = EPOCH_CAP, seed: int = 0,
                seeds: list[int] | None = None, max_steps: int | None = None,
                only: list[str] | None = None, overwrite: bool = False,
                rerun: bool = False, log=print) -> dict:
    """Run :data:`ROWS` (or ``only`` those) through
    :func:`~cccl_lite.studies.diagnose.run_diagnosis`, seed by seed (every row at the
    first of ``seeds`` before any at the next). ``epochs`` is the cap; the
    recipe's patience ends each run. Returns the results dict, also in
    ``results_path`` (settings with ``"study": "plateau"``)."""
    out = None
    for s in list(dict.fromkeys(seeds or [seed])):
        out = run_diagnosis(data, out_dir, results_path, epochs=epochs, seed=seed,
                            max_steps=max_steps, only=only, overwrite=overwrite, rerun=rerun,
                            log=log, seeds=[s], rows=ROWS, study=STUDY,
                            lr_decay=f"x0.1 from epoch {_LITE.recipe.lr_decay_epoch} (0-based)")
    return out

