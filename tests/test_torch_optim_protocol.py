"""torch's own optimizer protocol as the standard of "drop-in", for the factory classes.

torch describes each optimizer once (``OptimizerInfo`` in
``torch/testing/_internal/common_optimizers.py``, installed with torch) and runs its
protocol tests (``TestOptimRenewed`` in the pytorch repository's test/test_optim.py) over
that table. Here the entries are ``RLNOptimizer.factory(Adam)``, ``RLNOptimizer.factory(SGD)``
and ``RMSLNWrapper.factory(Adam)``, each at two points:

* neutral (``avg_reg=-80, reg_lr=0``; RMSLN ``reg_lambda=0``): the shrink ``exp(-80)`` is
  below the rounding of any weight the tests use, so every test must pass exactly as for
  the inner optimizer;
* real (``avg_reg=-8, reg_lr=1e4``; RMSLN ``reg_lambda=1e-2``): a test may differ only
  where RLN changes the numbers by design; those are marked ``xfail(strict=True)`` with
  the reason, and listed in the README.

The inputs, error inputs and schedulers are torch's (reused from its Adam and SGD entries);
the tests are written here, after what test_optim.py checks. Tests that need what the
wrappers do not do yet are marked ``xfail(strict=True, reason="core: ...")``: when the core
changes, they fail as XPASS and the mark goes.
"""

from __future__ import annotations

import functools
import math
import tempfile
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import ReduceLROnPlateau

from torch_rln import RLNOptimizer, RMSLNWrapper

_FLAG = "__allow_nonbracketed_mutation_flag"
_flag_before = getattr(torch.backends, _FLAG, True)
harness = pytest.importorskip(
    "torch.testing._internal.common_optimizers",
    reason="torch's optimizer test harness needs expecttest (pip install 'torch-rln[test]')",
)
# Importing torch's test utilities freezes torch.backends flags (disable_global_flags); other
# tests in this process (Lightning sets cudnn.benchmark) must still set them.
setattr(torch.backends, _FLAG, _flag_before)

pytestmark = pytest.mark.filterwarnings("ignore:.*no parameter was selected:UserWarning")

DEVICE, DTYPE = "cpu", torch.float32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: one thread runs them 3-4x faster than a busy pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Entry:
    """One OptimizerInfo of a factory class, at one point (``neutral`` or ``real``)."""

    label: str
    point: str
    info: Any

    @property
    def cls(self) -> Any:
        return self.info.optim_cls


def _entry(label: str, point: str, cls: Any, base_name: str) -> Entry:
    """An OptimizerInfo for ``cls`` with torch's inputs, error inputs and schedulers of ``base_name``."""
    base = next(i for i in harness.optim_db if i.name == base_name)
    info = harness.OptimizerInfo(
        cls,
        optim_inputs_func=base.optim_inputs_func,
        optim_error_inputs_func=base.optim_error_inputs_func,
        scheduler_inputs=base.scheduler_inputs,
        supported_impls=base.supported_impls,
        not_og_supported_flags=base.not_og_supported_flags,
        supports_fused_on=base.supports_fused_on,
        supports_complex=base.supports_complex,
    )
    return Entry(label, point, info)


NEUTRAL_RLN = {"avg_reg": -80.0, "reg_lr": 0.0, "compile": False}
REAL_RLN = {"avg_reg": -8.0, "reg_lr": 1e4, "compile": False}
ENTRIES = [
    _entry("RLN[Adam]", "neutral", RLNOptimizer.factory(torch.optim.Adam, **NEUTRAL_RLN), "Adam"),
    _entry("RLN[SGD]", "neutral", RLNOptimizer.factory(torch.optim.SGD, **NEUTRAL_RLN), "SGD"),
    _entry("RMSLN[Adam]", "neutral", RMSLNWrapper.factory(torch.optim.Adam, reg_lambda=0.0), "Adam"),
    _entry("RLN[Adam]", "real", RLNOptimizer.factory(torch.optim.Adam, **REAL_RLN), "Adam"),
    _entry("RLN[SGD]", "real", RLNOptimizer.factory(torch.optim.SGD, **REAL_RLN), "SGD"),
    _entry("RMSLN[Adam]", "real", RMSLNWrapper.factory(torch.optim.Adam, reg_lambda=1e-2), "Adam"),
]

# Tests that need a change in the wrappers' core (torch_rln/_wrapper.py, rln.py, rmsln.py):
# none any more. torch's global step hooks fire once (the inner step runs without them), complex
# parameters are left to the inner optimizer, and grad_scale/found_inf reach a fused inner step.
CORE: dict[str, str] = {}
# Tests that differ at the real point because RLN/RMSLN changes the numbers by design:
# reason, and the entries (by label) it applies to (None: all).
BY_DESIGN: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "test_step_is_noop_for_zero_grads": ("by design: the regularizer shrinks weights whose gradient is 0", None),
    "test_complex": (
        "by design: a complex tensor is left to the inner optimizer (the default select takes real floating-point "
        "tensors with ndim >= 2), while its real view (10, 5, 2) is regularized (RMSLN passed before 0.2 only "
        "because it added its penalty's gradient in place, into a .grad the test shares with the complex "
        "parameter's; it now adds it into a new gradient tensor)",
        ("RLN[Adam]", "RLN[SGD]", "RMSLN[Adam]"),
    ),
}


def cases(test: str, only: Any = None) -> list[Any]:
    """The entries for ``test`` (those ``only`` accepts), each with its xfail mark if any."""
    out = []
    for entry in ENTRIES:
        if only is not None and not only(entry):
            continue
        design, labels = BY_DESIGN.get(test, (None, None))
        applies = entry.point == "real" and (labels is None or entry.label in labels)
        reasons = [CORE.get(test), design if applies else None]
        reason = "; ".join(r for r in reasons if r)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(entry, marks=marks, id=f"{entry.label}-{entry.point}"))
    return out


def all_inputs(entry: Entry, skip: tuple[str, ...] = ()) -> list[Any]:
    """torch's inputs for the entry, with each of foreach/fused/differentiable switched on in turn."""
    return harness._get_optim_inputs_including_global_cliquey_kwargs(DEVICE, DTYPE, entry.info, skip=skip)


def weight_bias(contiguous: bool = True) -> tuple[Parameter, Parameter]:
    if contiguous:
        return Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
    return Parameter(torch.randn(10, 5, 2)[..., 0]), Parameter(torch.randn(10, 2)[..., 0])


def quadratic_closure(opt: Any, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> Any:
    """torch's test loss ``sum((W x + b)^2)``, as a closure that recomputes the gradients."""

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    return closure


def appender(data: list[Any], value: Any) -> Any:
    """A hook that records ``value`` in ``data`` each time it runs."""
    return lambda *args: data.append(value)


def step_schedulers(schedulers: list[Any], loss: torch.Tensor) -> None:
    for scheduler in schedulers:
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(loss)
        else:
            scheduler.step()


# ---------------------------------------------------------------------- construction errors
@pytest.mark.parametrize("entry", cases("test_errors"))
def test_errors(entry):
    for error in entry.info.optim_error_inputs_func(device=DEVICE, dtype=DTYPE):
        given = error.optimizer_error_input
        assert error.error_on == harness.OptimizerErrorEnum.CONSTRUCTION_ERROR
        if issubclass(error.error_type, Warning):
            with pytest.warns(error.error_type, match=error.error_regex):
                entry.cls(given.params, **given.kwargs)
        else:
            with pytest.raises(error.error_type, match=error.error_regex):
                entry.cls(given.params, **given.kwargs)


# ---------------------------------------------------------------------- training goes the right way
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("entry", cases("test_forloop_goes_right_direction"))
def test_forloop_goes_right_direction(entry, contiguous):
    torch.manual_seed(0)
    for schedulers_c in [None, *entry.info.scheduler_inputs]:
        for given in entry.info.optim_inputs_func(device=DEVICE):
            kwargs = {**given.kwargs, "foreach": False}
            weight, bias = weight_bias(contiguous)
            x = torch.randn(5)
            opt = entry.cls([weight, bias], **kwargs)
            schedulers = [s(opt) for s in (schedulers_c or [])]
            closure = quadratic_closure(opt, weight, bias, x)

            initial = closure().item()
            for _ in range(20):
                loss = opt.step(closure)
                step_schedulers(schedulers, loss)
            final = closure().item()
            assert final > initial if kwargs.get("maximize") else final < initial


@pytest.mark.parametrize("entry", cases("test_param_group_with_lrscheduler_goes_right_direction"))
def test_param_group_with_lrscheduler_goes_right_direction(entry):
    torch.manual_seed(0)
    for schedulers_c in entry.info.scheduler_inputs:
        weight, bias = weight_bias()
        x = torch.randn(5)
        opt = entry.cls([{"params": [weight]}, {"params": [bias], "lr": 0.01}])
        schedulers = [s(opt) for s in schedulers_c]
        closure = quadratic_closure(opt, weight, bias, x)

        initial = closure().item()
        for _ in range(20):
            step_schedulers(schedulers, opt.step(closure))
        assert closure().item() < initial


@pytest.mark.parametrize("entry", cases("test_tensor_lr"))
def test_tensor_lr(entry):
    torch.manual_seed(0)
    for given in all_inputs(entry, skip=("differentiable",)):
        weight, bias = weight_bias()
        weight_c, bias_c = (Parameter(p.detach().clone()) for p in (weight, bias))
        x = torch.randn(5)
        kwargs = {**given.kwargs, "lr": 1e-3}
        opt_float = entry.cls([weight, bias], **kwargs)
        try:
            opt_tensor = entry.cls([weight_c, bias_c], **{**kwargs, "lr": torch.tensor(1e-3)})
        except ValueError as error:
            assert "lr as a Tensor is not supported" in str(error)
            continue
        for _ in range(5):
            for opt, w, b in ((opt_float, weight, bias), (opt_tensor, weight_c, bias_c)):
                opt.zero_grad()
                (w.mv(x) + b).pow(2).sum().backward()
                opt.step()
            torch.testing.assert_close(weight, weight_c)
            torch.testing.assert_close(bias, bias_c)


@pytest.mark.parametrize("entry", cases("test_param_groups_weight_decay"))
def test_param_groups_weight_decay(entry):
    torch.manual_seed(0)
    for given in all_inputs(entry, skip=("differentiable",)):
        weight, bias = weight_bias()
        x = torch.randn(5)
        opt = entry.cls([{"params": [weight], **given.kwargs}, {"params": [bias], **given.kwargs, "weight_decay": 0.0}])
        loss = initial = (weight.mv(x) + bias).pow(2).sum().item()
        for _ in range(20):
            opt.zero_grad()
            loss = (weight.mv(x) + bias).pow(2).sum()
            loss.backward()
            opt.step()
        assert loss.item() > initial if given.kwargs.get("maximize") else loss.item() < initial


@pytest.mark.parametrize("entry", cases("test_param_groups_lr"))
def test_param_groups_lr(entry):
    torch.manual_seed(0)
    for given in all_inputs(entry, skip=("differentiable",)):
        kwargs = {**given.kwargs, "lr": given.kwargs.get("lr") or 1e-3}
        weight, bias = weight_bias()
        irrelevant = Parameter(torch.randn(2))
        before = irrelevant.detach().clone()
        x = torch.randn(5)
        opt = entry.cls([{"params": [weight, bias], **kwargs}, {"params": [irrelevant]}], lr=1e-28)
        initial = (weight.mv(x) + bias).pow(2).sum().item()
        for _ in range(20):
            opt.zero_grad()
            loss = (weight.mv(x) + bias).pow(2).sum()
            loss.backward()
            irrelevant.grad = torch.rand_like(irrelevant)
            opt.step()
        assert loss.item() > initial if kwargs.get("maximize") else loss.item() < initial
        assert torch.equal(irrelevant, before)


# ---------------------------------------------------------------------- implementations agree
def _compare_implementations(entry: Entry, flag: str, dtype: torch.dtype, atol: float = 0.0) -> None:
    """Seven steps with ``flag`` off and on (a frozen layer, a step with no grads): equal."""
    for given in entry.info.optim_inputs_func(device=DEVICE, dtype=dtype):
        if given.kwargs.get("capturable"):
            continue
        runs = []
        for value in (False, True):
            torch.manual_seed(1)
            model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1),
                                        torch.nn.Sigmoid()).to(dtype)
            empty = torch.empty((), dtype=dtype, requires_grad=True)
            empty.grad = torch.rand_like(empty)
            opt = entry.cls([*model.parameters(), empty], **{**given.kwargs, flag: value})
            x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
            for i in range(7):
                opt.zero_grad()
                model[2].requires_grad_(not 3 <= i < 5)
                if i != 2:
                    model(x).sum().backward()
                opt.step()
            runs.append((model, opt))
        (m0, o0), (m1, o1) = runs
        for p, q in zip(m0.parameters(), m1.parameters()):
            torch.testing.assert_close(p, q, atol=atol, rtol=atol)
            for key, value in o0.state[p].items():
                torch.testing.assert_close(o1.state[q][key], value, atol=atol, rtol=atol)


@pytest.mark.parametrize("entry", cases("test_foreach_matches_forloop"))
def test_foreach_matches_forloop(entry):
    _compare_implementations(entry, "foreach", torch.float64)


@pytest.mark.parametrize("entry", cases("test_fused_matches_forloop"))
def test_fused_matches_forloop(entry):
    _compare_implementations(entry, "fused", torch.float64, atol=1e-12)


@pytest.mark.parametrize("entry", cases("test_fused_error_on_params_on_meta"))
def test_fused_error_on_params_on_meta(entry):
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
    opt = entry.cls(model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.to_empty(device=DEVICE)
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    opt.step()


# ---------------------------------------------------------------------- AMP: found_inf and grad_scale
@pytest.mark.parametrize("entry", cases("test_fused_does_not_step_if_foundinf"))
def test_fused_does_not_step_if_foundinf(entry):
    for given in entry.info.optim_inputs_func(device=DEVICE):
        for no_grad_scale in (False, True):
            params = [Parameter(torch.ones(2, 3)) for _ in range(3)]
            before = [p.detach().clone() for p in params]
            for p in params:
                p.grad = torch.ones_like(p)
            opt = entry.cls(params, fused=True, **given.kwargs)
            assert getattr(opt, "_step_supports_amp_scaling", False)  # GradScaler then hands it found_inf
            opt.grad_scale = None if no_grad_scale else torch.ones(1)
            opt.found_inf = torch.ones(())
            opt.step()
            for p, b in zip(params, before):
                assert torch.equal(p, b)
                if "step" in opt.state[p]:
                    assert opt.state[p]["step"].item() == 0


# ---------------------------------------------------------------------- complex parameters
@pytest.mark.parametrize("entry", cases("test_complex"))
def test_complex(entry):
    torch.manual_seed(0)
    for given in all_inputs(entry, skip=("differentiable", "fused")):
        complex_params = [torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
                          torch.randn(10, dtype=torch.complex64, requires_grad=True),
                          torch.randn(10, 5, requires_grad=True)]
        real_params = [(torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
                       for p in complex_params]
        complex_opt = entry.cls(complex_params, **given.kwargs)
        real_opt = entry.cls(real_params, **given.kwargs)
        for _ in range(3):
            for real, cplx in zip(real_params, complex_params):
                real.grad = torch.randn_like(real)
                cplx.grad = torch.view_as_complex(real.grad) if cplx.is_complex() else real.grad.clone()
            real_opt.step()
            complex_opt.step()
            for real, cplx in zip(real_params, complex_params):
                # torch's assertEqual: close, not equal (complex kernels round unlike real ones)
                torch.testing.assert_close(torch.view_as_real(cplx) if cplx.is_complex() else cplx, real)


# ---------------------------------------------------------------------- no-ops
@pytest.mark.parametrize("entry", cases("test_step_is_noop_when_params_have_no_grad"))
def test_step_is_noop_when_params_have_no_grad(entry):
    params = [torch.randn(2, 3) for _ in range(2)]
    before = [p.clone() for p in params]
    for given in all_inputs(entry):
        entry.cls(params, **given.kwargs).step(lambda: torch.tensor([1.0]))
        assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("entry", cases("test_step_is_noop_for_zero_grads"))
def test_step_is_noop_for_zero_grads(entry):
    torch.manual_seed(0)
    param = torch.randn(5, 1, requires_grad=True)
    before = param.detach().clone()
    for given in all_inputs(entry):
        if given.kwargs.get("weight_decay", 0) != 0:
            continue
        params = [param.clone()] if given.kwargs.get("differentiable") else [param]
        opt = entry.cls(params, **given.kwargs)
        params[0].grad = torch.zeros_like(params[0])
        opt.step(lambda: torch.tensor([1.0]))
        assert torch.equal(params[0], before)


# ---------------------------------------------------------------------- printing, copying, state
@pytest.mark.parametrize("entry", cases("test_optimizer_can_be_printed"))
def test_optimizer_can_be_printed(entry):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for given in all_inputs(entry):
        assert repr(entry.cls(params, **given.kwargs))


def params_with_grads():
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    return params


def stepped(entry, given, params, steps=3):
    """An optimizer of ``entry`` built with ``given``'s settings, after ``steps`` steps."""
    opt = entry.cls(params, **given.kwargs)
    for _ in range(steps):
        opt.step()
    return opt


@pytest.mark.parametrize("entry", cases("test_deepcopy_copies_all_public_attrs"))
def test_deepcopy_copies_all_public_attrs(entry):
    params = params_with_grads()
    for given in all_inputs(entry, skip=("differentiable",)):
        opt = stepped(entry, given, params)
        public = {k for k in vars(opt) if not k.startswith("_")}
        assert {k for k in vars(deepcopy(opt)) if not k.startswith("_")} == public


@pytest.mark.parametrize("entry", cases("test_non_empty_state"))
def test_non_empty_state(entry):
    model = torch.nn.Linear(5, 5)
    for given in entry.info.optim_inputs_func(device=DEVICE):
        opt = entry.cls(model.parameters(), **given.kwargs)
        opt.zero_grad()
        model(torch.rand(2, 5)).sum().backward()
        opt.step()
        assert all(len(state) > 0 for state in opt.state.values())


def assert_same(a: Any, b: Any) -> None:
    """``a`` equals ``b``: nested dicts, lists and tuples of tensors (equal values) and plain values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b)
    else:
        assert a == b


def _named(params: list[Any], named: bool) -> list[Any]:
    return [(f"name{i}", p) for i, p in enumerate(params)] if named else params


def _without_names(state_dict: dict[str, Any]) -> dict[str, Any]:
    copy = deepcopy(state_dict)
    for group in copy["param_groups"]:
        group.pop("param_names", None)
    return copy


@pytest.mark.parametrize("named1", [True, False])
@pytest.mark.parametrize("named0", [True, False])
@pytest.mark.parametrize("entry", cases("test_state_dict_deterministic"))
def test_state_dict_deterministic(entry, named0, named1):
    torch.manual_seed(0)
    weight, bias = Parameter(torch.randn(2, 3)), Parameter(torch.randn(2))
    x = torch.randn(3)

    def closure(opt, w, b):
        opt.zero_grad()
        loss = (w.mv(x) + b).pow(2).sum()
        loss.backward()
        return loss

    for given in all_inputs(entry, skip=("differentiable",)):
        opt = entry.cls(_named([weight, bias], named0), **given.kwargs)
        for _ in range(10):
            opt.step(functools.partial(closure, opt, weight, bias))
        with torch.no_grad():
            weight_c, bias_c = Parameter(weight.clone()), Parameter(bias.clone())
        opt_c = entry.cls(_named([weight_c, bias_c], named1), **given.kwargs)
        opt_c.load_state_dict(deepcopy(opt.state_dict()))
        for _ in range(10):
            opt.step(functools.partial(closure, opt, weight, bias))
            opt_c.step(functools.partial(closure, opt_c, weight_c, bias_c))
            assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
        assert_same(_without_names(opt.state_dict()), _without_names(opt_c.state_dict()))
        opt_c.param_groups.extend(opt_c.param_groups)  # a repeated group is packed like the first
        assert (_without_names(opt.state_dict())["param_groups"][-1]
                == _without_names(opt_c.state_dict())["param_groups"][-1])


def _conv_bn() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2))
    return model, torch.rand(1, 4, 16, 16)


def _step(opt: Any, model: torch.nn.Module, x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()


@pytest.mark.parametrize("entry", cases("test_can_load_older_state_dict"))
def test_can_load_older_state_dict(entry):
    for given in all_inputs(entry, skip=("differentiable",)):
        model, x = _conv_bn()
        opt = entry.cls(model.parameters(), **given.kwargs)
        for _ in range(3):
            _step(opt, model, x)
        old = deepcopy(opt.state_dict())
        for group in old["param_groups"]:
            for flag in entry.info.not_og_supported_flags:
                group.pop(flag, None)
        opt.load_state_dict(old)
        _step(opt, model, x)


@pytest.mark.parametrize("named1", [True, False])
@pytest.mark.parametrize("named0", [True, False])
@pytest.mark.parametrize("entry", cases("test_can_load_from_to_named_state_dict"))
def test_can_load_from_to_named_state_dict(entry, named0, named1):
    for given in all_inputs(entry, skip=("differentiable",)):
        model, x = _conv_bn()
        opt = entry.cls(model.named_parameters() if named0 else model.parameters(), **given.kwargs)
        for _ in range(3):
            _step(opt, model, x)
        saved = deepcopy(opt.state_dict())
        opt2 = entry.cls(model.named_parameters() if named1 else model.parameters(), **given.kwargs)
        opt2.load_state_dict(saved)
        _step(opt2, model, x)
        if named0 or named1:
            assert opt2.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.parametrize("entry", cases("test_save_load_equality_with_weights_only"))
def test_save_load_equality_with_weights_only(entry, named):
    torch.manual_seed(0)
    weight, bias = Parameter(torch.randn(2, 3)), Parameter(torch.randn(2))
    x = torch.randn(3)
    for given in all_inputs(entry, skip=("differentiable",)):
        opt = entry.cls(_named([weight, bias], named), **given.kwargs)
        closure = quadratic_closure(opt, weight, bias, x)

        for _ in range(3):
            opt.step(closure)
        state_dict = opt.state_dict()
        with tempfile.TemporaryFile() as f:
            torch.save(state_dict, f)
            f.seek(0)
            assert_same(torch.load(f, weights_only=True), state_dict)


@pytest.mark.parametrize("entry", cases("test_load_nontensor_step"))
def test_load_nontensor_step(entry):
    params = params_with_grads()
    for given in all_inputs(entry, skip=("differentiable",)):
        opt = stepped(entry, given, params)
        state_dict = deepcopy(opt.state_dict())
        for entry_state in state_dict["state"].values():
            if torch.is_tensor(entry_state.get("step")):
                entry_state["step"] = entry_state["step"].item()
        opt.load_state_dict(state_dict)
        opt.step()


# ---------------------------------------------------------------------- state dict hooks
def _sd_pre_hook(opt: Any) -> None:
    opt.state["test"] = 1


def _sd_post_hook(opt: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict["ran_state_dict_pre_hook"] = state_dict["state"].pop("test", None) is not None
    return state_dict


def _load_pre_hook_lr(lr: float, copy: bool) -> Any:
    def hook(opt: Any, state_dict: dict[str, Any]) -> dict[str, Any] | None:
        if copy:
            state_dict = deepcopy(state_dict)
        state_dict["param_groups"][0]["lr"] = lr
        return state_dict if copy else None

    return hook


def _load_post_hook(opt: Any) -> None:
    opt.state["ran_load_state_dict_pre_hook2"] = opt.param_groups[0]["lr"] == 0.003
    opt.state["ran_load_state_dict_post_hook"] = True


def _fresh(entry: Entry, given: Any) -> Any:
    return entry.cls([torch.rand(2, 3, requires_grad=True)], **given.kwargs)


@pytest.mark.parametrize("entry", cases("test_state_dict_hooks"))
def test_state_dict_hooks(entry):
    for given in all_inputs(entry):
        opt = _fresh(entry, given)
        opt.register_state_dict_pre_hook(_sd_pre_hook)
        assert opt.state_dict()["state"]["test"] == 1
        opt = _fresh(entry, given)
        opt.register_state_dict_post_hook(_sd_post_hook)
        assert opt.state_dict()["ran_state_dict_pre_hook"] is False
        opt = _fresh(entry, given)
        opt.register_state_dict_pre_hook(_sd_pre_hook)
        opt.register_state_dict_post_hook(_sd_post_hook)
        state_dict = opt.state_dict()
        assert "test" not in state_dict["state"] and state_dict["ran_state_dict_pre_hook"] is True


@pytest.mark.parametrize("entry", cases("test_load_state_dict_hooks"))
def test_load_state_dict_hooks(entry):
    for given in all_inputs(entry):
        opt = _fresh(entry, given)
        state_dict = opt.state_dict()
        opt.register_load_state_dict_pre_hook(_load_pre_hook_lr(0.002, copy=False))
        opt.load_state_dict(state_dict)
        assert opt.param_groups[0]["lr"] == 0.002
        opt.register_load_state_dict_pre_hook(_load_pre_hook_lr(0.003, copy=True), prepend=True)
        opt.load_state_dict(state_dict)
        assert opt.param_groups[0]["lr"] == 0.002  # the prepended hook ran first

        opt = _fresh(entry, given)
        opt.register_load_state_dict_post_hook(_load_post_hook)
        opt.load_state_dict(opt.state_dict())
        assert not opt.state["ran_load_state_dict_pre_hook2"] and opt.state["ran_load_state_dict_post_hook"]

        opt = _fresh(entry, given)
        opt.register_load_state_dict_pre_hook(_load_pre_hook_lr(0.003, copy=True))
        opt.register_load_state_dict_post_hook(_load_post_hook)
        opt.load_state_dict(opt.state_dict())
        assert opt.state["ran_load_state_dict_pre_hook2"]


# ---------------------------------------------------------------------- step hooks
@pytest.mark.parametrize("entry", cases("test_step_pre_and_post_hooks"))
def test_step_pre_and_post_hooks(entry):
    params = [torch.tensor([1.0, 1.0])]
    for given in all_inputs(entry):
        for register in ("register_step_pre_hook", "register_step_post_hook"):
            opt = entry.cls(params, **given.kwargs)
            calls: list[Any] = []
            handle = getattr(opt, register)(appender(calls, opt))
            opt.step()
            opt.step()
            handle.remove()
            opt.step()
            assert calls == [opt, opt]


@pytest.mark.parametrize("entry", cases("test_step_all_hooks"))
def test_step_all_hooks(entry):
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    params = [torch.tensor([1.0, 1.0]), torch.randn(2, 2)]
    for given in all_inputs(entry):
        opt = entry.cls(params, **given.kwargs)
        plain = torch.optim.SGD(params)
        data: list[int] = []
        handles = [
            register_optimizer_step_pre_hook(appender(data, 0)),
            register_optimizer_step_post_hook(appender(data, 5)),
            opt.register_step_pre_hook(appender(data, 1)),
            opt.register_step_post_hook(appender(data, 2)),
            plain.register_step_pre_hook(appender(data, 1)),
            plain.register_step_post_hook(appender(data, 2)),
        ]
        try:
            opt.step()
            assert data == [0, 1, 2, 5]
            plain.step()
            opt.step()
            assert data == [0, 1, 2, 5] * 3
        finally:
            for handle in handles:
                handle.remove()
        opt.step()
        plain.step()
        assert data == [0, 1, 2, 5] * 3


# ---------------------------------------------------------------------- closures
@pytest.mark.parametrize("entry", cases("test_closure_returns_the_loss_and_runs_once"))
def test_closure_returns_the_loss_and_runs_once(entry):
    torch.manual_seed(0)
    weight, bias = weight_bias()
    x = torch.randn(5)
    opt = entry.cls([weight, bias], lr=1e-3)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and len(calls) == 1 and math.isfinite(loss.item())
    assert opt.step() is None
