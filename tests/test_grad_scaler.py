"""torch.amp.GradScaler, for both wrappers, with a fused inner optimizer: the wrapper
advertises ``_step_supports_amp_scaling`` as the inner one does, hands it ``grad_scale`` and
``found_inf``, and a step with inf gradients moves nothing. SGD, because Adam is nearly
scale-invariant and would hide a missed unscale."""

import math

import pytest
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper

WRAPPERS = {
    "rln": lambda inner: RLNOptimizer(inner, avg_reg=-5.0, reg_lr=1e4, compile=False),
    "rmsln": lambda inner: RMSLNWrapper(inner, reg_lambda=0.05),
    "rmsln_decoupled": lambda inner: RMSLNWrapper(inner, reg_lambda=0.05, decoupled=True),
    "rmsln_over_rln": lambda inner: RMSLNWrapper(
        RLNOptimizer(inner, avg_reg=-5.0, reg_lr=1e4, compile=False), reg_lambda=0.05
    ),
}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def _snapshot(model, opt):
    state = {}
    current = opt
    while hasattr(current, "reg_state"):
        state.update({(type(current).__name__, id(p), k): v.clone() for p, s in current.reg_state.items()
                      for k, v in s.items()})
        current = current.optimizer
    return [p.detach().clone() for p in model.parameters()], state


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_fused_inner_optimizer_under_grad_scaler(name):
    model, reference = _model(), _model()
    opt = WRAPPERS[name](torch.optim.SGD(model.parameters(), lr=0.05, fused=True))
    ref_opt = WRAPPERS[name](torch.optim.SGD(reference.parameters(), lr=0.05))
    assert opt._step_supports_amp_scaling and not ref_opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    g = torch.Generator().manual_seed(1)
    data = [(x, x[:, :3].sum(1, keepdim=True)) for x in (torch.randn(32, 12, generator=g) for _ in range(6))]
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        scaler.scale(((model(x) - y) ** 2).mean()).backward()
        if i == 2:
            model[0].weight.grad[0, 0] = math.inf
            before = _snapshot(model, opt)
        scaler.step(opt)
        scaler.update()
        assert not hasattr(opt, "grad_scale") and not hasattr(opt.optimizer, "grad_scale")
        if i == 2:
            after = _snapshot(model, opt)
            assert all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True))
            assert before[1].keys() == after[1].keys()
            assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])
            continue
        ref_opt.zero_grad()
        ((reference(x) - y) ** 2).mean().backward()
        ref_opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model[0].weight, _model()[0].weight)
