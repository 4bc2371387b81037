"""The solvers used on their own refuse what they cannot train, with a clear message."""

import pytest
import torch
from torch import nn

from skkfac import KFAC
from skkfac.losses import SquaredError, get_loss
from skkfac.solvers import get_solver


@pytest.mark.parametrize("extra", [
    lambda: nn.LayerNorm(8),
    lambda: nn.Embedding(4, 8),
    lambda: nn.Conv1d(1, 1, 3),
])
@pytest.mark.parametrize("solver", ["kfac", "sgd", "adam"])
def test_parameters_outside_linear_layers_are_refused(extra, solver):
    model = nn.Sequential(nn.Linear(4, 8), extra(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"outside its nn\.Linear layers.*1\."):
        get_solver(solver)(model, "squared_error")


def test_a_bare_parameter_is_refused_and_a_frozen_one_accepted():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 1)
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.linear(x) * self.scale

    model = Scaled()
    with pytest.raises(ValueError, match="scale"):
        KFAC(model)
    model.scale.requires_grad_(False)
    KFAC(model)  # nothing trainable is left out


def test_a_squared_error_target_that_would_broadcast_is_refused():
    model = nn.Linear(3, 1)
    opt = KFAC(model, "squared_error", random_state=0)
    X, y = torch.randn(16, 3), torch.randn(16)
    with pytest.raises(ValueError, match=r"shape \(16,\) differs from the output's \(16, 1\)"):
        opt.accumulate(X, y)
    opt.discard()
    opt.accumulate(X, y[:, None])  # the output's shape: fine
    assert opt.step() is not None


@pytest.mark.parametrize("loss", [nn.MSELoss(), nn.CrossEntropyLoss(), "mse", 3])
def test_torch_loss_modules_and_unknown_names_are_refused(loss):
    with pytest.raises((TypeError, ValueError), match="squared_error"):
        KFAC(nn.Linear(3, 1), loss=loss)


def test_skkfac_loss_objects_are_accepted():
    loss = SquaredError()
    assert get_loss(loss) is loss
    assert KFAC(nn.Linear(3, 1), loss=loss).loss is loss
