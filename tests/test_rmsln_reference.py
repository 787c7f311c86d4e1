"""Coupled RMSLN against its slow reference, the penalty added to the loss and
differentiated by autograd, over many steps with several inner optimizers."""

import pytest
import torch
from helpers import INNER, make_model, noise_batches, train, train_with_penalty, weights

from torch_rln.rmsln import RMSLNWrapper

LAM = 0.05  # large enough that the penalty visibly changes training
SIZES = (8, 16, 4)
REFERENCE_INNER = ["adam", "rmsprop", "sgd_momentum"]


@pytest.mark.parametrize("inner", REFERENCE_INNER)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coupled_equals_penalty_in_loss(inner, dtype):
    batches = noise_batches(dtype=dtype)
    steps = 120
    model = make_model(sizes=SIZES, dtype=dtype)
    opt = RMSLNWrapper(INNER[inner](model.parameters()), reg_lambda=LAM)
    train(model, opt, batches, steps)

    oracle = make_model(sizes=SIZES, dtype=dtype)
    train_with_penalty(oracle, INNER[inner](oracle.parameters()), batches, steps, reg_lambda=LAM)

    plain = make_model(sizes=SIZES, dtype=dtype)
    train(plain, INNER[inner](plain.parameters()), batches, steps)

    for p, q, _r in zip(model.parameters(), oracle.parameters(), plain.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6 * q.abs().max().item())
    # the penalty did something: the weights moved away from unregularized training
    moved = max((p - r).abs().max().item() for p, r in zip(weights(model), weights(plain), strict=False))
    assert moved > 1e-3
