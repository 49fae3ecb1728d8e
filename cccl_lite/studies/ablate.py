"""Table 6 on the synthetic scenes: train the full model and every ablation, record R@K.

Taught in chapter 7 ("Ablations"). ``python -m cccl_lite ablate --data FILE
--results cccl_lite/results/ablations.json`` trains the lite CCCL and each row of
the paper's Table 6 (:data:`cccl_lite.model.cccl.ABLATIONS`), each with several
seeds (``--seeds``, default 3), all with one recipe: the lite preset's
(``cccl_lite.engine.recipes.PRESETS``), which stops a run once its validation
measure (the truth-aware R@sum: ``Recipe.select``) has not improved
for a few epochs (the plateau rule). Each run's best validation
checkpoint is tested on the test split: R@K (eqs 35-36), the truth-aware R@K
and the binding / relation sibling accuracies
(:func:`cccl_lite.studies.pretrained.measure`). One JSON file holds every run, the
mean and standard deviation of each row over its seeds (:func:`summarize`),
and the provenance: commit (per run too), date, machine, torch, threads,
seconds.

The results file (``--results``, by default ``OUT/ablations.json``: results
go where ``--out`` says; chapter 7 reads ``cccl_lite/results/ablations.json``, package data, so
pass that to update the book) is rewritten (atomically, under a lock) after
every run, and a rerun with the same settings skips the (row, seed) pairs it
already holds, and a run a killed study left half done continues from its
last completed epoch (its ``last.pt``), so an interrupted study loses at
most the epoch in progress and can span sessions; two processes with
disjoint ``--only`` lists can share one file. A results file of other
settings is replaced only with ``--overwrite``. Differences between rows
smaller than their seeds' spread are noise (:func:`versus_full`). A results
file written before the recipe was its own object (the recipe's numbers in
``settings["lite_config"]``) is read through :func:`current_settings`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cccl_lite.model.cccl import ABLATIONS
from cccl_lite.provenance import provenance
from cccl_lite.engine.checkpoint import load_model, resolve_config
from cccl_lite.errors import InputError, field as json_field
from cccl_lite.files import OutputError, check_output_dir, check_output_file, shared_file, slug
from cccl_lite.engine.recipes import PRESETS, Recipe, RunOptions, split_settings
from cccl_lite.engine.train import Trainer, best_record, read_log
from cccl_lite.studies import results
from cccl_lite.studies.pretrained import measure

__all__ = ["PAPER_TABLE6", "GROUPS", "METRICS", "row_names", "summarize", "welch_p",
           "versus_full", "provenance", "run_ablations", "current_settings"]

FULL = "CCCL"

# The paper's Table 6 (Flickr30K 1K test), in percent: i2t R@1, R@5, R@10, t2i R@1, R@5, R@10.
PAPER_TABLE6 = {
    "w/o V-CPC": (74.1, 92.8, 95.4, 62.8, 87.6, 91.0),
    "w/o T-CPC": (75.3, 94.4, 96.8, 63.5, 89.9, 91.7),
    "w/o CPC": (72.7, 91.6, 94.8, 61.5, 85.9, 90.1),
    "w/o POS": (76.9, 94.2, 97.2, 64.0, 90.0, 92.3),
    "w/o BERT": (76.4, 93.9, 96.8, 63.7, 89.1, 91.6),
    "w/o B-1": (77.0, 94.7, 97.1, 64.2, 90.2, 91.8),
    "w/o B-2": (70.4, 88.1, 93.8, 59.6, 86.3, 91.0),
    "w/o B-3": (71.3, 87.9, 94.9, 61.0, 88.7, 91.7),
    "w/o VSF": (75.5, 93.8, 96.7, 63.6, 89.9, 92.3),
    "w/o A-Pool": (75.9, 93.9, 96.8, 63.3, 88.8, 92.4),
    "w/o M-Pool": (76.8, 94.7, 97.2, 63.9, 89.6, 92.4),
    "w/o S-NLP": (74.7, 94.3, 96.7, 62.9, 86.8, 90.7),
    "w/o C-GRU": (76.8, 94.8, 97.3, 63.5, 88.9, 92.1),
    "w/o SC-loss": (75.7, 93.6, 97.3, 63.0, 87.9, 92.0),
    "w/o MLP": (76.6, 94.1, 97.6, 62.6, 88.7, 91.1),
    FULL: (77.2, 95.0, 97.6, 64.4, 90.2, 92.6),
}
assert set(PAPER_TABLE6) == set(ABLATIONS) | {FULL}

# Table 6's groups, in its order.
GROUPS = {
    "Context-perceived cell": ("w/o V-CPC", "w/o T-CPC", "w/o CPC", "w/o POS", "w/o BERT"),
    "Three-branch network": ("w/o B-1", "w/o B-2", "w/o B-3", "w/o VSF"),
    "Branch 1": ("w/o A-Pool", "w/o M-Pool"),
    "Branch 3": ("w/o S-NLP", "w/o C-GRU"),
    "Hybrid loss": ("w/o SC-loss", "w/o MLP"),
}
assert sum(GROUPS.values(), ()) == ABLATIONS

def same_as_full(preset: str = "lite") -> tuple[str, ...]:
    """The Table 6 ablations that change nothing in ``preset``'s model and
    recipe: the lite CCCL reads words with the Bi-GRU of "w/o BERT" already
    (chapter 11), so that row would train the full model again."""
    full = PRESETS[preset]

    def fields(p):
        return {**p.model.to_dict(), "ablation": None}, p.recipe

    return tuple(name for name in ABLATIONS
                 if fields(full.with_ablation(name)) == fields(full))


def row_names() -> list[tuple[str, str | None]]:
    """(row name, ablation or None): the full model, then every Table 6
    ablation that changes the lite config (:func:`same_as_full`)."""
    skip = same_as_full("lite")
    return [(FULL, None)] + [(name, name) for name in ABLATIONS if name not in skip]


# What a row is measured by, read from one run's entry.
METRICS = {
    "rsum": lambda e: e["test"]["rsum"],
    "truth_rsum": lambda e: e["truth"]["rsum"],
    "binding": lambda e: e["siblings"]["binding"],
    "relation": lambda e: e["siblings"]["relation"],
}


def _values(entries: list[dict], name: str, key: str) -> np.ndarray:
    """Row ``name``'s measurements of ``key`` (one of :data:`METRICS`), in seed order."""
    if key not in METRICS:
        raise ValueError(f"key must be one of {sorted(METRICS)}, got {key!r}")
    runs = sorted((e for e in entries if e["name"] == name), key=lambda e: e["seed"])
    return np.array([METRICS[key](e) for e in runs], dtype=float)


def summarize(entries: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of each row's test R@sum,
    truth-aware R@sum and binding / relation sibling accuracy (sd None for
    one seed), in :func:`row_names` order."""
    out = []
    for name, _ in row_names():
        runs = [e for e in entries if e["name"] == name]
        if not runs:
            continue
        stats = {"name": name, "seeds": sorted(e["seed"] for e in runs)}
        for key in METRICS:
            v = _values(entries, name, key)
            stats[key] = {"mean": round(float(v.mean()), 2),
                          "sd": round(float(v.std(ddof=1)), 2) if len(v) > 1 else None}
        out.append(stats)
    return out


def welch_p(a, b) -> tuple[float, float]:
    """Welch's two-sided t-test of mean(a) = mean(b) without assuming equal
    variances (Welch 1947): (p, se) with

        se = sqrt(s_a^2/n_a + s_b^2/n_b),  t = (mean(a) - mean(b)) / se,
        df = se^4 / ((s_a^2/n_a)^2/(n_a - 1) + (s_b^2/n_b)^2/(n_b - 1))

    (Welch-Satterthwaite), p = 2 P(T_df > |t|). a, b: 1-D, two values or
    more each. With no spread on either side (se = 0), p is 1 if the means
    are equal, else 0. Written out rather than ``scipy.stats.ttest_ind``,
    which warns of lost precision when one side is constant (100 % in every
    seed), a common case here; it agrees with it elsewhere (tested).
    """
    from scipy.stats import t as student_t

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    diff = float(a.mean() - b.mean())
    if se == 0:
        return (1.0 if diff == 0 else 0.0), 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(2 * student_t.sf(abs(diff) / se, df)), se


def versus_full(entries: list[dict], key: str = "rsum", alpha: float = 0.05,
                min_delta: float = 0.0) -> list[dict]:
    """Each ablation's difference from the full model in ``key`` (one of
    :data:`METRICS`), judged against the seeds' spread.

    Per row (in :func:`row_names` order, the full model left out): ``delta``,
    the row's mean over its seeds minus the full model's; ``se``, its standard
    error sqrt(s_row^2/n_row + s_full^2/n_full); ``p``, the two-sided p-value
    of Welch's t-test (unequal variances; :func:`welch_p`); and
    ``verdict``: "pending" (no run of the row), "too few seeds" (fewer than
    two on either side: no spread to judge by), "negligible" (below
    ``min_delta``), "inside the noise" (p >= ``alpha``), or "lower" /
    "higher" than the full model. With no spread on
    either side (e.g. 100 % in every seed) the verdict is "inside the noise"
    only if the means are equal. ``min_delta``: a difference smaller than
    this is "negligible" whatever p says. It matters where both sides have no
    spread: 99.65 % in two seeds against 100 % in three (2 of 577 binding
    pairs lost) has se 0 and p 0, a "difference" below what the measurement
    of an accuracy over a few hundred pairs can resolve. The lite study's
    fourteen rows at alpha 0.05 give at least one "lower" or "higher" by
    chance alone about half the time (1 - 0.95^14 = 0.51) when nothing
    differs: read them as leads, not proof.
    """
    full = _values(entries, FULL, key)
    out = []
    for name, _ in row_names()[1:]:
        row = _values(entries, name, key)
        rec = {"name": name, "seeds": len(row), "delta": None, "se": None, "p": None}
        if len(row) == 0:
            out.append({**rec, "verdict": "pending"})
            continue
        if len(full):
            diff = float(row.mean() - full.mean())
            rec["delta"] = round(diff, 2)
        if len(row) < 2 or len(full) < 2:
            out.append({**rec, "verdict": "too few seeds"})
            continue
        p, se = welch_p(row, full)
        rec["se"] = round(se, 2)
        rec["p"] = round(p, 4)
        verdict = ("negligible" if abs(diff) < min_delta
                   else "inside the noise" if p >= alpha
                   else "lower" if diff < 0 else "higher")
        out.append({**rec, "verdict": verdict})
    return out


def seeds_reaching(entries: list[dict], key: str = "relation",
                   level: float = 90.0) -> list[dict]:
    """Per row (:func:`row_names` order, rows without a run left out): how
    many of its seeds reach ``level`` in ``key`` (one of :data:`METRICS`).

    Returns ``{"name", "reached", "seeds", "values"}`` with ``values`` the
    row's measurements in seed order. A mean and a t-test hide a row whose
    seeds either learn a skill or stay at chance (100, 100, 49 has a mean of
    83 and a spread that makes every test "inside the noise"); the count of
    seeds that reach the level shows it.
    """
    out = []
    for name, _ in row_names():
        values = _values(entries, name, key)
        if len(values):
            out.append({"name": name, "reached": int((values >= level).sum()),
                        "seeds": len(values), "values": values.tolist()})
    return out


def _settings(data, epochs: int | None, max_steps: int | None) -> dict:
    data = Path(data)
    lite = PRESETS["lite"]
    return {"data": data.name, "data_bytes": data.stat().st_size, "config": "lite",
            "lite_config": lite.model.to_dict(),
            "epochs": epochs or "the lite preset's", "max_steps": max_steps,
            "recipe": lite.recipe.to_dict(),
            "rule": "the best epoch by the recipe's `select` measure on the validation "
                    "split, stopping after `patience` epochs without a better one",
            "protocol": "all test images"}


def current_settings(settings: dict) -> dict:
    """A results file's ``settings`` in this version's shape: one written
    before the recipe was its own object kept the recipe's numbers (lr,
    epochs, batch size, Δ, λ, ...) in ``lite_config`` and its choices in
    ``recipe``; they move to a whole ``recipe``
    (:func:`~cccl_lite.engine.recipes.split_settings`, a field missing gets
    its legacy value), so a finished study is still recognised as the same
    settings."""
    if not isinstance(settings, dict) or "lite_config" not in settings:
        return settings
    model, recipe, _ = split_settings(settings["lite_config"], settings.get("recipe", {}))
    return {**settings, "lite_config": model, "recipe": Recipe.from_dict(recipe).to_dict()}


def _same_settings(recorded, settings: dict) -> bool:
    """Whether a results file's recorded settings are ``settings``, read in
    this version's shape (:func:`current_settings`)."""
    return current_settings(recorded) == settings


def _key(name: str, seed: int) -> str:
    return f"{name} | seed {seed}"


def run_ablations(data, out_dir, results_path, epochs: int | None = None,
                  max_steps: int | None = None, seeds: int = 3,
                  only: list[str] | None = None, log=print, overwrite: bool = False) -> dict:
    """Train and test every row (see :func:`row_names`) with seeds 0..seeds-1;
    return the results dict also written to ``results_path``: {"settings",
    "provenance", "entries": [{name, ablation, seed, val_rsum, best_epoch,
    last_epoch, test, truth, siblings, seconds, commit}], "summary"
    (:func:`summarize`)}.

    Every run trains with the lite preset's recipe (``cccl_lite.engine.recipes.PRESETS``:
    at most ``epochs`` epochs, default the preset's, stopping early on
    its validation measure) and is tested with its best validation checkpoint.
    Seeds run outermost (every row with seed 0 first), and each (row, seed)
    already in ``results_path`` under the same settings is kept, not rerun,
    so the study resumes where it stopped. ``only``: just these row names.
    Several processes (each its own ``only``) may share one results file.
    A ``results_path`` of other settings (or unreadable) raises
    :class:`cccl_lite.files.OutputError` before any training, unless
    ``overwrite``: then it is replaced.
    """
    results_path = check_output_file(results_path, overwrite=True, what="results file")
    check_output_dir(out_dir, "folder of the training runs (--out)")
    if not Path(data).is_file():
        raise FileNotFoundError(f"{data}: no such data file")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    settings = _settings(data, epochs, max_steps)
    rows = row_names()
    names = [r[0] for r in rows]
    unknown = set(only or ()) - set(names)
    if unknown:
        raise ValueError(f"unknown row(s) {sorted(unknown)}; expected some of: {names}")
    done = {}
    if results_path.exists():
        old = results.held(results_path, settings, _same_settings)
        if old is not None:
            done = {_key(e["name"], e["seed"]): e for e in _checked_entries(old, results_path)}
        elif not overwrite:
            what = results.what_is(results_path, "Table 6 study", settings, current_settings)
            raise OutputError(f"{results_path}: holds {what}; pass --overwrite to replace it, "
                              f"or write to another --results / --out")
        else:
            log(f"{results_path}: other settings; starting afresh (--overwrite)")
            with shared_file(results_path):
                _write(results_path, settings, {})
    t_all = time.perf_counter()
    cache: dict = {}  # the test split's truth and sibling pairs, computed once
    for seed in range(seeds):
        for name, ablation in rows:
            if (only and name not in only) or _key(name, seed) in done:
                continue
            t0 = time.perf_counter()
            config, recipe = resolve_config("lite", data, ablation,
                                            **({"epochs": epochs} if epochs else {}))
            run_dir = Path(out_dir) / f"{slug(name)}-seed{seed}"
            trainer = _trainer(config, recipe, data, run_dir, seed, max_steps, log)
            best = trainer.fit()
            model, config, vocab = load_model(best)
            history = read_log(run_dir)
            best_rec = best_record(history)
            with torch.no_grad():
                measured = measure(model, config, vocab, data, cache=cache)
            entry = {
                "name": name, "ablation": ablation, "seed": seed,
                "val_rsum": round(best_rec["val"]["rsum"], 2),
                **({"val_truth_rsum": round(best_rec["val_truth"]["rsum"], 2)}
                   if "val_truth" in best_rec else {}),
                "best_epoch": best_rec["epoch"],
                "last_epoch": history[-1]["epoch"], **measured,
                "seconds": round(time.perf_counter() - t0, 1),
                **({"resumed_from_epoch": trainer.start_epoch} if trainer.start_epoch else {}),
                "commit": provenance()["commit"],
            }
            log(f"{name}, seed {seed}: test R@sum {entry['test']['rsum']:.1f}, siblings "
                f"{entry['siblings']} ({entry['seconds']:.0f} s)")
            with shared_file(results_path):
                _merge(results_path, settings, done)
                done[_key(name, seed)] = entry
                _write(results_path, settings, done)
    with shared_file(results_path):
        _merge(results_path, settings, done)
        result = _write(results_path, settings, done)
    log(f"{len(done)} runs in {results_path} ({time.perf_counter() - t_all:.0f} s this run)")
    return result


def _trainer(config, recipe, data, run_dir: Path, seed: int, max_steps, log) -> Trainer:
    """The Trainer of one (row, seed): it continues the run's ``last.pt``
    when an interrupted study left one of this very run (the trainer's
    resume checks: config, recipe, data; exact on the CPU), so a killed
    study loses at most the epoch in progress; otherwise it trains afresh
    (``overwrite``), saying why when a ``last.pt`` was there."""
    options = dict(seed=seed, device="cpu", max_steps=max_steps, quiet=True)
    if (run_dir / "last.pt").is_file():
        try:
            trainer = Trainer(config, recipe, data, run_dir, RunOptions(**options, resume=True))
        except InputError as e:
            log(f"{run_dir}: training afresh, its last.pt is not this run's ({e})")
        else:
            log(f"{run_dir}: resuming from epoch {trainer.start_epoch}")
            return trainer
    return Trainer(config, recipe, data, run_dir, RunOptions(**options, overwrite=True))


def _merge(path: Path, settings: dict, done: dict) -> None:
    """Add to ``done`` the entries another process (``--only``) wrote to
    ``path`` meanwhile; call under :func:`~cccl_lite.files.shared_file`."""
    old = results.held(path, settings, _same_settings)
    if old is not None:
        for e in _checked_entries(old, path):
            done.setdefault(_key(e["name"], e["seed"]), e)


def _checked_entries(content: dict, path: Path) -> list[dict]:
    """A results file's entries, checked for every field the study reads back
    (:func:`summarize`, the rows' order): a hand-edited file fails with one
    line naming it and the field (issue 29 #16), not a KeyError."""
    names = {name for name, _ in row_names()}
    entries = json_field(content, "entries", path, kind=list)
    for i, e in enumerate(entries):
        where = f"entries[{i}]"
        name = json_field(e, "name", path, where, str)
        if name not in names:
            raise InputError(f"{path}: {where}: name {name!r} is no row of the study; "
                             f"expected one of: {', '.join(sorted(names))}")
        json_field(e, "seed", path, where, int)
        json_field(e, "seconds", path, where, (int, float))
        for group, keys in (("test", ("rsum",)), ("truth", ("rsum",)),
                            ("siblings", ("binding", "relation"))):
            for key in keys:
                json_field(json_field(e, group, path, where, dict), key, path,
                           f"{where}: {group}", (int, float))
    return entries


def _write(path: Path, settings: dict, done: dict) -> dict:
    order = {name: i for i, (name, _) in enumerate(row_names())}
    entries = sorted(done.values(), key=lambda e: (e["seed"], order[e["name"]]))
    return results.write(path, {"settings": settings, "entries": entries,
                                "summary": summarize(entries),
                                "seconds": round(sum(e["seconds"] for e in entries), 1)})
