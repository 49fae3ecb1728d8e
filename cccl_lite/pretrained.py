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
  command line. It never replaces the shipped files without ``overwrite``.

``python -m cccl_lite evaluate --checkpoint cccl_lite/assets/<name>.pt --data
data/scenes-small-seed0.h5 --split test`` reproduces the recorded recalls on
freshly made scenes (``tests/test_pretrained.py`` checks it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

__all__ = ["ASSET_DIR", "NAME", "FIRST_RECIPE", "checkpoint_path", "provenance",
           "load_pretrained", "measure_scores", "measure", "ship"]

ASSET_DIR = Path(__file__).resolve().parent / "assets"
NAME = "lite-scenes-small-seed0"
# The model the first lite recipe made (MiniLM's frozen vectors, eq 8 as
# printed, siblings not weighted; relations at chance): chapter 5 probes it
# to show where relations were lost.
FIRST_RECIPE = "lite-scenes-small-seed0-recipe1"
RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
# What a shipped checkpoint keeps of best.pt: enough for load_model, no optimizer.
_KEEP = ("format", "kind", "config", "options", "vocab", "world_size", "epoch", "step",
         "best_rsum", "best_epoch", "val", "model")


def checkpoint_path(name: str = NAME, folder: Path | None = None) -> Path:
    return Path(folder or ASSET_DIR) / f"{name}.pt"


def provenance(name: str = NAME, folder: Path | None = None) -> dict:
    """The shipped model's provenance JSON (see the module docstring)."""
    path = checkpoint_path(name, folder).with_suffix(".json")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no shipped model of that name")
    return json.loads(path.read_text())


def load_pretrained(device="cpu", name: str = NAME, folder: Path | None = None):
    """(model in eval mode, config, checkpoint path) of the shipped lite CCCL."""
    from .checkpoint import load_model

    path = checkpoint_path(name, folder)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no shipped model of that name")
    model, config, _ = load_model(path, device=device)
    return model.eval(), config, path


def measure_scores(model, config, vocab, data, split: str = "test", cache: dict | None = None):
    """(record, sims, truth, caption_image) of ``model`` on a split: the record
    holds standard and truth-aware R@K and the sibling accuracies; sims
    (N_img, N_cap) numpy scores; truth the split's (N_img, N_cap) caption
    truth. ``cache``: a dict kept across calls on the same data and split, so
    that the truth matrix and the sibling pairs are computed once."""
    from .data.difficulty import hard_negative_pairs, sibling_accuracy
    from .data.truth import SplitTruth
    from .evaluate import evaluate_split
    from .metrics import truth_recall_at_k
    from .checkpoint import make_reader

    cache = {} if cache is None else cache
    reader = make_reader(data, split, config, vocab)
    recalls, sims = evaluate_split(model, reader)
    sims = np.asarray(sims)
    if "truth" not in cache:
        t = SplitTruth(data, split)
        cache["truth"] = t.truth(np.arange(t.n_images), np.arange(t.n_captions))
        cache["pairs"] = hard_negative_pairs(data, split)
    truth, pairs = cache["truth"], cache["pairs"]
    record = {
        "test": {k: round(float(recalls[k]), 2) for k in RECALL_KEYS},
        "truth": {k: round(v, 2) for k, v in truth_recall_at_k(sims, truth).items()},
        "siblings": {k: round(v, 2) for k, v in sibling_accuracy(
            sims, pairs, reader.caption_image).items()},
    }
    return record, sims, truth, reader.caption_image


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
    trained from); "provenance": where and when it was shipped and measured.
    """
    from .provenance import provenance as where
    from .checkpoint import load_checkpoint, load_model, save_atomic
    from .files import write_text_atomic
    from .train import read_log

    run_dir, data = Path(run_dir), Path(data)
    dest = checkpoint_path(name, folder)
    if dest.exists() and not overwrite:
        # ValueError: the command line prints it as one line.
        raise ValueError(f"{dest}: exists; pass --overwrite to replace the shipped model")
    best = run_dir / "best.pt"
    ckpt = load_checkpoint(best)
    info = json.loads((run_dir / "config.json").read_text())
    log = read_log(run_dir)
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
        "config": info["config"], "options": info["options"],
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
    save_atomic({k: ckpt[k] for k in _KEEP if k in ckpt}, dest)
    write_text_atomic(json.dumps(record, indent=1, ensure_ascii=False) + "\n",
                       dest.with_suffix(".json"))
    return record
