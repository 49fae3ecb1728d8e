"""The shipped lite model: it loads, and it reproduces its recorded test recalls
on freshly made scenes; `ship` writes a model with its provenance and never
replaces one without --overwrite."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cccl_lite.studies import pretrained
from cccl_lite.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from cccl_lite.engine.recipes import Recipe, recipe_fields, settings_of
from cccl_lite.engine.train import RunOptions, load_model, train

from helpers import small

ROOT = Path(__file__).resolve().parent.parent
# One image of the 201 test images moves an i2t recall by 0.50 points, one
# caption of 1,005 a t2i recall by 0.10: the recorded recalls must come back
# to within one image (another CPU's float rounding may flip one tie).
TOLERANCE = 0.5


@pytest.mark.parametrize("name", [pretrained.NAME, pretrained.FIRST_RECIPE])
def test_the_shipped_model_loads_and_matches_its_provenance(name):
    info = pretrained.provenance(name)
    model, config, path = pretrained.load_pretrained(name=name)
    assert path == pretrained.checkpoint_path(name) and path.stat().st_size < 8 * 2 ** 20
    # The record and the checkpoint were written before the recipe was its own
    # object (format 1: its numbers in "config", its choices in "options"):
    # both read through the migration, to the same model and recipe.
    recorded_config, recorded_recipe, run = settings_of(info)
    assert config == recorded_config
    assert not model.training
    assert info["provenance"]["commit"] and info["data"]["size"] == "small"
    for key in ("test", "truth", "siblings", "curve", "options"):
        assert info[key], key
    raw = torch.load(path, weights_only=True)
    assert "optimizer" not in raw  # only what evaluation needs
    assert raw["format"] == 1 and "recipe" not in raw and "lr" in raw["config"]
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == CHECKPOINT_FORMAT and Recipe.from_dict(ckpt["recipe"]) == recorded_recipe
    # the values the record holds, field by field from its old dicts (a field
    # the record predates: the value such runs trained with)
    for name, f in recipe_fields().items():
        old = info["config"].get(name, info["options"].get(name, f.metadata["legacy"]))
        assert getattr(recorded_recipe, name) == old, name
    assert run["seed"] == info["options"]["seed"] and "lr" not in run


@pytest.mark.slow  # regenerates the small scenes and encodes them with MiniLM
def test_the_shipped_model_reproduces_its_test_recalls(tmp_path):
    """Regenerate the scenes from their seed, encode them with MiniLM, evaluate
    the shipped checkpoint with the command line: the recorded recalls."""
    info = pretrained.provenance()
    data = tmp_path / info["data"]["file"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    steps = [["data_scripts/make_synthetic.py", "--out", str(data), "--seed",
              str(info["data"]["seed"]), "--size", info["data"]["size"]]]
    if info["config"]["use_bert"]:  # a model that reads MiniLM vectors (not the Bi-GRU's ids)
        steps.append(["data_scripts/encode_words.py", str(data)])
    for cmd in steps:
        subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, check=True,
                       capture_output=True)
    out = subprocess.run([sys.executable, "-m", "cccl_lite", "evaluate", "--checkpoint",
                          str(pretrained.checkpoint_path()), "--data", str(data), "--split",
                          "test"], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True)
    recalls = json.loads(out.stdout.strip().splitlines()[-1])
    for k, v in info["test"].items():
        assert recalls[k] == pytest.approx(v, abs=TOLERANCE * (6 if k == "rsum" else 1)), k
    # Sibling accuracies and truth-aware recalls, measured again in-process.
    model, config, vocab = load_model(pretrained.checkpoint_path())
    with torch.no_grad():
        again = pretrained.measure(model.eval(), config, vocab, data)
    for kind, v in info["siblings"].items():
        assert again["siblings"][kind] == pytest.approx(v, abs=0.5), kind
    assert again["truth"]["rsum"] == pytest.approx(info["truth"]["rsum"], abs=3 * TOLERANCE)


def small_run(**kw):
    """(model, recipe) of a small run (helpers.small at P = 8); ``kw``: fields of either."""
    return small(sim_dim=8, **kw)


def test_ship_writes_model_and_provenance_and_refuses_to_replace(tiny_words_h5, tmp_path):
    run = tmp_path / "run"
    train(*small_run(epochs=1, warmup_epochs=None), tiny_words_h5, run,
          RunOptions(device="cpu", max_steps=2, quiet=True))
    folder = tmp_path / "assets"
    rec = pretrained.ship(run, tiny_words_h5, folder, name="m")
    assert set(rec["siblings"]) == {"binding", "relation", "random"}
    assert rec["data"]["size"] == "tiny" and rec["epochs_trained"] == 1
    model, config, _ = pretrained.load_pretrained(name="m", folder=folder)
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k
    assert json.loads((folder / "m.json").read_text())["test"] == rec["test"]
    with pytest.raises(ValueError, match="--overwrite"):
        pretrained.ship(run, tiny_words_h5, folder, name="m")
    pretrained.ship(run, tiny_words_h5, folder, name="m", overwrite=True)
    assert np.isfinite(rec["test"]["rsum"])
