"""`torch-rln bench tabular`'s stacked training: one stack of copies, each with its own
setting, trains as the copies would alone; the optimizer is RMSprop per copy; RLN's
settings reach each copy."""

import math

import pytest
import torch
from torch_rln_cli.tabular import trainer
from torch_rln_cli.tabular.network import StackedMLP, widths
from torch_rln_cli.tabular.optimizer import StackedRMSprop, make_optimizer, rln_groups, rln_parts
from torch_rln_cli.tabular.trainer import Copies, Schedule, Splits, per_copy_loss, train

from torch_rln import RLNOptimizer


def splits(task="regression", slots=2, n=48, d=7, outputs=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, xv = torch.randn(slots, n, d, generator=g), torch.randn(slots, n // 2, d, generator=g)
    if task == "regression":
        y, yv = x[..., :2].sum(-1), xv[..., :2].sum(-1)
    elif task == "binary":
        y, yv = (x[..., 0] > 0).float(), (xv[..., 0] > 0).float()
    else:
        y, yv = (x[..., :2].sum(-1) > 0).long() + (x[..., 0] > 1).long(), (xv[..., :2].sum(-1) > 0).long()
    return Splits(x, y, xv, yv, task, outputs)


def test_widths_are_the_tutorials_for_one_output_and_end_at_the_classes_otherwise():
    assert widths(1013, 1, 4) == [180, 32, 6]  # the tutorial's geometric_widths
    assert widths(143, 1, 3) == [27, 5]
    assert widths(61, 10, 3) == [33, 18]  # from 61 inputs down to 10 classes
    assert widths(10, 1, 3) == [5, 2]


def test_each_run_of_rln_copies_is_one_tensor_with_a_theta_and_nu_per_copy():
    assert rln_parts(6, {}) == [6]
    rln = {2: (-10.0, 6.0), 3: (-9.0, 5.0), 5: (-8.0, 7.0)}
    assert rln_parts(6, rln) == [2, 2, 1, 1]
    tensors = [torch.zeros(n, 3, 4) for n in (2, 2, 1, 1)]
    groups = rln_groups(tensors, [2, 2, 1, 1], rln)
    assert [g["params"][0] is t for g, t in zip(groups, [tensors[1], tensors[3]], strict=True)] == [True, True]
    assert [(g["avg_reg"], g["reg_lr"], g["batch_dims"]) for g in groups] == [
        ([-10.0, -9.0], [1e6, 1e5], 1),
        ([-8.0], [1e7], 1),
    ]
    assert rln_parts(5, {0: rln[2], 1: rln[3], 2: rln[5]}) == [3, 2]  # the protocol's order: one RLN tensor


def test_stacked_rmsprop_is_torch_rmsprop_per_copy():
    """Each copy's lr and weight decay (on the matrices, not the biases) as torch.optim.RMSprop."""
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    model = StackedMLP([5, 4, 1], [3], gens)
    lr, wd = torch.tensor([1e-3, 1e-2, 3e-3]), torch.tensor([0.0, 0.1, 1e-3])
    opt = make_optimizer(model, lr, wd, [3], {})
    assert isinstance(opt, StackedRMSprop)
    singles = []
    for c in range(3):
        w1 = torch.nn.Parameter(model.first[0][c].detach().clone())
        w2 = torch.nn.Parameter(model.weights[0][c].detach().clone())
        b1, b2 = (torch.nn.Parameter(b[c].detach().clone()) for b in model.biases)
        ref = torch.optim.RMSprop(
            [{"params": [w1, w2], "weight_decay": float(wd[c])}, {"params": [b1, b2], "weight_decay": 0.0}],
            lr=float(lr[c]), alpha=0.9, eps=1e-7,
        )  # fmt: skip
        singles.append((w1, b1, w2, b2, ref))
    g = torch.Generator().manual_seed(9)
    for _ in range(5):
        x, y = torch.randn(8, 5, generator=g), torch.randn(8, 1, generator=g)
        opt.zero_grad()
        ((model(x.expand(3, -1, -1)) - y) ** 2).mean(dim=(1, 2)).sum().backward()
        opt.step()
        for w1, b1, w2, b2, ref in singles:
            ref.zero_grad()
            (((torch.relu(x @ w1.T + b1) @ w2.T + b2) - y) ** 2).mean().backward()
            ref.step()
    for c, (w1, _, w2, b2, _) in enumerate(singles):
        torch.testing.assert_close(model.first[0][c], w1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.weights[0][c], w2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.biases[1][c], b2, rtol=1e-5, atol=1e-6)


def test_rln_copies_train_as_separate_rln_optimizers():
    """Copies 0 and 2 with their own Theta and nu, copy 1 without RLN: each as its own
    RMSprop + RLNOptimizer(params=[first layer]) alone."""
    rln = {0: (-8.0, 6.0), 2: (-6.0, 5.0)}
    parts = rln_parts(3, rln)
    lr = torch.tensor([1e-2, 1e-2, 3e-3])
    model = StackedMLP([6, 5, 1], parts, [torch.Generator().manual_seed(s) for s in range(3)])
    opt = make_optimizer(model, lr, None, parts, rln)
    assert isinstance(opt, RLNOptimizer)
    alone = []
    for c in range(3):
        m = StackedMLP([6, 5, 1], [1], [torch.Generator().manual_seed(c)])
        o = make_optimizer(m, lr[c : c + 1], None, [1], {0: rln[c]} if c in rln else {})
        alone.append((m, o))
    g = torch.Generator().manual_seed(4)
    for _ in range(30):
        x = torch.randn(16, 6, generator=g)
        y = x[:, :1] * 2
        for m, o, xs in [(model, opt, x.expand(3, -1, -1)), *((m, o, x[None]) for m, o in alone)]:
            o.zero_grad()
            ((m(xs) - y) ** 2).mean(dim=(1, 2)).sum().backward()
            o.step()
    first = model.first_weight()
    for c, (m, o) in enumerate(alone):
        torch.testing.assert_close(first[c], m.first_weight()[0], rtol=1e-5, atol=1e-6)
        if c in rln:
            theta = rln[c][0]
            lam = o.lambdas(m.first[0])
            assert abs(float(lam.mean()) - theta) < 1.0  # projected to its own Theta (the cap lowers a few)
    assert (first[0] == 0).any()
    assert not (first[1] == 0).any()  # RLN zeroes weights; the copy without it does not


@pytest.mark.parametrize(("task", "outputs"), [("regression", 1), ("binary", 1), ("multiclass", 3)])
def test_a_stack_trains_as_its_copies_alone(task, outputs):
    """Every per-copy setting at once (lr, L1, weight decay, dropout, RLN, the data slot), through
    the whole trainer: the stack's results equal each copy trained alone."""
    data = splits(task, outputs=outputs)
    copies = Copies(
        slot=[0, 1, 0, 1, 0],
        init_seed=[11, 12, 13, 14, 15],
        lr=[3e-3, 1e-2, 5e-3, 2e-3, 1e-2],
        l1=[0.0, 1e-3, 0.0, 0.0, 0.0],
        weight_decay=[0.0, 0.0, 1e-2, 0.0, 0.0],
        dropout=[0.0, 0.0, 0.0, 0.3, 0.0],
        rln={4: (-7.0, 6.0)},
    )
    schedule = Schedule(depth=3, batch_size=16, max_epochs=5, patience=2)
    stacked = train(copies, data, schedule, keep_best=True)
    for c in range(len(copies)):
        one = Copies(
            [copies.slot[c]], [copies.init_seed[c]], [copies.lr[c]], [copies.l1[c]], [copies.weight_decay[c]],
            [copies.dropout[c]], {0: copies.rln[c]} if c in copies.rln else {},
        )  # fmt: skip
        alone = train(one, data, schedule, keep_best=True)
        assert stacked.best_epoch[c] == alone.best_epoch[0]
        assert stacked.best_loss[c] == pytest.approx(alone.best_loss[0], rel=1e-4)
        torch.testing.assert_close(stacked.model.first_weight()[c], alone.model.first_weight()[0], rtol=1e-4, atol=1e-5)
        assert torch.equal(stacked.eliminated[c], alone.eliminated[0])


def test_dropping_stopped_copies_changes_no_copy(monkeypatch):
    """Trials drop the copies that have stopped from the stack (their weights, RMSprop's and
    RLN's state carried over): every copy's validation losses stay those it has alone."""
    selects = []
    real_select = trainer._Stack.select
    monkeypatch.setattr(
        trainer._Stack, "select", lambda self, keep, data: selects.append(keep) or real_select(self, keep, data)
    )
    data = splits("binary")
    copies = Copies(
        slot=[0, 1, 0, 1, 0, 1],
        init_seed=[21, 22, 23, 24, 25, 26],
        lr=[3e-2, 1e-3, 2e-2, 1e-2, 3e-3, 5e-2],
        l1=[0.0, 0.0, 1e-3, 0.0, 0.0, 0.0],
        weight_decay=[0.0, 0.0, 0.0, 1e-2, 0.0, 0.0],
        dropout=[0.0, 0.2, 0.0, 0.0, 0.0, 0.0],
        rln={1: (-7.0, 6.0), 4: (-6.0, 5.0), 5: (-8.0, 6.0)},
    )
    schedule = Schedule(depth=2, batch_size=16, max_epochs=14, patience=2)
    stacked = train(copies, data, schedule)
    assert selects  # some copies stopped early and were dropped
    for c in range(len(copies)):
        one = Copies(
            [copies.slot[c]], [copies.init_seed[c]], [copies.lr[c]], [copies.l1[c]], [copies.weight_decay[c]],
            [copies.dropout[c]], {0: copies.rln[c]} if c in copies.rln else {},
        )  # fmt: skip
        alone = train(one, data, schedule)
        assert stacked.best_epoch[c] == alone.best_epoch[0], c
        assert stacked.best_loss[c] == pytest.approx(alone.best_loss[0], rel=1e-4), c


def test_early_stopping_keeps_each_copys_best_epoch():
    data = splits()
    copies = Copies(slot=[0, 0], init_seed=[1, 2], lr=[1e-2, 1.0])  # the second diverges
    trained = train(copies, data, Schedule(depth=2, batch_size=16, max_epochs=30, patience=4), keep_best=True)
    assert trained.epochs < 30 or trained.best_epoch[0] > 26
    with torch.no_grad():
        val = per_copy_loss(trained.model(data.x_val[[0, 0]]), data.y_val[[0, 0]], "regression")
    assert float(val[0]) == pytest.approx(trained.best_loss[0], rel=1e-5)  # the weights are the best epoch's
    assert math.isfinite(trained.best_loss[0])
    assert trained.best_loss[0] < trained.best_loss[1]


def test_eliminated_inputs_come_from_rln_stats():
    data = splits(d=12)
    data.x_train[..., 6:] = 0.0  # six inputs that carry nothing: RLN drives their columns to 0
    copies = Copies(slot=[0, 0], init_seed=[3, 3], lr=[1e-2, 1e-2], rln={1: (-5.0, 6.0)})
    trained = train(copies, data, Schedule(depth=2, batch_size=24, max_epochs=12, patience=12), keep_best=True)
    w = trained.model.first_weight().detach()
    torch.testing.assert_close(trained.eliminated, (w == 0).all(dim=1))
    assert trained.eliminated[1, 6:].all()
    assert not trained.eliminated[0].any()


@pytest.mark.parametrize("keep_best", [True, False])
def test_one_tensor_of_rln_copies_trains_as_separate_optimizers(keep_best, monkeypatch):
    """Three RLN copies with their own Theta and nu in one first-layer tensor (the library's
    per-copy settings, batch_dims=1) train as each copy alone, with an RLNOptimizer of its own;
    without keep_best, stopped copies are dropped from the joint tensor as they stop."""
    data = splits("regression")
    copies = Copies(
        slot=[0, 1, 0, 1, 0], init_seed=[31, 32, 33, 34, 35], lr=[1e-2, 3e-3, 1e-2, 2e-2, 5e-3],
        rln={1: (-7.0, 6.0), 2: (-6.0, 5.0), 3: (-8.0, 6.5)},
    )  # fmt: skip
    assert rln_parts(len(copies), copies.rln) == [1, 3, 1]
    schedule = Schedule(depth=2, batch_size=16, max_epochs=10, patience=2)
    selects = []
    real_select = trainer._Stack.select
    monkeypatch.setattr(
        trainer._Stack, "select", lambda self, keep, data: selects.append(keep) or real_select(self, keep, data)
    )
    stacked = train(copies, data, schedule, keep_best=keep_best)
    assert bool(selects) != keep_best  # trials drop their stopped copies; final models keep all
    for c in range(len(copies)):
        one = Copies(
            [copies.slot[c]], [copies.init_seed[c]], [copies.lr[c]], rln={0: copies.rln[c]} if c in copies.rln else {}
        )
        alone = train(one, data, schedule, keep_best=keep_best)
        assert stacked.best_epoch[c] == alone.best_epoch[0], c
        assert stacked.best_loss[c] == pytest.approx(alone.best_loss[0], rel=1e-5), c
        if keep_best:
            torch.testing.assert_close(stacked.model.first_weight()[c], alone.model.first_weight()[0])
            assert torch.equal(stacked.eliminated[c], alone.eliminated[0])
