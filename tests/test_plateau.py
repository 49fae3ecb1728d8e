"""The plateau study (cccl_lite.studies.plateau): its first row is the lite preset with
its own learning-rate drop, each other row changes one thing of the row it
names, and a record says whether patience or the cap ended its run."""

from cccl_lite.studies import plateau
from cccl_lite.engine.checkpoint import resolve_config

from helpers import resolved_row  # noqa: E402

CAP = plateau.EPOCH_CAP


def _resolved(row, data):
    return resolved_row(row, data, CAP)


def test_the_first_row_is_the_lite_preset_with_its_learning_rate_drop(tiny_words_h5):
    config, recipe = _resolved(plateau.LITE, tiny_words_h5)
    # Independently: `train --config lite --epochs 30` (the preset keeps its drop).
    lite = resolve_config("lite", tiny_words_h5, epochs=CAP)
    assert config == lite.model.to_dict()
    assert recipe["lr_decay_epoch"] == 7 < CAP
    # the lite recipe as the study found it: the sum over negatives in every epoch
    assert recipe == lite.recipe.replace(warmup_epochs=None).to_dict()
    assert recipe["patience"] == 3 and recipe["warmup_epochs"] is None


def test_each_row_changes_one_thing_of_the_row_it_names(tiny_words_h5):
    by_name = {r.name: r for r in plateau.ROWS}
    expected = {plateau.WARM_UP.name: ("warmup_epochs", 1),
                plateau.WARM_UP_LAMBDA_0.name: ("coherence_weight", 0.0)}
    for name, (key, value) in expected.items():
        row = by_name[name]
        config, options = _resolved(row, tiny_words_h5)
        base_config, base_options = _resolved(by_name[row.against], tiny_words_h5)
        merged_row = {**config, **options}
        merged_base = {**base_config, **base_options}
        changed = {k for k in merged_row if merged_row[k] != merged_base[k]}
        assert changed == {key}, (name, changed)
        assert merged_row[key] == value


def test_stopped_on_patience_reads_the_best_and_last_epochs():
    from cccl_lite.engine.train import stopped_on_patience

    assert stopped_on_patience({"best_epoch": 10, "last_epoch": 13}, 3)
    assert not stopped_on_patience({"best_epoch": 30, "last_epoch": 30}, 3)  # cut at the cap
    assert not stopped_on_patience({"best_epoch": 8, "last_epoch": 10}, 3)   # cap, after its best
    assert stopped_on_patience({"best_epoch": 7, "last_epoch": 10}, 3)       # patience at the cap
