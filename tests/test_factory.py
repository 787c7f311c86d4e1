"""``RLNOptimizer.factory`` / ``RMSLNWrapper.factory``: optimizer classes that frameworks build."""

import copy
import io
import pickle
import warnings

import pytest
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper

SETTINGS = {"avg_reg": -8.0, "reg_lr": 1e4, "compile": False}


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))


def train(model, opt, steps=5, closure=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=g)
    y = torch.randn(16, 1, generator=g)
    for _ in range(steps):
        def loss_fn():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()


def only_selected_with_names(name, tensor):
    return name is not None and name.startswith("0.") and tensor.ndim >= 2


def test_class_is_an_optimizer_subclass_with_a_readable_repr():
    cls = RLNOptimizer.factory(torch.optim.Adam, **SETTINGS)
    assert issubclass(cls, torch.optim.Optimizer) and issubclass(cls, RLNOptimizer)
    assert repr(cls) == "RLNOptimizer.factory(torch.optim.adam.Adam, avg_reg=-8.0, reg_lr=10000.0, compile=False)"
    assert cls.__name__ == "RLNOptimizer[Adam]"
    assert RLNOptimizer.factory(torch.optim.Adam, **SETTINGS) is cls  # same recipe, same class
    assert RLNOptimizer.factory(torch.optim.Adam, avg_reg=-9.0) is not cls
    rmsln = RMSLNWrapper.factory(torch.optim.SGD, reg_lambda=0.1)
    assert repr(rmsln) == "RMSLNWrapper.factory(torch.optim.sgd.SGD, reg_lambda=0.1)"


def test_same_training_as_the_wrapper_built_by_hand():
    a, b = mlp(), mlp()
    by_hand = RLNOptimizer(torch.optim.Adam(a.parameters(), lr=1e-2), **SETTINGS)
    built = RLNOptimizer.factory(torch.optim.Adam, **SETTINGS)(b.parameters(), lr=1e-2)
    train(a, by_hand)
    train(b, built, closure=True)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert [len(g["params"]) for g in built.reg_groups] == [2]


def test_kwargs_override_the_factory_and_reach_the_right_optimizer():
    cls = RLNOptimizer.factory(torch.optim.SGD, lr=0.5, momentum=0.9, **SETTINGS)
    opt = cls(mlp().parameters(), avg_reg=-6.0, lr=0.1, foreach=False)
    assert opt.reg_groups[0]["avg_reg"] == -6.0 and opt.reg_groups[0]["reg_lr"] == 1e4
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0.9
    assert opt.foreach is False and opt.param_groups[0]["foreach"] is False  # foreach goes to both
    with pytest.raises(TypeError, match="nesterov_typo"):
        cls(mlp().parameters(), nesterov_typo=True)  # the inner optimizer refuses what it does not know
    with pytest.raises(ValueError, match="Invalid avg_reg: 'x'"):
        cls(mlp().parameters(), avg_reg="x")


def test_lbfgs_gets_no_foreach_it_does_not_take():
    opt = RLNOptimizer.factory(torch.optim.LBFGS, **SETTINGS)(mlp().parameters(), foreach=False, lr=0.1)
    assert opt.foreach is False
    train(mlp(), RLNOptimizer.factory(torch.optim.LBFGS, **SETTINGS)(mlp().parameters()), steps=1, closure=True)


def test_params_as_pairs_groups_and_generators():
    cls = RLNOptimizer.factory(torch.optim.Adam, **SETTINGS)
    model = mlp()
    first, last = model[0].weight, model[2].weight

    named = cls(model.named_parameters(), select=only_selected_with_names)
    assert named.regularized_params() == [first]
    assert named.state_dict()["param_groups"][0]["param_names"][0] == "0.weight"

    seen = []
    with pytest.warns(UserWarning, match="no parameter was selected"):
        cls(model.parameters(), select=lambda name, t: seen.append(name) or False)
    assert seen == [None] * 4  # no names given: name is None

    groups = [
        {"params": [first, model[0].bias], "reg_lr": 1e5},
        {"params": [last, model[2].bias], "lr": 1e-3},
        {"params": [], "select": True},
    ]
    opt = cls(groups, lr=1e-2)
    assert [(g["reg_lr"], len(g["params"])) for g in opt.reg_groups] == [(1e5, 1), (1e4, 1)]
    assert all("reg_lr" not in g for g in opt.param_groups)  # taken out before the inner optimizer
    assert opt.param_groups[1]["lr"] == 1e-3

    only_first = cls([{"params": [first], "select": True}, {"params": [last, model[2].bias]}], select=False)
    assert only_first.regularized_params() == [first]


def test_duplicate_parameters_are_regularized_once():
    p = torch.nn.Parameter(torch.randn(3, 2))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = RLNOptimizer.factory(torch.optim.SGD, **SETTINGS)([p, p], lr=0.1)
    assert opt.regularized_params() == [p]


def test_add_param_group_selects_like_the_constructor():
    model = mlp()
    cls = RLNOptimizer.factory(torch.optim.Adam, **SETTINGS)
    opt = cls([model[0].weight, model[0].bias])
    opt.add_param_group({"params": list(model[2].parameters())})
    assert opt.regularized_params() == [model[0].weight, model[2].weight]
    named = cls([("0.weight", model[0].weight)], select=only_selected_with_names)
    named.add_param_group({"params": [("2.weight", model[2].weight)]})
    assert named.regularized_params() == [model[0].weight]


def test_a_model_without_matrices_builds_with_a_warning_and_trains_as_the_inner_optimizer():
    bias = torch.nn.Parameter(torch.ones(3))
    twin = torch.nn.Parameter(torch.ones(3))
    with pytest.warns(UserWarning, match="no parameter was selected.*DeepSpeed"):
        opt = RLNOptimizer.factory(torch.optim.SGD, **SETTINGS)([bias], lr=0.1)
    plain = torch.optim.SGD([twin], lr=0.1)
    for o, p in ((opt, bias), (plain, twin)):
        p.grad = torch.full((3,), 2.0)
        o.step()
    assert torch.equal(bias, twin)
    assert opt.regularized_params() == [] and opt.state_dict()["rln_groups"][0]["params"] == []


def test_class_and_instances_pickle_deepcopy_and_clone():
    sklearn_base = pytest.importorskip("sklearn.base", reason="scikit-learn is not installed (the test extra has it)")
    cls = RLNOptimizer.factory(torch.optim.Adam, lr=1e-2, select=only_selected_with_names, **SETTINGS)
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert copy.deepcopy(cls) is cls
    assert sklearn_base.clone(cls, safe=False) is cls

    model = mlp()
    opt = cls(model.named_parameters())
    train(model, opt)
    twin_model, twin = pickle.loads(pickle.dumps((model, opt)))
    assert type(twin) is cls and twin.regularized_params() == [twin_model[0].weight]
    deep_model, deep = copy.deepcopy((model, opt))
    train(model, opt)
    train(twin_model, twin)
    train(deep_model, deep)
    for p, q, r in zip(model.parameters(), twin_model.parameters(), deep_model.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)


class RLNSGD(RLNOptimizer.factory(torch.optim.SGD, lr=0.1, **SETTINGS)):
    """A user's named subclass of a factory class."""


def test_a_subclass_of_a_factory_class_pickles_by_name():
    assert pickle.loads(pickle.dumps(RLNSGD)) is RLNSGD
    opt = RLNSGD(mlp().parameters())
    assert type(pickle.loads(pickle.dumps(opt))) is RLNSGD


def test_unhashable_settings_still_build_and_pickle():
    cls = RMSLNWrapper.factory(torch.optim.Adam, betas=[0.8, 0.9])  # a list: no cache, a new class each time
    opt = cls(mlp().parameters())
    assert tuple(opt.param_groups[0]["betas"]) == (0.8, 0.9)
    again = pickle.loads(pickle.dumps(cls))
    assert repr(again) == repr(cls) and again.factory_settings == {"betas": [0.8, 0.9]}


def test_rmsln_factory_and_nesting():
    model = mlp()
    nested = RMSLNWrapper.factory(RLNOptimizer.factory(torch.optim.Adam, **SETTINGS), reg_lambda=1e-2)
    opt = nested(model.parameters(), lr=1e-2, avg_reg=-7.0)
    assert isinstance(opt, RMSLNWrapper) and isinstance(opt.optimizer, RLNOptimizer)
    assert opt.optimizer.reg_groups[0]["avg_reg"] == -7.0  # routed on to the inner factory
    train(model, opt)
    assert "rln_groups" in opt.state_dict() and "rmsln_groups" in opt.state_dict()


def test_bad_factory_arguments():
    with pytest.raises(TypeError, match="optimizer class or callable"):
        RLNOptimizer.factory("Adam")
    with pytest.raises(TypeError, match="Invalid select: 3"):
        RLNOptimizer.factory(torch.optim.Adam, select=3)
    with pytest.raises(TypeError, match="not params"):
        RLNOptimizer.factory(torch.optim.Adam, params=[])


# ---------------------------------------------------------------------- guards (the wrappers themselves)
def test_params_none_without_matrices_names_zero_and_params():
    with pytest.raises(ValueError, match=r"ndim >= 2.*DeepSpeed.*pass params= explicitly"):
        RLNOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.randn(8))], lr=0.1))
    with pytest.raises(ValueError, match=r"RMSLNWrapper\(params=None\)"):
        RMSLNWrapper(torch.optim.SGD([torch.nn.Parameter(torch.randn(8))], lr=0.1))


def test_reg_lr_below_one_warns_once_with_the_value():
    model = mlp()
    with pytest.warns(UserWarning, match=r"reg_lr=0.001 is below 1.*filterwarnings") as record:
        RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg_lr=1e-3, compile=False)
    assert len([w for w in record if "reg_lr=" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg_lr=0.0, compile=False)
        RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg_lr=1.0, compile=False)
        warnings.filterwarnings("ignore", message="RLNOptimizer: reg_lr")
        RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg_lr=0.5, compile=False)


def ids(tensors):
    return [id(t) for t in tensors]


def select_nothing(name, tensor):
    return False


def select_vectors(name, tensor):
    return tensor.ndim == 1


def test_add_param_group_honours_the_group_s_select_and_keeps_the_checkpoint_loadable():
    """A ``select`` in a group given to add_param_group chooses that group's tensors, as the
    same dict does at construction, and is taken out before the inner optimizer sees it: the
    checkpoint holds no function and loads with weights_only=True. (The vectors chosen are the
    first layer's biases: RLN refuses the second layer's, of one element.)"""
    model = mlp()
    cls = RLNOptimizer.factory(torch.optim.Adam, **SETTINGS)
    groups = [
        {"params": [model[2].weight, model[2].bias]},
        {"params": list(model[0].parameters()), "select": select_vectors},
    ]
    built = cls(groups)
    assert ids(built.regularized_params()) == ids([model[2].weight, model[0].bias])  # the constructor honours it
    twin = mlp()
    opt = cls([twin[2].weight, twin[2].bias])
    opt.add_param_group({"params": list(twin[0].parameters()), "select": select_vectors})
    assert ids(opt.regularized_params()) == ids([twin[2].weight, twin[0].bias])
    opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3, 4))], "select": select_nothing})
    assert ids(opt.regularized_params()) == ids([twin[2].weight, twin[0].bias])
    assert all("select" not in group for group in opt.param_groups)
    train(twin, opt, steps=2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer, weights_only=True))
