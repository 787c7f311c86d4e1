"""RMSLN's math: rms_penalty and its gradient, the coupled and decoupled updates, the
numerics at rms 0 and in bfloat16, and RMSLNWrapper.penalty()."""

import copy

import pytest
import torch
from helpers import make_model, mse, noise_batches, params_of, train, weights
from torch import nn

from torch_rln.rmsln import RMSLNWrapper, rms_penalty, rms_penalty_grad

SIZES = (8, 16, 4)


def test_grad_equals_autograd_of_penalty():
    torch.manual_seed(0)
    ps = [
        torch.randn(16, 8, requires_grad=True),
        torch.randn(3, 5, dtype=torch.float64, requires_grad=True),
        (3 * torch.randn(7)).requires_grad_(),
    ]
    rms_penalty(ps, 0.3, 0.7).backward()
    for foreach in (True, False):
        for p, g in zip(ps, rms_penalty_grad(ps, 0.3, 0.7, foreach=foreach), strict=False):
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


def test_decoupled_step_is_inner_step_minus_lr_grad():
    model = make_model(sizes=SIZES, dtype=torch.float64)
    batches = noise_batches(dtype=torch.float64)
    opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=0.02), reg_lambda=0.5, decoupled=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, batches, 2)
    sched.step()
    sched.step()
    lr = opt.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(0.005)

    opt.zero_grad()
    mse(model, *batches[2]).backward()
    # the inner step alone, on copies
    twin_params = [p.detach().clone() for p in model.parameters()]
    for t, p in zip(twin_params, model.parameters(), strict=False):
        t.grad = p.grad.clone()
    twin = torch.optim.Adam(twin_params, lr=0.02)
    twin.load_state_dict(copy.deepcopy(opt.optimizer.state_dict()))  # Adam shares loaded tensors
    twin.step()
    inner_w = [twin_params[0], twin_params[2]]
    leaves = [w.clone().requires_grad_() for w in inner_w]
    rms_penalty(leaves, 0.5).backward()

    opt.step()
    for w, w_inner, leaf in zip(weights(model), inner_w, leaves, strict=False):
        torch.testing.assert_close(w, w_inner - lr * leaf.grad, rtol=1e-12, atol=1e-15)
        assert (w - w_inner).abs().max() > 1e-6  # the decay did act
    # biases are not regularized: exactly the inner step
    assert torch.equal(model[0].bias, twin_params[1])
    assert torch.equal(model[2].bias, twin_params[3])


def test_decoupled_tensor_lr_equals_float_lr():
    results = []
    for lr in (0.01, torch.tensor(0.01)):
        model = make_model(sizes=SIZES)
        opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=lr), reg_lambda=0.5, decoupled=True)
        train(model, opt, noise_batches(), 5)
        results.append(params_of(model))
    for p, q in zip(*results, strict=False):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_decoupled_differs_from_coupled_with_adam():
    out = []
    for decoupled in (False, True):
        model = make_model(sizes=SIZES)
        opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), reg_lambda=0.5, decoupled=decoupled)
        train(model, opt, noise_batches(), 10)
        out.append(weights(model)[0].detach().clone())
    assert (out[0] - out[1]).abs().max() > 1e-5


@pytest.mark.parametrize("foreach", [True, False])
def test_zero_rms_gives_zero_grad(foreach):
    zero = torch.zeros(4, 5)
    tiny = torch.full((4, 5), 1e-44)  # nonzero, but the squares underflow: rms == 0
    tiny[0, 0] = 0.0
    small = torch.full((4, 5), 1e-22)  # the smallest norms float32 can hold
    small[0, 0] = 0.0
    assert torch.linalg.vector_norm(tiny) == 0
    assert torch.linalg.vector_norm(small) > 0
    g_zero, g_tiny, g_small = rms_penalty_grad([zero, tiny, small], 10.0, foreach=foreach)
    assert torch.equal(g_zero, torch.zeros_like(zero))
    assert torch.equal(g_tiny, torch.zeros_like(tiny))
    assert torch.isfinite(g_small).all()
    assert g_small[0, 0] == 0
    assert (g_small[1:] < 0).all()

    w = nn.Parameter(torch.zeros(3, 4))
    opt = RMSLNWrapper(torch.optim.SGD([w], lr=0.1), reg_lambda=1.0, foreach=foreach)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert torch.equal(w, torch.zeros_like(w))
    assert torch.equal(w.grad, torch.zeros_like(w))


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
        assert b.grad is None
        assert torch.equal(b, b_before)
        assert not torch.equal(a, a_before)


def test_penalty_method():
    model = make_model(sizes=SIZES)
    opt = RMSLNWrapper(
        torch.optim.SGD(model.parameters(), lr=0.1),
        [{"params": [model[0].weight], "reg_lambda": 0.3}, {"params": [model[2].weight], "target": 2.0}],
    )
    expected = rms_penalty([model[0].weight], 0.3) + rms_penalty([model[2].weight], 1e-4, 2.0)
    got = opt.penalty()
    torch.testing.assert_close(got, expected)
    got.backward()
    assert model[0].weight.grad is not None
    assert model[0].bias.grad is None


# ---------------------------------------------------------------- maximize and retries (issue 22.4, 22.7)
def _rms(w):
    return w.detach().double().pow(2).mean().sqrt().item()


MAXIMIZING = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, maximize=True),
}


@pytest.mark.parametrize("inner", list(MAXIMIZING))
def test_coupled_rmsln_with_a_maximizing_inner_optimizer_pulls_toward_the_target_or_is_refused(inner):
    """With maximize=True (the loss is maximized), the penalty must still pull the rms toward
    the target, or the combination is refused with a ValueError that names maximize, before
    anything changes. The loss's own gradient is 0 here: only the penalty moves the weights."""
    torch.manual_seed(0)
    w = nn.Parameter(2.0 * torch.randn(8, 8))  # rms 2.09, target 1
    start, refused = w.detach().clone(), None
    try:
        opt = RMSLNWrapper(MAXIMIZING[inner]([w]), reg_lambda=1.0)
        for _ in range(50):
            w.grad = torch.zeros_like(w)
            opt.step()
    except ValueError as error:
        refused = str(error)
    if refused is not None:
        assert "maximize" in refused
        assert torch.equal(w, start)
        return
    assert abs(_rms(w) - 1.0) < abs(_rms(start) - 1.0) - 0.01


@pytest.mark.parametrize("inner", list(MAXIMIZING))
def test_decoupled_rmsln_with_a_maximizing_inner_optimizer_pulls_toward_the_target(inner):
    torch.manual_seed(0)
    w = nn.Parameter(2.0 * torch.randn(8, 8))
    start = w.detach().clone()
    opt = RMSLNWrapper(MAXIMIZING[inner]([w]), reg_lambda=1.0, decoupled=True)
    for _ in range(50):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert abs(_rms(w) - 1.0) < abs(_rms(start) - 1.0) - 0.01


def test_coupled_rmsln_retry_after_a_failed_inner_step_applies_the_penalty_once():
    """The issue's reproduction: the inner step fails once (its pre-hook raises); the failed
    step leaves the gradient as it was, and the retried step equals the step that never failed."""
    results = []
    for fail in (False, True):
        torch.manual_seed(0)
        w = nn.Parameter(2.0 * torch.randn(6, 6))
        inner = torch.optim.SGD([w], lr=0.1)
        opt = RMSLNWrapper(inner, reg_lambda=1.0)
        pending = [fail]

        def flaky(optimizer, args, kwargs, pending=pending):
            if pending.pop():
                raise RuntimeError("transient")

        inner.register_step_pre_hook(flaky)
        w.grad = torch.full_like(w, 0.1)
        if fail:
            with pytest.raises(RuntimeError, match="transient"):
                opt.step()
            assert torch.equal(w.grad, torch.full_like(w, 0.1))
        pending.append(False)
        opt.step()
        results.append(w.detach().clone())
    assert torch.equal(results[0], results[1])
