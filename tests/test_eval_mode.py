"""runtime.eval_mode: eval inside the block, the previous mode after it, also after an error."""

import pytest
import torch

from cccl_lite.engine.runtime import eval_mode


def test_a_training_model_is_back_in_training_after_the_block_and_after_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    with eval_mode(model):
        assert not model.training and not model[1].training
    assert model.training and model[1].training
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert model.training and model[1].training


def test_an_eval_model_stays_in_eval_mode():
    model = torch.nn.Dropout(0.5).eval()
    with eval_mode(model):
        pass
    assert not model.training
