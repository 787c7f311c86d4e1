"""Checkpoints, for both wrappers and their stacks."""

import pytest
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper


def _trained(build):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = build(torch.optim.Adam(model.parameters(), lr=1e-2))
    x = torch.randn(16, 6)
    for _ in range(3):
        opt.zero_grad()
        ((model(x) - x[:, :1]) ** 2).mean().backward()
        opt.step()
    return model, opt


def rln(inner):
    return RLNOptimizer(inner, avg_reg=-4.0, reg_lr=1e3, compile=False)


def rmsln_over_rln(inner):
    return RMSLNWrapper(rln(inner), reg_lambda=1e-2)


def test_a_stack_s_checkpoint_loads_only_into_the_same_stack():
    """RMSLN over RLN into a plain RLNOptimizer would drop the RMSLN settings, and an RLN
    checkpoint into RMSLN over RLN lacks them: both are refused, before anything changes."""
    _, stacked = _trained(rmsln_over_rln)
    _, plain = _trained(rln)
    stacked_sd, plain_sd = stacked.state_dict(), plain.state_dict()
    model, target = _trained(rln)
    before = {k: v.clone() for k, v in target.reg_state[model[0].weight].items()}
    with pytest.raises(ValueError, match=r"holds 'rmsln_groups', the settings of a RMSLNWrapper, but this "
                                         r"RLNOptimizer has no RMSLNWrapper in its stack"):
        target.load_state_dict(stacked_sd)
    assert all(torch.equal(v, target.reg_state[model[0].weight][k]) for k, v in before.items())
    _, stack = _trained(rmsln_over_rln)
    with pytest.raises(ValueError, match=r"has no 'rmsln_groups': it was not saved by RMSLNWrapper"):
        stack.load_state_dict(plain_sd)
    stack.load_state_dict(stacked_sd)  # the same stack loads
