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

__all__ = ["IN_COLAB", "REPOSITORY", "smoke", "data_dir", "default_data", "setup", "glue",
           "results_file", "trained_model"]

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
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / "data"
    return Path.home() / ".cache" / "cccl_lite"


def default_data(size: str | None = None, seed: int = 0, words: bool = True) -> Path:
    """The synthetic scenes file (``small``, or ``tiny`` in smoke mode), with
    MiniLM word vectors cached when ``words``; made on first use."""
    from .data.synthetic import make_synthetic
    from .data.text import cache_word_vectors

    size = size or ("tiny" if smoke() else "small")
    path = data_dir() / f"scenes-{size}-seed{seed}.h5"
    if not path.exists():
        print(f"making {path} (once)...")
        make_synthetic(path, seed=seed, size=size)
    if words:
        # Skips splits that are already cached; offline, the MiniLM is local.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        cache_word_vectors(path)
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


def glue(name: str, value):
    """Hand a computed result to the prose: ``{glue:text}`name:.1f``` in a
    chapter's Markdown shows ``value`` where the book is built (myst-nb's
    ``glue``, nothing displayed under the cell), so no result number is typed
    by hand. Where myst-nb is not installed (Colab, the student edition) the
    cell prints ``name = value`` instead, and the generated notebooks show the
    name in the prose. Returns ``value``."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # a plain Jupyter or Colab kernel
        print(f"{name} = {value}")
    else:
        myst_glue(name, value, display=False)
    return value


def results_file(name: str) -> dict | None:
    """A study's results file of ``book/results/`` (e.g. "ablations.json"),
    read as JSON: from this checkout, else (a Colab copy of a chapter, the
    package installed without the book) fetched once from the repository into
    ``data_dir()/results``; None if it is in neither place (a study not run
    yet, or no network)."""
    import json
    import urllib.error
    import urllib.request

    local = Path(__file__).resolve().parent.parent / "book" / "results" / name
    if not local.exists():
        local = data_dir() / "results" / name
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")
        url = REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/")
        try:
            with urllib.request.urlopen(f"{url}/main/book/results/{name}", timeout=30) as r:
                part.write_bytes(r.read())
        except (urllib.error.URLError, OSError):
            part.unlink(missing_ok=True)
            return None
        part.replace(local)  # whole, or not at all
    return json.loads(local.read_text())


def trained_model(epochs: int | None = None, max_steps: int | None = None, seed: int = 0,
                  device: str | torch.device = "cpu", train: bool = False, **config_overrides):
    """The lite CCCL that chapters inspect: ``(model, config, checkpoint path)``.

    By default the model shipped with the package
    (:func:`cccl_lite.pretrained.load_pretrained`: trained once with the lite
    recipe, its provenance in ``cccl_lite/assets/``), so no chapter has to
    train to be readable. ``train=True`` (or any of ``epochs``, ``max_steps``,
    config overrides, or a missing shipped file) trains a lite model on
    :func:`default_data` instead, with the lite preset's recipe, cached under
    ``data_dir()/runs`` so chapters share one run. Smoke mode trains one epoch
    of at most 5 batches.
    """
    from . import pretrained
    from .train import load_model, lite_options, resolve_config, train as run

    asked = train or epochs is not None or max_steps is not None or config_overrides
    if not asked and pretrained.checkpoint_path().exists():
        model, config, path = pretrained.load_pretrained(device=device)
        return model, config, path
    if smoke():
        epochs, max_steps = 1, 5
    data = default_data()
    config = resolve_config("lite", data, **({"epochs": epochs} if epochs else {}),
                            **config_overrides)
    extra = "".join(f"-{k}{v}" for k, v in sorted(config_overrides.items()))
    name = f"{data.stem}-lite-e{config.epochs}" + (f"-s{max_steps}" if max_steps else "") + extra
    out = data_dir() / "runs" / name
    best = out / "best.pt"
    if not best.exists():
        print(f"training a lite CCCL for up to {config.epochs} epoch(s) into {out} (once)...")
        run(config, data, out, lite_options(seed=seed, device="cpu", max_steps=max_steps,
                                            quiet=True, overwrite=True))
    model, config, _ = load_model(best, device=device)
    model.eval()
    return model, config, best
