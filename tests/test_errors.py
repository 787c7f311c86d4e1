"""Bad input, for both wrappers: a clear error that names the bad value, before anything changes."""

import math
import re

import pytest
import torch
from helpers import WRAPPERS, full_state, make_model, mse, noise_batches, same, train, weights
from torch import nn

from torch_rln import RLNOptimizer, RMSLNWrapper, rms_penalty


def sgd(*params, lr=0.1):
    return torch.optim.SGD(list(params), lr=lr)


def inner_for(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm": 3}, r"Invalid norm: 3"),
        ({"norm": 0}, r"Invalid norm: 0"),
        ({"norm": True}, r"Invalid norm: True"),
        ({"norm": "1"}, r"Invalid norm: '1'"),
        ({"avg_reg": math.nan}, r"Invalid avg_reg: nan"),
        ({"avg_reg": -math.inf}, r"Invalid avg_reg: -inf"),
        ({"reg_lr": -1.0}, r"Invalid reg_lr: -1.0 \(expected >= 0\)"),
        ({"reg_lr": math.inf}, r"Invalid reg_lr: inf"),
        ({"reg_lr": "big"}, r"Invalid reg_lr: 'big'"),
        ({"batch_dims": -1}, r"Invalid batch_dims: -1"),
        ({"batch_dims": 2}, r"Invalid batch_dims: 2 for a tensor of shape \(16, 12\)"),
    ],
)
def test_rln_bad_hyperparameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RLNOptimizer(inner_for(make_model()), **kwargs)


def test_rln_bad_group_hyperparameter_is_named():
    model = make_model()
    with pytest.raises(ValueError, match=r"Invalid avg_reg: nan"):
        RLNOptimizer(inner_for(model), [{"params": [model[0].weight], "avg_reg": math.nan}])
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['lr'\]"):
        RLNOptimizer(inner_for(model), [{"params": [model[0].weight], "lr": 0.1}])


BAD_VALUES = [-1.0, -1, float("nan"), float("inf"), -float("inf"), True, False, "0.1", None, torch.tensor(0.1)]


@pytest.mark.parametrize("key", ["reg_lambda", "target"])
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_rmsln_bad_settings_rejected(key, value):
    model = make_model(sizes=(8, 16, 4))
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = inner.state_dict()
    with pytest.raises(ValueError, match=key) as info:
        RMSLNWrapper(inner, **{key: value})
    assert repr(value) in str(info.value)
    with pytest.raises(ValueError, match=key) as info:
        RMSLNWrapper(inner, [{"params": [model[0].weight], key: value}])
    assert repr(value) in str(info.value)
    assert inner.state_dict() == before
    assert len(inner.param_groups) == 1
    with pytest.raises(ValueError, match=key):
        rms_penalty(weights(model), **{"reg_lambda": 0.1, key: value})


class NoLR(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


def test_decoupled_rmsln_needs_lr():
    w = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match="no 'lr'"):
        RMSLNWrapper(NoLR([w]), decoupled=True)
    RMSLNWrapper(NoLR([w]))  # coupled mode does not need it
    with pytest.raises(TypeError, match="decoupled"):
        RMSLNWrapper(torch.optim.SGD([w], lr=0.1), decoupled=1)


# ---------------------------------------------------------------- settings beyond what the math holds
@pytest.mark.parametrize(
    ("setting", "value", "match"),
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
    assert opt.reg_groups[0]["avg_reg"] == -4.0
    assert opt.reg_groups[0]["reg_lr"] == 1e3
    w.grad = torch.randn(4, 5)
    opt.step()
    assert torch.isfinite(w).all()
    assert torch.isfinite(opt.lambdas(w)).all()
    assert not torch.equal(opt.lambdas(w), lam)
    assert not torch.equal(w, weight)


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
def test_rln_bad_tensors_are_rejected():
    model = make_model()
    stranger = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"\(shape \(3, 3\), dtype torch.float32\) is not a parameter of the inner"):
        RLNOptimizer(inner_for(model), [stranger])
    with pytest.raises(ValueError, match=r"parameter 0 of the inner optimizer .* is regularized twice"):
        RLNOptimizer(inner_for(model), [{"params": [model[0].weight]}, {"params": [model[0].weight]}])
    with pytest.raises(TypeError, match=r"wraps a torch\.optim\.Optimizer, got builtins\.dict"):
        RLNOptimizer({"lr": 0.1})
    with pytest.raises(TypeError, match=r"but got a single torch\.FloatTensor: wrap it in a list"):
        RLNOptimizer(inner_for(model), model[0].weight)
    ints = torch.zeros(3, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="non-floating-point tensor"):
        RLNOptimizer(torch.optim.SGD([{"params": [model[0].weight]}], lr=0.1), [ints])
    cplx = torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex tensor"):
        RLNOptimizer(torch.optim.SGD([cplx], lr=0.1), [cplx])
    sparse = torch.nn.Parameter(torch.eye(3).to_sparse())
    with pytest.raises(ValueError, match="sparse tensor"):
        RLNOptimizer(torch.optim.SGD([sparse], lr=0.1), [sparse])
    with pytest.raises(ValueError, match="already wraps an RLNOptimizer"):
        RLNOptimizer(RLNOptimizer(inner_for(model)))


def test_rmsln_bad_params_rejected():
    model = make_model(sizes=(8, 16, 4))
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    before = inner.state_dict()
    stranger = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"shape \(4, 4\).*not a parameter of the inner optimizer"):
        RMSLNWrapper(inner, [stranger])
    with pytest.raises(ValueError, match="regularized twice"):
        RMSLNWrapper(inner, [model[0].weight, model[0].weight])
    with pytest.raises(ValueError, match="regularized twice"):
        RMSLNWrapper(inner, [{"params": [model[0].weight]}, {"params": [model[0].weight]}])
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        RMSLNWrapper(list(model.parameters()))
    with pytest.raises(TypeError, match="single"):
        RMSLNWrapper(inner, model[0].weight)
    with pytest.raises(ValueError, match="already wraps"):
        RMSLNWrapper(RMSLNWrapper(inner))
    assert inner.state_dict() == before


def test_a_0d_parameter_is_refused_by_rln_for_what_it_is():
    scalar = torch.nn.Parameter(torch.tensor(1.0))
    with pytest.raises(
        ValueError, match=r"cannot regularize a 0-d tensor \(shape \(\), dtype torch.float32\) with RLN"
    ):
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
    with pytest.raises(
        ValueError, match=r"cannot add the penalty's dense gradient to the sparse gradient .*decoupled=True"
    ):
        opt.step()
    assert torch.equal(linear.weight.grad, grad)
    assert all(torch.equal(p, w) for p, w in zip(params, weights, strict=False))
    # decoupled mode takes it (the update goes to the dense weight)
    decoupled = RMSLNWrapper(torch.optim.SGD(params, lr=0.1), params, reg_lambda=0.5, decoupled=True)
    decoupled.step()
    assert not torch.equal(embedding.weight, weights[0])


# ---------------------------------------------------------------- checkpoints
def test_rmsln_bad_setting_in_state_dict_changes_nothing():
    model = make_model(sizes=(8, 16, 4))
    opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), reg_lambda=0.1)
    train(model, opt, noise_batches(), 2)
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


def test_rln_loaded_settings_are_validated_against_the_tensors():
    w = torch.nn.Parameter(torch.randn(4, 5))
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), avg_reg=-4.0)
    w.grad = torch.randn(4, 5)
    opt.step()
    sd = opt.state_dict()
    sd["rln_groups"] = [{**sd["rln_groups"][0], "batch_dims": 5}]
    lam = opt.lambdas(w)
    with pytest.raises(ValueError, match=r"Invalid batch_dims: 5 for a tensor of shape \(4, 5\)"):
        opt.load_state_dict(sd)
    assert opt.reg_groups[0]["batch_dims"] == 0
    assert torch.equal(opt.lambdas(w), lam)


# ---------------------------------------------------------------- issue 22's rough edges: settings edited at runtime
@pytest.mark.parametrize(
    ("name", "key", "value", "match"),
    [
        ("rln", "reg_lr", math.nan, r"Invalid reg_lr: nan"),
        ("rln", "reg_lr", -1.0, r"Invalid reg_lr: -1\.0"),
        ("rln", "norm", 3, r"Invalid norm: 3"),
        ("rln", "avg_reg", math.inf, r"Invalid avg_reg: inf"),
        ("rln", "batch_dims", 5, r"Invalid batch_dims: 5"),
        ("rmsln", "reg_lambda", math.nan, r"Invalid reg_lambda: nan"),
        ("rmsln_decoupled", "target", -1.0, r"Invalid target: -1\.0"),
    ],
)
def test_a_setting_edited_at_runtime_is_refused_before_anything_changes(name, key, value, match):
    """``opt.reg_groups[0][key] = value`` with a bad value: a ValueError that names it, raised
    by the edit itself or at the latest by the next step, before anything changes (the
    setting, the weights, the gradients, the coefficients, the inner state)."""
    model = make_model(sizes=(8, 16, 4))
    opt = WRAPPERS[name](torch.optim.Adam(model.parameters(), lr=1e-2), rmsln={"reg_lambda": 0.1})
    data = noise_batches()
    train(model, opt, data, 2)
    opt.zero_grad()
    mse(model, *data[2]).backward()
    group = opt.reg_groups[0]
    setting, before = group[key], full_state(model.parameters(), opt, state_dict=False)
    try:
        group[key] = value
    except ValueError as error:
        refused_at_edit = str(error)
    else:
        refused_at_edit = None
    if refused_at_edit is None:
        with pytest.raises(ValueError, match=match):
            opt.step()
    else:
        assert re.search(match, refused_at_edit)
        assert group[key] == setting
    assert same(full_state(model.parameters(), opt, state_dict=False), before)


@pytest.mark.parametrize(("shape", "batch_dims"), [((1,), 0), ((1, 1), 0), ((3, 1), 1), ((2, 3, 1), 2)])
def test_rln_refuses_copies_of_one_element_as_it_refuses_a_0d_tensor(shape, batch_dims):
    """The projection sets the mean of each copy's coefficients to avg_reg: a copy of one
    element has its one coefficient pinned there, as a 0-d tensor would. Both are refused,
    with the same reason, naming the shape."""
    p = torch.nn.Parameter(torch.randn(shape))
    with pytest.raises(ValueError, match=rf"shape {re.escape(str(shape))}.*pin its one coefficient at avg_reg"):
        RLNOptimizer(sgd(p), params=[p], batch_dims=batch_dims)
    with pytest.raises(ValueError, match=r"pin its one coefficient at avg_reg"):
        RLNOptimizer(sgd(p), params=[{"params": [p], "batch_dims": batch_dims}])
