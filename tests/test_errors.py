"""Bad input, for both wrappers: a clear error that names the bad value, before anything changes."""

import math

import pytest
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper


def sgd(*params, lr=0.1):
    return torch.optim.SGD(list(params), lr=lr)


# ---------------------------------------------------------------- settings beyond what the math holds
@pytest.mark.parametrize(
    "setting,value,match",
    [
        ("avg_reg", -1e39, r"Invalid avg_reg: -1e\+39 \(expected at most .* in magnitude"),
        ("reg_lr", 1e39, r"Invalid reg_lr: 1e\+39 \(expected at most 3\.4e\+38 in magnitude"),
        ("avg_reg", -(10**400), r"Invalid avg_reg: -10{46}\.\.\.0{8} \(expected a finite number\)"),
    ],
    ids=["avg_reg_1e39", "reg_lr_1e39", "avg_reg_10_to_400"],
)
def test_rln_settings_beyond_the_state_dtype_are_refused(setting, value, match):
    w = torch.nn.Parameter(torch.randn(4, 5))
    with pytest.raises(ValueError, match=match):
        RLNOptimizer(sgd(w), **{setting: value})


def test_rln_avg_reg_whose_mean_would_overflow_is_refused_for_that_tensor():
    """-1e33 is a float32 number, but the sum of a 1000 x 1000 tensor of them is not."""
    small, big = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.zeros(1000, 1000))
    RLNOptimizer(sgd(small), avg_reg=-1e33)  # 12 elements: the sum fits
    with pytest.raises(ValueError, match=r"Invalid avg_reg: -1e\+33 .*tensor of shape \(1000, 1000\) .*torch.float32"):
        RLNOptimizer(sgd(big), avg_reg=-1e33)
    # float64 holds it
    RLNOptimizer(sgd(torch.nn.Parameter(torch.zeros(1000, 1000, dtype=torch.float64))), avg_reg=-1e33)


@pytest.mark.parametrize("setting", ["reg_lambda", "target"])
def test_rmsln_settings_beyond_the_compute_dtype_are_refused(setting):
    w = torch.nn.Parameter(torch.randn(4, 5))
    with pytest.raises(ValueError, match=rf"Invalid {setting}: 1e\+39 \(expected at most 1\.84e\+19"):
        RMSLNWrapper(sgd(w), **{setting: 1e39})
    RMSLNWrapper(sgd(torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64))), **{setting: 1e39})


def test_rln_settings_in_a_checkpoint_are_checked_against_the_tensors():
    w = torch.nn.Parameter(torch.randn(4, 5))
    opt = RLNOptimizer(sgd(w), avg_reg=-4.0, reg_lr=1e3, compile=False)
    w.grad = torch.randn(4, 5)
    opt.step()
    lam, weight = opt.lambdas(w), w.detach().clone()
    for key, value in (("avg_reg", -1e39), ("reg_lr", 1e39)):
        saved = opt.state_dict()
        saved["rln_groups"] = [{**saved["rln_groups"][0], key: value}]
        with pytest.raises(ValueError, match=rf"Invalid {key}"):
            opt.load_state_dict(saved)
    assert opt.reg_groups[0]["avg_reg"] == -4.0 and opt.reg_groups[0]["reg_lr"] == 1e3
    w.grad = torch.randn(4, 5)
    opt.step()
    assert torch.isfinite(w).all() and torch.isfinite(opt.lambdas(w)).all()
    assert not torch.equal(opt.lambdas(w), lam) and not torch.equal(w, weight)


@pytest.mark.parametrize("key", ["rln_lam", "rln_r_prev"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_rln_tensor_in_a_checkpoint_is_refused(key, bad):
    w = torch.nn.Parameter(torch.randn(10, 10))
    opt = RLNOptimizer(sgd(w), avg_reg=-4.0, reg_lr=1e3, compile=False)
    w.grad = torch.randn(10, 10)
    opt.step()
    lam = opt.lambdas(w)
    saved = opt.state_dict()
    saved["state"][0] = {**saved["state"][0], key: saved["state"][0][key].clone()}
    saved["state"][0][key][3, 4] = bad
    with pytest.raises(ValueError, match=rf"state {key} of parameter 0 holds NaN or Inf"):
        opt.load_state_dict(saved)
    assert torch.equal(opt.lambdas(w), lam)


# ---------------------------------------------------------------- tensors
def test_a_0d_parameter_is_refused_by_rln_for_what_it_is():
    scalar = torch.nn.Parameter(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"cannot regularize a 0-d tensor \(shape \(\), dtype torch.float32\) with RLN"):
        RLNOptimizer(sgd(scalar), params=[scalar])
    # RMSLN pulls a scalar's magnitude toward the target: rms(w) = |w|
    opt = RMSLNWrapper(sgd(scalar), params=[scalar], reg_lambda=0.5, target=0.0)
    scalar.grad = torch.zeros(())
    opt.step()
    assert scalar.item() == pytest.approx(1.0 - 0.1 * 2 * 0.5 * 1.0)


def test_coupled_rmsln_refuses_a_sparse_gradient_before_anything_changes():
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    linear = torch.nn.Linear(4, 1)
    params = [embedding.weight, linear.weight]
    opt = RMSLNWrapper(torch.optim.SGD(params, lr=0.1), params, reg_lambda=0.5)
    linear(embedding(torch.tensor([1, 2, 3]))).sum().backward()
    grad, weights = linear.weight.grad.clone(), [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"cannot add the penalty's dense gradient to the sparse gradient .*decoupled=True"):
        opt.step()
    assert torch.equal(linear.weight.grad, grad)
    assert all(torch.equal(p, w) for p, w in zip(params, weights))
    # decoupled mode takes it (the update goes to the dense weight)
    decoupled = RMSLNWrapper(torch.optim.SGD(params, lr=0.1), params, reg_lambda=0.5, decoupled=True)
    decoupled.step()
    assert not torch.equal(embedding.weight, weights[0])
