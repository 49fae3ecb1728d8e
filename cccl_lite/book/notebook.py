"""What every chapter's setup cell needs: where data lives, smoke mode, device, seed.

Chapters call :func:`setup` once, then :func:`default_data` for the
synthetic scenes with word vectors (made on first use, then reused).
Smoke mode (``CCCL_SMOKE=1``, used by CI and quick builds) switches to the
``tiny`` scenes so every chapter runs in seconds.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from cccl_lite.data import synthetic, vectors
from cccl_lite.engine.train import RunOptions, load_model, resolve_config
from cccl_lite.engine.train import train as train_model
from cccl_lite.errors import InputError
from cccl_lite.studies import pretrained

__all__ = ["IN_COLAB", "REPOSITORY", "smoke", "data_dir", "default_data", "setup", "glue",
           "MissingResult", "results_file", "trained_model"]

IN_COLAB = "google.colab" in sys.modules
# The repository (_config.yml's repository.url; tests/test_repo_url.py checks).
REPOSITORY = "https://github.com/cccl-lite/cccl_lite"


def smoke() -> bool:
    """True when ``CCCL_SMOKE`` is set to anything but "" or "0"."""
    return os.environ.get("CCCL_SMOKE", "") not in ("", "0")


def data_dir() -> Path:
    """``$CCCL_DATA``, else ``data/`` of this checkout, else ``~/.cache/cccl_lite``."""
    if os.environ.get("CCCL_DATA"):
        return Path(os.environ["CCCL_DATA"])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / "data"
    return Path.home() / ".cache" / "cccl_lite"


def default_data(size: str | None = None, seed: int = 0, words: bool = True) -> Path:
    """The synthetic scenes file (``small``, or ``tiny`` in smoke mode), with
    MiniLM word vectors cached when ``words``; made on first use. Only a model
    that reads word vectors needs ``words`` (the shipped lite model reads word
    ids: its chapters pass ``words=False`` and skip the encoding); where a GPU
    is present the encoding runs on it."""
    size = size or ("tiny" if smoke() else "small")
    path = data_dir() / f"scenes-{size}-seed{seed}.h5"
    if not path.exists():
        print(f"making {path} (once)...")
        synthetic.make_synthetic(path, seed=seed, size=size)
    if words:
        # Skips splits that are already cached; offline, the MiniLM is local.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        vectors.cache_word_vectors(path, device="cuda" if torch.cuda.is_available() else "cpu")
    return path


def setup(seed: int = 0) -> torch.device:
    """Seed Python, NumPy and PyTorch; return (and print) the device in use."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mode = " (smoke mode: tiny data)" if smoke() else ""
    print(f"cccl_lite on {device}{mode}, torch {torch.__version__}")
    return device


def plain_value(value):
    """A NumPy scalar or a one-number tensor as the Python number it holds,
    anything else unchanged. myst-nb pastes a glued value from its text/plain
    repr, which it reads back with ``ast.literal_eval`` before applying the
    format spec: NumPy 2 writes ``np.float64(5.9)``, which that cannot read,
    so ``{glue:text}`x:.1f``` would paste nothing."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def glue(name: str, value):
    """Hand a computed result to the prose: ``{glue:text}`name:.1f``` in a
    chapter's Markdown shows ``value`` where the book is built (myst-nb's
    ``glue``, nothing displayed under the cell), so no result number is typed
    by hand. Where myst-nb is not installed (Colab, the student edition) the
    cell prints ``name = value`` instead, and the generated notebooks show the
    name in the prose. NumPy and tensor scalars are glued as Python numbers
    (:func:`plain_value`). Returns ``value``."""
    shown = plain_value(value)
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # a plain Jupyter or Colab kernel
        print(f"{name} = {shown}")
    else:
        myst_glue(name, shown, display=False)
    return value


class MissingResult(InputError):
    """A results file a chapter needs is not in this installation. Jupyter
    (IPython) shows it as its one-line message, with no traceback, and a
    "Run all" stops at the cell that asked for it, not further down."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for custom display
        return [f"{type(self).__name__}: {self}"]


def results_file(name: str, optional: bool = False) -> dict | None:
    """A study's results file shipped with the package (``cccl_lite/results/``,
    e.g. "ablations.json"), read as JSON with :mod:`importlib.resources`, so a
    chapter reads the same file from a checkout, a wheel or a Colab runtime,
    with no network. A file that is not there (a study not run yet) is
    :class:`MissingResult`, one line naming it; with ``optional`` it prints
    that line and returns None instead, for a chapter that skips what needs
    it."""
    import json
    from importlib import resources

    shipped = resources.files("cccl_lite") / "results" / name
    if not shipped.is_file():
        message = (f"cccl_lite/results/{name} is not in this installation of cccl_lite "
                   "(that study has not been run yet)")
        if not optional:
            raise MissingResult(message)
        print(message + ": skipping what needs it")
        return None
    return json.loads(shipped.read_text(encoding="utf-8"))


def trained_model(epochs: int | None = None, max_steps: int | None = None, seed: int = 0,
                  device: str | torch.device = "cpu", train: bool = False, **config_overrides):
    """The lite CCCL that chapters inspect: ``(model, config, checkpoint path)``.

    By default the model shipped with the package
    (:func:`cccl_lite.studies.pretrained.load_pretrained`: trained once with the lite
    recipe, its provenance in ``cccl_lite/assets/``), so no chapter has to
    train to be readable. ``train=True`` (or any of ``epochs``, ``max_steps``,
    config overrides, or a missing shipped file) trains a lite model on
    :func:`default_data` instead, with the lite preset's recipe, cached under
    ``data_dir()/runs`` so chapters share one run. Smoke mode trains one epoch
    of at most 5 batches.
    """
    asked = train or epochs is not None or max_steps is not None or config_overrides
    if not asked and pretrained.checkpoint_path().exists():
        model, config, path = pretrained.load_pretrained(device=device)
        return model, config, path
    if smoke():
        epochs, max_steps = 1, 5
    data = default_data()
    config, recipe = resolve_config("lite", data, **({"epochs": epochs} if epochs else {}),
                                    **config_overrides)
    extra = "".join(f"-{k}{v}" for k, v in sorted(config_overrides.items()))
    name = f"{data.stem}-lite-e{recipe.epochs}" + (f"-s{max_steps}" if max_steps else "") + extra
    out = data_dir() / "runs" / name
    best = out / "best.pt"
    if not best.exists():
        print(f"training a lite CCCL for up to {recipe.epochs} epoch(s) into {out} (once)...")
        train_model(config, recipe, data, out, RunOptions(seed=seed, device="cpu",
                                                          max_steps=max_steps, quiet=True,
                                                          overwrite=True))
    model, config, _ = load_model(best, device=device)
    model.eval()
    return model, config, best
