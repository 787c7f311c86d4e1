"""torch.amp.GradScaler, for every wrapper: a step with inf gradients moves nothing (weights
and the regularizers' state), and the others equal an unscaled run. With a fused inner
optimizer the wrapper advertises ``_step_supports_amp_scaling`` as the inner one does and
hands it ``grad_scale`` and ``found_inf``. SGD, because Adam is nearly scale-invariant and
would hide a missed unscale."""

import math

import pytest
import torch
from helpers import (
    WRAPPERS,
    assert_snapshots_equal,
    batches,
    make_model,
    mse,
    noise_batches,
    snapshot,
    train_step,
    train_with_penalty,
)

from torch_rln import RMSLNWrapper

SETTINGS = {"rln": {"avg_reg": -5.0, "reg_lr": 1e4}, "rmsln": {"reg_lambda": 0.05}}
LAM = 0.05


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_grad_scaler_skips_the_whole_step_on_inf(wrapper_name, fused):
    model, reference = make_model(), make_model()
    opt = WRAPPERS[wrapper_name](torch.optim.SGD(model.parameters(), lr=0.05, fused=fused), **SETTINGS)
    ref_opt = WRAPPERS[wrapper_name](torch.optim.SGD(reference.parameters(), lr=0.05), **SETTINGS)
    assert opt._step_supports_amp_scaling is fused
    assert not ref_opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    skipped = 3 if not fused else 2
    for i, (x, y) in enumerate(batches(6)):
        opt.zero_grad()
        scaler.scale(mse(model, x, y)).backward()
        if i == skipped:
            model[0].weight.grad[0, 0] = math.inf
            before = snapshot(model, opt)
        scaler.step(opt)
        scaler.update()
        assert not hasattr(opt, "grad_scale")
        assert not hasattr(opt.optimizer, "grad_scale")
        if i == skipped:
            assert_snapshots_equal(before, snapshot(model, opt))
        else:
            train_step(reference, ref_opt, x, y)
    # The scaled run equals an unscaled run without the skipped batch (SGD is not
    # scale-invariant, so a missed unscale would show here).
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model[0].weight, make_model()[0].weight)


def test_coupled_rmsln_under_grad_scaler_adds_the_penalty_to_the_unscaled_gradients():
    data = noise_batches()
    model, oracle = make_model(sizes=(8, 16, 4)), make_model(sizes=(8, 16, 4))
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=LAM)
    ref = torch.optim.SGD(oracle.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    # a step with an inf gradient is skipped: nothing moves
    opt.zero_grad()
    scaler.scale(mse(model, *data[0])).backward()
    model[0].weight.grad[0, 0] = float("inf")
    before, _ = snapshot(model, opt)
    scaler.step(opt)
    scaler.update()
    for p, b in zip(model.parameters(), before, strict=False):
        assert torch.equal(p, b)
    assert scaler.get_scale() == 2.0**9

    # ordinary steps: the penalty is added to the unscaled gradients
    for k in range(5):
        opt.zero_grad()
        scaler.scale(mse(model, *data[k % 4])).backward()
        scaler.step(opt)
        scaler.update()
        train_with_penalty(oracle, ref, data[k % 4 :], 1, reg_lambda=LAM)
    for p, q in zip(model.parameters(), oracle.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.equal(model[0].weight, before[0])
