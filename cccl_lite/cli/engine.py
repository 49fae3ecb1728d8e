"""``python -m cccl_lite train | evaluate | retrieve``: the engine's commands.

Each command is ``add_<name>_arguments(parser)`` and ``run_<name>(args) ->
int``; the work is :class:`cccl_lite.engine.train.Trainer`,
:func:`cccl_lite.engine.evaluate.evaluate_split` and :func:`cccl_lite.engine.evaluate.retrieve`.
Expected failures raise :class:`cccl_lite.errors.InputError` (one line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

import h5py
import torch

from cccl_lite.engine.checkpoint import load_for_data, resolve_config
from cccl_lite.errors import InputError, one_line as _one_line
# train and evaluate as modules: their functions are looked up when a command
# runs (tests stand in for Trainer and evaluate_split there).
from cccl_lite.engine import evaluate, train
from cccl_lite.engine.evaluate import NO_COCO1K_SHORTLIST, Hit, caption_texts, check_writable
from cccl_lite.data.dataset import SplitReader
from cccl_lite.engine.metrics import KEYS, PROTOCOLS, caption_layout, format_recalls
from cccl_lite.model.perceive import POSITION_FUSIONS
from cccl_lite.engine.recipes import (AMP_MODES, PRESETS, SELECT_LABELS, Recipe, RunOptions,
                                      hardest_after_warmup_risk, recipe_fields)
from cccl_lite.cli.types import nonnegative_float, nonnegative_int, positive_float, positive_int

__all__ = ["add_train_arguments", "run_train", "add_evaluate_arguments", "run_evaluate",
           "add_retrieve_arguments", "run_retrieve"]


# ---- train ------------------------------------------------------------------


def _warmup_arg(text: str):
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of epochs >= 0 or 'all', "
                                         f"got {text!r}")
    return value


def _or_none(parse):
    """argparse type: ``parse``'s value, or None for "none"."""
    def parse_or_none(text: str):
        return None if text.lower() == "none" else parse(text)
    parse_or_none.__name__ = parse.__name__
    return parse_or_none


# The argparse type of each kind of recipe field (cccl_lite.engine.recipes.KINDS).
RECIPE_TYPES = {"positive_float": positive_float, "nonnegative_float": nonnegative_float,
                "positive_float_or_none": _or_none(positive_float),
                "positive_int": positive_int, "nonnegative_int": nonnegative_int,
                "positive_int_or_none": _or_none(positive_int),
                "epochs_or_all": _warmup_arg, "choice": str}


def add_recipe_arguments(parser: argparse.ArgumentParser, recipe_class=Recipe) -> None:
    """One flag per field of the recipe (``--lr``, ``--warmup-epochs``, ...),
    made from the fields' metadata (help, kind, choices): a new recipe field
    is a new flag with no edit here. A flag left out is absent from the
    parsed arguments: the preset's value is used."""
    for name, f in recipe_fields(recipe_class).items():
        meta = f.metadata
        parser.add_argument("--" + name.replace("_", "-"), dest=name,
                            type=RECIPE_TYPES[meta["kind"]], choices=meta["choices"],
                            default=argparse.SUPPRESS,
                            help=f"{meta['help']}; default: the preset's")


def recipe_overrides(args, recipe_class=Recipe) -> dict:
    """The recipe fields set on the command line (see :func:`add_recipe_arguments`;
    a flag left out is absent from ``args``)."""
    return {name: getattr(args, name) for name in recipe_fields(recipe_class)
            if hasattr(args, name)}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m cccl_lite train``'s arguments (see :func:`run_train`)."""
    p = parser
    p.add_argument("--config", default="lite",
                   help="preset: " + ", ".join(repr(n) if " " in n else n for n in PRESETS)
                   + " (default lite: sized to the data; cccl_lite.engine.recipes.PRESETS)")
    p.add_argument("--data", required=True, help="HDF5 file (cccl_lite.data.schema)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ablation", default=None, help="one Table 6 ablation, e.g. 'w/o POS'")
    p.add_argument("--dataset", choices=("f30k", "coco"), default=None,
                   help="--config paper: Table 1's λ for this dataset (f30k 0.5, coco 0.75); "
                        "default: from the data file's dataset attribute")
    # The recipe: one flag per field of Recipe, every number checked here, at
    # the boundary (a negative margin or weight would train without a word,
    # issue 14).
    add_recipe_arguments(p)
    # The model's readings.
    p.add_argument("--position-tuple", choices=("ours", "camera"), default=None,
                   help="eq 9's six-tuple: ours or CAMERA's (cccl_lite.model.perceive."
                        "position_features); default: the config's (ours)")
    p.add_argument("--position-fusion", choices=POSITION_FUSIONS, default=None,
                   help="eq 10: the region embedding times the position gate (product, as "
                        "printed) or plus a position embedding (sum); default: the config's")
    p.add_argument("--centre-scale", type=nonnegative_float, default=None,
                   help="eq 8 reading: the box centre as two more region-feature columns "
                        "times this scale (0: off, as printed); default: the config's")
    p.add_argument("--word-gru", action="store_true", default=None,
                   help="eq 11 reading: a Bi-GRU over the frozen word vectors before W_E; "
                        "default: the config's")
    # Where and how it runs (RunOptions).
    d = RunOptions()
    p.add_argument("--seed", type=nonnegative_int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:K")
    p.add_argument("--amp", default=d.amp, help=f"{', '.join(AMP_MODES)} (default auto: "
                                                f"bf16 or fp16 on CUDA, off on the CPU)")
    p.add_argument("--num-workers", type=nonnegative_int, default=d.num_workers)
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="at most this many batches per epoch (smoke runs)")
    p.add_argument("--eval-batch-size", type=positive_int, default=d.eval_batch_size)
    p.add_argument("--pair-chunk", type=positive_int, default=None, metavar="N",
                   help="memory-saving mode: score at most N pairs of a batch at once and "
                        "recompute their activations in the backward pass (default: off)")
    p.add_argument("--collapse-steps", type=positive_int, default=d.collapse_steps,
                   help="warn after this many batches in a row with flat scores "
                        f"(default: {d.collapse_steps})")
    p.add_argument("--stop-on-collapse", action="store_true",
                   help="stop the run then; checkpoints stay those of the last epoch")
    p.add_argument("--log-every", type=nonnegative_int, default=d.log_every,
                   help="batches between progress lines when there is no progress bar")
    p.add_argument("--quiet", action="store_true", help="no progress bar nor batch lines")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an existing OUT")


def run_train(args) -> int:
    """Train as ``args`` say; print where best.pt is. Expected failures raise InputError."""
    model_changes = {k: v for k, v in (("position_tuple", args.position_tuple),
                                       ("position_fusion", args.position_fusion),
                                       ("centre_scale", args.centre_scale),
                                       ("word_gru", args.word_gru)) if v is not None}
    # Recipe fields not given come from the preset (PRESETS).
    config, recipe = resolve_config(args.config, args.data, args.ablation,
                                    dataset=getattr(args, "dataset", None),
                                    **model_changes, **recipe_overrides(args))
    run = RunOptions(seed=args.seed, device=args.device, amp=args.amp,
                     num_workers=args.num_workers, max_steps=args.max_steps,
                     log_every=args.log_every, quiet=args.quiet, resume=args.resume,
                     overwrite=args.overwrite, eval_batch_size=args.eval_batch_size,
                     pair_chunk=args.pair_chunk, collapse_steps=args.collapse_steps,
                     stop_on_collapse=args.stop_on_collapse)
    trainer = train.Trainer(config, recipe, args.data, args.out, run)  # checks the data first
    risk = hardest_after_warmup_risk(recipe)
    if risk and not args.resume:
        print(risk, file=sys.stderr)  # before the run starts, not after an epoch of it
    best = trainer.fit()
    collapse = getattr(trainer, "collapse", None)
    if collapse is not None and trainer.options.stop_on_collapse:
        raise InputError(f"training collapsed at step {collapse['step']} and was stopped; "
                         f"{trainer.last_path} holds epoch {trainer.epoch}")
    if trainer.is_main:
        print(f"best: {best} (epoch {trainer.best_epoch}, validation "
              f"{SELECT_LABELS[recipe.select]} {trainer.best_rsum:.1f})")
    return 0


# ---- evaluate, retrieve -----------------------------------------------------


def _common_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train (best.pt)")
    p.add_argument("--data", required=True, help="the dataset's HDF5 file")
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="items per encoding batch (default: 256)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="no bf16 autocast on CUDA (the CPU always runs fp32)")


def add_evaluate_arguments(p) -> None:
    """Arguments of ``python -m cccl_lite evaluate``."""
    _common_arguments(p)
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="f30k: 1K test; coco1k: mean of 5 folds of 1K; coco5k: all 5K images "
                        "(default: all images of the split)")
    p.add_argument("--save-sims", metavar="FILE.npy", default=None,
                   help="also write the (N_img, N_txt) score matrix there")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --save-sims file (default: refuse)")
    p.add_argument("--fold-size", type=positive_int, default=1000,
                   help="images per 1K fold of the protocols (default: 1000)")
    p.add_argument("--image-chunk", type=positive_int, default=None,
                   help="images per scoring block (default: sized to the device)")
    p.add_argument("--text-chunk", type=positive_int, default=None,
                   help="captions per scoring block (default: sized to the device)")
    p.add_argument("--shortlist", type=positive_int, default=None, metavar="K",
                   help="two-stage: re-rank only each query's top K candidates by Branch 1's "
                        "cheap score with the full model (default: score every pair)")


def add_retrieve_arguments(p) -> None:
    """Arguments of ``python -m cccl_lite retrieve``."""
    _common_arguments(p)
    p.add_argument("--image", type=int, default=None, help="query: this image's index")
    p.add_argument("--caption", type=int, default=None, help="query: this caption's index")
    p.add_argument("--k", type=positive_int, default=5, help="results to show (default: 5)")
    p.add_argument("--shortlist", type=positive_int, default=None, metavar="S",
                   help="two-stage: score only the top S (>= k) candidates by Branch 1's "
                        "cheap score with the full model (default: every candidate)")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"--device {name}: {_one_line(e)}") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: expected cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def _load(args):
    """(model, config, reader, device) for a command, after checking that they fit."""
    device = _device(args.device)
    model, config, reader = load_for_data(args.checkpoint, args.data, args.split, device)
    return model, config, reader, device


def run_evaluate(args) -> int:
    """``evaluate``: the recall table (eqs 35-36), then one JSON line of its numbers."""
    model, config, reader, device = _load(args)
    # What evaluate_split checks, here before any output, naming the file and
    # field or the option (issue 29, 20).
    try:
        caption_layout(reader.caption_image, reader.n_images)
    except ValueError as e:
        raise InputError(f"{args.data}:/{args.split}/captions/image: {e}") from None
    try:
        evaluate.check_evaluation(reader, args.protocol, args.fold_size, args.shortlist)
    except ValueError as e:
        raise InputError(f"--{e}" if str(e) == NO_COCO1K_SHORTLIST else str(e)) from None
    if args.save_sims:  # never replaces an existing file without --overwrite
        check_writable(args.save_sims, overwrite=args.overwrite)
    print(f"evaluate {args.checkpoint} on {args.data}:/{args.split} ({reader.n_images} images, "
          f"{reader.n_captions} captions), protocol {args.protocol or 'all images'}, "
          f"{config.ablation or 'full model'}, {device}"
          + (f", shortlist {args.shortlist}" if args.shortlist else ""))
    start = time.perf_counter()
    recalls, sims = evaluate.evaluate_split(model, reader, device, args.batch_size,
                                   protocol=args.protocol, save_sims=args.save_sims, amp=args.amp,
                                   image_chunk=args.image_chunk, text_chunk=args.text_chunk,
                                   fold_size=args.fold_size, log=lambda s: print(f"note: {s}"),
                                   shortlist=args.shortlist)
    seconds = time.perf_counter() - start
    if args.shortlist:
        print(f"two-stage: {sims.numel():,} pairs shortlisted by Branch 1, the top "
              f"{args.shortlist} per query re-ranked by the full model, in {seconds:.1f} s")
    else:
        print(f"scored {sims.numel():,} pairs in {seconds:.1f} s "
              f"({sims.numel() / max(seconds, 1e-9):,.0f} pairs/s)")
    if args.save_sims:
        print(f"score matrix {tuple(sims.shape)} written to {args.save_sims}")
    print(format_recalls(recalls))
    print(json.dumps({key: recalls[key] for key in KEYS}))
    return 0


def _image_label(reader: SplitReader) -> Callable[[Hit], str]:
    """How a retrieved image is shown: one of its captions for synthetic scenes
    (they describe the scene), else its source id when the file has one."""
    with h5py.File(reader.path, "r") as f:
        synthetic = f.attrs.get("dataset") == "synthetic-scenes"
        ids = f[reader.split]["images/id"][:] if "images/id" in f[reader.split] else None
    if synthetic:
        return lambda hit: f'e.g. "{hit.text}"'
    if ids is not None:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        return lambda hit: f"id {ids[hit.index]}"
    return lambda hit: ""


def run_retrieve(args) -> int:
    """``retrieve``: the top-k captions of an image, or images of a caption, with scores."""
    if (args.image is None) == (args.caption is None):
        raise InputError("retrieve needs exactly one of --image I and --caption J")
    model, _, reader, device = _load(args)
    n, what = ((reader.n_images, "image") if args.image is not None
               else (reader.n_captions, "caption"))
    index = args.image if args.image is not None else args.caption
    if not 0 <= index < n:
        raise InputError(f"--{what} {index} out of range: {args.data}:/{args.split} has {n} "
                         f"{what}s (0..{n - 1})")
    if args.shortlist is not None and args.shortlist < args.k:
        raise InputError(f"--shortlist {args.shortlist} must be >= --k {args.k}")
    hits = evaluate.retrieve(model, reader, image=args.image, caption=args.caption, k=args.k,
                    device=device, batch_size=args.batch_size, amp=args.amp,
                    shortlist=args.shortlist)
    if args.image is not None:
        print(f"image {args.image} of {args.split}: top {len(hits)} of {reader.n_captions} "
              f"captions (* = a caption of this image)")
        for r, h in enumerate(hits, 1):
            mark = "*" if h.match else " "
            print(f"{r:>3}. caption {h.index:>6}  {h.score:+.4f} {mark} {h.text}")
    else:
        text = caption_texts(reader)[args.caption]
        print(f'caption {args.caption} of {args.split}: "{text}" (image '
              f"{int(reader.caption_image[args.caption])}): top {len(hits)} of "
              f"{reader.n_images} images (* = its image)")
        label = _image_label(reader)
        for r, h in enumerate(hits, 1):
            print(f"{r:>3}. image {h.index:>6}  {h.score:+.4f} {'*' if h.match else ' '} "
                  f"{label(h)}".rstrip())
    return 0
