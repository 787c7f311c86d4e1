"""step(closure), for both wrappers: what the closure returns comes back."""

import numpy as np
import pytest
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper, rms_penalty

WRAPPERS = {
    "rln": lambda inner: RLNOptimizer(inner, avg_reg=-4.0, reg_lr=1e3, compile=False),
    "rmsln": lambda inner: RMSLNWrapper(inner, reg_lambda=0.1),
    "rmsln_decoupled": lambda inner: RMSLNWrapper(inner, reg_lambda=0.1, decoupled=True),
}


def _setup(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 5))
    return w, WRAPPERS[name](torch.optim.SGD([w], lr=0.1))


@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("kind", ["tuple", "dict", "none"])
def test_a_closure_returning_something_other_than_a_loss_gets_it_back(name, kind):
    w, opt = _setup(name)
    values = {"tuple": (1.5, "extra"), "dict": {"loss": 1.5}, "none": None}

    def closure():
        opt.zero_grad()
        (w ** 2).sum().backward()
        return values[kind]

    before = w.detach().clone()
    assert opt.step(closure) == values[kind]
    assert not torch.equal(w, before)


@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("number", [1.5, np.float32(1.5), 3])
def test_a_closure_returning_a_number_gets_a_number(name, number):
    """SGD returns what the closure returns; coupled RMSLN adds its penalty to a loss: a
    Python or NumPy number comes back as a float (the loss + R(W)), never as a tensor."""
    w, opt = _setup(name)

    def closure():
        opt.zero_grad()
        (w ** 2).sum().backward()
        return number

    penalty = rms_penalty([w], 0.1).item()
    result = opt.step(closure)
    assert not isinstance(result, torch.Tensor)
    if name == "rmsln":
        assert isinstance(result, float) and result == pytest.approx(float(number) + penalty, rel=1e-6)
    else:
        assert result == number
