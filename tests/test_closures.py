"""step(closure), for every wrapper: what the closure returns comes back, LBFGS works, and
coupled RMSLN adds its penalty's gradient (and value) once."""

import numpy as np
import pytest
import torch
from helpers import WRAPPERS, batches, make_model, mse, noise_batches, weights

from torch_rln import RLNOptimizer, RMSLNWrapper, rms_penalty, rms_penalty_grad

LAM = 0.05
CLOSURE_WRAPPERS = ["rln", "rmsln", "rmsln_decoupled"]


def _setup(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 5))
    return w, WRAPPERS[name](torch.optim.SGD([w], lr=0.1), rmsln={"reg_lambda": 0.1})


@pytest.mark.parametrize("name", CLOSURE_WRAPPERS)
@pytest.mark.parametrize("kind", ["tuple", "dict", "none"])
def test_a_closure_returning_something_other_than_a_loss_gets_it_back(name, kind):
    w, opt = _setup(name)
    values = {"tuple": (1.5, "extra"), "dict": {"loss": 1.5}, "none": None}

    def closure():
        opt.zero_grad()
        (w**2).sum().backward()
        return values[kind]

    before = w.detach().clone()
    assert opt.step(closure) == values[kind]
    assert not torch.equal(w, before)


@pytest.mark.parametrize("name", CLOSURE_WRAPPERS)
@pytest.mark.parametrize("number", [1.5, np.float32(1.5), 3])
def test_a_closure_returning_a_number_gets_a_number(name, number):
    """SGD returns what the closure returns; coupled RMSLN adds its penalty to a loss: a
    Python or NumPy number comes back as a float (the loss + R(W)), never as a tensor."""
    w, opt = _setup(name)

    def closure():
        opt.zero_grad()
        (w**2).sum().backward()
        return number

    penalty = rms_penalty([w], 0.1).item()
    result = opt.step(closure)
    assert not isinstance(result, torch.Tensor)
    if name == "rmsln":
        assert isinstance(result, float)
        assert result == pytest.approx(float(number) + penalty, rel=1e-6)
    else:
        assert result == number


def test_rln_lbfgs_closure_runs_and_regularizes():
    model = make_model()
    opt = RLNOptimizer(
        torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5), [model[0].weight], avg_reg=-4.0, reg_lr=1e3
    )
    ((x, y),) = batches(1)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = mse(model, x, y)
        loss.backward()
        return loss

    first = opt.step(closure)
    for _ in range(5):
        loss = opt.step(closure)
    assert len(calls) > 6
    assert loss < first
    assert (model[0].weight == 0).any()


@pytest.mark.parametrize("zero_inside", [True, False])
def test_coupled_rmsln_closure_with_sgd_adds_the_penalty_once(zero_inside):
    """The penalty's gradient is added once, by the closure, whether grads exist before the step or not."""
    data = noise_batches(dtype=torch.float64)
    model, oracle = make_model(sizes=(8, 16, 4), dtype=torch.float64), make_model(sizes=(8, 16, 4), dtype=torch.float64)
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5), reg_lambda=LAM)
    ref = torch.optim.SGD(oracle.parameters(), lr=0.1, momentum=0.5)
    for k in range(5):
        batch = data[k % 4]
        if not zero_inside:
            opt.zero_grad(set_to_none=False)  # zero grads exist when step() begins

        def closure(batch=batch):
            if zero_inside:
                opt.zero_grad()
            loss = mse(model, *batch)
            loss.backward()
            return loss

        loss = opt.step(closure)
        oracle_loss = mse(oracle, *batch) + rms_penalty(weights(oracle), LAM)
        ref.zero_grad()
        oracle_loss.backward()
        ref.step()
        torch.testing.assert_close(loss, oracle_loss.detach(), rtol=1e-12, atol=0)
    for p, q in zip(model.parameters(), oracle.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_coupled_rmsln_closure_with_lbfgs_equals_the_penalty_in_the_loss():
    batch = noise_batches(dtype=torch.float64)[0]
    model, oracle = make_model(sizes=(8, 16, 4), dtype=torch.float64), make_model(sizes=(8, 16, 4), dtype=torch.float64)
    opt = RMSLNWrapper(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5), reg_lambda=LAM)
    ref = torch.optim.LBFGS(oracle.parameters(), lr=0.5, max_iter=5)

    def closure():
        opt.zero_grad()
        loss = mse(model, *batch)
        loss.backward()
        return loss

    def oracle_closure():
        ref.zero_grad()
        loss = mse(oracle, *batch) + rms_penalty(weights(oracle), LAM)
        loss.backward()
        return loss

    for _ in range(3):
        loss = opt.step(closure)
        ref_loss = ref.step(oracle_closure)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=0)
    for p, q in zip(model.parameters(), oracle.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)
    assert loss.item() > mse(model, *batch).item()  # the returned loss includes R


def test_decoupled_rmsln_closure_returns_the_users_loss_and_decays_after_the_step():
    model = make_model(sizes=(8, 16, 4))
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=1.0, decoupled=True)
    batch = noise_batches()[0]

    def closure():
        opt.zero_grad()
        loss = mse(model, *batch)
        loss.backward()
        return loss

    w = model[0].weight.detach().clone()
    loss = opt.step(closure)
    assert torch.equal(loss, mse(make_model(sizes=(8, 16, 4)), *batch))  # the user's loss, unchanged
    grad = model[0].weight.grad
    inner_w = w - 0.1 * grad
    (g,) = rms_penalty_grad([inner_w], 1.0)
    torch.testing.assert_close(model[0].weight.detach(), inner_w - 0.1 * g)
