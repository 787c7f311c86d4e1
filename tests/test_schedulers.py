"""torch.optim.lr_scheduler drives the inner optimizer's settings, for every wrapper."""

import pytest
import torch
from helpers import WRAPPERS, batches, make_model, noise_batches, snapshot, train, train_step, train_with_penalty

from torch_rln import RLNOptimizer, RMSLNWrapper

LAM = 0.05  # large enough that the penalty visibly changes training


@pytest.mark.parametrize("name", ["step", "onecycle", "plateau"])
def test_lr_schedulers_drive_the_inner_learning_rate(wrapper_name, name):
    def build(opt):
        if name == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        if name == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)

    model = make_model()
    bare = torch.optim.SGD(make_model().parameters(), lr=0.1, momentum=0.9)
    opt = WRAPPERS[wrapper_name](torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    sched_bare, sched = build(bare), build(opt)
    lrs = []
    for x, y in batches(8):
        train_step(model, opt, x, y)
        bare.step()
        if name == "plateau":
            sched.step(1.0)
            sched_bare.step(1.0)
        else:
            sched.step()
            sched_bare.step()
        lrs.append(opt.optimizer.param_groups[0]["lr"])
        assert lrs[-1] == bare.param_groups[0]["lr"]
    assert len(set(lrs)) > 1  # the schedule did move the inner learning rate


def test_schedulers_set_the_inner_lr_and_betas(wrapper_name):
    model = make_model(sizes=(8, 16, 4))
    data = noise_batches()
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = WRAPPERS[wrapper_name](inner, rmsln={"reg_lambda": 0.1})

    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(4):
        train(model, opt, data, 1)
        step_lr.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.001)

    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    for _ in range(3):
        train(model, opt, data, 1)
        plateau.step(1.0)
    assert inner.param_groups[0]["lr"] == pytest.approx(0.00025)

    model = make_model(sizes=(8, 16, 4))
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt = WRAPPERS[wrapper_name](adam)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    lrs, betas = [], []
    for _ in range(9):  # steps 1..9 of 10: the last is the end of the cycle
        train(model, opt, data, 1)
        one_cycle.step()
        lrs.append(adam.param_groups[0]["lr"])
        betas.append(adam.param_groups[0]["betas"][0])
    assert max(lrs) == pytest.approx(0.1, rel=0.05)
    assert lrs[-1] < 1e-5
    assert len(set(betas)) > 1  # cycle_momentum reaches the inner betas


def test_rmsln_under_a_scheduler_matches_the_penalty_in_the_loss():
    data = noise_batches(dtype=torch.float64)
    model, oracle = make_model(sizes=(8, 16, 4), dtype=torch.float64), make_model(sizes=(8, 16, 4), dtype=torch.float64)
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=LAM)
    ref = torch.optim.SGD(oracle.parameters(), lr=0.1)
    s1 = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(ref, step_size=3, gamma=0.5)
    for k in range(10):
        train(model, opt, data[k % 4 :], 1)
        train_with_penalty(oracle, ref, data[k % 4 :], 1, reg_lambda=LAM)
        s1.step()
        s2.step()
    for p, q in zip(model.parameters(), oracle.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_rln_coefficients_are_frozen_at_learning_rate_zero():
    """A group at lr 0 (a frozen layer, a warm-up's first step, the step at lr 0 that
    torch.distributed.checkpoint runs to build state) is not regularized: RLN's shrink is a
    training step, as AdamW's decay (lr * weight_decay) is. Python and CPU-tensor lrs."""
    for frozen_lr in (0.0, torch.tensor(0.0)):
        model = make_model()
        base = torch.optim.Adam(
            [{"params": model[0].parameters(), "lr": frozen_lr}, {"params": model[2].parameters(), "lr": 1e-2}]
        )
        opt = RLNOptimizer(base, avg_reg=-5.0, reg_lr=1e4)
        frozen = model[0].weight.detach().clone()
        for x, y in batches(5):
            train_step(model, opt, x, y)
        assert torch.equal(model[0].weight, frozen)
        assert torch.equal(opt.lambdas(model[0].weight), torch.full_like(frozen, -5.0))
        assert (opt.lambdas(model[2].weight) != -5.0).any()


def test_a_rln_step_at_lr_zero_then_training_equals_training():
    """The step at lr 0 creates the state (lam = Theta, r_prev = 0) and nothing else: the
    training that follows is the same as from a fresh optimizer."""
    data = batches(12, dtype=torch.float64)
    runs = []
    for warm_up_at_zero in (False, True):
        model = make_model(dtype=torch.float64)
        # SGD: Adam would count the step at lr 0 in its bias correction.
        opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), avg_reg=-5.0, reg_lr=1e4)
        if warm_up_at_zero:
            opt.param_groups[0]["lr"] = 0.0
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()
            assert len(opt.reg_state) == 2
            opt.param_groups[0]["lr"] = 0.05
        for x, y in data:
            train_step(model, opt, x, y)
        runs.append(snapshot(model, opt))
    (params_a, _state_a), (params_b, _state_b) = runs
    for a, b in zip(params_a, params_b, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert (params_a[0] == 0).any()
