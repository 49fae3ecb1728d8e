"""``python -m cccl_lite make-synthetic | encode-words | parse | prepare-precomp |
prepare-tsv | download | difficulty``: the data commands.

The same commands as the scripts in ``data_scripts/`` (which are thin
wrappers around :func:`script_main`), so that they work after ``pip
install``. Each command is ``add_<name>(parser)`` and ``run_<name>(args,
prog) -> int``; ``prog`` names the command in its one-line errors
(``make_synthetic.py: error: ...`` from a script). The work is in
:mod:`cccl_lite.data`; imports are deferred to the command that runs, so
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

from cccl_lite.cli.types import nonnegative_int, positive_int, run_script

__all__ = ["DataCommand", "COMMANDS", "script_main"]


# ---- make-synthetic ------------------------------------------------------------


def add_make_synthetic(p) -> None:
    from cccl_lite.data.synthetic import SIZES

    p.add_argument("--out", type=Path, required=True, help="the HDF5 file to write")
    p.add_argument("--seed", type=_scene_seed, default=0,
                   help="seed of the scenes (default 0); the simulated detector stays the same")
    p.add_argument("--size", default="small", choices=list(SIZES),
                   help="dataset size (default small)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (default: refuse)")


def _scene_seed(text: str) -> int:
    """argparse type: a seed in [0, 2**63) (the file stores it as int64)."""
    import argparse

    value = nonnegative_int(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}")
    return value


def run_make_synthetic(args, prog: str) -> int:
    from cccl_lite.data.schema import split_sizes
    from cccl_lite.data.synthetic import make_synthetic
    from cccl_lite.files import check_output_file

    start = time.perf_counter()

    def work():
        # An existing file may be a converted Flickr30K or a run's data: never
        # replaced without --overwrite (issue 14).
        check_output_file(args.out, args.overwrite, "dataset file")
        return make_synthetic(args.out, seed=args.seed, size=args.size)

    code, path = run_script(prog, work)
    if code:
        return code
    seconds = time.perf_counter() - start
    print(path)
    for split, (n_img, n_cap) in split_sizes(path).items():
        print(f"  {split}: {n_img} images, {n_cap} captions")
    print(f"written in {seconds:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# ---- encode-words ---------------------------------------------------------------


def add_encode_words(p) -> None:
    p.add_argument("file", type=Path, help="an HDF5 file following cccl_lite's schema")
    p.add_argument("--encoder", default=None,
                   help="HuggingFace name or local directory (default: bundled MiniLM)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--overwrite", action="store_true",
                   help="recompute caches that already exist")


def run_encode_words(args, prog: str) -> int:
    from cccl_lite.data.vectors import cache_word_vectors

    code, done = run_script(prog, lambda: cache_word_vectors(
        args.file, encoder=args.encoder, batch_size=args.batch_size, device=args.device,
        overwrite=args.overwrite), "interrupted; no partial cache was kept")
    if code:
        return code
    for split, written in done.items():
        print(f"{args.file}:/{split}: " + ("word vectors written" if written else
                                           "word vectors already cached (--overwrite to redo)"))
    return 0


# ---- parse ----------------------------------------------------------------------


def add_parse(p) -> None:
    p.add_argument("file", type=Path, help="an HDF5 file following cccl_lite's schema")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--gpu", action="store_true", help="run stanza on the GPU (default: CPU)")
    p.add_argument("--overwrite", action="store_true", help="re-parse splits with heads")


def run_parse(args, prog: str) -> int:
    from cccl_lite.data.parsing import parse_captions

    # The parser is loaded only if some split needs parsing.
    code, done = run_script(prog, lambda: parse_captions(
        args.file, batch_size=args.batch_size, overwrite=args.overwrite, use_gpu=args.gpu),
        "interrupted; no partial heads were kept")
    if code:
        return code
    for split, written in done.items():
        print(f"{args.file}:/{split}: " + ("heads written" if written else
                                           "heads already present (--overwrite to re-parse)"))
    return 0


# ---- prepare-precomp --------------------------------------------------------------


def add_prepare_precomp(p) -> None:
    from cccl_lite.data.precomp import BOX_SOURCES
    from cccl_lite.data.schema import SPLITS

    p.add_argument("--src", required=True, help="folder with SCAN's {split}_* files")
    p.add_argument("--split", required=True, help="SCAN split: train, dev, test, testall")
    p.add_argument("--boxes", required=True, choices=BOX_SOURCES,
                   help="where boxes come from (none: the model runs 'w/o POS')")
    p.add_argument("--out", required=True, help="schema HDF5 file to create or add to")
    p.add_argument("--name", default=None,
                   help="dataset name (default: the existing file's, else flickr30k)")
    p.add_argument("--as", dest="as_split", choices=SPLITS, default=None,
                   help="schema split to write (default: from the SCAN split)")
    p.add_argument("--overwrite", action="store_true", help="replace the split if it exists")


def run_prepare_precomp(args, prog: str) -> int:
    from cccl_lite.data.precomp import convert_precomp

    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"
    code, info = run_script(prog, lambda: convert_precomp(
        args.src, args.split, args.boxes, args.out, name=args.name, as_split=args.as_split,
        overwrite=args.overwrite), f"interrupted: {args.out} unchanged")
    if code:
        return code
    print(f"{args.out}: wrote split {info['split']!r}: {info['images']} images, "
          f"{info['captions']} captions (features one row per {info['layout']})")
    return 0


# ---- prepare-tsv ------------------------------------------------------------------


def add_prepare_tsv(p) -> None:
    from cccl_lite.data.schema import SPLITS

    p.add_argument("--tsv", nargs="+", required=True, help="TSV file(s), any order")
    p.add_argument("--karpathy", required=True, help="dataset_flickr30k.json / dataset_coco.json")
    p.add_argument("--out", required=True, help="schema HDF5 file to create")
    p.add_argument("--num-regions", type=positive_int, default=36,
                   help="regions kept per image (the first ones; fewer are padded)")
    p.add_argument("--name", default=None, help="dataset name (default: the JSON's 'dataset')")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                   help="splits to write (default: all)")
    p.add_argument("--captions-per-image", type=positive_int, default=5,
                   help="captions kept per image (its first ones; 5 is the standard protocol)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run_prepare_tsv(args, prog: str) -> int:
    from cccl_lite.data.tsv import convert_tsv

    code, summary = run_script(prog, lambda: convert_tsv(
        args.tsv, args.karpathy, args.out, num_regions=args.num_regions, name=args.name,
        splits=args.splits, captions_per_image=args.captions_per_image,
        overwrite=args.overwrite), f"interrupted: {args.out} unchanged")
    if code:
        return code
    for split, (n_img, n_cap) in summary.items():
        print(f"{args.out}: {split}: {n_img} images, {n_cap} captions")
    return 0


# ---- download ---------------------------------------------------------------------


# What --extract copies out of each input (cccl_lite.data.download.SCAN_NAMES).
EXTRACT_KINDS = {"scan_precomp": ("features",), "camera_boxes": ("camera",),
                 "gsmn_boxes_f30k": ("gsmn",), "gsmn_boxes_coco": ("gsmn",)}


def list_known() -> None:
    """Print every known input, its sources and whether their sha256 is recorded."""
    from cccl_lite.data.download import KNOWN_FILES, load_checksums

    recorded = load_checksums()
    for key, entry in KNOWN_FILES.items():
        how = f"{len(entry.sources)} source(s)" if entry.sources else "by hand only"
        print(f"{key}  [{how}]\n  {entry.description}\n  page: {entry.page}")
        for k, s in enumerate(entry.sources, 1):
            sha = "sha256 recorded" if s.id in recorded else "sha256 not recorded yet"
            print(f"    {k}. {s.kind:<13} {s.link}\n       from: {s.cited}"
                  + (f"\n       note: {s.note}" if s.note else "") + f"\n       {sha}")


def add_download(p) -> None:
    from cccl_lite.data.download import KNOWN_FILES

    p.add_argument("name", nargs="?", choices=sorted(KNOWN_FILES), help="what to download")
    p.add_argument("--dest", default="data", help="folder to download into (default: data)")
    p.add_argument("--list", action="store_true", help="list the known inputs and exit")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
    p.add_argument("--source", default=None, metavar="N|KIND",
                   help="use only this source: its number in --list, or https, gdrive, "
                        "gdrive_folder, kaggle (default: each in turn)")
    p.add_argument("--record", action="store_true",
                   help="write the sha256 and size of the fetched files to the registry "
                        "(cccl_lite/data/checksums.json) instead of checking them")
    p.add_argument("--verify", action="store_true",
                   help="also recompute the sha256 of files fetched by an earlier run")
    p.add_argument("--extract", choices=("f30k", "coco"), default=None,
                   help="then copy that dataset's SCAN-layout files into --extract-to")
    p.add_argument("--extract-to", default=None,
                   help="default: DEST/f30k_precomp or DEST/coco_precomp")
    # Usage errors found after parsing go through this parser (exit 2).
    p.set_defaults(usage_error=p.error)


def run_download(args, prog: str) -> int:
    from cccl_lite.data.download import KNOWN_FILES, DownloadError, extract_scan_files, fetch
    from cccl_lite.files import OutputError, check_output_dir

    if args.list:
        list_known()
        return 0
    if args.name is None:
        args.usage_error("give a NAME (see --list)")
    if not args.timeout > 0 or args.timeout == float("inf"):
        args.usage_error(f"argument --timeout: expected a finite number > 0, got {args.timeout}")
    try:  # --dest under a file, or read-only: one line now, not a traceback later
        check_output_dir(args.dest, "destination folder (--dest)")
    except OutputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    try:
        paths = fetch(args.name, args.dest, timeout=args.timeout, record=args.record,
                      verify=args.verify, only=args.source)
        for path in paths:
            print(f"{path}: ok")
    except DownloadError:
        return 1  # fetch printed where to get the file by hand
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the .part file",
              file=sys.stderr)
        return 130
    if args.extract:
        if args.name not in EXTRACT_KINDS:
            args.usage_error(f"--extract works for {', '.join(EXTRACT_KINDS)}, not {args.name}")
        out = Path(args.extract_to or Path(args.dest) / f"{args.extract}_precomp")
        try:
            files = extract_scan_files(paths, args.extract, out, EXTRACT_KINDS[args.name])
        except DownloadError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 1
        print(f"{len(files)} {args.extract} file(s) in {out}: {', '.join(f.name for f in files)}")
        return 0
    print(f"next: {KNOWN_FILES[args.name].then}")
    return 0


# ---- difficulty ---------------------------------------------------------------------


def add_difficulty(p) -> None:
    p.add_argument("--data", required=True, help="a synthetic-scenes HDF5 file")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bow-epochs", type=positive_int, default=10)


def run_difficulty(args, prog: str) -> int:
    from cccl_lite.engine.baselines import difficulty_report

    t = time.time()
    code, r = run_script(prog, lambda: difficulty_report(args.data, args.split, args.seed,
                                                          args.bow_epochs))
    if code:
        return code
    print(f"pairs (caption, negative image) in {args.split}: {r['pairs']}")
    print(f"{'% own image scores higher':<28}{'binding':>9}{'relation':>10}{'random':>8}")
    for name in ("bag_of_words", "structure_probe"):
        print(f"{name:<28}" + "".join(f"{r[name][k]:>{w}.1f}" for k, w in
                                      (("binding", 9), ("relation", 10), ("random", 8))))
    rec = r["bag_of_words_recall"]
    print(f"bag of words on all of {args.split}: R@sum {rec['rsum']:.1f} "
          f"(i2t R@1 {rec['i2t_r1']:.1f}, t2i R@1 {rec['t2i_r1']:.1f})")
    print(f"({time.time() - t:.0f} s)")
    print(json.dumps(r))
    return 0


# ---- the table of commands ------------------------------------------------------------


class DataCommand(NamedTuple):
    """A data command: its script in data_scripts/, its arguments, its work, its help."""

    script: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, str], int]
    help: str


COMMANDS = {
    "make-synthetic": DataCommand(
        "make_synthetic.py", add_make_synthetic, run_make_synthetic,
        "write the synthetic-scenes dataset, the book's offline default (chapter 1)"),
    "encode-words": DataCommand(
        "encode_words.py", add_encode_words, run_encode_words,
        "cache one vector per caption word in a dataset file (chapter 2, eqs 11-12)"),
    "parse": DataCommand(
        "parse_captions.py", add_parse, run_parse,
        "dependency-parse a dataset file's captions with stanza (chapter 3, eq 23)"),
    "prepare-precomp": DataCommand(
        "prepare_precomp.py", add_prepare_precomp, run_prepare_precomp,
        "SCAN precomputed features (+ CAMERA or GSMN boxes) -> one split of a schema file"),
    "prepare-tsv": DataCommand(
        "prepare_tsv.py", add_prepare_tsv, run_prepare_tsv,
        "bottom-up-attention TSV features + Karpathy split JSON -> a schema file"),
    "download": DataCommand(
        "download.py", add_download, run_download,
        "download a published Flickr30K / COCO input from a source that serves it today"),
    "difficulty": DataCommand(
        "difficulty.py", add_difficulty, run_difficulty,
        "measure how hard the synthetic scenes' hard negatives are (bag of words, probe)"),
}


def script_main(name: str, argv=None, description: str | None = None) -> int:
    """``data_scripts/<script>.py``'s main: the data command ``name`` with its
    script's name as ``prog`` (usage and one-line errors), ``description``
    (default: the command's help) under ``--help``."""
    cmd = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=cmd.script, description=description or cmd.help)
    cmd.add(parser)
    args = parser.parse_args(argv)
    return cmd.run(args, cmd.script)
