"""Table 1's λ per dataset (0.5 Flickr30K, 0.75 MS-COCO): paper_preset and
the train command line, which takes it from --dataset or from the data file."""

from __future__ import annotations

import shutil

import h5py
import pytest

import cccl_lite.engine.train as train_module
from cccl_lite.cli import main
from cccl_lite.errors import InputError
from cccl_lite.engine.recipes import paper_preset
from cccl_lite.engine.train import data_dataset, resolve_config


def test_paper_lambda_per_dataset_as_table_1_prints():
    assert paper_preset(dataset="coco").recipe.coherence_weight == 0.75
    assert paper_preset(dataset="f30k").recipe.coherence_weight == 0.5
    assert paper_preset().recipe.coherence_weight == 0.5  # Flickr30K, the book's default
    # Everything else of Table 1 is the same for both datasets.
    f30k, coco = paper_preset(dataset="f30k").fields(), paper_preset(dataset="coco").fields()
    assert {k: v for k, v in coco.items() if f30k[k] != v} == {"coherence_weight": 0.75}
    assert paper_preset("coco").replace(coherence_weight=0.2).recipe.coherence_weight == 0.2
    with pytest.raises(ValueError, match="unknown dataset 'mscoco'.*f30k, coco"):
        paper_preset(dataset="mscoco")


@pytest.fixture
def coco_h5(tiny_words_h5, tmp_path):
    path = tmp_path / "coco.h5"
    shutil.copy(tiny_words_h5, path)
    with h5py.File(path, "a") as f:
        f.attrs["dataset"] = "coco"
    return path


def test_the_data_file_decides_when_no_dataset_is_given(tiny_words_h5, coco_h5):
    assert data_dataset(coco_h5) == "coco"
    assert data_dataset(tiny_words_h5) == "f30k"  # synthetic scenes: Flickr30K's λ
    assert resolve_config("paper", coco_h5).recipe.coherence_weight == 0.75
    assert resolve_config("paper", tiny_words_h5).recipe.coherence_weight == 0.5
    assert resolve_config("paper", coco_h5, dataset="f30k").recipe.coherence_weight == 0.5
    assert resolve_config("paper", tiny_words_h5, dataset="coco").recipe.coherence_weight == 0.75
    assert resolve_config("paper", coco_h5, coherence_weight=0.3).recipe.coherence_weight == 0.3
    with pytest.raises(InputError, match="--dataset coco.*paper preset"):
        resolve_config("lite", tiny_words_h5, dataset="coco")


def train_paper_without_training(data, tmp_path, monkeypatch, flags) -> list:
    """`train --config paper` through the command line with a trainer that
    never trains (the paper config needs 2048-d data); returns the configs it
    was given (their recipes)."""
    seen = []

    class FakeTrainer:
        def __init__(self, config, recipe, data, out, run):
            seen.append(recipe)
            self.is_main, self.best_epoch, self.best_rsum = True, 0, 0.0

        def fit(self):
            return tmp_path / "best.pt"

    monkeypatch.setattr(train_module, "Trainer", FakeTrainer)
    assert main(["train", "--config", "paper", "--data", str(data), "--out",
                 str(tmp_path / "run"), *flags]) == 0
    return seen


@pytest.mark.parametrize("flags, expected", [([], 0.75), (["--dataset", "f30k"], 0.5),
                                             (["--coherence-weight", "0.25"], 0.25)])
def test_train_cli_passes_the_dataset_lambda_to_the_trainer(coco_h5, tmp_path, monkeypatch,
                                                            flags, expected):
    seen = train_paper_without_training(coco_h5, tmp_path, monkeypatch, flags)
    assert [c.coherence_weight for c in seen] == [expected]


def test_train_cli_refuses_dataset_with_lite_in_one_line(tiny_words_h5, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_words_h5), "--out", str(tmp_path / "run"),
                 "--dataset", "coco"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dataset coco" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("flags, warned", [
    ([], True),                                       # the printed loss after one warm-up epoch
    # L_c per item: flattened at the paper's B = 128, trained at B = 32
    (["--coherence-reduction", "per_item"], True),
    (["--coherence-reduction", "per_item", "--batch-size", "32"], False),
    (["--coherence-weight", "0"], False),             # trained in the diagnosis (B = 32)
    (["--warmup-epochs", "all"], False),              # never switches to eq 33
])
def test_train_paper_warns_before_it_starts_when_the_switch_risks_the_collapse(
        coco_h5, tmp_path, monkeypatch, capsys, flags, warned):
    """Issue 28 item 4: the paper preset keeps the printed loss, and `train
    --config paper` says before any step (the fake trainer never trains) that
    eq 33 with the summed L_c after a warm-up flattened the lite model."""
    train_paper_without_training(coco_h5, tmp_path, monkeypatch, flags)
    err = capsys.readouterr().err
    assert ("warm-up 1, hardest" in err) == warned, err
    if warned:
        assert "--warmup-epochs all" in err and err.count("\n") == 1
