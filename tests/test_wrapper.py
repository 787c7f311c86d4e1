"""The shared wrapper machinery, for both wrappers: copies, pickles, groups, numbers."""

import copy
import io
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import PATHS, make_model, module_to, noise_batches, optimizer_to_device, same, train, train_step
from helpers import WRAPPERS as ALL_WRAPPERS

from torch_rln import RLNOptimizer, RMSLNWrapper

# RLN on its default path (compile=None), as a user gets it.
WRAPPERS = {
    name: (lambda inner, _n=name, **kw: ALL_WRAPPERS[_n](inner, rln={"compile": None}, **kw))
    for name in ("rln", "rmsln")
}


def model_and_batch(seed=0):
    model = make_model(seed, sizes=(6, 8, 1))
    x = torch.randn(16, 6)
    return model, x, x[:, :1]


def step(model, opt, x, y):
    train_step(model, opt, x, y)


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
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))  # the original did not move
    assert not all(torch.equal(a, b) for a, b in zip(before, clone["model"].parameters(), strict=False))


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
    assert len(opt.optimizer.param_groups) == 1
    assert len(opt.reg_groups) == 1


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
    assert len(opt.optimizer.param_groups) == 2
    assert opt.regularized_params() == [real]
    for p in (real, cplx, more):
        p.grad = torch.ones_like(p)
    before = cplx.detach().clone()
    opt.step()  # the inner optimizer steps the complex tensors; the wrapper leaves them alone
    torch.testing.assert_close(cplx.detach(), before - 0.1)
    with pytest.raises(
        ValueError, match=r"cannot regularize a complex tensor \(shape \(3, 4\), dtype torch.complex64\)"
    ):
        WRAPPERS[name](torch.optim.SGD([real, cplx], lr=0.1), params=[cplx])


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_named_parameters_in_new_groups_are_regularized(name):
    model, _, _ = model_and_batch()
    opt = WRAPPERS[name](torch.optim.SGD(model.named_parameters(), lr=0.1))
    assert [p is q for p, q in zip(opt.regularized_params(), (model[0].weight, model[2].weight), strict=False)] == [
        True,
        True,
    ]
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
    for a, b in zip(*results, strict=False):
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
    assert inner_group["lr"] == 0.01
    assert not set(ROUTED[name]) & set(inner_group)
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


def test_rln_add_param_group_regularizes_new_matrices_when_params_is_none():
    model = make_model()
    extra = torch.nn.Linear(4, 4)
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    opt.add_param_group({"params": extra.parameters(), "lr": 0.01})
    assert opt.optimizer.param_groups[-1]["lr"] == 0.01
    assert opt.regularized_params()[-1] is extra.weight
    explicit = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [model[0].weight])
    explicit.add_param_group({"params": torch.nn.Linear(4, 4).parameters()})
    assert explicit.regularized_params() == [model[0].weight]


def test_rmsln_add_param_group_regularizes_new_matrices_when_params_is_none():
    model = make_model(sizes=(8, 16, 4))
    opt = RMSLNWrapper(torch.optim.SGD(model.parameters(), lr=0.1), reg_lambda=1.0)
    train(model, opt, noise_batches(), 2)
    # params=None: a new group's weights are regularized too
    extra_w, extra_b = torch.nn.Parameter(torch.full((3, 3), 2.0)), torch.nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra_w, extra_b], "lr": 0.5})
    assert any(p is extra_w for p in opt.regularized_params())
    assert not any(p is extra_b for p in opt.regularized_params())
    opt.zero_grad()
    extra_w.grad, extra_b.grad = torch.zeros_like(extra_w), torch.zeros_like(extra_b)
    opt.step()
    # rms 2, target 1: dR/dW = 2 * (2 - 1) * W / (9 * 2) = W / 9; SGD lr 0.5
    torch.testing.assert_close(extra_w.detach(), torch.full((3, 3), 2.0 - 0.5 * 2.0 / 9))
    assert torch.equal(extra_b, torch.zeros(3))

    # explicit params: a new group is not regularized
    opt2 = RMSLNWrapper(torch.optim.SGD([model[0].weight], lr=0.1), [model[0].weight])
    opt2.add_param_group({"params": [model[2].weight]})
    assert not any(p is model[2].weight for p in opt2.regularized_params())


# ---------------------------------------------------------------- issue 22's rough edges: param groups and state
ROUGH_EDGE = "issue 22 (rough edge): "


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("rln", "avg_reg", -2.0),
        ("rln", "reg_lr", 1e4),
        ("rmsln", "reg_lambda", 0.5),
        ("rmsln_decoupled", "target", 0.2),
    ],
)
def test_a_regularizer_setting_written_into_param_groups_is_taken_or_warned(name, key, value):
    """``for g in opt.param_groups: g["avg_reg"] = -2.0``, the torch way to change a setting
    (and what skorch's param_groups setter does), either takes effect (training equals a
    wrapper built with the setting) or warns, naming the setting."""
    data = noise_batches()

    def run(where):
        model = make_model(sizes=(8, 16, 4))
        layer = "rln" if name == "rln" else "rmsln"
        overrides = {key: value} if where == "constructor" else {}
        opt = ALL_WRAPPERS[name](torch.optim.Adam(model.parameters(), lr=1e-2), **{layer: overrides})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if where == "param_groups":
                for group in opt.param_groups:
                    group[key] = value
            train(model, opt, data, 6)
        return [p.detach().clone() for p in model.parameters()], [str(w.message) for w in caught]

    edited, warned = run("param_groups")
    built, _ = run("constructor")
    plain, _ = run("nowhere")
    assert not same(built, plain)  # the setting matters
    if not any(key in message for message in warned):
        assert same(edited, built)


@pytest.mark.parametrize("name", list(ALL_WRAPPERS))
def test_a_parameter_removed_from_the_inner_param_groups_is_left_alone(name):
    """A weight taken out of the inner optimizer's param groups (to freeze it) is neither
    stepped by the inner optimizer nor regularized: weight and gradient stay as they are."""
    w, v = torch.nn.Parameter(torch.randn(4, 5)), torch.nn.Parameter(torch.randn(4, 5))
    opt = ALL_WRAPPERS[name](torch.optim.SGD([w, v], lr=0.1), rmsln={"reg_lambda": 1.0})
    w.grad, v.grad = torch.randn(4, 5), torch.randn(4, 5)
    opt.step()
    opt.param_groups[0]["params"] = [v]
    w.grad, v.grad = torch.randn(4, 5), torch.randn(4, 5)
    weight, grad = w.detach().clone(), w.grad.clone()
    opt.step()
    assert torch.equal(w, weight)
    assert torch.equal(w.grad, grad)




@pytest.mark.parametrize(
    "name",
    [
        pytest.param("rln"),
        "rmsln",
        "rmsln_decoupled",
        pytest.param("rmsln_over_rln"),
    ],
)
@pytest.mark.parametrize("path", ["per_tensor", "foreach"], indirect=True)
def test_moving_the_optimizer_state_to_another_device_moves_all_of_it(name, path):
    """The model and then the optimizer state moved as Lightning moves them: training goes on
    on the new device, and every state tensor is there. The second device here is ``meta``
    (shapes without data), which any machine has: a tensor left behind on the CPU makes the
    next step fail with a device mismatch, and the devices of the state dict say where
    everything is. (Values are not checked: meta holds none. test_cuda.py checks a real
    CPU -> CUDA move where a GPU is present.)"""
    model = make_model(sizes=(5, 4, 1))
    opt = ALL_WRAPPERS[name](
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rmsln={"reg_lambda": 0.5}, **PATHS[path]
    )
    x = torch.randn(8, 5)
    for _ in range(2):
        train_step(model, opt, x, x[:, :1])
    meta = torch.device("meta")
    module_to(model, meta)
    optimizer_to_device(opt, meta)
    x = x.to(meta)
    train_step(model, opt, x, x[:, :1])
    state = opt.state_dict()["state"]
    assert state
    assert {key: value.device for entry in state.values() for key, value in entry.items()} == {
        key: meta for entry in state.values() for key in entry
    }
