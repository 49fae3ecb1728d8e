"""Why does the lite CCCL not learn the scenes? Short recorded runs, one suspect each.

Taught in chapters 5 and 6. ``python -m cccl_lite diagnose --data FILE``
trains the lite CCCL once per row of :data:`ROWS`, every row with the same
data, seed and budget (``--epochs``, no learning-rate drop inside it), and
changes ONE thing against a reference row: the loss balance (λ, L_c summed
or per item), the negatives (all or hardest, a warm-up), the positives (the
image a caption was written for, or every image it is true of), the batches
(random, or siblings together), the learning rate, the text encoder. Each
run's best validation checkpoint is then tested on the test split:

* ``test``: R@K as every paper computes it (a caption matches only the image
  it was written for);
* ``truth``: R@K where a caption matches every image it is true of
  (:func:`cccl_lite.engine.metrics.truth_recall_at_k`; on the scenes a test caption
  is true of about 13 of the 201 test images);
* ``siblings``: binding / relation / random pairwise accuracy
  (:func:`cccl_lite.data.difficulty.sibling_accuracy`, 50 = chance);
* ``collapse``: the last epoch's mean L_t over 2·B·Δ (1.0 = every score equal)
  and the spread (standard deviation) of the test scores;
* ``hardest_true``: on random test batches of B captions, the percent of
  captions whose hardest in-batch "negative" image (by image id) is one the
  caption is in fact true of;
* ``relation_fit`` (rows with ``fit_steps``): after all of the above, the
  model is asked for relations directly (:func:`cccl_lite.studies.probes.fit_sibling_pairs`
  on the training split's relation pairs); the curve of relation accuracy on
  the training pairs and on the test pairs, overall and per branch, and
  ``after``: ``test``, ``truth`` and ``siblings`` measured again after the fit.

Every record also holds ``win_rate``: per epoch, the percent of training
image rows / caption columns / both whose positive scored above the batch's
hardest negative (eq 33's; :func:`cccl_lite.model.loss.hardest_negative_wins`),
and a row with ``against`` changes exactly one thing of the row it names.

The results file is rewritten (atomically) after each row and a rerun with
the same settings skips the rows it holds, so a study can span sessions and
run as two processes (``--only``) of one thread each. A row is run at the
study's seed (the settings' ``seed``) and, with ``seeds``, at others: such a
record carries its ``seed`` and is its own entry of the same file, so the
rows recorded at the study's seed stay valid.

Why over 500 lines: the rows, the measures they record and the resumable
runner are read together by chapter 11; splitting them would scatter one
study.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from cccl_lite.provenance import provenance
from cccl_lite.data.dataset import SiblingSampler, SplitReader, build_vocab, word_ids
from cccl_lite.engine.baselines import StructureProbe, probe_sims, train_bag_of_words
from cccl_lite.data.difficulty import hard_negative_pairs, sibling_accuracy
from cccl_lite.data.truth import SplitTruth, parse_caption
from cccl_lite.engine.metrics import recall_at_k, truth_recall_at_k
from cccl_lite.studies import results
from cccl_lite.studies.pretrained import measure_scores
from cccl_lite.studies.probes import fit_sibling_pairs, write_oracle
from cccl_lite.engine.checkpoint import load_model, make_reader, resolve_config
from cccl_lite.model.cccl import LITE_CENTRE_SCALE
from cccl_lite.errors import InputError, field as json_field
from cccl_lite.files import check_output_file, shared_file, slug
from cccl_lite.engine.recipes import PRESETS, Preset, RunOptions
from cccl_lite.engine.runtime import eval_mode
from cccl_lite.engine.train import best_record, read_log, train
from cccl_lite.data.parsing import heads_to_adjacency
from cccl_lite.data.synthetic import build_caption, caption_holds
from cccl_lite.data.vectors import encode_words, load_encoder

__all__ = ["Row", "ROWS", "ROW_BASE", "resolve_row", "hardest_true_rate", "baselines",
           "sibling_exposure",
           "reversed_relations", "run_diagnosis"]



@dataclass(frozen=True)
class Row:
    """One run: ``config``, changes to the lite preset's model or numbers
    (:class:`~cccl_lite.engine.recipes.Preset`), and ``options``, changes to
    the procedure it trains with (the paper preset's:
    :meth:`~cccl_lite.engine.recipes.Recipe.procedure`;
    ``warmup_epochs=None`` = the sum over negatives in every epoch);
    ``question`` is what the row isolates."""

    name: str
    question: str
    config: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    # Train and test on a copy of the data with relations' halves handed over
    # (cccl_lite.studies.probes.write_oracle: "side", "centre" or "side+centre").
    oracle: str | None = None
    # After training and testing, this many steps of
    # cccl_lite.studies.probes.fit_sibling_pairs on the relation pairs (0: none).
    fit_steps: int = 0
    # The row this one changes exactly ONE thing of (config or option; tested),
    # or None for the older rows, whose question says what they change.
    against: str | None = None


_ALL = {"warmup_epochs": None}
_TRUTH_SIBLINGS = {"positives": "truth", "batching": "siblings"}

ROWS = (
    Row("reference", "the first lite recipe (before this diagnosis): sum over negatives, "
        "λ 0.5 summed over B² pairs, random batches, image positives", options=_ALL),
    # loss balance
    Row("λ 0", "is the coherence term a brake?", {"coherence_weight": 0.0}, _ALL),
    Row("L_c per item", "L_c divided by B, so both terms grow like B",
        {"coherence_reduction": "per_item"}, _ALL),
    # negatives
    Row("hardest", "eq 33 from the first step", options={"warmup_epochs": 0}),
    Row("hardest, λ 0", "does the collapse need the coherence term?",
        {"coherence_weight": 0.0}, {"warmup_epochs": 0}),
    # false negatives
    Row("hardest, truth positives", "does the collapse come from negatives that are "
        "true matches?", options={"warmup_epochs": 0, "positives": "truth"}),
    # eq 33 after a warm-up, and at a small batch (issue 28)
    Row("warm-up 1, hardest", "the paper preset's schedule (the paper has no warm-up): one "
        "epoch of the sum over negatives, then eq 33 (λ 0.5, L_c summed)",
        options={"warmup_epochs": 1}, against="reference"),
    Row("warm-up 1, hardest, λ 0", "does eq 33 train after a warm-up without the coherence "
        "term?", {"coherence_weight": 0.0}, {"warmup_epochs": 1}, against="λ 0"),
    Row("warm-up 1, hardest, L_c per item", "does eq 33 train after a warm-up with L_c "
        "per item?", {"coherence_reduction": "per_item"}, {"warmup_epochs": 1},
        against="L_c per item"),
    Row("hardest, B 8", "eq 33 from the first step at B = 8, where the positive beats the "
        "hardest of 7 negatives more often", {"batch_size": 8}, {"warmup_epochs": 0},
        against="hardest"),
    Row("hardest, λ 0, B 8", "eq 33 from the first step at B = 8 without the coherence "
        "term", {"coherence_weight": 0.0, "batch_size": 8}, {"warmup_epochs": 0},
        against="hardest, λ 0"),
    # the paper preset's loss at the paper's batch size (issue 28 item 4)
    Row("warm-up 1, hardest, B 128", "the paper preset's loss at Table 1's B = 128: one "
        "warm-up epoch, then eq 33 with L_c summed over the B² pairs", {"batch_size": 128},
        {"warmup_epochs": 1}, against="warm-up 1, hardest"),
    Row("warm-up 1, hardest, L_c per item, B 128", "the same with L_c per item, the "
        "safer option the paper preset's warning names", {"coherence_reduction": "per_item",
                                                          "batch_size": 128},
        {"warmup_epochs": 1}, against="warm-up 1, hardest, L_c per item"),
    Row("truth positives", "the reference with true matches never used as negatives",
        options={**_ALL, "positives": "truth"}),
    # the data's signal
    Row("siblings in batch", "the reference with a group's three images in one batch "
        "(and the truth as positives)", options={**_ALL, **_TRUTH_SIBLINGS}),
    Row("siblings, L_c per item", "sibling batches and truth positives with the "
        "coherence term per item: the lite recipe at this budget",
        {"coherence_reduction": "per_item"}, {**_ALL, **_TRUTH_SIBLINGS}),
    # positions (relations need them)
    Row("siblings, L_c per item, w/o POS", "do positions reach the score at all? the row "
        "above without eq 9's position gate", {"coherence_reduction": "per_item",
                                               "ablation": "w/o POS"},
        {**_ALL, **_TRUTH_SIBLINGS}),
    Row("siblings, L_c per item, CAMERA positions", "CAMERA's six-tuple (x/W, y/H, w/W, h/H, "
        "w/h, area) instead of ours in eq 9", {"coherence_reduction": "per_item",
                                               "position_tuple": "camera"},
        {**_ALL, **_TRUTH_SIBLINGS}),
    Row("siblings, L_c per item, positions added", "eq 10 with the position embedding "
        "added to the region embedding instead of gating it", {"coherence_reduction": "per_item",
                                                               "position_fusion": "sum"},
        {**_ALL, **_TRUTH_SIBLINGS}),
    Row("siblings, hardest", "eq 33 on batches that hold the hard negatives",
        options={"warmup_epochs": 0, **_TRUTH_SIBLINGS}),
    Row("siblings, hardest, L_c per item", "the two fixes together, eq 33 from the start",
        {"coherence_reduction": "per_item"}, {"warmup_epochs": 0, **_TRUTH_SIBLINGS}),
    Row("siblings, warm-up 1, hardest, L_c per item", "the paper preset's schedule (one "
        "warm-up epoch, ours, then eq 33) with both fixes",
        {"coherence_reduction": "per_item"}, {"warmup_epochs": 1, **_TRUTH_SIBLINGS}),
    # relations: hand the model one half, then both (cccl_lite.studies.probes.write_oracle)
    Row("siblings, L_c per item, side oracle", "does CCCL learn relations when the text "
        "half is given? each relation noun's side appended to its word vector",
        {"coherence_reduction": "per_item"}, {**_ALL, **_TRUTH_SIBLINGS}, oracle="side"),
    Row("siblings, L_c per item, side and centre oracles", "and when both halves are "
        "given? also each region's box centre appended to its features",
        {"coherence_reduction": "per_item"}, {**_ALL, **_TRUTH_SIBLINGS},
        oracle="side+centre"),
    # relations asked for directly: train as the row named, then fit the training
    # split's relation pairs alone (cccl_lite.studies.probes.fit_sibling_pairs)
    *(Row(f"relation fit, {label}", f"trained as 'siblings, L_c per item'{what}: can the "
          "model fit the training split's relation pairs when asked for them alone, and "
          "does what it learns hold on the test pairs?", {"coherence_reduction": "per_item",
                                                          **extra},
          {**_ALL, **_TRUTH_SIBLINGS}, oracle=oracle, fit_steps=2000)
      for label, what, extra, oracle in (
          ("reference", "", {}, None),
          ("side oracle", ", with the side oracle", {}, "side"),
          ("centre oracle", ", with the centre oracle (the image half only)", {}, "centre"),
          ("side and centre oracles", ", with both oracles", {}, "side+centre"),
          ("positions added", ", eq 10 as a sum", {"position_fusion": "sum"}, None),
          # each half found by the model itself, the other handed over
          ("side oracle, positions added", ", with the side oracle and eq 10 as a sum",
           {"position_fusion": "sum"}, "side"),
          ("centre oracle, w/o BERT", ", with the centre oracle and learned word embeddings "
           "read by a Bi-GRU instead of MiniLM", {"ablation": "w/o BERT"}, "centre"))),
    Row("siblings, warm-up 1, hardest, L_c per item, side and centre oracles", "the paper "
        "preset's schedule (one warm-up epoch, ours, then eq 33, whose hardest negative is "
        "often the sibling) with both halves handed over: does ordinary training then "
        "learn relations?",
        {"coherence_reduction": "per_item"}, {"warmup_epochs": 1, **_TRUTH_SIBLINGS},
        oracle="side+centre"),
    # relations: the model finds both halves itself, and the loss asks for them
    Row("siblings ×10", "the loss asks for the siblings: a scene's rebound and swapped "
        "images weigh 10 times in the sum over negatives (Recipe.sibling_weight)",
        {"coherence_reduction": "per_item"}, {**_ALL, **_TRUTH_SIBLINGS, "sibling_weight": 10}),
    Row("siblings ×10, centre in eq 8", "and the image half in usable form: the box centre "
        "as two more region-feature columns (CCCLConfig.centre_scale)",
        {"coherence_reduction": "per_item", "centre_scale": LITE_CENTRE_SCALE},
        {**_ALL, **_TRUTH_SIBLINGS, "sibling_weight": 10}),
    Row("centre in eq 8, w/o BERT", "both halves learnable (the box centre in eq 8, the "
        "Bi-GRU text encoder of 'w/o BERT'), the siblings not weighted",
        {"coherence_reduction": "per_item", "centre_scale": LITE_CENTRE_SCALE,
         "ablation": "w/o BERT"}, {**_ALL, **_TRUTH_SIBLINGS}),
    Row("siblings ×10, centre in eq 8, w/o BERT", "both halves learnable and the siblings "
        "weighted", {"coherence_reduction": "per_item", "centre_scale": LITE_CENTRE_SCALE,
                     "ablation": "w/o BERT"},
        {**_ALL, **_TRUTH_SIBLINGS, "sibling_weight": 10}),
    Row("siblings ×10, w/o BERT", "the final recipe without the box centre in eq 8: does "
        "the centre matter once the words come from a Bi-GRU and the siblings are weighted?",
        {"coherence_reduction": "per_item", "ablation": "w/o BERT"},
        {**_ALL, **_TRUTH_SIBLINGS, "sibling_weight": 10},
        against="siblings ×10, centre in eq 8, w/o BERT"),
    Row("siblings ×10, centre in eq 8, word GRU", "the same with MiniLM kept: a Bi-GRU over "
        "its frozen vectors before eq 11 (CCCLConfig.word_gru) instead of learned embeddings",
        {"coherence_reduction": "per_item", "centre_scale": LITE_CENTRE_SCALE,
         "word_gru": True}, {**_ALL, **_TRUTH_SIBLINGS, "sibling_weight": 10}),
    # optimisation
    Row("lr 2e-4", "the paper's learning rate instead of the lite 5e-4", {"lr": 2e-4}, _ALL),
    Row("lr 1e-3", "a larger learning rate", {"lr": 1e-3}, _ALL),
    # text encoder
    Row("w/o BERT", "learned word embeddings and a Bi-GRU instead of MiniLM",
        {"ablation": "w/o BERT"}, _ALL),
)


def hardest_true_rate(sims: np.ndarray, truth: np.ndarray, caption_image: np.ndarray,
                      batch_size: int, batches: int = 200, seed: int = 0) -> float:
    """Percent of captions whose hardest in-batch negative image is true of them.

    Random batches of ``batch_size`` captions (with their images) of the
    split; the negatives of caption k are the batch's images other than its
    own (eq 33 with image-id positives); its hardest is the highest-scoring.
    """
    rng = np.random.default_rng(seed)
    hits = total = 0
    for _ in range(batches):
        caps = rng.choice(len(caption_image), size=batch_size, replace=False)
        imgs = caption_image[caps]
        s = sims[np.ix_(imgs, caps)].astype(np.float64)
        s[imgs[:, None] == imgs[None, :]] = -np.inf  # the caption's own image
        hardest = s.argmax(axis=0)  # per caption column: the row index in the batch
        valid = np.isfinite(s.max(axis=0))
        hits += int(truth[imgs[hardest], caps][valid].sum())
        total += int(valid.sum())
    return 100.0 * hits / max(total, 1)


def baselines(data, seed: int = 0) -> dict:
    """The floor and the ceiling on the test split, in the rows' terms.

    "bag of words": :class:`~cccl_lite.engine.baselines.BagOfWords` trained as
    chapter 1 does (10 epochs, eq 33); "structure probe": the gold
    syntax + position scorer (:class:`~cccl_lite.engine.baselines.StructureProbe`,
    gold dependency heads, linear attribute probes on the regions, relations
    read off the matched boxes), the ceiling of what CCCL's inputs allow.
    """
    reader = SplitReader(data, "test", words="ids", vocab=build_vocab(data), syntax=False)
    t = SplitTruth(data, "test")
    truth = t.truth(np.arange(t.n_images), np.arange(t.n_captions))
    pairs = hard_negative_pairs(data, "test", seed)
    bow, vocab = train_bag_of_words(data, seed=seed)
    reader = SplitReader(data, "test", words="ids", vocab=vocab, syntax=False)
    images = reader.images(np.arange(reader.n_images))
    caps = reader.captions(np.arange(reader.n_captions))
    with torch.no_grad():
        bow_sims = bow(images["regions"], images["region_mask"], caps["words"],
                       caps["word_mask"]).numpy()
    out = {}
    for name, sims in (("bag of words", bow_sims),
                       ("structure probe", probe_sims(StructureProbe(data, seed=seed), data))):
        out[name] = {
            "test": {k: round(float(v), 2) for k, v in recall_at_k(sims).items()},
            "truth": {k: round(v, 2) for k, v in truth_recall_at_k(sims, truth).items()},
            "siblings": {k: round(v, 2) for k, v in
                         sibling_accuracy(sims, pairs, reader.caption_image).items()},
        }
    return out


def sibling_exposure(data, batching: str, batch_size: int, seed: int = 0,
                     split: str = "train") -> float:
    """Percent of a split's captions whose batch (one epoch's order) holds a
    sibling image of which the caption is false: how often the triplet loss
    can see a binding or relation hard negative at all.

    ``batching``: "random" (the shuffle of a ``DistributedSampler``, as the
    trainer draws it) or "siblings" (:class:`~cccl_lite.data.dataset.SiblingSampler`).
    """
    truth = SplitTruth(data, split)
    cap_img = truth.caption_image
    if batching == "siblings":
        order = list(SiblingSampler(truth.group, cap_img, seed=seed))
    elif batching == "random":
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(cap_img), generator=g).tolist()
    else:
        raise ValueError(f"batching must be 'random' or 'siblings', got {batching!r}")
    exposed = 0
    for b in range(0, len(order), batch_size):
        caps = order[b:b + batch_size]
        imgs = set(int(cap_img[k]) for k in caps)
        for k in caps:
            own = int(cap_img[k])
            sibs = [i for i in imgs if i != own and truth.group[i] == truth.group[own]]
            if sibs and not truth.truth(sibs, [k]).all():
                exposed += 1
    return 100.0 * exposed / len(order)


def reversed_relations(model, data, split: str = "test", tokenizer=None, encoder=None,
                       config=None, vocab: dict | None = None) -> dict:
    """Does the model read a relation's direction off the caption?

    For every "relation" caption of ``split`` ("a red circle left of a blue
    square") that is true of its image, the caption with its two noun
    phrases swapped ("a blue square left of a red circle": the same words,
    the relation reversed) is built with the scene grammar
    (:func:`cccl_lite.data.synthetic.build_caption`, with its gold heads),
    kept when it is false of that image, encoded with the same word encoder
    (MiniLM by default: ``tokenizer``, ``encoder`` from
    :func:`cccl_lite.data.vectors.load_encoder`; for a model that reads word ids,
    its training ``vocab``), and both are scored against the image. Returns {"pairs": n, "F": stats, "S", "O", "R": stats of each
    branch}, stats = {"wins": % of pairs where the true caption scores
    higher, "mean": mean difference, "mean_abs": mean |difference|}: a model
    that reads the direction wins well above 50 %.
    """
    config = config or model.config
    if not config.use_bert and vocab is None:
        raise ValueError("reversed_relations: a model that reads word ids needs its vocab")
    reader = make_reader(data, split, config, vocab)
    truth = SplitTruth(data, split)
    with h5py.File(data, "r") as f:
        kinds = f[f"{split}/captions/kind"].asstr()[:]
    own, reversed_words = [], []
    for k in np.flatnonzero(kinds == "relation"):
        cap = parse_caption(reader.tokens[k], "relation")
        words, heads = build_caption("relation", cap.nps[::-1], cap.rel)
        i = int(reader.caption_image[k])
        if not truth.truth([i], [k])[0, 0] or truth.holds(parse_caption(words, "relation"), i):
            continue
        own.append(int(k))
        reversed_words.append((words, heads))
    if not own:
        raise ValueError(f"{data}:/{split}: no relation caption whose reversal is false")
    if config.use_bert:
        if tokenizer is None or encoder is None:
            tokenizer, encoder = load_encoder()
        vectors = encode_words([w for w, _ in reversed_words], tokenizer, encoder)
    else:  # word ids, as the reader gives the model its own captions
        vectors = [word_ids(w, vocab) for w, _ in reversed_words]
    longest = max(len(w) for w, _ in reversed_words)
    n = len(own)
    words = (torch.zeros(n, longest, vectors[0].shape[1]) if config.use_bert
             else torch.zeros(n, longest, dtype=torch.int64))
    mask = torch.zeros(n, longest, dtype=torch.bool)
    adjacency = torch.zeros(n, longest, longest, dtype=torch.bool)
    for b, ((w, h), v) in enumerate(zip(reversed_words, vectors)):
        words[b, :len(w)] = torch.as_tensor(np.asarray(v), dtype=words.dtype)
        mask[b, :len(w)] = True
        adjacency[b] = torch.from_numpy(heads_to_adjacency(h, size=longest))
    images = reader.images(reader.caption_image[own])
    captions = reader.captions(own)
    with eval_mode(model), torch.no_grad():
        img = model.encode_images(images["regions"], images["positions"],
                                  images["region_mask"])
        f_own, b_own = model.score_pairs(img, model.encode_texts(
            captions["words"], captions["word_mask"], captions["word_adjacency"]))
        f_rev, b_rev = model.score_pairs(img, model.encode_texts(words, mask, adjacency))

    def stats(a, b):
        d = (a - b).double().numpy()
        return {"wins": float(100 * np.mean(d > 0) + 50 * np.mean(d == 0)),
                "mean": float(d.mean()), "mean_abs": float(np.abs(d).mean())}

    out = {"pairs": n, "F": stats(f_own, f_rev)}
    for name, a, b in zip("SOR", b_own, b_rev):
        if a is not None:
            out[name] = stats(a, b)
    return out


def _settings(data, epochs: int, max_steps: int | None, seed: int,
              study: str | None = None, lr_decay: str = "none within the budget") -> dict:
    data = Path(data)
    # ``study`` names another study run by this runner (cccl_lite.studies.sensitivity):
    # its file then never passes for a diagnosis, nor the reverse (the
    # diagnosis's own settings carry no such key, as its recorded file has none).
    return {"data": data.name, "data_bytes": data.stat().st_size, "config": "lite",
            "epochs": epochs, "lr_decay": lr_decay, "max_steps": max_steps,
            "seed": seed, "split": "test", **({"study": study} if study else {})}


def _row_options(row: Row) -> dict:
    # Every row starts from the paper preset's procedure (one warm-up epoch,
    # which the paper does not print, then eq 33; image positives, random
    # batches, no early stopping) and changes what it names.
    return {**PRESETS["paper"].recipe.procedure(), **row.options}


# What every row starts from before its own ``config``: the lite config with
# the paper's L_c (summed over the B² pairs), eq 8 as printed (no centre
# columns) and MiniLM's frozen vectors (no Bi-GRU), whatever the lite preset's
# default: a row changes only what it names, and a rerun at a later commit
# measures the same thing.
ROW_BASE = {"coherence_reduction": "sum", "centre_scale": 0.0, "word_gru": False,
            "use_bert": True}


def resolve_row(row: Row, data, epochs: int) -> Preset:
    """The (model config, recipe) that :func:`run_row` trains for ``row`` on
    ``data``: the lite preset sized to the data, :data:`ROW_BASE`, then
    ``row.config`` (its "ablation" key as a Table 6 ablation), ``epochs``
    with no decay unless the row's config names its ``lr_decay_epoch``
    (cccl_lite.studies.plateau), and the procedure of :func:`_row_options`."""
    overrides = {"lr_decay_epoch": epochs, **ROW_BASE, **row.config, **_row_options(row)}
    ablation = overrides.pop("ablation", None)
    return resolve_config("lite", data, ablation, epochs=epochs, **overrides)


def run_row(row: Row, data, out_dir, epochs: int, seed: int = 0,
            max_steps: int | None = None, cache: dict | None = None,
            study_seed: int | None = None) -> dict:
    """Train and test one row at ``seed``; return its record (see the module
    docstring). At a seed other than ``study_seed`` (None: ``seed``) the run
    has its own directory and the record a ``seed`` field."""
    study_seed = seed if study_seed is None else study_seed
    cache = {} if cache is None else cache
    t0 = time.perf_counter()
    if row.oracle is not None:  # made once per out_dir, then reused
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        oracle_file = Path(out_dir) / f"oracle-{slug(row.oracle)}.h5"
        data = oracle_file if oracle_file.exists() else write_oracle(data, oracle_file,
                                                                     row.oracle)
    config, recipe = resolve_row(row, data, epochs)
    run_dir = Path(out_dir) / (slug(row.name) + ("" if seed == study_seed else f"-seed{seed}"))
    best = train(config, recipe, data, run_dir, RunOptions(
        seed=seed, device="cpu", max_steps=max_steps, quiet=True, overwrite=True))
    model, config, vocab = load_model(best)
    history = read_log(run_dir)
    best_rec = best_record(history)
    measured, sims, truth, caption_image = measure_scores(model, config, vocab, data, "test",
                                                          cache)
    full_scale = 2 * recipe.batch_size * recipe.margin
    fit = {}
    if row.fit_steps:
        splits = [(make_reader(data, split, config, vocab),
                   hard_negative_pairs(data, split, seed)["relation"])
                  for split in ("train", "test")]
        curve = fit_sibling_pairs(model, *splits, row.fit_steps, lr=recipe.lr, seed=seed)
        # What asking for relations cost the retrieval: the same test, after the fit.
        after = measure_scores(model, config, vocab, data, "test", cache)[0]
        fit = {"relation_fit": {"steps": row.fit_steps, "lr": recipe.lr, "curve": curve,
                                "after": after}}
    return {
        "name": row.name, **({} if seed == study_seed else {"seed": seed}),
        "question": row.question, "config": row.config,
        "options": _row_options(row), **({"oracle": row.oracle} if row.oracle else {}),
        "val_rsum": round(best_rec["val"]["rsum"], 2), "best_epoch": best_rec["epoch"],
        # The last epoch trained: below the budget when the recipe's patience stopped it.
        "last_epoch": history[-1]["epoch"],
        "val_curve": [round(r["val"]["rsum"], 1) for r in history],
        "win_rate": {k: [round(r["win_rate"][k], 1) for r in history]
                     for k in ("images", "captions", "both")},
        **measured,
        "collapse": {"last_alignment_over_2BΔ": round(history[-1]["losses"]["alignment"]
                                                       / full_scale, 3),
                     "test_score_sd": round(float(sims.std()), 4)},
        "hardest_true": round(hardest_true_rate(sims, truth, caption_image,
                                                recipe.batch_size), 1),
        **fit,
        "seconds": round(time.perf_counter() - t0, 1),
        "commit": provenance()["commit"],
    }



def run_diagnosis(data, out_dir, results_path, epochs: int = 3, seed: int = 0,
                  max_steps: int | None = None, only: list[str] | None = None,
                  overwrite: bool = False, rerun: bool = False, log=print,
                  seeds: list[int] | None = None, rows=None,
                  study: str | None = None,
                  lr_decay: str = "none within the budget") -> dict:
    """Run every row of :data:`ROWS` (or ``only`` those, in that order) not yet in
    ``results_path`` under the same settings; return the results dict
    {"settings", "provenance", "baselines" (:func:`baselines`, computed once),
    "rows"}, also written there after each row.

    ``seed`` is the study's (part of the settings); ``seeds`` (default
    [``seed``]) the seeds each row is run at, one row's seeds before the next
    row's. A record is keyed by (name, seed): one at another seed than the
    study's carries a ``seed`` field and leaves the study's record alone.
    An existing results file with other settings is an error unless
    ``overwrite``; a (row, seed) already there is skipped unless ``rerun``.
    ``rows`` (default :data:`ROWS`) and ``study`` (a name kept in the
    settings) run another study's rows the same way (cccl_lite.studies.sensitivity).
    """
    results_path = check_output_file(results_path, overwrite=True,
                                     what="results file (--results)")
    rows = ROWS if rows is None else tuple(rows)
    settings = _settings(data, epochs, max_steps, seed, study, lr_decay)
    seeds = [seed] if not seeds else list(dict.fromkeys(seeds))
    names = [r.name for r in rows]
    unknown = set(only or ()) - set(names)
    if unknown:
        raise ValueError(f"unknown row(s) {sorted(unknown)}; expected some of: {names}")
    done = {}
    if results_path.exists():
        old = _results_under(results_path, settings)
        if old is not None:
            done = {_key(r, seed): r for r in old["rows"]}
        elif not overwrite:
            what = results.what_is(results_path, "diagnosis", settings)
            raise InputError(f"{results_path}: holds {what}; pass --overwrite to replace it or "
                             f"choose another --results")
    # The baselines of *these* settings: a file of other settings replaced
    # under --overwrite keeps none of its own (issue 29 #8: they were
    # written as null, which chapter 11 reads).
    current = _results_under(results_path, settings)
    if not (current and current.get("baselines")):
        log("bag of words and structure probe (the floor and the ceiling)...")
        base = baselines(data, seed)
        with shared_file(results_path):
            _write(results_path, settings, _merge(results_path, settings, done), names,
                   base)
    cache: dict = {}
    by_name = {r.name: r for r in rows}
    # ``only`` also sets the order: the most telling rows of a long study first.
    todo = [by_name[n] for n in only] if only else list(rows)
    todo = [(r, s) for r in todo for s in seeds if rerun or (r.name, s) not in done]
    for row, row_seed in todo:
        rec = run_row(row, data, out_dir, epochs, row_seed, max_steps, cache, study_seed=seed)
        log(f"{row.name} (seed {row_seed}): val R@sum {rec['val_rsum']:.1f}, test "
            f"{rec['test']['rsum']:.1f}, truth {rec['truth']['rsum']:.1f}, siblings "
            f"{rec['siblings']}, win rate {rec['win_rate']['both']} %, "
            f"{rec['seconds']:.0f} s")
        with shared_file(results_path):
            # Re-read under the lock: another process (--only) may have added rows.
            done = _merge(results_path, settings, done)
            done[(row.name, row_seed)] = rec
            _write(results_path, settings, done, names)
    return results.load(results_path)


def _key(record: dict, study_seed: int) -> tuple[str, int]:
    """(name, seed) of a record: the study's seed unless it names another."""
    return record["name"], record.get("seed", study_seed)


def _merge(path: Path, settings: dict, done: dict) -> dict:
    """``done`` plus the rows another process wrote to ``path`` meanwhile."""
    done = dict(done)
    old = _results_under(path, settings)
    if old is not None:
        done.update({_key(r, settings["seed"]): r for r in old["rows"]
                     if _key(r, settings["seed"]) not in done})
    return done


def _results_under(path: Path, settings: dict) -> dict | None:
    """The results file's content when it holds a diagnosis of ``settings``,
    its rows checked for the fields read back (a hand-edited file fails with
    one line naming it and the field, issue 29 #16); None when there is none
    yet, or it holds other settings or no diagnosis at all."""
    old = results.held(path, settings)
    if old is None:
        return None
    for i, row in enumerate(json_field(old, "rows", path, kind=list)):
        json_field(row, "name", path, f"rows[{i}]", str)
        if "seed" in row:
            json_field(row, "seed", path, f"rows[{i}]", int)
    return old


def _write(path: Path, settings: dict, done: dict, names: list[str],
           base: dict | None = None) -> dict:
    if base is None:
        old = _results_under(path, settings)
        base = old.get("baselines") if old is not None else None
    # ROWS' order, each row's seeds in ascending order (the study's seed first
    # when it is the smallest, as it is for seed 0). Records of rows this code
    # does not know (written by a later commit's runner) are kept, last.
    order = {n: k for k, n in enumerate(names)}
    rows = [done[k] for k in sorted(done, key=lambda k: (order.get(k[0], len(order)), k))]
    return results.write(path, {"settings": settings, "baselines": base, "rows": rows})
