"""The training recipe (cccl_lite.engine.recipes): one place per training option,
what derives from its fields (the CLI's flags, the resume check, the checkpoint),
and the migration that keeps files written before it loading as they did."""

import argparse
import ast
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from cccl_lite.cli.engine import add_recipe_arguments, recipe_overrides
from cccl_lite.engine.checkpoint import (CHECKPOINT_FORMAT, check_resumable, load_checkpoint,
                                         migrate)
from cccl_lite.engine.recipes import (PRESETS, Preset, Recipe, RunOptions, _option,
                                      recipe_fields, split_settings, trajectory_fields)
from cccl_lite.engine.train import Trainer, train
from cccl_lite.errors import InputError
from cccl_lite.studies import ablate

from helpers import quick, small

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cccl_lite"


# ---- one place per option -----------------------------------------------------------


# The dual-encoder baseline (chapter 10) is another model, trained by its own
# loop with a few settings of its own (InfoNCE: no Δ, no λ), recorded in its
# own results file: its lr or batch size is not CCCL's.
OTHER_MODEL = {"cccl_lite/engine/dual.py", "cccl_lite/studies/dual_study.py"}


def option_definitions(package: Path, names: set[str]) -> dict[str, set[str]]:
    """{option: files that define it}: a class-level field of that name with a
    value (a dataclass's), a key of a dict literal that gives three or more
    options a value (a preset table), or a flag ``"--the-name"`` written by
    hand into the train command's parser (``add_train_arguments``)."""
    found: dict[str, set[str]] = {n: set() for n in names}
    flags = {"--" + n.replace("_", "-"): n for n in names}
    for path in sorted(package.rglob("*.py")):
        rel = str(path.relative_to(package.parent))
        if rel in OTHER_MODEL:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                            and item.target.id in names and item.value is not None:
                        found[item.target.id].add(rel)
            elif isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys
                        if isinstance(k, ast.Constant) and k.value in names]
                if len(keys) >= 3:
                    for k in keys:
                        found[k].add(rel)
            elif isinstance(node, ast.FunctionDef) and node.name == "add_train_arguments":
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and sub.value in flags:
                        found[flags[sub.value]].add(rel)
    return found


def test_a_training_option_is_defined_in_one_package_file():
    """Every field of the recipe is defined in cccl_lite/engine/recipes.py
    alone: no second dataclass, preset table or hand-written train flag
    names it (its users read it as ``recipe.name`` or pass it by keyword)."""
    found = option_definitions(PACKAGE, set(recipe_fields()))
    assert {n: files for n, files in found.items()
            if files != {"cccl_lite/engine/recipes.py"}} == {}


def test_a_second_definition_is_caught(tmp_path):
    """The check can fail: a config class with its own ``lr``, a hand-written
    ``--margin`` flag in the train parser and a preset dict elsewhere are each
    named."""
    pkg = tmp_path / "cccl_lite"
    (pkg / "engine").mkdir(parents=True)
    shutil.copy(PACKAGE / "engine" / "recipes.py", pkg / "engine" / "recipes.py")
    (pkg / "model.py").write_text("class Config:\n    lr: float = 2e-4\n    epochs: int\n")
    (pkg / "cli.py").write_text("def add_train_arguments(p):\n"
                                "    p.add_argument('--margin', type=float)\n\n\n"
                                "def add_encode_arguments(p):\n"
                                "    p.add_argument('--batch-size', type=int)\n")
    (pkg / "presets.py").write_text("LITE = {'epochs': 10, 'batch_size': 32, 'patience': 3}\n")
    found = option_definitions(pkg, set(recipe_fields()))
    extra = {n: files - {"cccl_lite/engine/recipes.py"} for n, files in found.items()}
    assert {n: f for n, f in extra.items() if f} == {
        "lr": {"cccl_lite/model.py"}, "margin": {"cccl_lite/cli.py"},
        "epochs": {"cccl_lite/presets.py"}, "batch_size": {"cccl_lite/presets.py"},
        "patience": {"cccl_lite/presets.py"}}


# ---- a new option reaches the CLI, the checkpoint and the resume check ---------------------


def recipe_with_dropout():
    """A throwaway Recipe with one more field, made as a new field would be added."""
    return dataclasses.make_dataclass(
        "RecipeWithDropout",
        [("dropout", float, _option(0.0, "dropout before eq 28", "nonnegative_float"))],
        bases=(Recipe,), frozen=True)


def test_a_new_recipe_field_reaches_the_cli_the_checkpoint_and_the_resume_check(tmp_path):
    RecipeX = recipe_with_dropout()
    # the command line: a flag made from the field, its value checked
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser, RecipeX)
    args = parser.parse_args(["--dropout", "0.3", "--lr", "0.001"])
    assert recipe_overrides(args, RecipeX) == {"dropout": 0.3, "lr": 0.001}
    assert recipe_overrides(parser.parse_args([]), RecipeX) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--dropout", "-1"])
    with pytest.raises(ValueError, match="dropout"):
        RecipeX(dropout=-1.0)
    # the checkpoint: written with the recipe, read back the same
    recipe = RecipeX(dropout=0.3)
    assert recipe.to_dict()["dropout"] == 0.3 and RecipeX.from_dict(recipe.to_dict()) == recipe
    # the resume check: a change refused, naming it; a checkpoint from before the
    # field counts as its legacy value (its default here)
    config = small()[0]
    ckpt = {"optimizer": {}, "scheduler": {}, "rng": {}, "epoch": 1, "step": 3, "data": None,
            "config": config.to_dict(), "recipe": recipe.to_dict(), "options": {"seed": 0},
            "world_size": 1}
    kw = dict(world_size=1, data_path=tmp_path / "d.h5", data_ident=None)
    assert "dropout" in trajectory_fields(RecipeX)
    assert check_resumable(ckpt, tmp_path / "last.pt", config, recipe, 0, **kw) is ckpt
    with pytest.raises(InputError, match="dropout: 0.3 -> 0.1"):
        check_resumable(ckpt, tmp_path / "last.pt", config, RecipeX(dropout=0.1), 0, **kw)
    older = {**ckpt, "recipe": {k: v for k, v in ckpt["recipe"].items() if k != "dropout"}}
    assert check_resumable(older, tmp_path / "last.pt", config, RecipeX(), 0, **kw) is older
    with pytest.raises(InputError, match="dropout: 0.0 -> 0.3"):
        check_resumable(older, tmp_path / "last.pt", config, recipe, 0, **kw)


# ---- presets ------------------------------------------------------------------------------


def test_preset_replace_routes_each_field_to_its_half():
    lite = PRESETS["lite"]
    changed = lite.replace(sim_dim=8, lr=1e-3)
    assert (changed.model.sim_dim, changed.recipe.lr) == (8, 1e-3)
    assert changed.model == dataclasses.replace(lite.model, sim_dim=8)
    assert changed.recipe == dataclasses.replace(lite.recipe, lr=1e-3)
    with pytest.raises(ValueError, match="unknown fields \\['device'\\]"):
        lite.replace(device="cpu")  # a run option, not the model's nor the recipe's
    config, recipe = lite  # a preset unpacks into its two halves
    assert isinstance(config, type(lite.model)) and isinstance(recipe, Recipe)


def test_run_options_hold_no_recipe_field():
    run = {f.name for f in dataclasses.fields(RunOptions)}
    assert not run & set(recipe_fields())
    assert not {f.name for f in dataclasses.fields(type(PRESETS["lite"].model))} \
        & set(recipe_fields())


# ---- files written before the recipe was its own object ------------------------------------


def _as_format_1(ckpt: dict) -> dict:
    """A checkpoint of this version written back in format 1's shape: the
    recipe's numbers inside "config", its choices inside "options"."""
    procedure = Recipe().procedure()
    recipe = ckpt["recipe"]
    old = {k: v for k, v in ckpt.items() if k != "recipe"}
    old["config"] = {**ckpt["config"], **{k: v for k, v in recipe.items() if k not in procedure}}
    old["options"] = {**ckpt["options"], **{k: v for k, v in recipe.items() if k in procedure}}
    old["format"] = 1
    return old


def test_split_settings_moves_the_recipe_out_of_old_dicts():
    config = {"region_dim": 256, "lr": 5e-4, "epochs": 10, "margin": 0.2}
    options = {"seed": 3, "device": "cpu", "warmup_epochs": None, "positives": "truth"}
    model, recipe, run = split_settings(config, options)
    assert model == {"region_dim": 256}
    assert recipe == {"lr": 5e-4, "epochs": 10, "margin": 0.2, "warmup_epochs": None,
                      "positives": "truth"}
    assert run == {"seed": 3, "device": "cpu"}
    # a record of this version is taken as it is
    assert split_settings({"region_dim": 1}, {"seed": 1}, {"lr": 1.0}) == (
        {"region_dim": 1}, {"lr": 1.0}, {"seed": 1})
    # what an old record lacks gets the value such runs trained with
    assert Recipe.from_dict(recipe).select == "rsum"
    assert Recipe.from_dict({}).warmup_epochs is None  # before the warm-up existed


def test_an_old_format_last_pt_resumes_to_the_same_weights(tiny_words_h5, tmp_path, single_thread):
    """A last.pt of format 1 (what every run before the Recipe wrote) loads
    through the migration, passes the resume check and continues to the very
    weights of a run never interrupted."""
    straight = Trainer(*small(epochs=2), tiny_words_h5, tmp_path / "a", quick())
    straight.fit()
    train(*small(epochs=1), tiny_words_h5, tmp_path / "b", quick())
    last = tmp_path / "b" / "last.pt"
    new = torch.load(last, weights_only=True)
    torch.save(_as_format_1(new), last)
    loaded = load_checkpoint(last)
    assert loaded["format"] == CHECKPOINT_FORMAT
    assert (loaded["config"], loaded["recipe"]) == (new["config"], new["recipe"])
    assert loaded["options"] == new["options"]
    resumed = Trainer(*small(epochs=2), tiny_words_h5, tmp_path / "b", quick(resume=True))
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(last, weights_only=True)["format"] == CHECKPOINT_FORMAT  # rewritten


def test_migrate_keeps_a_checkpoint_of_this_format():
    ckpt = {"config": {"region_dim": 1}, "recipe": {"lr": 1.0}, "options": {}, "format": 2}
    assert migrate(ckpt) is ckpt


def test_the_finished_table_6_file_is_still_the_same_settings(tmp_path, monkeypatch):
    """cccl_lite/results/ablations.json was written with the recipe's numbers
    in settings["lite_config"]. The runner, given the preset it was made
    with, recognises it as its own settings: every (row, seed) is kept and
    nothing is trained; the file is rewritten in this version's shape."""
    shipped = json.loads((PACKAGE / "results" / "ablations.json").read_text())
    old = shipped["settings"]
    assert "lr" in old["lite_config"] and "lr" not in old["recipe"]  # the old shape
    model, recipe, _ = split_settings(old["lite_config"], old["recipe"])
    monkeypatch.setattr(ablate, "PRESETS", {
        **PRESETS, "lite": Preset(type(PRESETS["lite"].model).from_dict(model),
                                  Recipe.from_dict(recipe))})
    data = tmp_path / old["data"]
    with open(data, "wb") as f:  # the same name and size: what the settings record
        f.truncate(old["data_bytes"])
    results = tmp_path / "ablations.json"
    shutil.copy(PACKAGE / "results" / "ablations.json", results)

    def no_training(*a, **k):
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr(ablate, "_trainer", no_training)
    out = ablate.run_ablations(data, tmp_path / "runs", results, seeds=3, log=lambda s: None)
    assert len(out["entries"]) == len(shipped["entries"])
    assert out["entries"] == shipped["entries"]
    assert out["settings"]["recipe"] == Recipe.from_dict(recipe).to_dict()
    assert "lr" not in out["settings"]["lite_config"]
