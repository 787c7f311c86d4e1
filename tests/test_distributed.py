"""Under DistributedDataParallel (2 processes, gloo, loopback), the wrappers train every rank
identically, and as one process would on the whole batch."""

import sys

import pytest
import torch
import torch.distributed as dist
from spawn import run_ranks

from torch_rln import RLNOptimizer, RMSLNWrapper

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed with gloo on Linux"
)

STEPS, WORLD = 25, 2


def make(which):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).double()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    if which == "rln":
        opt = RLNOptimizer(inner, avg_reg=-4.0, reg_lr=1e3)
    elif which == "rmsln":
        opt = RMSLNWrapper(inner, reg_lambda=0.05)
    else:
        opt = RMSLNWrapper(RLNOptimizer(inner, avg_reg=-4.0, reg_lr=1e3), reg_lambda=0.05)
    return model, opt


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, 32, 10, generator=g, dtype=torch.float64)
    return x, x[..., :2].sum(-1, keepdim=True)


def lambdas(opt):
    inner = opt if isinstance(opt, RLNOptimizer) else getattr(opt, "optimizer", None)
    if not isinstance(inner, RLNOptimizer):
        return []
    return [inner.lambdas(p) for p in inner.regularized_params()]


def worker(rank, which):
    model, opt = make(which)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x, y = data()
    for step in range(STEPS):
        xs, ys = x[step].chunk(WORLD)[rank], y[step].chunk(WORLD)[rank]
        opt.zero_grad()
        ((ddp(xs) - ys) ** 2).mean().backward()
        opt.step()
    return {"params": [p.detach() for p in model.parameters()], "lambdas": lambdas(opt)}


@pytest.mark.parametrize("which", ["rln", "rmsln", "nested"])
def test_ddp_ranks_agree_and_equal_one_process(which, tmp_path):
    ranks = run_ranks(worker, tmp_path, which, world=WORLD)
    for a, b in zip(ranks[0]["params"] + ranks[0]["lambdas"], ranks[1]["params"] + ranks[1]["lambdas"]):
        assert torch.equal(a, b)

    model, opt = make(which)
    x, y = data()
    for step in range(STEPS):
        opt.zero_grad()
        ((model(x[step]) - y[step]) ** 2).mean().backward()
        opt.step()
    for a, b in zip(ranks[0]["params"] + ranks[0]["lambdas"], [p.detach() for p in model.parameters()] + lambdas(opt)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    if which != "rmsln":
        assert (ranks[0]["params"][0] == 0).any()
