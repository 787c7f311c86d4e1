"""Under FSDP2 (``fully_shard``, 2 processes, gloo, loopback), the wrappers train a sharded
model as one process trains the whole model, uneven and empty shards included, and their
state goes through ``torch.distributed.checkpoint`` and back.

One spawn runs every scenario (starting processes is the slow part); the tests check its
results.
"""

import os
import sys

import pytest
import torch
import torch.distributed as dist
from helpers import rln_of, train_ranked
from spawn import run_ranks

from torch_rln import RLNOptimizer, RMSLNWrapper

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed with gloo on Linux"
)

WORLD, STEPS, RESUME_AT = 2, 20, 12
SCENARIOS = ["rln_foreach", "rln_single", "rln_compile", "rmsln", "rmsln_decoupled", "nested"]


class Net(torch.nn.Module):
    """Shards of 4/3 rows, 1/0 rows (an empty shard), and two stacks of 3 copies: one split
    along its copies (2/1), one inside each copy (3/3 rows: FSDP2 shards other dims evenly)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(10, 7)
        self.b = torch.nn.Linear(7, 1)
        self.stack_by_copy = torch.nn.Parameter(0.3 * torch.randn(3, 6, 4))
        self.stack_in_copy = torch.nn.Parameter(0.3 * torch.randn(3, 6, 4))

    def forward(self, x):
        h = torch.relu(self.a(x))
        stacked = torch.einsum("bi,koi->bko", x[:, :4], self.stack_by_copy + self.stack_in_copy)
        return self.b(h).squeeze(-1) + stacked.mean((1, 2))


def make(which, inner="adam"):
    torch.manual_seed(0)
    model = Net().double()
    return model, wrap(model, which, inner)


def wrap(model, which, inner="adam"):
    if inner == "adam":
        base = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        base = torch.optim.SGD(model.parameters(), lr=0.05)
    rln_groups = [
        {"params": [model.a.weight, model.b.weight]},
        {"params": [model.stack_by_copy, model.stack_in_copy], "batch_dims": 1},
    ]
    settings = {"avg_reg": -4.0, "reg_lr": 1e3}
    if which.startswith("rln"):
        path = which.split("_")[1]
        return RLNOptimizer(base, rln_groups, foreach=path != "single", compile=path == "compile", **settings)
    if which.startswith("rmsln"):
        return RMSLNWrapper(base, reg_lambda=0.05, decoupled=which == "rmsln_decoupled")
    return RMSLNWrapper(RLNOptimizer(base, rln_groups, **settings), reg_lambda=0.05)


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, 32, 10, generator=g, dtype=torch.float64)
    return x, x[..., 0] - 2 * x[..., 1]


def snapshot(model, opt):
    """Whole parameters and RLN coefficients (gathered if sharded)."""

    def whole(t):
        return t.full_tensor() if hasattr(t, "full_tensor") else t.detach().clone()

    rln = rln_of(opt)
    lams = [] if rln is None else [whole(rln.lambdas(p)) for p in rln.regularized_params()]
    return {"params": [whole(p.detach()) for p in model.parameters()], "lambdas": lams}


def train(model, opt, steps, rank=None):
    train_ranked(model, opt, *data(), steps, rank, WORLD)


def shard(model):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    fully_shard(model.a)
    fully_shard(model, shard_placement_fn=lambda p: Shard(1) if p is model.stack_in_copy else None)
    return model


def checkpoint_round_trip(rank, directory):
    """Save through torch.distributed.checkpoint at RESUME_AT, then resume in a fresh model
    and optimizer: the weights before and after saving, and both runs' ends."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    results = {}
    for inner in ("adam", "sgd"):
        model, _ = make("nested")
        model = shard(model)
        opt = wrap(model, "nested", inner)
        train(model, opt, range(RESUME_AT), rank)
        opt.zero_grad()  # no gradients: DCP then initializes the state with a step at lr 0
        before = snapshot(model, opt)
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        results[f"{inner}_save_moves"] = [before, snapshot(model, opt)]
        if inner == "sgd":
            continue  # SGD keeps no state for biases: DCP's strict load needs Adam's
        dcp.save(state, checkpoint_id=directory)
        train(model, opt, range(RESUME_AT, STEPS), rank)
        results["uninterrupted"] = snapshot(model, opt)

        fresh_model, _ = make("nested")
        torch.manual_seed(123)
        for p in fresh_model.parameters():  # nothing of the first run survives but the checkpoint
            p.data.normal_()
        fresh_model = shard(fresh_model)
        fresh = wrap(fresh_model, "nested", inner)
        untouched = snapshot(fresh_model, fresh)
        template = {"model": get_model_state_dict(fresh_model), "optim": get_optimizer_state_dict(fresh_model, fresh)}
        results["fresh_save_moves"] = [untouched, snapshot(fresh_model, fresh)]
        dcp.load(template, checkpoint_id=directory)
        set_model_state_dict(fresh_model, template["model"])
        set_optimizer_state_dict(fresh_model, fresh, template["optim"])
        results["loaded"] = snapshot(fresh_model, fresh)
        train(fresh_model, fresh, range(RESUME_AT, STEPS), rank)
        results["resumed"] = snapshot(fresh_model, fresh)
    return results


TP_STEPS = 6


def tp_gradients():
    """The whole gradients of a 3x5 and a 4x5 weight for each step."""
    g = torch.Generator().manual_seed(2)
    return [
        (torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64))
        for _ in range(TP_STEPS)
    ]


def tp_weights():
    g = torch.Generator().manual_seed(3)
    return torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)


def train_tp(params, gradients, opt):
    for grads in gradients:
        for p, grad in zip(params, grads, strict=False):
            p.grad = grad
        opt.step()
    return [p.detach() for p in params]


def tensor_parallel_gradients(rank):
    """RMSLN (coupled) with gradients placed unlike their weights, as tensor parallelism leaves
    them: a Partial gradient (each rank holds a part of the sum) on a replicated weight, and a
    replicated gradient on a sharded weight. The whole weights after training."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    a, b = tp_weights()
    a = torch.nn.Parameter(distribute_tensor(a, mesh, [Replicate()]))
    b = torch.nn.Parameter(distribute_tensor(b, mesh, [Shard(0)]))
    share = 0.25 if rank == 0 else 0.75
    gradients = [
        (DTensor.from_local(ga * share, mesh, [Partial()]), distribute_tensor(gb, mesh, [Replicate()]))
        for ga, gb in tp_gradients()
    ]
    opt = RMSLNWrapper(torch.optim.SGD([a, b], lr=0.1), reg_lambda=0.5)
    return [p.full_tensor() for p in train_tp([a, b], gradients, opt)]


def worker(rank, directory):
    results = {"tp_gradients": tensor_parallel_gradients(rank)}
    for which in SCENARIOS:
        model, _ = make(which)
        model = shard(model)
        opt = wrap(model, which)
        train(model, opt, range(STEPS), rank)
        results[which] = snapshot(model, opt)
    results["local_shapes"] = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
    results["checkpoint"] = checkpoint_round_trip(rank, os.path.join(directory, "dcp"))
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("fsdp"))
    return run_ranks(worker, directory, directory, world=WORLD)


def assert_same(a, b, **tolerance):
    assert len(a["params"]) == len(b["params"])
    assert len(a["lambdas"]) == len(b["lambdas"])
    for x, y in zip(a["params"] + a["lambdas"], b["params"] + b["lambdas"], strict=False):
        if tolerance:
            torch.testing.assert_close(x, y, **tolerance)
        else:
            assert torch.equal(x, y)


def test_shards_are_uneven_and_one_is_empty(ranks):
    shapes = [r["local_shapes"] for r in ranks]
    assert shapes[0]["a.weight"] == (4, 10)
    assert shapes[1]["a.weight"] == (3, 10)
    assert shapes[0]["b.weight"] == (1, 7)
    assert shapes[1]["b.weight"] == (0, 7)
    assert shapes[0]["stack_by_copy"] == (2, 6, 4)
    assert shapes[1]["stack_by_copy"] == (1, 6, 4)
    assert shapes[0]["stack_in_copy"] == shapes[1]["stack_in_copy"] == (3, 3, 4)


@pytest.mark.parametrize("which", SCENARIOS)
def test_fsdp2_equals_one_process_on_the_whole_batch(ranks, which):
    assert_same(ranks[0][which], ranks[1][which])  # every rank gathers the same model
    model, opt = make(which)
    train(model, opt, range(STEPS))
    assert_same(ranks[0][which], snapshot(model, opt), rtol=1e-9, atol=1e-11)
    if which != "rmsln" and which != "rmsln_decoupled":
        assert (ranks[0][which]["params"][0] == 0).any()  # RLN zeroed weights: the cap binds


@pytest.mark.parametrize("when", ["adam_save", "sgd_save", "fresh_save"])
def test_taking_a_distributed_state_dict_leaves_the_model_alone(ranks, when):
    """get_optimizer_state_dict runs a step at lr 0 with zero gradients when the inner state is
    empty (on a fresh optimizer; always, for plain SGD): RLN must not shrink the weights then."""
    before, after = ranks[0]["checkpoint"][f"{when}_moves"]
    assert_same(before, after)


def test_distributed_checkpoint_resumes_exactly(ranks):
    for rank in ranks:
        result = rank["checkpoint"]
        assert_same(result["loaded"], rank["checkpoint"]["adam_save_moves"][0])
        assert_same(result["resumed"], result["uninterrupted"])


def test_rmsln_redistributes_gradients_placed_unlike_their_weights(ranks):
    params = [torch.nn.Parameter(w) for w in tp_weights()]
    expected = train_tp(params, tp_gradients(), RMSLNWrapper(torch.optim.SGD(params, lr=0.1), reg_lambda=0.5))
    for rank in ranks:
        for got, want in zip(rank["tp_gradients"], expected, strict=False):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
