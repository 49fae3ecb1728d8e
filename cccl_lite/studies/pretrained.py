"""The trained lite CCCL that ships with the package, and how it was made.

Chapters 4, 6, 8 and 10 inspect a trained model; training one takes minutes
of CPU, too long for a notebook cell on a busy machine. So the repository
holds one (``cccl_lite/assets/``, about 1 MB) with a JSON of its provenance:
the commit and the exact recipe (config and training options) it was trained
with, the data it was trained on (the synthetic scenes' size and seed, which
regenerate the same file byte for byte), its validation curve, and its test
recalls and sibling accuracies as measured when it was shipped.

* :func:`load_pretrained` loads it (CPU or GPU); :func:`provenance` reads
  the JSON.
* :func:`ship` turns a finished run (``python -m cccl_lite train ... --out
  DIR``) into the shipped pair, measuring on the test split of the data it was
  trained on; ``python -m cccl_lite ship --run-dir DIR --data FILE`` on the
  command line. It never replaces the shipped files without ``overwrite``,
  and the record names the model's sha256 (``model_sha256``), which
  :func:`provenance` and :func:`load_pretrained` check: a ship interrupted
  between its two files is refused, never read as the other model's record.

``python -m cccl_lite evaluate --checkpoint cccl_lite/assets/<name>.pt --data
data/scenes-small-seed0.h5 --split test`` reproduces the recorded recalls on
freshly made scenes (``tests/test_pretrained.py`` checks it).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from cccl_lite import files
from cccl_lite.data.difficulty import hard_negative_pairs, sibling_accuracy
from cccl_lite.data.truth import SplitTruth
from cccl_lite.engine.checkpoint import (data_changes, data_identity, load_checkpoint, load_model,
                                         make_reader, save_atomic)
from cccl_lite.engine.departures import departures
from cccl_lite.engine.evaluate import evaluate_split
from cccl_lite.engine.metrics import KEYS, recall_at_k, truth_recall_at_k
from cccl_lite.engine.recipes import settings_of
from cccl_lite.errors import InputError, field, read_json
from cccl_lite.provenance import provenance as where

__all__ = ["ASSET_DIR", "NAME", "FIRST_RECIPE", "checkpoint_path", "provenance",
           "load_pretrained", "measure_scores", "measure_sims", "measure", "ship"]

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"
NAME = "lite-scenes-small-seed0"
# The model the first lite recipe made (MiniLM's frozen vectors, eq 8 as
# printed, siblings not weighted; relations at chance): chapter 11 probes it
# to show where relations were lost.
FIRST_RECIPE = "lite-scenes-small-seed0-recipe1"
# What a shipped checkpoint keeps of best.pt: enough for load_model, no optimizer.
_KEEP = ("format", "kind", "config", "recipe", "options", "vocab", "world_size", "epoch", "step",
         "best_rsum", "best_epoch", "val", "model")


def checkpoint_path(name: str = NAME, folder: Path | None = None) -> Path:
    return Path(folder or ASSET_DIR) / f"{name}.pt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checked_record(name: str, folder: Path | None) -> dict:
    """The record ``name.json``, after checking that ``name.pt`` is the model
    it describes (its ``model_sha256``): a ship killed between writing the
    model and its record leaves a new model beside the old record (issue 29
    #6), whose recalls would then be reported for the wrong weights."""
    path = checkpoint_path(name, folder)
    record_path = path.with_suffix(".json")
    for p in (path, record_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no shipped model of that name")
    record = read_json(record_path, "shipped model's record")
    want = record.get("model_sha256") if isinstance(record, dict) else None
    if want is not None and _sha256(path) != want:
        raise InputError(f"{path}: is not the model its record {record_path} describes (sha256 "
                         f"differs from model_sha256: a ship was interrupted?); ship it again "
                         f"with --overwrite")
    return record


def provenance(name: str = NAME, folder: Path | None = None) -> dict:
    """The shipped model's provenance JSON (see the module docstring), checked
    to describe the shipped ``.pt`` (its ``model_sha256``)."""
    return _checked_record(name, folder)


def load_pretrained(device="cpu", name: str = NAME, folder: Path | None = None):
    """(model in eval mode, config, checkpoint path) of the shipped lite CCCL,
    checked to be the model its record describes."""
    _checked_record(name, folder)
    path = checkpoint_path(name, folder)
    model, config, _ = load_model(path, device=device)
    return model.eval(), config, path


def measure_scores(model, config, vocab, data, split: str = "test", cache: dict | None = None):
    """(record, sims, truth, caption_image) of ``model`` on a split: the record
    holds standard and truth-aware R@K and the sibling accuracies; sims
    (N_img, N_cap) numpy scores; truth the split's (N_img, N_cap) caption
    truth. ``cache``: a dict kept across calls on the same data and split, so
    that the truth matrix and the sibling pairs are computed once."""
    reader = make_reader(data, split, config, vocab)
    recalls, sims = evaluate_split(model, reader)
    sims = np.asarray(sims)
    record, truth = measure_sims(sims, reader.caption_image, data, split, cache, recalls)
    return record, sims, truth, reader.caption_image


def measure_sims(sims: np.ndarray, caption_image, data, split: str = "test",
                 cache: dict | None = None, recalls: dict | None = None) -> tuple[dict, np.ndarray]:
    """(record, truth) of any scorer's (N_img, N_cap) scores on a split: the
    record of :func:`measure_scores` ("test" R@K, from ``recalls`` when given,
    else :func:`cccl_lite.engine.metrics.recall_at_k` with the split's captions per
    image; "truth" R@K; "siblings" accuracies), truth the (N_img, N_cap)
    caption truth. ``cache`` as in :func:`measure_scores`."""
    cache = {} if cache is None else cache
    if recalls is None:
        recalls = recall_at_k(sims, len(caption_image) // sims.shape[0])
    if "truth" not in cache:
        t = SplitTruth(data, split)
        cache["truth"] = t.truth(np.arange(t.n_images), np.arange(t.n_captions))
        cache["pairs"] = hard_negative_pairs(data, split)
    truth, pairs = cache["truth"], cache["pairs"]
    record = {
        "test": {k: round(float(recalls[k]), 2) for k in KEYS},
        "truth": {k: round(v, 2) for k, v in truth_recall_at_k(sims, truth).items()},
        "siblings": {k: round(v, 2) for k, v in sibling_accuracy(
            sims, pairs, caption_image).items()},
    }
    return record, truth


def measure(model, config, vocab, data, split: str = "test", cache: dict | None = None) -> dict:
    """Standard and truth-aware R@K and sibling accuracies of ``model`` on a split
    (the record of :func:`measure_scores`)."""
    return measure_scores(model, config, vocab, data, split, cache)[0]


def ship(run_dir, data, folder: Path | None = None, name: str = NAME,
         overwrite: bool = False, trained_commit: str | None = None) -> dict:
    """Copy ``run_dir/best.pt`` (model and config only) to ``folder/name.pt`` and
    write ``folder/name.json``: its provenance and test measurements.

    "trained": the provenance the run wrote to its ``config.json`` (runs
    from before that was recorded: ``trained_commit``, the commit it was
    trained from); "provenance": where and when it was shipped and measured;
    "model_sha256": the shipped ``.pt``'s, checked when it is loaded.
    Before anything is written: ``data`` must be the data the run trained on
    (best.pt's record of them), and the run's config.json and log.jsonl must
    hold the fields read here (else one line naming the file and field).
    """
    run_dir, data = Path(run_dir), Path(data)
    if not name or name in (".", "..") or Path(name).name != name:
        raise InputError(f"--name {name!r}: expected a plain file name (no folder part); "
                         f"--folder says where the shipped model goes")
    dest = checkpoint_path(name, folder)
    record_path = dest.with_suffix(".json")
    files.check_output_dir(dest.parent, "folder of the shipped model (--folder)")
    for p in (dest, record_path):
        if p.exists() and not overwrite:
            # InputError: the command line prints it as one line.
            raise InputError(f"{p}: exists; pass --overwrite to replace the shipped model")
    best = run_dir / "best.pt"
    ckpt = load_checkpoint(best)
    info, log = _read_run(run_dir)
    try:  # a run of this version, or one from before the recipe was its own object
        trained_config, recipe, options = settings_of(info)
    except (TypeError, ValueError) as e:
        raise InputError(f"{run_dir / 'config.json'}: its config or recipe does not fit this "
                         f"cccl_lite ({e})") from None
    _check_trained_on(ckpt, run_dir, data)
    model, config, vocab = load_model(best)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        measured = measure(model, config, vocab, data)
    with h5py.File(data, "r") as f:
        scenes = {"size": str(f.attrs.get("size", "")), "seed": int(f.attrs.get("seed", -1))}
    record = {
        "name": name,
        "provenance": where(),
        "trained": info.get("provenance") or {"commit": trained_commit},
        "data": {"file": data.name, **scenes,
                 "make": f"python data_scripts/make_synthetic.py --out {data.name} "
                         f"--seed {scenes['seed']} --size {scenes['size']} && "
                         f"python data_scripts/encode_words.py {data.name}"},
        "config": trained_config.to_dict(), "recipe": recipe.to_dict(), "options": options,
        # How this run differs from the paper as printed, each with its evidence.
        "departures": departures(trained_config, recipe),
        "best_epoch": ckpt["best_epoch"], "epochs_trained": log[-1]["epoch"],
        "train_seconds": round(sum(r["seconds"] for r in log), 1),
        "curve": [{"epoch": r["epoch"], "negatives": r["negatives"],
                   "loss": round(r["losses"]["total"], 4),
                   "alignment": round(r["losses"]["alignment"], 4),
                   "coherence": round(r["losses"]["coherence"], 4),
                   "val_rsum": round(r["val"]["rsum"], 2),
                   **({"val_truth_rsum": round(r["val_truth"]["rsum"], 2)}
                      if "val_truth" in r else {})} for r in log],
        **measured,
        "measure_seconds": round(time.perf_counter() - t0, 1),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The model first, then its record naming the model's sha256: a ship
    # killed between the two leaves a pair that provenance() and
    # load_pretrained() refuse (issue 29 #6), never one that silently
    # reports another model's recalls.
    save_atomic({k: ckpt[k] for k in _KEEP if k in ckpt}, dest)
    record["model_sha256"] = _sha256(dest)
    files.write_text_atomic(json.dumps(record, indent=1, ensure_ascii=False) + "\n",
                            record_path)
    return record


# What ship reads of each log line (train's log.jsonl, module docstring of
# cccl_lite.engine.train); a hand-edited or truncated log fails naming the field.
_LOG_FIELDS = {"epoch": int, "negatives": str, "losses": dict, "val": dict,
               "seconds": (int, float)}


def _read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(config.json, log.jsonl's records) of a finished run, checked for the
    fields ship reads: one line naming the file and field otherwise."""
    info_path, log_path = run_dir / "config.json", run_dir / "log.jsonl"
    info = read_json(info_path, "run's config.json")
    for key in ("config", "options"):
        field(info, key, info_path, kind=dict)
    try:
        lines = log_path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{log_path}: no such file; is {run_dir} a training run?") from None
    log = []
    for i, ln in enumerate(lines, 1):
        try:
            rec = json.loads(ln)
        except ValueError:
            raise InputError(f"{log_path}: line {i} is not a JSON record (cut short?)") from None
        for key, kind in _LOG_FIELDS.items():
            field(rec, key, log_path, f"line {i}", kind)
        for key in ("total", "alignment", "coherence"):
            field(rec["losses"], key, log_path, f"line {i}: losses", (int, float))
        field(rec["val"], "rsum", log_path, f"line {i}: val", (int, float))
        log.append(rec)
    # train writes an epoch's line before its checkpoints, and resume trims a
    # line whose checkpoints never came (a full disk, a kill): so does ship.
    last = run_dir / "last.pt"
    if last.exists():
        done = field(load_checkpoint(last), "epoch", last, kind=int)
        log = [r for r in log if r["epoch"] <= done]
    if not log:
        raise InputError(f"{log_path}: no epoch recorded; ship needs a run that finished at "
                         f"least one epoch")
    return info, log


def _check_trained_on(ckpt: dict, run_dir: Path, data: Path) -> None:
    """Refuse to measure a run on data other than those it trained on (issue
    29 #7): the record would pair its recalls with the wrong scenes. Compared
    as resume compares them (:func:`cccl_lite.engine.checkpoint.data_changes`): every
    field of the data's identity but its path."""
    if not data.is_file():
        raise InputError(f"--data {data}: no such data file")
    diff = data_changes(ckpt, data_identity(data))  # empty for a checkpoint that recorded none
    if diff:
        raise InputError(f"--data {data}: {run_dir} was trained on other data "
                         f"({ckpt['data'].get('path')}: {'; '.join(diff)}); ship it with the "
                         f"data it was trained on")
