"""Tests of torch_rln.rmsln: RMSLNWrapper, rms_penalty, rms_penalty_grad, rmsln_update."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from torch_rln.rln import RLNOptimizer
from torch_rln.rmsln import RMSLNWrapper, _compiled_rmsln, rms_penalty, rms_penalty_grad, rmsln_update

LAM = 0.05  # large enough that the penalty visibly changes training


# ---------------------------------------------------------------------- helpers
def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def make_batches(dtype=torch.float32, n=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 8, generator=gen).to(dtype), torch.randn(32, 4, generator=gen).to(dtype)) for _ in range(n)]


def weights(model):
    return [m.weight for m in model if isinstance(m, nn.Linear)]


def task_loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_params_equal(model_a, model_b):
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b), (a - b).abs().max()


INNER = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=5e-2, momentum=0.9),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3),
}


def train_wrapped(model, opt, batches, steps):
    for k in range(steps):
        opt.zero_grad()
        task_loss(model, batches[k % len(batches)]).backward()
        opt.step()


def train_oracle(model, opt, batches, steps, reg_lambda=LAM, target=1.0):
    for k in range(steps):
        opt.zero_grad()
        loss = task_loss(model, batches[k % len(batches)]) + rms_penalty(weights(model), reg_lambda, target)
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------- the math
def test_grad_equals_autograd_of_penalty():
    torch.manual_seed(0)
    ps = [
        torch.randn(16, 8, requires_grad=True),
        torch.randn(3, 5, dtype=torch.float64, requires_grad=True),
        (3 * torch.randn(7)).requires_grad_(),
    ]
    rms_penalty(ps, 0.3, 0.7).backward()
    for foreach in (True, False):
        for p, g in zip(ps, rms_penalty_grad(ps, 0.3, 0.7, foreach=foreach)):
            assert g.dtype == p.dtype
            torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=0)


def test_penalty_value():
    w = torch.full((4, 25), 3.0)  # rms 3
    v = torch.full((10,), -0.5, dtype=torch.float64)  # rms 0.5
    assert rms_penalty([w, v], 0.1, 1.0).item() == pytest.approx(0.1 * (2.0**2 + 0.5**2), rel=1e-12)
    assert rms_penalty([], 0.1).item() == 0.0
    # the closed form of the gradient
    (g,) = rms_penalty_grad([w], 0.1, 1.0)
    torch.testing.assert_close(g, 2 * 0.1 * (3.0 - 1.0) * w / (w.numel() * 3.0))


@pytest.mark.parametrize("inner", sorted(INNER))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coupled_equals_penalty_in_loss(inner, dtype):
    batches = make_batches(dtype)
    steps = 120
    model = make_model(dtype)
    opt = RMSLNWrapper(INNER[inner](model.parameters()), reg_lambda=LAM)
    train_wrapped(model, opt, batches, steps)

    oracle = make_model(dtype)
    train_oracle(oracle, INNER[inner](oracle.parameters()), batches, steps)

    plain = make_model(dtype)
    train_wrapped(plain, INNER[inner](plain.parameters()), batches, steps)

    for p, q, r in zip(model.parameters(), oracle.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6 * q.abs().max().item())
    # the penalty did something: the weights moved away from unregularized training
    moved = max((p - r).abs().max().item() for p, r in zip(weights(model), weights(plain)))
    assert moved > 1e-3


def test_foreach_equals_single_tensor_wrapper():
    """Several groups with different settings, float32 and float64 in one wrapper, both modes."""

    def build(foreach, decoupled):
        torch.manual_seed(0)
        a = nn.Linear(8, 16)
        b = nn.Linear(16, 12).double()
        c = nn.Linear(12, 4).double()
        model = (a, b, c)
        inner = torch.optim.Adam([*a.parameters(), *b.parameters(), *c.parameters()], lr=1e-2)
        groups = [
            {"params": [a.weight, c.weight], "reg_lambda": 0.1, "target": 0.5},
            {"params": [b.weight], "reg_lambda": 0.02, "target": 2.0},
            {"params": [a.bias, b.bias]},
        ]
        return model, RMSLNWrapper(inner, groups, reg_lambda=0.3, decoupled=decoupled, foreach=foreach)

    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(16, 8, generator=gen) for _ in range(4)]
    for decoupled in (False, True):
        results = []
        for foreach in (True, False):
            (a, b, c), opt = build(foreach, decoupled)
            assert opt.reg_groups[2]["reg_lambda"] == 0.3 and opt.reg_groups[2]["target"] == 1.0
            for k in range(25):
                opt.zero_grad()
                c(torch.relu(b(torch.relu(a(xs[k % 4])).double()))).square().mean().backward()
                opt.step()
            results.append([p.detach().clone() for m in (a, b, c) for p in m.parameters()])
        for p, q in zip(*results):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_foreach_equals_single_tensor_functional():
    torch.manual_seed(0)
    params = [
        torch.randn(5, 6),
        torch.zeros(3, 3),
        torch.randn(4, dtype=torch.float64),
        torch.randn(6, 2).to(torch.bfloat16),
        torch.empty(0, 3),
        torch.randn(2, 2, dtype=torch.float16),
    ]
    lams, tgts = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1.0, 0.5, 2.0, 1.0, 1.0, 0.1]
    for alphas in (None, [-0.1, -0.2, torch.tensor(-0.3), -0.4, -0.5, -0.6]):
        out = []
        for foreach in (True, False):
            ps = [p.clone() for p in params]
            with torch.no_grad():
                rms = rmsln_update(ps, ps, reg_lambdas=lams, targets=tgts, alphas=alphas, foreach=foreach)
            out.append((ps, rms))
        (ps_a, rms_a), (ps_b, rms_b) = out
        for p, q, orig in zip(ps_a, ps_b, params):
            assert p.dtype == orig.dtype
            torch.testing.assert_close(p, q, rtol=1e-6, atol=0)
        assert rms_a[4] is None and rms_b[4] is None
        for i in (0, 1, 2, 3, 5):
            assert rms_a[i].dtype == (torch.float64 if i == 2 else torch.float32)
            torch.testing.assert_close(rms_a[i], rms_b[i], rtol=1e-6, atol=0)
        # something moved (except the zero tensor)
        assert not torch.equal(ps_a[0], params[0]) and torch.equal(ps_a[1], params[1])


# ---------------------------------------------------------------------- decoupled mode
def test_decoupled_step_is_inner_step_minus_lr_grad():
    model = make_model(torch.float64)
    batches = make_batches(torch.float64)
    opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=0.02), reg_lambda=0.5, decoupled=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train_wrapped(model, opt, batches, 2)
    sched.step()
    sched.step()
    lr = opt.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(0.005)

    opt.zero_grad()
    task_loss(model, batches[2]).backward()
    # the inner step alone, on copies
    twin_params = [p.detach().clone() for p in model.parameters()]
    for t, p in zip(twin_params, model.parameters()):
        t.grad = p.grad.clone()
    twin = torch.optim.Adam(twin_params, lr=0.02)
    twin.load_state_dict(copy.deepcopy(opt.optimizer.state_dict()))  # Adam shares loaded tensors
    twin.step()
    inner_w = [twin_params[0], twin_params[2]]
    leaves = [w.clone().requires_grad_() for w in inner_w]
    rms_penalty(leaves, 0.5).backward()

    opt.step()
    for w, w_inner, leaf in zip(weights(model), inner_w, leaves):
        torch.testing.assert_close(w, w_inner - lr * leaf.grad, rtol=1e-12, atol=1e-15)
        assert (w - w_inner).abs().max() > 1e-6  # the decay did act
    # biases are not regularized: exactly the inner step
    assert torch.equal(model[0].bias, twin_params[1]) and torch.equal(model[2].bias, twin_params[3])


def test_decoupled_tensor_lr_equals_float_lr():
    results = []
    for lr in (0.01, torch.tensor(0.01)):
        model = make_model()
        opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=lr), reg_lambda=0.5, decoupled=True)
        train_wrapped(model, opt, make_batches(), 5)
        results.append(snapshot(model))
    for p, q in zip(*results):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_decoupled_differs_from_coupled_with_adam():
    out = []
    for decoupled in (False, True):
        model = make_model()
        opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), reg_lambda=0.5, decoupled=decoupled)
        train_wrapped(model, opt, make_batches(), 10)
        out.append(weights(model)[0].detach().clone())
    assert (out[0] - out[1]).abs().max() > 1e-5


class NoLR(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


def test_decoupled_needs_lr():
    w = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match="no 'lr'"):
        RMSLNWrapper(NoLR([w]), decoupled=True)
    RMSLNWrapper(NoLR([w]))  # coupled mode does not need it
    with pytest.raises(TypeError, match="decoupled"):
        RMSLNWrapper(torch.optim.SGD([w], lr=0.1), decoupled=1)


# ---------------------------------------------------------------------- numerics
@pytest.mark.parametrize("foreach", [True, False])
def test_zero_rms_gives_zero_grad(foreach):
    zero = torch.zeros(4, 5)
    tiny = torch.full((4, 5), 1e-44)  # nonzero, but the squares underflow: rms == 0
    tiny[0, 0] = 0.0
    small = torch.full((4, 5), 1e-22)  # the smallest norms float32 can hold
    small[0, 0] = 0.0
    assert torch.linalg.vector_norm(tiny) == 0 and torch.linalg.vector_norm(small) > 0
    g_zero, g_tiny, g_small = rms_penalty_grad([zero, tiny, small], 10.0, foreach=foreach)
    assert torch.equal(g_zero, torch.zeros_like(zero))
    assert torch.equal(g_tiny, torch.zeros_like(tiny))
    assert torch.isfinite(g_small).all() and g_small[0, 0] == 0 and (g_small[1:] < 0).all()

    w = nn.Parameter(torch.zeros(3, 4))
    opt = RMSLNWrapper(torch.optim.SGD([w], lr=0.1), reg_lambda=1.0, foreach=foreach)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert torch.equal(w, torch.zeros_like(w))
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("decoupled", [False, True])
def test_bfloat16_runs_finite(decoupled):
    model = make_model(torch.bfloat16)
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.05), reg_lambda=1.0, decoupled=decoupled)
    before = rms_penalty(weights(model), 1.0).item()
    batches = make_batches(torch.bfloat16)
    for k in range(20):
        opt.zero_grad()
        task_loss(model, batches[k % 4]).float().backward()
        assert all(w.grad.dtype == torch.bfloat16 for w in weights(model))
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert rms_penalty(weights(model), 1.0).item() < before  # pulled toward rms 1


def test_bfloat16_grad_computed_in_float32():
    torch.manual_seed(0)
    w = torch.randn(8, 8).to(torch.bfloat16)
    (g,) = rms_penalty_grad([w], 0.7, 0.3)
    (g32,) = rms_penalty_grad([w.float()], 0.7, 0.3)
    assert g.dtype == torch.bfloat16
    assert torch.equal(g, g32.to(torch.bfloat16))  # one rounding, at the end


def test_grad_none_is_skipped():
    a, b = nn.Parameter(torch.randn(3, 3)), nn.Parameter(torch.randn(3, 3))
    for decoupled in (False, True):
        opt = RMSLNWrapper(torch.optim.SGD([a, b], lr=0.1), reg_lambda=1.0, decoupled=decoupled)
        b_before = b.detach().clone()
        a.grad, b.grad = torch.zeros_like(a), None
        a_before = a.detach().clone()
        opt.step()
        assert b.grad is None and torch.equal(b, b_before)
        assert not torch.equal(a, a_before)


# ---------------------------------------------------------------------- bad inputs
BAD_VALUES = [-1.0, -1, float("nan"), float("inf"), -float("inf"), True, False, "0.1", None, torch.tensor(0.1)]


@pytest.mark.parametrize("key", ["reg_lambda", "target"])
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_bad_settings_rejected(key, value):
    model = make_model()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = inner.state_dict()
    with pytest.raises(ValueError, match=key) as info:
        RMSLNWrapper(inner, **{key: value})
    assert repr(value) in str(info.value)
    with pytest.raises(ValueError, match=key) as info:
        RMSLNWrapper(inner, [{"params": [model[0].weight], key: value}])
    assert repr(value) in str(info.value)
    assert inner.state_dict() == before and len(inner.param_groups) == 1
    with pytest.raises(ValueError, match=key):
        rms_penalty(weights(model), **{"reg_lambda": 0.1, key: value})


def test_an_inner_optimizers_state_dict_is_refused():
    """A state dict without "rmsln_groups" is not RMSLN's, unless torch.distributed.checkpoint
    made it (parameters keyed by name): loading the inner optimizer's checkpoint is a mistake."""
    model = make_model()
    opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), reg_lambda=0.1)
    train_wrapped(model, opt, make_batches(), 2)
    before = opt.state_dict()
    with pytest.raises(ValueError, match="has no 'rmsln_groups'.*RMSLNWrapper.optimizer.load_state_dict"):
        opt.load_state_dict(torch.optim.Adam(model.parameters(), lr=0.5).state_dict())
    assert opt.param_groups[0]["lr"] == 1e-2 and len(opt.state) == len(before["state"])


def test_bad_setting_in_state_dict_changes_nothing():
    model = make_model()
    opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), reg_lambda=0.1)
    train_wrapped(model, opt, make_batches(), 2)
    sd = opt.state_dict()
    sd["rmsln_groups"][0]["reg_lambda"] = float("nan")
    sd["param_groups"][0]["lr"] = 123.0
    before = opt.state_dict()
    with pytest.raises(ValueError, match="nan"):
        opt.load_state_dict(sd)
    assert opt.reg_groups[0]["reg_lambda"] == 0.1
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, entry in before["state"].items():
        for k, v in entry.items():
            assert torch.equal(v, after["state"][i][k])
    bogus = opt.state_dict()
    bogus["state"][0]["rmsln_buf"] = torch.zeros_like(model[0].weight)
    with pytest.raises(ValueError, match="rmsln_buf"):
        opt.load_state_dict(bogus)


def test_bad_params_rejected():
    model = make_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    before = inner.state_dict()
    stranger = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"shape \(4, 4\).*not a parameter of the inner optimizer"):
        RMSLNWrapper(inner, [stranger])
    with pytest.raises(ValueError, match="regularized twice"):
        RMSLNWrapper(inner, [model[0].weight, model[0].weight])
    with pytest.raises(ValueError, match="regularized twice"):
        RMSLNWrapper(inner, [{"params": [model[0].weight]}, {"params": [model[0].weight]}])
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        RMSLNWrapper(list(model.parameters()))
    with pytest.raises(TypeError, match="single"):
        RMSLNWrapper(inner, model[0].weight)
    with pytest.raises(ValueError, match="already wraps"):
        RMSLNWrapper(RMSLNWrapper(inner))
    assert inner.state_dict() == before


# ---------------------------------------------------------------------- drop-in Optimizer
def test_lr_schedulers_drive_inner_lr():
    model = make_model()
    batches = make_batches()
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = RMSLNWrapper(inner, reg_lambda=0.1)

    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(4):
        train_wrapped(model, opt, batches, 1)
        step_lr.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.001)

    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    for _ in range(3):
        train_wrapped(model, opt, batches, 1)
        plateau.step(1.0)
    assert inner.param_groups[0]["lr"] == pytest.approx(0.00025)

    model = make_model()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt = RMSLNWrapper(adam)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    lrs, betas = [], []
    for _ in range(9):  # steps 1..9 of 10: the last is the end of the cycle
        train_wrapped(model, opt, batches, 1)
        one_cycle.step()
        lrs.append(adam.param_groups[0]["lr"])
        betas.append(adam.param_groups[0]["betas"][0])
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[-1] < 1e-5
    assert len(set(betas)) > 1  # cycle_momentum reaches the inner betas


def test_lr_scheduler_matches_penalty_in_loss():
    batches = make_batches(torch.float64)
    model, oracle = make_model(torch.float64), make_model(torch.float64)
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=LAM)
    ref = torch.optim.SGD(oracle.parameters(), lr=0.1)
    s1 = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(ref, step_size=3, gamma=0.5)
    for k in range(10):
        train_wrapped(model, opt, batches[k % 4 :], 1)
        train_oracle(oracle, ref, batches[k % 4 :], 1)
        s1.step()
        s2.step()
    for p, q in zip(model.parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_grad_scaler_cpu():
    batches = make_batches()
    model, oracle = make_model(), make_model()
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=LAM)
    ref = torch.optim.SGD(oracle.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    # a step with an inf gradient is skipped: nothing moves
    opt.zero_grad()
    scaler.scale(task_loss(model, batches[0])).backward()
    model[0].weight.grad[0, 0] = float("inf")
    before = snapshot(model)
    scaler.step(opt)
    scaler.update()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert scaler.get_scale() == 2.0**9

    # ordinary steps: the penalty is added to the unscaled gradients
    for k in range(5):
        opt.zero_grad()
        scaler.scale(task_loss(model, batches[k % 4])).backward()
        scaler.step(opt)
        scaler.update()
        train_oracle(oracle, ref, batches[k % 4 :], 1)
    for p, q in zip(model.parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.equal(model[0].weight, before[0])


@pytest.mark.parametrize("zero_inside", [True, False])
def test_step_with_closure_sgd(zero_inside):
    """The penalty's gradient is added once, by the closure, whether grads exist before the step or not."""
    batches = make_batches(torch.float64)
    model, oracle = make_model(torch.float64), make_model(torch.float64)
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5), reg_lambda=LAM)
    ref = torch.optim.SGD(oracle.parameters(), lr=0.1, momentum=0.5)
    for k in range(5):
        batch = batches[k % 4]
        if not zero_inside:
            opt.zero_grad(set_to_none=False)  # zero grads exist when step() begins

        def closure():
            if zero_inside:
                opt.zero_grad()
            loss = task_loss(model, batch)
            loss.backward()
            return loss

        loss = opt.step(closure)
        oracle_loss = task_loss(oracle, batch) + rms_penalty(weights(oracle), LAM)
        ref.zero_grad()
        oracle_loss.backward()
        ref.step()
        torch.testing.assert_close(loss, oracle_loss.detach(), rtol=1e-12, atol=0)
    for p, q in zip(model.parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_step_with_closure_lbfgs():
    batches = make_batches(torch.float64)
    batch = batches[0]
    model, oracle = make_model(torch.float64), make_model(torch.float64)
    opt = RMSLNWrapper(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5), reg_lambda=LAM)
    ref = torch.optim.LBFGS(oracle.parameters(), lr=0.5, max_iter=5)

    def closure():
        opt.zero_grad()
        loss = task_loss(model, batch)
        loss.backward()
        return loss

    def oracle_closure():
        ref.zero_grad()
        loss = task_loss(oracle, batch) + rms_penalty(weights(oracle), LAM)
        loss.backward()
        return loss

    for _ in range(3):
        loss = opt.step(closure)
        ref_loss = ref.step(oracle_closure)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=0)
    for p, q in zip(model.parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)
    assert loss.item() > task_loss(model, batch).item()  # the returned loss includes R


def test_decoupled_with_closure():
    model = make_model()
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=1.0, decoupled=True)
    batch = make_batches()[0]

    def closure():
        opt.zero_grad()
        loss = task_loss(model, batch)
        loss.backward()
        return loss

    w = model[0].weight.detach().clone()
    loss = opt.step(closure)
    assert torch.equal(loss, task_loss(make_model(), batch))  # the user's loss, unchanged
    grad = model[0].weight.grad
    inner_w = w - 0.1 * grad
    (g,) = rms_penalty_grad([inner_w], 1.0)
    torch.testing.assert_close(model[0].weight.detach(), inner_w - 0.1 * g)


@pytest.mark.parametrize("decoupled", [False, True])
def test_state_dict_resume_bit_identical(decoupled):
    batches = make_batches()

    def build():
        model = make_model()
        inner = torch.optim.Adam(model.parameters(), lr=1e-2)
        groups = [{"params": [model[0].weight], "reg_lambda": 0.2}, {"params": [model[2].weight], "target": 0.5}]
        return model, RMSLNWrapper(inner, groups, reg_lambda=0.05, decoupled=decoupled)

    model, opt = build()
    train_wrapped(model, opt, batches, 7)
    opt.reg_groups[1]["reg_lambda"] = 0.07  # a changed setting travels with the checkpoint
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert ckpt["opt"]["rmsln_groups"] == [
        {"reg_lambda": 0.2, "target": 1.0, "params": [0]},
        {"reg_lambda": 0.07, "target": 0.5, "params": [2]},
    ]

    model2, opt2 = build()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.reg_groups[1]["reg_lambda"] == 0.07
    assert opt2.reg_state == {}
    train_wrapped(model, opt, batches, 6)
    train_wrapped(model2, opt2, batches, 6)
    assert_params_equal(model, model2)


def test_step_hooks_zero_grad_add_param_group():
    model = make_model()
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=1.0)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o)))
    h2 = opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o)))
    train_wrapped(model, opt, make_batches(), 2)
    assert calls == [("pre", opt), ("post", opt)] * 2
    h1.remove()
    h2.remove()
    train_wrapped(model, opt, make_batches(), 1)
    assert len(calls) == 4

    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())

    # params=None: a new group's weights are regularized too
    extra_w, extra_b = nn.Parameter(torch.full((3, 3), 2.0)), nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra_w, extra_b], "lr": 0.5})
    assert any(p is extra_w for p in opt.regularized_params())
    assert not any(p is extra_b for p in opt.regularized_params())
    extra_w.grad, extra_b.grad = torch.zeros_like(extra_w), torch.zeros_like(extra_b)
    opt.step()
    # rms 2, target 1: dR/dW = 2 * (2 - 1) * W / (9 * 2) = W / 9; SGD lr 0.5
    torch.testing.assert_close(extra_w.detach(), torch.full((3, 3), 2.0 - 0.5 * 2.0 / 9))
    assert torch.equal(extra_b, torch.zeros(3))

    # explicit params: a new group is not regularized
    opt2 = RMSLNWrapper(torch.optim.SGD([model[0].weight], lr=0.1), [model[0].weight])
    opt2.add_param_group({"params": [model[2].weight]})
    assert not any(p is model[2].weight for p in opt2.regularized_params())


def test_penalty_method():
    model = make_model()
    opt = RMSLNWrapper(
        torch.optim.SGD(model.parameters(), lr=0.1),
        [{"params": [model[0].weight], "reg_lambda": 0.3}, {"params": [model[2].weight], "target": 2.0}],
    )
    expected = rms_penalty([model[0].weight], 0.3) + rms_penalty([model[2].weight], 1e-4, 2.0)
    got = opt.penalty()
    torch.testing.assert_close(got, expected)
    got.backward()
    assert model[0].weight.grad is not None and model[0].bias.grad is None


# ---------------------------------------------------------------------- nesting
@pytest.mark.parametrize("order", ["rmsln_outside", "rln_outside"])
def test_nesting_state_dict_round_trip(order):
    batches = make_batches()

    def build():
        model = make_model()
        adam = torch.optim.Adam(model.parameters(), lr=1e-2)
        if order == "rmsln_outside":
            opt = RMSLNWrapper(RLNOptimizer(adam, avg_reg=-8.0, reg_lr=1e4), reg_lambda=0.1)
        else:
            opt = RLNOptimizer(RMSLNWrapper(adam, reg_lambda=0.1), avg_reg=-8.0, reg_lr=1e4)
        return model, opt

    model, opt = build()
    train_wrapped(model, opt, batches, 5)
    sd = opt.state_dict()
    assert "rmsln_groups" in sd and "rln_groups" in sd
    assert "rln_lam" in sd["state"][0] and "exp_avg" in sd["state"][0]
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": sd}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model2, opt2 = build()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    train_wrapped(model, opt, batches, 5)
    train_wrapped(model2, opt2, batches, 5)
    assert_params_equal(model, model2)

    # both regularizers act: the result differs from RLN alone
    alone = make_model()
    rln = RLNOptimizer(torch.optim.Adam(alone.parameters(), lr=1e-2), avg_reg=-8.0, reg_lr=1e4)
    train_wrapped(alone, rln, batches, 10)
    assert not torch.equal(alone[0].weight, model[0].weight)


# ---------------------------------------------------------------------- compile
def test_compiled_update_matches_eager():
    results = []
    for compile in (True, False):
        model = make_model()
        opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=LAM, compile=compile)
        train_wrapped(model, opt, make_batches(), 2)
        assert (opt.implementation(torch.device("cpu"), torch.float32, False) is _compiled_rmsln) == compile
        results.append(snapshot(model))
    for p, q in zip(*results):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert math.isfinite(results[0][0].sum().item())


def test_compiled_update_compiles_once_per_dtype_for_any_model():
    """Models with different numbers and shapes of tensors, other settings, coupled and
    decoupled, float and tensor learning rates (decoupled) reuse one compiled kernel: Dynamo's
    limit of 8 compilations per function (a hard error with fullgraph) is never reached."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    for n in range(1, 11):
        for lr in (0.1, torch.tensor(0.1)):
            ps = [torch.nn.Parameter(torch.randn(4, 3 + k)) for k in range(n)] + [torch.nn.Parameter(torch.randn(1, 1))]
            twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
            settings = dict(reg_lambda=0.3 + 0.01 * n, target=1.0 - 0.05 * n, decoupled=n % 2 == 0)
            opt = RMSLNWrapper(torch.optim.SGD(ps, lr=lr), compile=True, **settings)
            eager = RMSLNWrapper(torch.optim.SGD(twins, lr=lr), **settings)
            for _ in range(2):
                for p, q in zip(ps, twins):
                    p.grad = torch.ones_like(p)
                    q.grad = torch.ones_like(q)
                opt.step()
                eager.step()
            for p, q in zip(ps, twins):
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert counters["stats"]["unique_graphs"] == 1
