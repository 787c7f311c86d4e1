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


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_failed_add_param_group_changes_nothing(name):
    model, _, _ = model_and_batch()
    opt = WRAPPERS[name](torch.optim.SGD(model.parameters(), lr=0.1))
    bad = torch.nn.Parameter(torch.randn(2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex tensor"):
        opt.add_param_group({"params": [bad]})
    assert len(opt.optimizer.param_groups) == 1 and len(opt.reg_groups) == 1


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
