"""RLNOptimizer as a drop-in torch Optimizer: schedulers, GradScaler, closures, hooks,
checkpoints, and clear errors for bad input."""

import copy
from pathlib import Path
import io
import math

import pytest
import torch

from torch_rln import RLNOptimizer


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(dtype)


def batches(n, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(32, 12, generator=g).to(dtype)
        out.append((x, x[:, :3].sum(1, keepdim=True)))
    return out


def train_step(model, opt, x, y):
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], {
        id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.reg_state.items()
    }


# ---------------------------------------------------------------- construction
def test_params_none_regularizes_every_matrix():
    model = make_model()
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    assert opt.regularized_params() == [model[0].weight, model[2].weight]
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.optimizer.param_groups
    assert opt.defaults is opt.optimizer.defaults


def test_lambdas_start_at_avg_reg_and_name_unregularized_tensors():
    model = make_model()
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [model[0].weight], avg_reg=-9.0)
    lam = opt.lambdas(model[0].weight)
    assert lam.shape == model[0].weight.shape and torch.all(lam == -9.0)
    with pytest.raises(ValueError, match=r"does not regularize this tensor \(shape \(16,\)"):
        opt.lambdas(model[0].bias)


def test_group_settings_override_defaults():
    model = make_model()
    opt = RLNOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        [{"params": [model[0].weight], "norm": 2, "avg_reg": -3.0}, {"params": model[2].weight}],
        reg_lr=1e3,
    )
    assert [(g["norm"], g["avg_reg"], g["reg_lr"]) for g in opt.reg_groups] == [(2, -3.0, 1e3), (1, -7.5, 1e3)]


# ---------------------------------------------------------------- bad input
def inner_for(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "kwargs,match",
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
def test_bad_hyperparameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RLNOptimizer(inner_for(make_model()), **kwargs)


def test_bad_group_hyperparameter_is_named():
    model = make_model()
    with pytest.raises(ValueError, match=r"Invalid avg_reg: nan"):
        RLNOptimizer(inner_for(model), [{"params": [model[0].weight], "avg_reg": math.nan}])
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['lr'\]"):
        RLNOptimizer(inner_for(model), [{"params": [model[0].weight], "lr": 0.1}])


def test_bad_tensors_are_rejected():
    model = make_model()
    stranger = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"\(shape \(3, 3\), dtype torch.float32\) is not a parameter of the inner"):
        RLNOptimizer(inner_for(model), [stranger])
    with pytest.raises(ValueError, match=r"parameter 0 of the inner optimizer .* is regularized twice"):
        RLNOptimizer(inner_for(model), [{"params": [model[0].weight]}, {"params": [model[0].weight]}])
    with pytest.raises(TypeError, match="wraps a torch.optim.Optimizer, got builtins.dict"):
        RLNOptimizer({"lr": 0.1})
    with pytest.raises(TypeError, match="but got a single torch.FloatTensor: wrap it in a list"):
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


# ---------------------------------------------------------------- steps, hooks, grads
def test_step_hooks_zero_grad_and_skipped_params():
    model = make_model()
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    (x, y), = batches(1)
    # Only the first layer gets a gradient: the second is skipped entirely.
    model[2].weight.requires_grad_(False)
    before = model[2].weight.detach().clone()
    train_step(model, opt, x, y)
    assert calls == ["pre", "post"]
    assert torch.equal(model[2].weight, before)
    assert model[0].weight in opt.reg_state and model[2].weight not in opt.reg_state
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_add_param_group_regularizes_new_matrices_when_params_is_none():
    model = make_model()
    extra = torch.nn.Linear(4, 4)
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    opt.add_param_group({"params": extra.parameters(), "lr": 0.01})
    assert opt.optimizer.param_groups[-1]["lr"] == 0.01
    assert opt.regularized_params()[-1] is extra.weight
    explicit = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [model[0].weight])
    explicit.add_param_group({"params": torch.nn.Linear(4, 4).parameters()})
    assert explicit.regularized_params() == [model[0].weight]


PATHS = {"foreach": dict(foreach=True, compile=False), "per_tensor": dict(foreach=False, compile=False),
         "compiled": dict(compile=True)}


def _run_vector(n, grads, path, theta=-4.0, nu=1e3):
    """RLN with SGD on a 1-D float64 weight of ``n`` elements fed ``grads``; returns the
    weight and the coefficients after each step."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(0.5 * torch.randn(60, dtype=torch.float64)[:n].clone())
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), [w], avg_reg=theta, reg_lr=nu, **PATHS[path])
    history = []
    for grad in grads:
        w.grad = grad.clone()
        opt.step()
        history.append((w.detach().clone(), opt.lambdas(w)))
    return history


@pytest.mark.parametrize("path", list(PATHS))
def test_a_weight_non_finite_from_the_start_is_left_out(path):
    """A weight that is NaN from the first step is left out: the other weights train
    exactly as the same weights without it (the mean is over the finite ones), and its
    coefficient stays avg_reg."""
    g = torch.Generator().manual_seed(1)
    grads = [0.1 * torch.randn(60, generator=g, dtype=torch.float64) for _ in range(30)]
    bad = 7
    with_nan = [gr[:60].clone() for gr in grads]
    with_nan[0][bad] = math.nan
    keep = [i for i in range(60) if i != bad]
    torch.manual_seed(0)
    start = 0.5 * torch.randn(60, dtype=torch.float64)
    clean_history = []
    w = torch.nn.Parameter(start[keep].clone())
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), [w], avg_reg=-4.0, reg_lr=1e3, **PATHS[path])
    for gr in grads:
        w.grad = gr[keep].clone()
        opt.step()
        clean_history.append((w.detach().clone(), opt.lambdas(w)))
    for (w_nan, lam_nan), (w_clean, lam_clean) in zip(_run_vector(60, with_nan, path), clean_history):
        assert torch.isnan(w_nan[bad]) and lam_nan[bad] == -4.0
        # Equal up to the order of the sums (the left-out weight adds an exact 0 at its place),
        # which the dynamics amplify from 1e-16 to ~1e-10 in 30 steps; counting the NaN weight's
        # coefficient in the mean would move every other one by ~(Theta - mean) / 60 ~ 1e-2.
        torch.testing.assert_close(w_nan[keep], w_clean, rtol=0, atol=1e-9)
        torch.testing.assert_close(lam_nan[keep], lam_clean, rtol=0, atol=1e-7)
    assert (w_clean == 0).sum() >= 3  # RLN was at work


@pytest.mark.parametrize("path", list(PATHS))
def test_a_weight_turning_non_finite_freezes_its_coefficient_and_leaves_the_mean(path):
    """A weight the inner step makes NaN (or Inf) mid-run: its coefficient stops moving (it
    takes the value it would have with the weight at 0, then stays), its shrink is 0, and on
    that step the other coefficients are projected with the mean over the finite weights."""
    g = torch.Generator().manual_seed(2)
    grads = [0.1 * torch.randn(60, generator=g, dtype=torch.float64) for _ in range(12)]
    grads[5][3], grads[5][9] = math.nan, math.inf
    history = _run_vector(60, grads, path)
    frozen = history[5][1][[3, 9]]
    for w, lam in history[5:]:
        assert not torch.isfinite(w[3]) and not torch.isfinite(w[9])
        assert torch.equal(lam[[3, 9]], frozen)
        finite = torch.ones(60, dtype=torch.bool)
        finite[[3, 9]] = False
        assert torch.isfinite(w[finite]).all() and torch.isfinite(lam).all()
    # Step 5 by hand: lam_pre = lam - nu (w' - w_prev) r_prev, projected over the finite weights.
    torch.manual_seed(0)
    w = torch.nn.Parameter(0.5 * torch.randn(60, dtype=torch.float64))
    opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), [w], avg_reg=-4.0, reg_lr=1e3, **PATHS[path])
    for gr in grads[:5]:
        w.grad = gr.clone()
        opt.step()
    lam_prev, r_prev, w_prev = opt.lambdas(w), opt.reg_state[w]["r_prev"].clone(), w.detach().clone()
    w.grad = grads[5].clone()
    opt.step()
    w_new = w_prev - 0.1 * grads[5]
    pre = lam_prev - 1e3 * (w_new - w_prev) * r_prev
    finite = torch.isfinite(w_new)
    expected = pre + (-4.0 - pre[finite].mean())
    lam = opt.lambdas(w)
    uncapped = finite & torch.isclose(lam, expected, rtol=0, atol=1e-9)
    assert uncapped.sum() > 30  # most finite coefficients are below their cap
    assert torch.equal(opt.reg_state[w]["r_prev"][~finite], torch.zeros(2, dtype=torch.float64))
    # The other coefficients are not pulled by the frozen ones: no runaway over many steps.
    long = _run_vector(60, grads + [0.1 * torch.randn(60, generator=g, dtype=torch.float64) for _ in range(100)], path)
    _, lam_end = long[-1]
    assert lam_end[finite].mean() <= -4.0 + 1e-9 and lam_end[finite].mean() > -40.0


# ---------------------------------------------------------------- schedulers
@pytest.mark.parametrize("name", ["step", "onecycle", "plateau"])
def test_lr_schedulers_drive_the_inner_learning_rate(name):
    def build(opt):
        if name == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        if name == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)

    model = make_model()
    bare = torch.optim.SGD(make_model().parameters(), lr=0.1, momentum=0.9)
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    sched_bare, sched = build(bare), build(opt)
    lrs = []
    for i, (x, y) in enumerate(batches(8)):
        train_step(model, opt, x, y)
        bare.step()
        if name == "plateau":
            sched.step(1.0)
            sched_bare.step(1.0)
        else:
            sched.step()
            sched_bare.step()
        lrs.append(opt.optimizer.param_groups[0]["lr"])
        assert lrs[-1] == bare.param_groups[0]["lr"]
    assert len(set(lrs)) > 1  # the schedule did move the inner learning rate


# ---------------------------------------------------------------- GradScaler
def test_grad_scaler_skips_the_whole_step_on_inf():
    model = make_model()
    reference = make_model()
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), avg_reg=-5.0, reg_lr=1e4)
    ref_opt = RLNOptimizer(torch.optim.SGD(reference.parameters(), lr=0.05), avg_reg=-5.0, reg_lr=1e4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    data = batches(6)
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        scaler.scale(((model(x) - y) ** 2).mean()).backward()
        if i == 3:
            model[0].weight.grad[0, 0] = math.inf
            before = snapshot(model, opt)
        scaler.step(opt)
        scaler.update()
        if i == 3:
            after = snapshot(model, opt)
            for a, b in zip(before[0], after[0]):
                assert torch.equal(a, b)
            for key in before[1]:
                for name in before[1][key]:
                    assert torch.equal(before[1][key][name], after[1][key][name])
        else:
            train_step(reference, ref_opt, x, y)
    # The scaled run equals an unscaled run without the skipped batch (SGD is not
    # scale-invariant, so a missed unscale would show here).
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- closures
def test_lbfgs_closure_runs_and_regularizes():
    model = make_model()
    opt = RLNOptimizer(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5), [model[0].weight], avg_reg=-4.0, reg_lr=1e3)
    (x, y), = batches(1)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = opt.step(closure)
    for _ in range(5):
        loss = opt.step(closure)
    assert len(calls) > 6 and loss < first
    assert (model[0].weight == 0).any()


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("inner", ["adam", "rmsprop", "adamw_fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_from_checkpoint_is_bit_identical(inner, dtype):
    build = {
        "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
        "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-7),
        "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
    }[inner]
    data = batches(30, dtype=dtype)

    def fresh():
        model = make_model(dtype=dtype)
        opt = RLNOptimizer(build(model.parameters()), avg_reg=-5.0, reg_lr=1e4)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
        return model, opt, sched

    model, opt, sched = fresh()
    for x, y in data[:15]:
        train_step(model, opt, x, y)
        sched.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    for x, y in data[15:]:
        train_step(model, opt, x, y)
        sched.step()

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed, resumed_opt, resumed_sched = fresh()
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    resumed_sched.load_state_dict(checkpoint["sched"])
    for p in resumed_opt.regularized_params():
        assert resumed_opt.reg_state[p]["acc"].dtype == torch.float32
    for x, y in data[15:]:
        train_step(resumed, resumed_opt, x, y)
        resumed_sched.step()
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.regularized_params(), resumed_opt.regularized_params()):
        assert torch.equal(opt.reg_state[a]["acc"], resumed_opt.reg_state[b]["acc"])
        assert torch.equal(opt.reg_state[a]["r_prev"], resumed_opt.reg_state[b]["r_prev"])
    assert (model[0].weight == 0).any()


def test_learning_rate_zero_leaves_weights_and_coefficients_alone():
    """A group at lr 0 (a frozen layer, a warm-up's first step, the step at lr 0 that
    torch.distributed.checkpoint runs to build state) is not regularized: RLN's shrink is a
    training step, as AdamW's decay (lr * weight_decay) is. Python and CPU-tensor lrs."""
    for frozen_lr in (0.0, torch.tensor(0.0)):
        model = make_model()
        base = torch.optim.Adam(
            [{"params": model[0].parameters(), "lr": frozen_lr}, {"params": model[2].parameters(), "lr": 1e-2}]
        )
        opt = RLNOptimizer(base, avg_reg=-5.0, reg_lr=1e4)
        frozen = model[0].weight.detach().clone()
        for x, y in batches(5):
            train_step(model, opt, x, y)
        assert torch.equal(model[0].weight, frozen)
        assert torch.equal(opt.lambdas(model[0].weight), torch.full_like(frozen, -5.0))
        assert (opt.lambdas(model[2].weight) != -5.0).any()


def test_a_step_at_lr_zero_then_training_equals_training():
    """The step at lr 0 creates the state (lam = Theta, r_prev = 0) and nothing else: the
    training that follows is the same as from a fresh optimizer."""
    data = batches(12, dtype=torch.float64)
    runs = []
    for warm_up_at_zero in (False, True):
        model = make_model(dtype=torch.float64)
        # SGD: Adam would count the step at lr 0 in its bias correction.
        opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), avg_reg=-5.0, reg_lr=1e4)
        if warm_up_at_zero:
            opt.param_groups[0]["lr"] = 0.0
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()
            assert len(opt.reg_state) == 2
            opt.param_groups[0]["lr"] = 0.05
        for x, y in data:
            train_step(model, opt, x, y)
        runs.append(snapshot(model, opt))
    (params_a, state_a), (params_b, state_b) = runs
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert (params_a[0] == 0).any()


def checkpointed_run(make_inner, **settings):
    """Ten steps of RLN, the optimizer saved through torch.distributed.checkpoint after five;
    a fresh model holding the weights of step 5 with a fresh optimizer to resume in, and a
    function that resumes it and checks that it ends exactly where the first run did."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    data = batches(10)
    model = make_model()
    opt = RLNOptimizer(make_inner(model.parameters()), **settings)
    for x, y in data[:5]:
        train_step(model, opt, x, y)
    saved = copy.deepcopy(get_optimizer_state_dict(model, opt))
    weights = [p.detach().clone() for p in model.parameters()]
    for x, y in data[5:]:
        train_step(model, opt, x, y)

    resumed = make_model(seed=7)
    with torch.no_grad():
        for p, w in zip(resumed.parameters(), weights):
            p.copy_(w)
    resumed_opt = RLNOptimizer(make_inner(resumed.parameters()), **settings)

    def resume_and_compare():
        for x, y in data[5:]:
            train_step(resumed, resumed_opt, x, y)
        for a, b in zip(model.parameters(), resumed.parameters()):
            assert torch.equal(a, b)
        assert (model[0].weight == 0).any()  # RLN is at work

    return model, opt, saved, resumed, resumed_opt, resume_and_compare


def test_distributed_checkpoint_functions_round_trip_in_one_process():
    """torch.distributed.checkpoint's get/set_optimizer_state_dict key the state by parameter
    name and keep only "state" and "param_groups": the RLN tensors come back, the settings
    stay the wrapper's own, and training resumes bit-identically."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    model, opt, saved, resumed, resumed_opt, resume_and_compare = checkpointed_run(
        lambda ps: torch.optim.Adam(ps, lr=1e-2), avg_reg=-5.0, reg_lr=1e4
    )
    assert set(saved) == {"state", "param_groups"} and "rln_lam" in saved["state"]["0.weight"]
    set_optimizer_state_dict(resumed, resumed_opt, saved)
    resume_and_compare()

    flat = get_optimizer_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))
    with pytest.raises(ValueError, match="flatten_optimizer_state_dict=True"):
        set_optimizer_state_dict(
            resumed, resumed_opt, flat, options=StateDictOptions(flatten_optimizer_state_dict=True)
        )


def test_distributed_checkpoint_of_a_stateless_inner_optimizer_loads_with_strict_false():
    """Over plain SGD only the regularized weights have state: torch.distributed.checkpoint's
    strict load refuses that (as the README says), and strict=False resumes exactly."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    _, _, saved, resumed, resumed_opt, resume_and_compare = checkpointed_run(
        lambda ps: torch.optim.SGD(ps, lr=0.05), avg_reg=-4.0, reg_lr=1e3
    )
    with pytest.raises(RuntimeError, match="Missing optimizer state for parameter '0.bias'"):
        set_optimizer_state_dict(resumed, resumed_opt, saved)
    set_optimizer_state_dict(resumed, resumed_opt, saved, options=StateDictOptions(strict=False))
    resume_and_compare()


def test_state_written_straight_into_the_inner_state_is_taken_over():
    """ZeroRedundancyOptimizer.load_state_dict writes checkpoint entries into
    ``optimizer.state[p]`` itself: the RLN tensors among them are checked and taken over at
    the next step, as load_state_dict would have loaded them."""
    data = batches(8)
    model = make_model()
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), avg_reg=-5.0, reg_lr=1e4)
    for x, y in data[:4]:
        train_step(model, opt, x, y)
    saved = copy.deepcopy(opt.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    for x, y in data[4:]:
        train_step(model, opt, x, y)

    def fresh():
        twin = make_model(seed=3)
        with torch.no_grad():
            for p, w in zip(twin.parameters(), weights):
                p.copy_(w)
        twin_opt = RLNOptimizer(torch.optim.Adam(twin.parameters(), lr=1e-2), avg_reg=-5.0, reg_lr=1e4)
        for i, p in enumerate(twin.parameters()):
            twin_opt.state[p] = dict(saved["state"][i])  # as ZeRO does
        return twin, twin_opt

    twin, twin_opt = fresh()
    assert torch.equal(twin_opt.lambdas(twin[0].weight), saved["state"][0]["rln_lam"])
    assert set(twin_opt.state[twin[0].weight]) == {"step", "exp_avg", "exp_avg_sq"}  # taken out
    for x, y in data[4:]:
        train_step(twin, twin_opt, x, y)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)

    twin, twin_opt = fresh()
    twin_opt.state[twin[2].weight]["rln_lam"] = torch.zeros(3)
    before = twin[2].weight.detach().clone()
    with pytest.raises(ValueError, match=r"state 'lam' of parameter 2 has shape \(3,\)"):
        twin_opt.step()
    assert torch.equal(twin[2].weight, before) and not twin_opt.reg_state


def test_state_dict_layout_is_torchs():
    model = make_model()
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), [model[2].weight], norm=2)
    (x, y), = batches(1)
    train_step(model, opt, x, y)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups", "rln_groups"}
    assert sd["rln_groups"] == [{"norm": 2, "avg_reg": -7.5, "reg_lr": 6e5, "batch_dims": 0, "params": [2]}]
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_avg_sq", "rln_lam", "rln_r_prev"}
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_mismatched_checkpoints_are_refused_before_anything_changes():
    model = make_model()
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), [model[0].weight])
    (x, y), = batches(1)
    train_step(model, opt, x, y)
    saved = opt.state_dict()

    other = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), [model[2].weight])
    train_step(model, other, x, y)
    before = {k: v.clone() for k, v in other.reg_state[model[2].weight].items()}
    inner_before = other.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(ValueError, match=r"holds parameters \[2\] here but \[0\] in the state_dict"):
        other.load_state_dict(saved)
    assert torch.equal(other.reg_state[model[2].weight]["acc"], before["acc"])
    assert torch.equal(other.optimizer.state[model[0].weight]["exp_avg"], inner_before)

    bad_shape = opt.state_dict()
    bad_shape["state"] = dict(bad_shape["state"])
    bad_shape["state"][0] = {**bad_shape["state"][0], "rln_lam": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"state 'lam' of parameter 0 has shape \(3,\), the parameter \(16, 12\)"):
        opt.load_state_dict(bad_shape)
    bad_setting = {**opt.state_dict(), "rln_groups": [{**saved["rln_groups"][0], "norm": 5}]}
    with pytest.raises(ValueError, match="Invalid norm: 5"):
        opt.load_state_dict(bad_setting)
    with pytest.raises(ValueError, match="has no 'rln_groups'.*optimizer.load_state_dict"):
        opt.load_state_dict(opt.optimizer.state_dict())
    lam = opt.lambdas(model[0].weight)
    fresh_inner = torch.optim.Adam(model.parameters(), lr=1e-2).state_dict()  # no state at all
    with pytest.raises(ValueError, match="has no 'rln_groups'"):
        opt.load_state_dict(fresh_inner)
    assert torch.equal(opt.lambdas(model[0].weight), lam)  # the coefficients are not wiped


# ---------------------------------------------------------------- stacked copies
@pytest.mark.parametrize("path", ["foreach", "per_tensor", "compiled"])
def test_batch_dims_equals_separate_optimizers(path):
    """K copies stacked on a leading dim (batch_dims=1) train as K separate RLN optimizers."""
    k, steps = 4, 30
    g = torch.Generator().manual_seed(0)
    w0 = 0.3 * torch.randn(k, 8, 20, generator=g)
    grads = [0.1 * torch.randn(k, 8, 20, generator=g) for _ in range(steps)]
    settings = dict(norm=1, avg_reg=-4.0, reg_lr=1e3, foreach=path == "foreach", compile=path == "compiled")
    stacked = torch.nn.Parameter(w0.clone())
    opt = RLNOptimizer(torch.optim.RMSprop([stacked], lr=1e-2), batch_dims=1, **settings)
    singles = [torch.nn.Parameter(w0[i].clone()) for i in range(k)]
    opts = [RLNOptimizer(torch.optim.RMSprop([w], lr=1e-2), **settings) for w in singles]
    for grad in grads:
        stacked.grad = grad.clone()
        opt.step()
        for i in range(k):
            singles[i].grad = grad[i].clone()
            opts[i].step()
    for i in range(k):
        torch.testing.assert_close(stacked[i], singles[i], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.lambdas(stacked)[i], opts[i].lambdas(singles[i]), rtol=1e-6, atol=1e-5)
    assert (stacked == 0).any()
    # One mean over the whole stack would differ: the copies' means are each avg_reg before the cap.
    per_copy = opt.lambdas(stacked).mean(dim=(1, 2))
    assert (per_copy <= -4.0 + 1e-5).all()


def test_a_checkpoint_of_version_0_1_0_loads_and_continues():
    """tests/data/rln-0.1.0-sgd-momentum.pt was written by torch-rln 0.1.0 (commit 1f29b15, which
    kept lam itself and copied the weights before each step) after 20 float64 steps, with the
    weights and coefficients of the 20 steps that followed. It loads as is, and the run
    continues as 0.1.0 continued it, to float64 rounding amplified over 20 steps."""
    checkpoint = torch.load(Path(__file__).parent / "data" / "rln-0.1.0-sgd-momentum.pt", weights_only=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), avg_reg=-4.0, reg_lr=1e3)
    g = torch.Generator().manual_seed(1)
    data = [(x, x[:, :3].sum(1, keepdim=True))
            for x in (torch.randn(32, 12, generator=g, dtype=torch.float64) for _ in range(40))]
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    for p, lam in zip(opt.regularized_params(), checkpoint["lambdas_at_save"]):
        assert torch.equal(opt.lambdas(p), lam)
    for x, y in data[20:]:
        train_step(model, opt, x, y)
    for name, value in model.state_dict().items():
        expected = checkpoint["continued_model"][name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-9)
        assert torch.equal(value == 0, expected == 0)
    for p, lam in zip(opt.regularized_params(), checkpoint["lambdas_continued"]):
        torch.testing.assert_close(opt.lambdas(p), lam, rtol=0, atol=1e-8)
    assert (model[0].weight == 0).sum() > 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", list(PATHS))
def test_l2_with_weights_near_the_largest_float_stays_finite_and_leaves_the_others_alone(dtype, path):
    """norm=2 never forms 2 w (inf past half the largest float): a weight of 2e38 is shrunk
    by (2 e^lam) w like the others, and the ordinary weights of its tensor train as they
    would beside an ordinary weight (its fold, too large for float32, is dropped)."""
    results = []
    for big in (2e38, 2.0):
        w = torch.nn.Parameter(torch.tensor([[big, 0.5, -0.25, 1.0]], dtype=dtype))
        opt = RLNOptimizer(torch.optim.SGD([w], lr=1e-3), norm=2, avg_reg=-5.0, reg_lr=1.0, **PATHS[path])
        for _ in range(4):
            w.grad = torch.full_like(w, 0.1)
            opt.step()
        assert torch.isfinite(w).all() and torch.isfinite(opt.lambdas(w)).all()
        results.append((w.detach().float(), opt.lambdas(w)))
    (w_big, lam_big), (w_small, lam_small) = results
    assert 1e38 < w_big[0, 0] < 2e38  # shrunk, finite
    torch.testing.assert_close(w_big[0, 1:], w_small[0, 1:], rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=0)
    assert (lam_big[0, 1:] - (-5.0)).abs().max() < 0.05


def test_a_nan_weight_does_not_switch_rln_off_for_its_tensor():
    """SGD with momentum, one weight NaN from step 10 (the adversarial run of issue 14). Its
    coefficient stays frozen instead of following the projection up (0.1.0: 102 by step 100,
    pushing every other coefficient down), and the tensor zeroes about as many weights as the
    same run without the NaN (here 525 and 527 of 600; 0.1.0: 502 and 527)."""
    def run(with_nan):
        torch.manual_seed(0)
        w = torch.nn.Parameter(0.3 * torch.randn(20, 30))
        opt = RLNOptimizer(torch.optim.SGD([w], lr=0.05, momentum=0.9), avg_reg=-4.0, reg_lr=1e3, compile=False)
        g = torch.Generator().manual_seed(1)
        for k in range(100):
            w.grad = 0.1 * torch.randn(20, 30, generator=g) + 0.02 * w.detach().nan_to_num()
            if with_nan and k == 10:
                w.grad[0, 0] = math.nan
            opt.step()
        return w.detach(), opt.lambdas(w)

    (w_nan, lam_nan), (w_clean, _) = run(True), run(False)
    assert torch.isnan(w_nan[0, 0])
    assert lam_nan[0, 0] < 0  # frozen near where it was, not climbing
    zeros_nan, zeros_clean = int((w_nan == 0).sum()), int((w_clean == 0).sum())
    assert zeros_clean >= 10
    assert abs(zeros_nan - zeros_clean) <= max(3, zeros_clean // 5)
