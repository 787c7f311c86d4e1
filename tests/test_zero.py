"""ZeroRedundancyOptimizer with RLN, both ways round (2 processes, gloo, DDP): wrapping it, and
built by it from a factory (each rank then keeps the RLN state of its own partition only).
Both train as one process does, and resume exactly from a consolidated checkpoint."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
from helpers import train_ranked
from spawn import run_ranks

from torch_rln import RLNOptimizer

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed with gloo on Linux"
)

WORLD, STEPS, RESUME_AT = 2, 16, 9
SETTINGS = {"avg_reg": -5.0, "reg_lr": 30.0}
MODES = ["wrapping_zero", "built_by_zero"]


rln_factory = RLNOptimizer.factory(torch.optim.Adam, **SETTINGS)  # ZeRO builds one per rank


def make(mode=None):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).double()
    if mode is None:
        opt = rln_factory(model.parameters(), lr=1e-2)
    elif mode == "wrapping_zero":
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=1e-2)
        opt = RLNOptimizer(zero, **SETTINGS)
    else:
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=rln_factory, lr=1e-2)
    return model, opt


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, 32, 10, generator=g, dtype=torch.float64)
    return x, x[..., :2].sum(-1, keepdim=True)


def train(model, opt, steps, rank=None):
    train_ranked(model, opt, *data(), steps, rank, WORLD)


def consolidated_state_dict(opt, mode, path):
    """The whole optimizer state, gathered on rank 0, saved, then read by every rank."""
    zero = opt.optimizer if mode == "wrapping_zero" else opt
    zero.consolidate_state_dict(to=0)
    if dist.get_rank() == 0:
        torch.save(opt.state_dict(), path)
    dist.barrier()
    return torch.load(path, weights_only=True)


def worker(rank, directory):
    results = {}
    for mode in MODES:
        model, opt = make(mode)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        train(ddp, opt, range(RESUME_AT), rank)
        weights = [p.detach().clone() for p in model.parameters()]
        saved = consolidated_state_dict(opt, mode, os.path.join(directory, f"{mode}.pt"))
        train(ddp, opt, range(RESUME_AT, STEPS), rank)
        results[mode] = [p.detach().clone() for p in model.parameters()]

        model2, opt2 = make(mode)  # a fresh start from the checkpoint
        with torch.no_grad():
            for p, w in zip(model2.parameters(), weights, strict=False):
                p.copy_(w)
        opt2.load_state_dict(saved)
        ddp2 = torch.nn.parallel.DistributedDataParallel(model2)
        train(ddp2, opt2, range(RESUME_AT, STEPS), rank)
        results[f"{mode}_resumed"] = [p.detach().clone() for p in model2.parameters()]
        local = opt.optim if mode == "built_by_zero" else opt
        results[f"{mode}_rln_tensors_here"] = len(local.reg_state)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("zero"))
    return run_ranks(worker, directory, directory, world=WORLD)


@pytest.mark.parametrize("mode", MODES)
def test_zero_trains_as_one_process(ranks, mode):
    model, opt = make()
    train(model, opt, range(STEPS))
    expected = [p.detach() for p in model.parameters()]
    for rank in ranks:
        for got, want in zip(rank[mode], expected, strict=False):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert (expected[0] == 0).any()
    assert (expected[0] != 0).any()


@pytest.mark.parametrize("mode", MODES)
def test_zero_consolidated_checkpoint_resumes(ranks, mode):
    for rank in ranks:
        for got, want in zip(rank[f"{mode}_resumed"], rank[mode], strict=False):
            assert torch.equal(got, want)


def test_rln_state_is_partitioned_only_when_zero_builds_the_wrapper(ranks):
    """Wrapping ZeRO, each rank holds the RLN state of both weights; built by ZeRO, each
    rank holds that of its own partition."""
    assert [r["wrapping_zero_rln_tensors_here"] for r in ranks] == [2, 2]
    assert sum(r["built_by_zero_rln_tensors_here"] for r in ranks) == 2
