"""Step hooks, for both wrappers: torch's global hooks fire once per step (also nested), and
hooks on the inner optimizer run inside the wrapper's step."""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from torch_rln import RLNOptimizer, RMSLNWrapper

WRAPPERS = {
    "rln": lambda inner: RLNOptimizer(inner, avg_reg=-4.0, reg_lr=1e3, compile=False),
    "rmsln": lambda inner: RMSLNWrapper(inner, reg_lambda=1e-2),
    "rmsln_over_rln": lambda inner: RMSLNWrapper(RLNOptimizer(inner, avg_reg=-4.0, reg_lr=1e3, compile=False)),
}


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_global_step_hooks_fire_once_per_step(name):
    w = torch.nn.Parameter(torch.randn(4, 5))
    opt = WRAPPERS[name](torch.optim.SGD([w], lr=0.1))
    calls = []
    pre = register_optimizer_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", type(o).__name__)))
    post = register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append(("post", type(o).__name__)))
    try:
        w.grad = torch.ones_like(w)
        opt.step()
        opt.step()
    finally:
        pre.remove()
        post.remove()
    outer = type(opt).__name__
    assert calls == [("pre", outer), ("post", outer)] * 2
    # after removal, nothing fires, and the hook dicts are torch's again
    w.grad = torch.ones_like(w)
    opt.step()
    torch.optim.SGD([w], lr=0.1).step()
    assert len(calls) == 4


AFTER_THE_INNER_STEP = {
    "rln": WRAPPERS["rln"],
    "rmsln_decoupled": lambda inner: RMSLNWrapper(inner, reg_lambda=1e-2, decoupled=True),
    "rmsln_decoupled_over_rln": lambda inner: RMSLNWrapper(WRAPPERS["rln"](inner), reg_lambda=1e-2, decoupled=True),
}


@pytest.mark.parametrize("name", list(AFTER_THE_INNER_STEP))
def test_a_hook_on_the_inner_optimizer_that_sets_the_gradients_is_seen(name):
    """A step pre-hook on the inner optimizer that writes ``.grad`` (the gradients were None
    when the wrapper's step began): a pass that runs after the inner step regularizes as if
    they had been there before. (Coupled RMSLN adds its gradient before the inner step
    starts, so it sees the gradients present then: README.)"""
    torch.manual_seed(0)
    start = torch.randn(6, 8)
    grads = [0.1 * torch.randn(6, 8) for _ in range(5)]
    results = []
    for via_hook in (False, True):
        w = torch.nn.Parameter(start.clone())
        inner = torch.optim.SGD([w], lr=0.1)
        opt = AFTER_THE_INNER_STEP[name](inner)
        pending = []
        if via_hook:
            inner.register_step_pre_hook(lambda o, args, kwargs: setattr(w, "grad", pending.pop()))
        for g in grads:
            if via_hook:
                w.grad = None
                pending.append(g.clone())
            else:
                w.grad = g.clone()
            opt.step()
        results.append(w.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], start - 0.1 * sum(grads))  # the regularizer acted
