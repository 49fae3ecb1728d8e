"""Checkpoints and configs: what a run writes and reads, and whether it fits its data.

Taught in chapter 6 ("Training and evaluation"). The one place for

* the preset a command trains (:func:`resolve_config`, :func:`prepare_config`:
  ``cccl_lite.engine.recipes.PRESETS``, the lite model sized to the data
  file, the paper's Table 1's);
* the one rule for which reader a config needs (:func:`make_reader`: word
  vectors or word ids, dependency heads only where the text graph reads
  them, eq 9's six-tuple);
* the one check that a config (or a checkpoint's) fits a data file
  (:func:`check_fits`: d_F, d_E, boxes), used by training and evaluation;
* loading and saving: :func:`load_checkpoint` (``torch.load`` with
  ``weights_only=True``, never code from a file), :func:`load_model`,
  :func:`load_for_data` (a checkpoint and the reader of a split it fits),
  :func:`save_atomic` (a temp file renamed over the name); a checkpoint of
  the format before (1: the recipe's numbers inside ``config``, its choices
  inside ``options``) is read into this one (:func:`load_checkpoint`,
  :func:`cccl_lite.engine.recipes.split_settings`);
* whether a checkpoint continues a run (:func:`check_resumable`: every
  field of its :class:`~cccl_lite.engine.recipes.Recipe` but the
  ``resumable`` ones, the seed, the world size and the data).

Expected failures raise :class:`cccl_lite.errors.InputError` (or the data
layer's :class:`~cccl_lite.data.schema.SchemaError`): one line on the
command line.

Why over 500 lines: every check a checkpoint passes before a
model is built from it (zip records, weight shapes against the config, the
simulated detector of its data, issue 29) sits beside the one loader.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch

from cccl_lite.data.dataset import SplitReader, build_vocab
from cccl_lite.data.features import DETECTOR_SEED, detector_name, file_detector
from cccl_lite.data.schema import SchemaError, check_file
from cccl_lite.errors import InputError, field, one_line, os_reason
from cccl_lite.files import write_atomic
from cccl_lite.model.cccl import ABLATIONS, CCCL, CCCLConfig
from cccl_lite.engine.recipes import (PRESETS, Preset, Recipe, paper_preset, split_settings,
                                      trajectory_fields)

__all__ = [
    "CHECKPOINT_FORMAT",
    "data_dims",
    "data_dataset",
    "data_identity",
    "resolve_config",
    "prepare_config",
    "make_reader",
    "check_fits",
    "save_atomic",
    "load_checkpoint",
    "config_of",
    "migrate",
    "load_model",
    "load_for_data",
    "check_resumable",
    "checkpoint_detector",
    "check_detector",
]

# 2: the model config, the recipe and the run options apart ("config",
# "recipe", "options"); 1: the recipe's numbers inside "config" and its
# choices inside "options" (read by load_checkpoint's migration).
CHECKPOINT_FORMAT = 2


# --------------------------------------------------------------------------
# configs and data
# --------------------------------------------------------------------------


def data_dims(path) -> dict:
    """The train split's d_F, n, d_E (None without cached word vectors), has_boxes."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such data file (make one with "
                         f"`python -m cccl_lite make-synthetic --out {path}`)")
    with check_file(path, "train") as f:
        if "val" not in f:
            raise SchemaError(f"{path}: no 'val' split to select the best epoch on")
        g = f["train"]
        _, n, d_f = g["images/features"].shape
        wv = g["captions"].get("word_vectors")
        return dict(region_dim=int(d_f), num_regions=int(n),
                    word_dim=None if wv is None else int(wv.shape[1]),
                    has_boxes=bool(f.attrs["has_boxes"]))


def data_dataset(path) -> str:
    """Which of Table 1's datasets a schema file holds, for λ (eq 34): "coco" when
    its ``dataset`` attribute names COCO (Karpathy's JSON and ``--name coco``
    write "coco"), else "f30k" (Flickr30K, and the synthetic scenes)."""
    with check_file(path) as f:
        name = str(f.attrs.get("dataset", "")).lower()
    return "coco" if "coco" in name else "f30k"


def _plain(value):
    """An HDF5 attribute as a JSON/checkpoint-safe value (numpy scalars, bytes)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.item() if hasattr(value, "item") else value


def data_identity(path) -> dict:
    """What makes a data file the same dataset for a resumed run: its path
    (resolved), name, seed and size attributes, word encoder, and the images
    and captions of the train and val splits (read from the file's header),
    and the simulated detector of synthetic scenes (:func:`file_detector`,
    None for real data): a checkpoint keeps it as ``data``."""
    path = Path(path)
    with check_file(path, "train") as f:
        wv = f["train/captions"].get("word_vectors")
        ident = {"path": str(path.resolve()), "dataset": str(f.attrs.get("dataset", "")),
                 "seed": _plain(f.attrs.get("seed")), "size": _plain(f.attrs.get("size")),
                 "detector": file_detector(f.attrs),
                 "encoder": None if wv is None else str(wv.attrs.get("encoder", ""))}
        for split in ("train", "val"):
            if split in f:
                ident[split] = [int(f[split]["images/features"].shape[0]),
                                int(f[split]["captions/text"].shape[0])]
    return ident


def resolve_config(name: str, data_path, ablation: str | None = None,
                   dataset: str | None = None, **overrides) -> Preset:
    """The CLI's (model config, recipe): preset ``name`` of
    :data:`~cccl_lite.engine.recipes.PRESETS` with ``overrides`` (fields of
    either half) and one Table 6 ``ablation``.

    "lite" is sized to the data: its region_dim d_F and word_dim d_E are read
    from the file (any synthetic size, MiniLM or BERT vectors; when words
    are read by the Bi-GRU, as in the lite preset and under "w/o BERT", d_E
    is the Bi-GRU's width and stays the preset's). "paper" and "as printed"
    keep Table 1's d_F = 2048, d_E = 768, and :func:`prepare_config` refuses
    a file that differs; they take Table 1's λ for ``dataset`` ("f30k" 0.5,
    "coco" 0.75), by default the one the data file holds
    (:func:`data_dataset`); an explicit ``coherence_weight`` override wins.
    Unknown names raise InputError listing the valid ones.
    """
    if name not in PRESETS:
        raise InputError(f"--config {name!r}: unknown; expected one of: "
                         + ", ".join(repr(n) if " " in n else n for n in PRESETS))
    if ablation is not None and ablation not in ABLATIONS:
        raise InputError(f"--ablation {ablation!r}: unknown; expected one of: "
                         + ", ".join(repr(a) for a in ABLATIONS))
    preset = PRESETS[name]
    if name == "lite":
        if dataset is not None:
            raise InputError(f"--dataset {dataset} sets Table 1's λ of the paper presets; with "
                             f"--config {name} use --coherence-weight")
        dims = data_dims(data_path)
        derived = {"region_dim": dims["region_dim"]}
        reads_vectors = overrides.get("use_bert", preset.model.use_bert)
        if dims["word_dim"] is not None and reads_vectors and ablation != "w/o BERT":
            derived["word_dim"] = dims["word_dim"]
        overrides = {**derived, **overrides}
    else:  # Table 1's λ per dataset: --dataset, else what the data file holds
        weight = paper_preset(dataset or data_dataset(data_path)).recipe.coherence_weight
        preset = preset.replace(coherence_weight=weight)
    try:
        preset = preset.replace(**overrides)
    except ValueError as e:
        raise InputError(f"--config {name}: {one_line(e)}") from None
    return preset.with_ablation(ablation) if ablation else preset


def check_fits(config: CCCLConfig, region_dim: int, word_dim: int | None, has_boxes: bool,
               where, whose: str = "config", encoder: str | None = None) -> None:
    """Refuse a model of ``config`` on data with ``region_dim``-d features,
    ``word_dim``-d word vectors (None: not cached; ``encoder`` their name)
    and boxes or none. ``where`` names the data and ``whose`` ("config" or
    "checkpoint") the model in the message. The one check, for training and
    for evaluation: d_F must match, d_E must match when the model reads word
    vectors, and only "w/o POS" runs without boxes (eq 9 needs them).
    Raises InputError naming both numbers."""
    # The paper preset is the usual misfit when training: say what it needs.
    training = whose == "config"
    if region_dim != config.region_dim:
        hint = (" (Table 1 needs 2048-d bottom-up features; use --config lite for other "
                "data)" if training else "")
        raise InputError(f"{whose} and data do not fit: the {whose}'s region_dim is "
                         f"{config.region_dim}, {where} has {region_dim}-d region "
                         f"features{hint}")
    if config.use_bert and word_dim is not None and word_dim != config.word_dim:
        hint = (" (Table 1 needs 768-d BERT-base vectors; use --config lite for other "
                "encoders)" if training else f" ({encoder or 'unknown encoder'})")
        raise InputError(f"{whose} and data do not fit: the {whose}'s word_dim is "
                         f"{config.word_dim}, {where} has {word_dim}-d word vectors{hint}")
    if config.use_position and not has_boxes:
        raise InputError(f"{where} has no boxes, so no position features (eq 9): only "
                         f"'w/o POS' runs without them (train with --ablation 'w/o POS')")


def prepare_config(config: CCCLConfig, data_path) -> tuple[CCCLConfig, dict | None]:
    """Check ``config`` against the data file; return (config, vocab).

    num_regions n is taken from the file; d_F and d_E must match it
    (:func:`check_fits`). Under "w/o BERT" the vocabulary is built from the
    train split (:func:`build_vocab`) and sets ``vocab_size``; d_E is then
    the Bi-GRU's width, not the file's. A file without boxes trains only
    "w/o POS". vocab is None when word vectors are used.
    """
    path = Path(data_path)
    dims = data_dims(path)
    if config.use_bert and dims["word_dim"] is None:
        raise SchemaError(f"{path}:/train/captions/word_vectors: missing; run "
                          f"`python -m cccl_lite encode-words {path}` first")
    check_fits(config, dims["region_dim"], dims["word_dim"], dims["has_boxes"], path)
    vocab = None
    if not config.use_bert:
        vocab = build_vocab(path)
        config = dataclasses.replace(config, vocab_size=len(vocab))
    config = dataclasses.replace(config, num_regions=dims["num_regions"])
    return config, vocab


def make_reader(path, split: str, config: CCCLConfig, vocab: dict | None = None) -> SplitReader:
    """The :class:`SplitReader` a model of ``config`` needs, for training and
    evaluation alike: word vectors, or word ids and ``vocab`` under "w/o
    BERT"; dependency heads only when the text graph reads them (not under
    "w/o S-NLP" nor "w/o B-3", so such a model runs on unparsed data); eq 9's
    six-tuple of ``config.position_tuple``."""
    with warnings.catch_warnings():
        if not config.use_position:  # "has no boxes" is expected under "w/o POS"
            warnings.simplefilter("ignore")
        return SplitReader(path, split, words="vectors" if config.use_bert else "ids",
                           vocab=vocab, syntax=config.use_syntax and config.use_branch3,
                           position_tuple=config.position_tuple)


# --------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------


def save_atomic(obj, path) -> Path:
    """torch.save through a temp file in the same directory, then os.replace
    (:func:`cccl_lite.files.write_atomic`): ``path`` is either the old file or
    the complete new one, never a part."""
    path = Path(path)
    try:
        return write_atomic(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as e:
        # A full disk (or a file-size limit) surfaces from torch's zip writer
        # as an OSError wrapped in a RuntimeError: one line naming the file,
        # not torch's traceback (issue 29 #14). write_atomic removed the temp.
        kept = (f"the previous {path.name} is kept" if path.exists()
                else "nothing was written under that name")
        raise InputError(f"{path}: cannot write the checkpoint ({os_reason(e)}); is the disk "
                         f"full? {kept}") from None


def _load_failure(e: Exception) -> str:
    """Why torch.load(weights_only=True) failed, in a few words. Never torch's
    advice to retry with weights_only=False: that would run whatever code
    the file holds, and a checkpoint of ours never needs it."""
    text = str(e)
    if "WeightsUnpickler error" in text:  # not a file of tensors and numbers
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].strip()
        return (f"not a PyTorch file of tensors and numbers: {detail[:120] or 'unreadable'}; "
                f"cccl_lite never loads code from a checkpoint")
    if isinstance(e, EOFError):
        return "the file ends early: truncated?"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    first = first.split(". ")[0]  # torch's first sentence; its advice follows
    if "weights_only" in first:
        first = ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


# The kinds of a checkpoint's fields that the engine reads (train's
# _checkpoint and _save write them).
_FIELD_KINDS = {"config": dict, "model": dict, "vocab": (dict, type(None)), "options": dict,
                "recipe": dict,
                "epoch": int, "step": int, "best_rsum": (int, float), "best_epoch": int,
                "optimizer": dict, "scheduler": dict, "rng": dict, "data": (dict, type(None)),
                "world_size": int}


def _check_records(path: Path) -> None:
    """Refuse a zip bomb before torch.load inflates it: torch.save stores every
    record of its zip archive uncompressed, so a compressed record, or records
    adding up to more than the file, are crafted (issue 29, 5: 3.4 GB from a
    small file)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # torch's legacy format, or not a checkpoint: torch.load says which
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable cccl_lite checkpoint ({e})") from None
    size = path.stat().st_size
    for i in infos:
        if i.compress_type != zipfile.ZIP_STORED or i.file_size > size:
            raise InputError(f"{path}: record {i.filename} is compressed ({i.compress_size:,} "
                             f"bytes that unpack to {i.file_size:,}); torch.save never "
                             f"compresses: a crafted checkpoint, not loaded")


def _check_weight_shapes(ckpt: dict, config: CCCLConfig, path) -> None:
    """The shapes the config implies (a model built on the meta device: no
    memory) against the checkpoint's weights, before the real model is
    allocated: a config declaring 6e6 words took 7.3 GB (issue 29, 5)."""
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise InputError(f"{path}: model: expected a dict of weights, got "
                         f"{type(state).__name__}")
    try:
        with torch.device("meta"):
            expected = CCCL(config).state_dict()
    except (ValueError, TypeError, RuntimeError):
        return  # building the real model reports it
    for name, want in expected.items():
        have = state.get(name)
        if isinstance(have, torch.Tensor) and tuple(have.shape) != tuple(want.shape):
            raise InputError(f"{path}: config and weights disagree: {name} is "
                             f"{tuple(have.shape)} in the weights, {tuple(want.shape)} by the "
                             f"config (vocab_size {config.vocab_size}, word_dim "
                             f"{config.word_dim}, region_dim {config.region_dim}); not loaded")


def load_checkpoint(path, device="cpu") -> dict:
    """A checkpoint of :class:`~cccl_lite.engine.train.Trainer` as a dict, loaded with
    weights_only=True."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a checkpoint file (best.pt or last.pt)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); not a checkpoint (an interrupted "
                         f"copy?)")
    _check_records(path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated file or another program's pickle
        raise InputError(f"{path}: not a readable cccl_lite checkpoint "
                         f"({_load_failure(e)})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise InputError(f"{path}: not a cccl_lite checkpoint (no config and model)")
    for key, kind in _FIELD_KINDS.items():  # an edited file: one line naming the field
        if key in ckpt:
            field(ckpt, key, path, kind=kind)
    if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
        raise InputError(f"{path}: checkpoint format {ckpt['format']} is newer than this "
                         f"cccl_lite ({CHECKPOINT_FORMAT}); upgrade cccl_lite")
    return migrate(ckpt)


def migrate(ckpt: dict) -> dict:
    """A loaded checkpoint in this version's shape (format 2): one of format 1
    or before, whose ``config`` held the recipe's numbers and ``options`` its
    choices, gets its ``config`` (the model's fields), ``recipe`` and
    ``options`` (the run's) apart (:func:`~cccl_lite.engine.recipes.split_settings`;
    a recipe field it lacks gets the value such runs trained with). The
    weights and training state are untouched."""
    if "recipe" in ckpt:
        return ckpt
    config, recipe, options = split_settings(ckpt["config"], ckpt.get("options"))
    out = {**ckpt, "config": config, "recipe": recipe, "format": CHECKPOINT_FORMAT}
    if "options" in ckpt:
        out["options"] = options
    return out


def config_of(ckpt: dict, path) -> CCCLConfig:
    """The :class:`CCCLConfig` a loaded checkpoint holds (InputError when its
    fields do not fit this version)."""
    try:
        return CCCLConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: the checkpoint's config does not fit this cccl_lite ({e}); "
                         f"was it written by another version?") from None


def load_model(checkpoint_path, device="cpu") -> tuple[CCCL, CCCLConfig, dict | None]:
    """(model in eval mode on ``device``, its config, its vocab or None) from
    ``best.pt`` or ``last.pt``. Unknown config fields raise InputError."""
    return _model_of(load_checkpoint(checkpoint_path, device), checkpoint_path, device)


def _model_of(ckpt: dict, checkpoint_path, device) -> tuple[CCCL, CCCLConfig, dict | None]:
    config = config_of(ckpt, checkpoint_path)
    _check_weight_shapes(ckpt, config, checkpoint_path)
    model = CCCL(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # torch's first line names no key; its next ones do
        raise InputError(f"{checkpoint_path}: weights do not fit the config "
                         f"({one_line(e)[:300]})") from None
    return model.to(device).eval(), config, ckpt.get("vocab")


def load_for_data(checkpoint_path, data_path, split: str = "test", device="cpu"):
    """(model, config, reader): a checkpoint and the reader of ``split`` of a
    data file it fits, checked before any scoring.

    The reader is :func:`make_reader`'s (the one training used); the fit is
    :func:`check_fits` on that split (d_F, d_E, boxes). Raises InputError
    (a missing file, an unreadable checkpoint, a misfit) or SchemaError.
    """
    ckpt, data = Path(checkpoint_path), Path(data_path)
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: no such checkpoint file")
    if not data.is_file():
        raise InputError(f"{data}: " + ("no such data file" if not data.exists() else
                                        "a folder; expected an HDF5 data file" if data.is_dir()
                                        else "not a regular file; expected an HDF5 data file"))
    try:
        loaded = load_checkpoint(ckpt, device)
        model, config, vocab = _model_of(loaded, ckpt, device)
    except (ValueError, FileNotFoundError):  # InputError included
        raise
    except (OSError, RuntimeError, KeyError, TypeError, EOFError) as e:
        raise InputError(f"{ckpt}: not a readable CCCL checkpoint ({one_line(e)})") from None
    if not config.use_bert and vocab is None:
        raise InputError(f"{ckpt}: a 'w/o BERT' checkpoint without its vocabulary")
    with check_file(data, split) as f:
        check_detector(loaded, ckpt, file_detector(f.attrs), data)
    reader = make_reader(data, split, config, vocab)
    check_fits(config, reader.region_dim, reader.word_dim if config.use_bert else None,
               reader.has_boxes, f"{data}:/{split}", "checkpoint", getattr(reader, "encoder", None))
    return model, config, reader


def checkpoint_detector(ckpt: dict) -> str | None:
    """The simulated detector a checkpoint was trained on: ``data["detector"]``;
    for a checkpoint that recorded its data before the detector was, the one
    its synthetic data had then (their scene seed's); for one that recorded no
    data (the shipped models), the scenes' default (:data:`DETECTOR_SEED`)."""
    data = ckpt.get("data")
    if not isinstance(data, dict):
        return detector_name(DETECTOR_SEED)
    if "detector" in data:
        return data["detector"]
    if data.get("dataset") == "synthetic-scenes" and isinstance(data.get("seed"), int):
        return detector_name(data["seed"])
    return None


def check_detector(ckpt: dict, ckpt_path, data_detector: str | None, data_path) -> None:
    """Refuse synthetic scenes seen by another simulated detector than the
    checkpoint's: its features would mean nothing to the model (scores at
    chance, issue 29). Real data (``data_detector`` None) are left to
    :func:`check_fits`."""
    trained = checkpoint_detector(ckpt)
    if data_detector is not None and trained is not None and data_detector != trained:
        raise InputError(f"{data_path}: features from the {data_detector}, but {ckpt_path} was "
                         f"trained on the {trained}'s; make the data with the same detector "
                         f"(make-synthetic's default) or use a model trained on it")


# --------------------------------------------------------------------------
# resuming: the same run, config, recipe and data
# --------------------------------------------------------------------------


def check_resumable(ckpt: dict, last_path, config: CCCLConfig, recipe: Recipe, seed: int,
                    world_size: int, data_path, data_ident: dict, log=print) -> dict:
    """``ckpt`` (read from ``last_path``), if it continues *this* run: the same
    training state (a last.pt, not a best.pt), model config, recipe (every
    field but the ``resumable`` ones, e.g. ``epochs``), seed, world size
    and data (:func:`check_same_data`). The fields compared come from
    :func:`~cccl_lite.engine.recipes.trajectory_fields`; a checkpoint
    written before a field existed counts as its legacy value. Raises
    InputError naming every difference."""
    last_path = Path(last_path)
    missing = [k for k in ("optimizer", "scheduler", "rng", "epoch", "step") if k not in ckpt]
    if missing:
        raise InputError(f"--resume: {last_path} holds no training state (no "
                         f"{', '.join(missing)}; kind {ckpt.get('kind', '?')!r}): it is a "
                         f"model-only checkpoint such as best.pt; resume needs the last.pt "
                         f"that train wrote, or start again with --overwrite")
    check_same_data(ckpt, last_path.parent, data_path, data_ident, log)
    old_config, new_config = ckpt["config"], config.to_dict()
    diff = [f"{k}: {old_config.get(k)!r} -> {new_config.get(k)!r}"
            for k in sorted(set(old_config) | set(new_config))
            if old_config.get(k) != new_config.get(k)]
    was = {**ckpt.get("recipe", {}), "seed": ckpt.get("options", {}).get("seed")}
    now = {**recipe.to_dict(), "seed": seed}
    for name, legacy in trajectory_fields(type(recipe)).items():
        before = was.get(name, legacy)
        if before != now[name]:
            diff.append(f"{name}: {before!r} -> {now[name]!r}")
    if ckpt.get("world_size", 1) != world_size:
        diff.append(f"world_size: {ckpt.get('world_size', 1)} -> {world_size}")
    if diff:
        raise InputError(f"--resume: {last_path} was trained with another config "
                         f"({'; '.join(diff)}); rerun with the same settings or use "
                         f"another --out")
    return ckpt


def data_changes(ckpt: dict, data_ident: dict) -> list[str]:
    """The fields of :func:`data_identity` in which ``data_ident`` differs from
    the data ``ckpt`` recorded ("field old -> new"), its path aside (the same
    dataset moved or copied is the same data). A record from before the
    detector was recorded gets the one it implies. Empty when the checkpoint
    recorded no data."""
    old = ckpt.get("data")
    if old is None:
        return []
    if "detector" not in old:  # recorded before the detector was: the one it implies
        old = {**old, "detector": checkpoint_detector(ckpt)}
    return [f"{k} {old.get(k)!r} -> {data_ident.get(k)!r}"
            for k in sorted(set(old) | set(data_ident))
            if k != "path" and old.get(k) != data_ident.get(k)]


def check_same_data(ckpt: dict, run_dir, data_path, data_ident: dict, log=print) -> None:
    """Refuse to resume on other data: best.pt would then compare R@sum
    across two validation sets. The same dataset moved or copied is fine
    (every field of :func:`data_identity` but its path agrees; ``log`` says so)."""
    run_dir = Path(run_dir)
    old = ckpt.get("data")
    if old is None:  # a checkpoint from before the data was recorded in it
        info = run_dir / "config.json"
        try:
            old_path = json.loads(info.read_text()).get("data")
        except (OSError, ValueError, AttributeError):
            old_path = None
        if old_path and Path(old_path).exists() and not os.path.samefile(old_path, data_path):
            raise InputError(f"--resume: {run_dir} was trained on {old_path}, not "
                             f"{data_path}; resume with --data {old_path}, or use "
                             f"another --out")
        return
    new = data_ident
    diff = data_changes(ckpt, new)
    if diff:
        raise InputError(f"--resume: {run_dir} was trained on other data "
                         f"({old.get('path')}; now {data_path}: {'; '.join(diff)}); "
                         f"resume with the run's own --data, or use another --out")
    if old.get("path") != new["path"]:
        log(f"note: resuming on {new['path']}; the run started on {old.get('path')} "
            f"(the same dataset, seed and split sizes)")
