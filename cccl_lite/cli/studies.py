"""``python -m cccl_lite ablate | diagnose | ship``: the studies' commands.

The work is :func:`cccl_lite.studies.ablate.run_ablations` (chapter 7's Table 6),
:func:`cccl_lite.studies.diagnose.run_diagnosis` (chapter 11's diagnosis) and
:func:`cccl_lite.studies.pretrained.ship` (the shipped lite model). The book's
teaching commands live here too: the editions (``student-edition``,
``colab-edition``) and ``grade`` (:func:`cccl_lite.book.grade.grade_submissions`).
"""

from __future__ import annotations

from pathlib import Path

from cccl_lite.studies.ablate import run_ablations
from cccl_lite.studies.diagnose import run_diagnosis
from cccl_lite.studies.dual_study import run_dual_study
from cccl_lite.studies.plateau import run_plateau
from cccl_lite.studies.sensitivity import run_sensitivity
from cccl_lite.studies.pretrained import ASSET_DIR, NAME, checkpoint_path, ship
from cccl_lite.cli.types import nonnegative_int, positive_float, positive_int

__all__ = ["add_ablate_arguments", "run_ablate", "add_diagnose_arguments", "run_diagnose",
           "add_dual_arguments", "run_dual", "add_ship_arguments", "run_ship",
           "add_grade_arguments", "run_grade"]


# ---- ablate -----------------------------------------------------------------


def add_ablate_arguments(p) -> None:
    """``python -m cccl_lite ablate``'s arguments."""
    p.add_argument("--data", required=True, help="HDF5 file with word vectors (the default "
                                                 "synthetic scenes: data/scenes-small-seed0.h5)")
    p.add_argument("--out", default="runs/ablations", help="training runs go here")
    p.add_argument("--results", default=None,
                   help="the results table, rewritten after every row (default: "
                        "OUT/ablations.json; chapter 7 reads cccl_lite/results/ablations.json)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="at most this many epochs per run (default: the lite preset's; runs "
                        "stop earlier on the recipe's validation measure)")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="batches per epoch (smoke)")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="seeds 0..N-1 for every row (default 3), to size the noise")
    p.add_argument("--only", nargs="+", default=None, help="row names to (re)train")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a results file written with other settings")


def run_ablate(args) -> int:
    results = args.results if args.results is not None else Path(args.out) / "ablations.json"
    run_ablations(args.data, args.out, results, epochs=args.epochs,
                  max_steps=args.max_steps, seeds=args.seeds, only=args.only,
                  overwrite=args.overwrite)
    return 0


# ---- diagnose ---------------------------------------------------------------


def add_diagnose_arguments(p) -> None:
    """``python -m cccl_lite diagnose``'s arguments."""
    p.add_argument("--data", required=True, help="HDF5 synthetic scenes with word vectors")
    p.add_argument("--out", default="runs/diagnosis", help="training runs go here")
    p.add_argument("--results", required=True,
                   help="JSON results file (chapter 5 reads cccl_lite/results/diagnosis.json)")
    p.add_argument("--epochs", type=positive_int, default=3, help="the budget of every row")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="the study's seed (part of the results file's settings)")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=None,
                   help="run each row at these seeds (default: --seed); a row at another "
                        "seed than --seed is its own entry, with a 'seed' field, in the "
                        "same results file")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="batches per epoch (smoke)")
    p.add_argument("--only", nargs="+", default=None,
                   help="row names to run, in this order (rows already done are skipped)")
    p.add_argument("--rerun", action="store_true", help="run rows again that are done")
    p.add_argument("--rows", choices=("diagnosis", "sensitivity", "plateau"),
                   default="diagnosis",
                   help="which study's rows: chapter 11's diagnosis (default), Sec. 4.4's "
                        "sensitivity to P and λ (cccl_lite.studies.sensitivity, chapter 7 reads "
                        "cccl_lite/results/sensitivity.json; every point at the first of "
                        "--seeds, then at the next) or eq 33 after a warm-up against the "
                        "lite recipe at the plateau (cccl_lite.studies.plateau, chapter 6 reads "
                        "cccl_lite/results/plateau.json; --epochs is then the cap)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a results file that holds other settings")


def run_diagnose(args) -> int:
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    run = {"sensitivity": run_sensitivity, "plateau": run_plateau}.get(args.rows, run_diagnosis)
    run(args.data, args.out, args.results, epochs=args.epochs, seed=args.seed,
        max_steps=args.max_steps, only=args.only, overwrite=args.overwrite,
        rerun=args.rerun, seeds=args.seeds)
    return 0


# ---- dual-encoder --------------------------------------------------------------


def add_dual_arguments(p) -> None:
    """``python -m cccl_lite dual-encoder``'s arguments."""
    p.add_argument("--data", required=True, help="HDF5 synthetic scenes (word vectors not needed)")
    p.add_argument("--results", required=True,
                   help="JSON results file (chapters 1 and 10 read "
                        "cccl_lite/results/dual-encoder.json)")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1],
                   help="train and measure at each of these seeds (done seeds are skipped)")
    p.add_argument("--checkpoint", default=None,
                   help="also write the first seed's dual encoder here (chapter 10 ships "
                        "cccl_lite/assets/dual-encoder.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a results file that holds other settings, or a checkpoint")


def run_dual(args) -> int:
    run_dual_study(args.data, args.results, tuple(args.seeds), args.checkpoint, args.overwrite)
    return 0


# ---- ship -------------------------------------------------------------------


def add_ship_arguments(p) -> None:
    p.add_argument("--run-dir", required=True, help="a finished training run's folder (best.pt)")
    p.add_argument("--data", required=True, help="the data file it was trained on")
    p.add_argument("--folder", default=str(ASSET_DIR), help="where the shipped pair goes")
    p.add_argument("--name", default=NAME)
    p.add_argument("--overwrite", action="store_true", help="replace a shipped model")
    p.add_argument("--trained-commit", default=None,
                   help="the commit the run was trained from, for a run whose config.json "
                        "does not record it")


def run_ship(args) -> int:
    rec = ship(args.run_dir, args.data, Path(args.folder), args.name, args.overwrite,
               args.trained_commit)
    print(f"shipped {checkpoint_path(args.name, Path(args.folder))}: test R@sum "
          f"{rec['test']['rsum']:.1f}, truth R@sum {rec['truth']['rsum']:.1f}, "
          f"siblings {rec['siblings']}")
    return 0


def add_student_arguments(parser) -> None:
    """``python -m cccl_lite student-edition``'s arguments."""
    parser.add_argument("--out", required=True, help="folder for the notebooks")
    parser.add_argument("--book", default=None, help="the book's folder (default: this "
                                                     "checkout's book/)")
    parser.add_argument("--chapter", action="append", default=None, metavar="STEM",
                        help="only this chapter, e.g. 02_perceive (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace notebooks already in --out (a student's work, perhaps)")


def run_student(args) -> int:
    """Write the student edition (:func:`cccl_lite.book.editions.make_student_edition`);
    print each notebook's path."""
    from cccl_lite.book.editions import make_student_edition

    for path in make_student_edition(args.out, args.book, args.chapter, args.overwrite):
        print(path)
    return 0


def add_colab_arguments(parser) -> None:
    """``python -m cccl_lite colab-edition``'s arguments."""
    parser.add_argument("--out", default=None,
                        help="folder for the notebooks (default: colab/ of this checkout, "
                             "what the book's launch buttons open)")
    parser.add_argument("--book", default=None, help="the book's folder (default: this "
                                                     "checkout's book/)")
    parser.add_argument("--chapter", action="append", default=None, metavar="STEM",
                        help="only this page, e.g. 02_perceive (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace notebooks already in --out")
    parser.add_argument("--sync-url", action="store_true",
                        help="first write _config.yml's repository.url into every page's "
                             "install cell and cccl_lite/book/notebook.py (after a change of URL)")


def run_colab(args) -> int:
    """Write the Colab edition (:func:`cccl_lite.book.editions.make_colab_edition`);
    print each notebook's path (and, with ``--sync-url``, each source file
    whose repository URL it updated first)."""
    from cccl_lite.book.editions import make_colab_edition, sync_repository_url
    from cccl_lite.book.student import default_book_dir

    if args.sync_url:
        book = Path(args.book) if args.book else default_book_dir()
        for path in sync_repository_url(book.parent):
            print(f"{path}: repository URL updated")
    for path in make_colab_edition(args.out, args.book, args.chapter, args.overwrite):
        print(path)
    return 0


def add_grade_arguments(parser) -> None:
    """``python -m cccl_lite grade``'s arguments (layout: :mod:`cccl_lite.book.grade`)."""
    parser.add_argument("submissions", metavar="SUBMISSIONS",
                        help="folder with SUBMISSIONS/<student>/<chapter>.ipynb or "
                             "SUBMISSIONS/<student>[__<anything>].ipynb")
    parser.add_argument("--out", default=None, help="folder for grades.csv and summary.csv "
                                                    "(default: SUBMISSIONS-grades beside it)")
    parser.add_argument("--timeout", type=positive_float, default=600.0, metavar="SECONDS",
                        help="time limit per notebook, kernel start not counted (default 600)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace grades.csv and summary.csv if they exist")


def run_grade(args) -> int:
    """Grade every submitted notebook (:func:`cccl_lite.book.grade.grade_submissions`)."""
    from cccl_lite.book.grade import grade_submissions

    grade_submissions(args.submissions, args.out, args.timeout, args.overwrite)
    return 0
