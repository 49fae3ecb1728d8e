"""Accuracy against scoring cost: bag of words, dual encoder, CCCL.

``python -m cccl_lite dual-encoder --data FILE --results FILE --seeds 0 1``
trains, per seed, the bag of words (:func:`cccl_lite.engine.baselines.train_bag_of_words`,
as chapter 1 does) and the dual encoder (:func:`cccl_lite.engine.dual.train_dual_encoder`,
epochs chosen by validation R@sum with patience), and measures on the test
split, for each and for the shipped lite CCCL (measured once:
:func:`cccl_lite.studies.pretrained.load_pretrained`):

* ``test``, ``truth``, ``siblings``: R@K, truth-aware R@K and the binding /
  relation / random sibling accuracies (:func:`cccl_lite.studies.pretrained.measure_sims`,
  the measures the shipped model's record and chapter 11's diagnosis use);
* ``seconds``, ``pairs_per_second``: scoring every (image, caption) pair of
  the split with ONE torch thread, the fastest of a few runs
  (:func:`cccl_lite.engine.costs.best_time`). Dual encoder and bag of words: embed
  every image and caption once, then one matrix product, from the split's
  arrays in memory; CCCL: encode every image and caption once and score the
  grid (``encode_all_images``, ``encode_all_texts``, ``score_matrix``, as
  chapter 10 times it), all in the same process.

Taught in chapters 1 and 10 (which read ``cccl_lite/results/dual-encoder.json``).
The results file is rewritten atomically after each seed, and a rerun with
the same settings skips the seeds it holds (resumable). ``--checkpoint``
writes the first seed's dual encoder (:func:`cccl_lite.engine.dual.save_dual`), the
one chapter 10 ships as its shortlister, and records it under "checkpoint"
(file name, seed, its test R@sum, sha256), so that a chapter can check it
loads the model the record measured (retrained for a seed already held:
training is deterministic on one thread).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from cccl_lite.engine.baselines import split_inputs, train_bag_of_words
from cccl_lite.engine.costs import best_time
from cccl_lite.engine.dual import dual_sims, save_dual, train_dual_encoder
from cccl_lite.data.schema import check_file
from cccl_lite.files import OutputError, check_output_file, write_atomic
from cccl_lite.studies import results
from cccl_lite.studies.pretrained import NAME, load_pretrained, measure_sims
from cccl_lite.studies.pretrained import provenance as shipped_record
from cccl_lite.engine.checkpoint import load_for_data
from cccl_lite.engine.scoring import encode_all_images, encode_all_texts, score_matrix

__all__ = ["run_dual_study", "SETTINGS"]

#: The training budget of every seed (part of the results file's settings).
SETTINGS = {"max_epochs": 30, "patience": 4, "batch_size": 128, "lr": 2e-3, "dim": 128,
            "word_dim": 64, "bag_of_words_epochs": 10, "threads": 1}


def _timed(fn, repeats: int) -> tuple[float, object]:
    return best_time(fn, repeats, threads=SETTINGS["threads"])


def _cost(seconds: float, n_img: int, n_cap: int) -> dict:
    return {"seconds": round(seconds, 5), "pairs": n_img * n_cap,
            "pairs_per_second": round(n_img * n_cap / seconds, 1)}


def measure_cccl(data, cache: dict, repeats: int = 1) -> dict:
    """The shipped lite CCCL on the test split: its record (measured again
    from the timed scores) and the cost of scoring every pair."""
    model, _, ckpt = load_pretrained()
    _, _, reader = load_for_data(ckpt, data, "test")
    shipped = shipped_record()["model_sha256"]

    def score():
        return score_matrix(model, encode_all_images(model, reader),
                            encode_all_texts(model, reader))

    with torch.no_grad():
        seconds, sims = _timed(score, repeats)
    record, _ = measure_sims(sims.numpy(), reader.caption_image, data, "test", cache)
    return {"model": NAME, "model_sha256": shipped, **record,
            **_cost(seconds, reader.n_images, reader.n_captions)}


def _measure(sims_of, data, vocab, cache: dict, repeats: int = 5) -> dict:
    reader, images, caps = split_inputs(data, "test", vocab)
    with torch.no_grad():
        seconds, sims = _timed(lambda: sims_of(images, caps), repeats)
    record, _ = measure_sims(sims.numpy(), reader.caption_image, data, "test", cache)
    return {**record, **_cost(seconds, reader.n_images, reader.n_captions)}


def run_seed(data, seed: int, cache: dict, log=print):
    """(record, dual encoder, vocab) of one seed: both trained scorers, measured."""
    start = time.perf_counter()
    model, vocab, curve, best_epoch = train_dual_encoder(
        data, SETTINGS["max_epochs"], SETTINGS["patience"], SETTINGS["batch_size"],
        SETTINGS["lr"], seed, dim=SETTINGS["dim"], word_dim=SETTINGS["word_dim"])
    dual = {"train_seconds": round(time.perf_counter() - start, 1), "best_epoch": best_epoch,
            "curve": curve, **_measure(lambda i, c: dual_sims(model, i, c), data, vocab, cache)}
    start = time.perf_counter()
    bow, bow_vocab = train_bag_of_words(data, SETTINGS["bag_of_words_epochs"], seed=seed)
    bag = {"train_seconds": round(time.perf_counter() - start, 1),
           **_measure(lambda i, c: bow(i["regions"], i["region_mask"], c["words"],
                                       c["word_mask"]), data, bow_vocab, cache)}
    log(f"seed {seed}: dual encoder test R@sum {dual['test']['rsum']:.1f}, truth "
        f"{dual['truth']['rsum']:.1f}, siblings {dual['siblings']}, "
        f"{dual['pairs_per_second']:,.0f} pairs/s; bag of words R@sum {bag['test']['rsum']:.1f}")
    return {"seed": seed, "dual_encoder": dual, "bag_of_words": bag}, model, vocab


def run_dual_study(data, results_path, seeds=(0, 1), checkpoint=None, overwrite: bool = False,
                   log=print) -> dict:
    """Measure the shipped CCCL once and both trained scorers at each of
    ``seeds``; write ``results_path`` (JSON: "settings", "provenance",
    "cccl", "seeds": [records]) after each step. A file of other settings is
    replaced only with ``overwrite``; one of these settings is resumed. An
    existing ``checkpoint`` is replaced only with ``overwrite``."""
    for split in ("train", "val", "test"):
        check_file(data, split).close()  # one clear line for a missing or foreign file
    if checkpoint is not None:
        check_output_file(checkpoint, overwrite, "checkpoint")
    results_path = Path(results_path)
    settings = {**SETTINGS, "data": Path(data).name}
    old = None
    if results_path.exists():
        check_output_file(results_path, overwrite=True, what="results file")
        old = results.held(results_path, settings)
        if old is None and not overwrite:
            what = results.what_is(results_path, "dual-encoder study", settings)
            raise OutputError(f"{results_path}: holds {what}; pass --overwrite to replace it")
    else:
        check_output_file(results_path, what="results file")
    result = old or {"settings": settings, "seeds": []}
    cache: dict = {}

    def write():
        result.update(results.write(results_path, result))

    # Measured again when the package ships another lite model than the one
    # the file measured (a file from before the sha256 was kept counts as another).
    if result.get("cccl", {}).get("model_sha256") != shipped_record()["model_sha256"]:
        result["cccl"] = measure_cccl(data, cache)
        log(f"CCCL ({NAME}): test R@sum {result['cccl']['test']['rsum']:.1f}, "
            f"{result['cccl']['pairs_per_second']:,.0f} pairs/s")
        write()
    done = {r["seed"] for r in result["seeds"]}
    for seed in seeds:
        if seed in done and not (checkpoint and seed == seeds[0]):
            continue
        record, model, vocab = run_seed(data, seed, cache, log)
        if checkpoint and seed == seeds[0]:
            write_atomic(checkpoint, lambda f: save_dual(model, vocab, f))
            result["checkpoint"] = {"file": Path(checkpoint).name, "seed": seed,
                                    "test_rsum": record["dual_encoder"]["test"]["rsum"],
                                    "sha256": hashlib.sha256(
                                        Path(checkpoint).read_bytes()).hexdigest()}
            log(f"wrote {checkpoint}")
        if seed not in done:
            result["seeds"].append(record)
            result["seeds"].sort(key=lambda r: r["seed"])
        write()
    return result
