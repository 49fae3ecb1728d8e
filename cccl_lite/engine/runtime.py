"""Where and how a run computes: device, AMP, DDP ranks, seeds and RNG states.

The trainer's plumbing (:class:`~cccl_lite.engine.train.Trainer`), apart from its
loop: which device and autocast dtype an option names, the ranks torchrun
set, and the RNG states a checkpoint saves so that a resumed run continues
bit for bit (see :mod:`cccl_lite.engine.train`).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from cccl_lite.errors import InputError

__all__ = ["Dist", "resolve_device", "resolve_amp", "rng_states", "restore_rng", "seed_worker",
           "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """``model`` in eval mode inside the block (dropout off; nothing here uses
    batch norm), then back in the mode it was in, also after an error: a
    measurement in the middle of training must not leave the model in eval
    mode, nor one of an eval-mode model switch it to training."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def rng_states(loader_gen: torch.Generator) -> dict:
    """Every RNG state a resumed run needs (torch, CUDA, numpy, Python, the
    loader's generator), as tensors, numbers and lists (weights_only-safe)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_rng_state(),
        "python": _python_rng_state(),
        "loader": loader_gen.get_state(),
    }


def restore_rng(states: dict, loader_gen: torch.Generator) -> None:
    """Set every RNG back to ``states`` (from :func:`rng_states`)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    loader_gen.set_state(states["loader"])


def seed_worker(worker_id: int) -> None:
    # DataLoader seeds each worker's torch RNG from its generator; numpy's
    # and Python's follow, so any randomness in a worker is reproducible.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class Dist:
    """This process's rank, the world size and its local rank (torchrun's
    RANK, WORLD_SIZE, LOCAL_RANK; one process without them)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, dist: Dist) -> torch.device:
    """The device ``--device name`` means ("auto": CUDA when there is one;
    "cuda" under torchrun: cuda:LOCAL_RANK); InputError when it is not here."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available here "
                             f"(torch {torch.__version__}); use --device cpu")
        if name == "cuda":
            name = f"cuda:{dist.local_rank}"
    elif name != "cpu":
        raise InputError(f"unknown --device {name!r}; expected cpu, cuda, cuda:K or auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise InputError(f"--device {name}: {e}") from None


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp mode`` on ``device`` (None: no autocast):
    "auto" is bf16 on a GPU with bf16 units, else fp16; off on the CPU.

    A reading (the paper names no precision): "auto" is the default
    (``RunOptions.amp``), so on CUDA mixed precision is on unless
    ``--amp off``; the scores (eq 28's MLP and sigmoid, eq 32's mean) and the
    loss stay float32 (``cccl_lite.model.loss.SimilarityMLP.forward``). Readings
    appendix, "Precision and initialisation"."""
    if device.type == "cpu":
        if mode == "fp16":
            raise InputError("--amp fp16 needs CUDA; on the CPU use bf16 or off")
        return torch.bfloat16 if mode == "bf16" else None
    if mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16
