"""The shared wrapper machinery, for both wrappers: copies, pickles, hooks, groups, numbers."""

import copy
import io
import math
import pickle

import numpy as np
import pytest
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper

WRAPPERS = {
    "rln": lambda inner, **kw: RLNOptimizer(inner, avg_reg=-4.0, reg_lr=1e3, **kw),
    "rmsln": lambda inner, **kw: RMSLNWrapper(inner, reg_lambda=1e-2, **kw),
}


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x = torch.randn(16, 6)
    return model, x, x[:, :1]


def step(model, opt, x, y):
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_pickle_and_deepcopy_with_a_scheduler_attached(name):
    model, x, y = model_and_batch()
    opt = WRAPPERS[name](torch.optim.Adam(model.parameters(), lr=1e-2))
    torch.optim.lr_scheduler.StepLR(opt, step_size=2)  # patches opt.step on the instance
    step(model, opt, x, y)
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.reg_groups[0].keys() == opt.reg_groups[0].keys()

    clone = copy.deepcopy({"model": model, "opt": opt})
    before = [p.detach().clone() for p in model.parameters()]
    step(clone["model"], clone["opt"], x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the original did not move
    assert not all(torch.equal(a, b) for a, b in zip(before, clone["model"].parameters()))


BAD_SETTING = {"rln": ("avg_reg", math.nan), "rmsln": ("reg_lambda", -1.0)}


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_failed_add_param_group_changes_nothing(name):
    model, _, _ = model_and_batch()
    opt = WRAPPERS[name](torch.optim.SGD(model.parameters(), lr=0.1))
    key, value = BAD_SETTING[name]
    with pytest.raises(ValueError, match=f"Invalid {key}: {value!r}"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2, 2))], key: value})
    # A tensor the inner optimizer already holds: torch's own message.
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [model[0].weight]})
    assert len(opt.optimizer.param_groups) == 1 and len(opt.reg_groups) == 1


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_tensors_that_cannot_be_regularized_are_skipped_by_default(name):
    """params=None (and a new group without settings) regularizes the real floating-point
    matrices and leaves complex ones to the inner optimizer; asked for explicitly, they are refused."""
    real = torch.nn.Parameter(torch.randn(3, 4))
    cplx = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.complex64))
    opt = WRAPPERS[name](torch.optim.SGD([real, cplx], lr=0.1))
    assert opt.regularized_params() == [real]
    more = torch.nn.Parameter(torch.randn(2, 2, dtype=torch.complex64))
    opt.add_param_group({"params": [more]})
    assert len(opt.optimizer.param_groups) == 2 and opt.regularized_params() == [real]
    for p in (real, cplx, more):
        p.grad = torch.ones_like(p)
    before = cplx.detach().clone()
    opt.step()  # the inner optimizer steps the complex tensors; the wrapper leaves them alone
    torch.testing.assert_close(cplx.detach(), before - 0.1)
    with pytest.raises(ValueError, match=r"cannot regularize a complex tensor \(shape \(3, 4\), dtype torch.complex64\)"):
        WRAPPERS[name](torch.optim.SGD([real, cplx], lr=0.1), params=[cplx])


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_named_parameters_in_new_groups_are_regularized(name):
    model, _, _ = model_and_batch()
    opt = WRAPPERS[name](torch.optim.SGD(model.named_parameters(), lr=0.1))
    assert [p is q for p, q in zip(opt.regularized_params(), (model[0].weight, model[2].weight))] == [True, True]
    extra = torch.nn.Linear(3, 3)
    opt.add_param_group({"params": list(extra.named_parameters())})
    assert any(p is extra.weight for p in opt.regularized_params())
    assert not any(p is extra.bias for p in opt.regularized_params())


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_empty_params_is_an_error(name):
    model, _, _ = model_and_batch()
    with pytest.raises(ValueError, match="params is empty"):
        WRAPPERS[name](torch.optim.SGD(model.parameters(), lr=0.1), params=[])


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_numpy_hyperparameters_become_python_numbers(name):
    model, x, y = model_and_batch()
    settings = (
        {"avg_reg": np.float32(-4.0), "reg_lr": np.float64(1e3), "norm": np.int64(1)}
        if name == "rln"
        else {"reg_lambda": np.float32(1e-2), "target": np.float64(1.0)}
    )
    cls = RLNOptimizer if name == "rln" else RMSLNWrapper
    opt = cls(torch.optim.Adam(model.parameters(), lr=1e-2), **settings)
    step(model, opt, x, y)
    assert all(type(opt.reg_groups[0][k]) in (int, float) for k in settings)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer, weights_only=True))


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_state_dict_hooks_run(name):
    model, x, y = model_and_batch()
    opt = WRAPPERS[name](torch.optim.Adam(model.parameters(), lr=1e-2))
    step(model, opt, x, y)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("save-pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append(("load-pre", sd.get("extra"))))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    sd = opt.state_dict()
    assert sd["extra"] == 1
    opt.load_state_dict(sd)
    assert calls == ["save-pre", ("load-pre", 1), "load-post"]


def test_loaded_settings_are_validated_against_the_tensors():
    w = torch.nn.Parameter(torch.randn(4, 5))
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), avg_reg=-4.0)
    w.grad = torch.randn(4, 5)
    opt.step()
    sd = opt.state_dict()
    sd["rln_groups"] = [{**sd["rln_groups"][0], "batch_dims": 5}]
    lam = opt.lambdas(w)
    with pytest.raises(ValueError, match=r"Invalid batch_dims: 5 for a tensor of shape \(4, 5\)"):
        opt.load_state_dict(sd)
    assert opt.reg_groups[0]["batch_dims"] == 0 and torch.equal(opt.lambdas(w), lam)


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_foreach_equals_per_tensor_with_non_finite_and_signed_zero_grads(name):
    results = []
    for foreach in (True, False):
        model, x, y = model_and_batch()
        with torch.no_grad():
            model[0].weight[0, :3] = torch.tensor([0.0, -0.0, 0.0])
        opt = WRAPPERS[name](torch.optim.SGD(model.parameters(), lr=0.05), foreach=foreach, compile=False)
        for i in range(8):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            model[0].weight.grad[0, :3] = 0.0
            if i == 4:
                model[0].weight.grad[1, 1] = math.nan
                model[0].weight.grad[2, 2] = -math.inf
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


ROUTED = {"rln": {"avg_reg": -8.0, "norm": 2}, "rmsln": {"reg_lambda": 0.5, "target": 2.0}}


@pytest.mark.parametrize("explicit", [False, True], ids=["params_none", "explicit_params"])
@pytest.mark.parametrize("name", list(WRAPPERS))
def test_add_param_group_routes_the_wrapper_settings_to_a_regularization_group(name, explicit):
    model, _, _ = model_and_batch()
    params = [model[0].weight] if explicit else None
    opt = WRAPPERS[name](torch.optim.SGD(model.parameters(), lr=0.1), params=params)
    extra = torch.nn.Linear(3, 3)
    opt.add_param_group({"params": list(extra.parameters()), "lr": 0.01, **ROUTED[name]})
    inner_group = opt.optimizer.param_groups[-1]
    assert inner_group["lr"] == 0.01 and not set(ROUTED[name]) & set(inner_group)
    group = opt.reg_groups[-1]
    assert group["params"] == [extra.weight]
    assert {k: group[k] for k in ROUTED[name]} == ROUTED[name]
    # a group without settings: regularized only under params=None
    more = torch.nn.Linear(2, 2)
    opt.add_param_group({"params": list(more.parameters())})
    assert any(p is more.weight for p in opt.regularized_params()) is not explicit


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_an_inner_optimizer_holding_a_tensor_twice_is_taken(name):
    """torch only warns about a tensor listed twice in a param group; params=None
    regularizes it once."""
    w = torch.nn.Parameter(torch.randn(4, 5))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        inner = torch.optim.SGD([w, w], lr=0.1)
    opt = WRAPPERS[name](inner)
    assert opt.regularized_params() == [w]
    w.grad = torch.ones_like(w)
    opt.step()
