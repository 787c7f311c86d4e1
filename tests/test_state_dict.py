"""Checkpoints, for every wrapper and their stacks: state_dict's layout, resuming
bit-identically, and which checkpoint loads where (refused before anything changes).
Bad values inside a checkpoint: test_errors.py. torch.distributed.checkpoint: test_dcp.py."""

import copy
import io
from pathlib import Path

import pytest
import torch
from helpers import (
    INNER,
    PATHS,
    WRAPPERS,
    assert_params_equal,
    batches,
    lambdas_of,
    make_model,
    noise_batches,
    rln_of,
    same,
    train,
    train_step,
)

from torch_rln import RLNOptimizer, RMSLNWrapper


def _trained(build):
    model = make_model(sizes=(6, 8, 1))
    opt = build(torch.optim.Adam(model.parameters(), lr=1e-2))
    x = torch.randn(16, 6)
    for _ in range(3):
        opt.zero_grad()
        ((model(x) - x[:, :1]) ** 2).mean().backward()
        opt.step()
    return model, opt


def test_a_stack_s_checkpoint_loads_only_into_the_same_stack():
    """RMSLN over RLN into a plain RLNOptimizer would drop the RMSLN settings, and an RLN
    checkpoint into RMSLN over RLN lacks them: both are refused, before anything changes."""
    rln, rmsln_over_rln = WRAPPERS["rln"], WRAPPERS["rmsln_over_rln"]
    _, stacked = _trained(rmsln_over_rln)
    _, plain = _trained(rln)
    stacked_sd, plain_sd = stacked.state_dict(), plain.state_dict()
    model, target = _trained(rln)
    before = {k: v.clone() for k, v in target.reg_state[model[0].weight].items()}
    with pytest.raises(
        ValueError,
        match=r"holds 'rmsln_groups', the settings of a RMSLNWrapper, but this "
        r"RLNOptimizer has no RMSLNWrapper in its stack",
    ):
        target.load_state_dict(stacked_sd)
    assert all(torch.equal(v, target.reg_state[model[0].weight][k]) for k, v in before.items())
    _, stack = _trained(rmsln_over_rln)
    with pytest.raises(ValueError, match=r"has no 'rmsln_groups': it was not saved by RMSLNWrapper"):
        stack.load_state_dict(plain_sd)
    stack.load_state_dict(stacked_sd)  # the same stack loads


@pytest.mark.parametrize("inner", ["adam", "rmsprop", "adamw_fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_from_checkpoint_is_bit_identical(wrapper_name, inner, dtype):
    """Weights, the inner optimizer's state, a scheduler and the regularizers' state saved
    after 15 steps and loaded into a fresh stack: the next 15 steps are the same to the bit."""
    data = batches(30, dtype=dtype)

    def fresh():
        model = make_model(dtype=dtype)
        opt = WRAPPERS[wrapper_name](
            INNER[inner](model.parameters()), rln={"avg_reg": -5.0, "reg_lr": 1e4, "compile": None}
        )
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
    rln, resumed_rln = rln_of(opt), rln_of(resumed_opt)
    if rln is not None:
        for p in resumed_rln.regularized_params():
            assert resumed_rln.reg_state[p]["folded"].dtype == torch.float32
    for x, y in data[15:]:
        train_step(resumed, resumed_opt, x, y)
        resumed_sched.step()
    for a, b in zip(model.parameters(), resumed.parameters(), strict=False):
        assert torch.equal(a, b)
    if rln is not None:
        for a, b in zip(rln.regularized_params(), resumed_rln.regularized_params(), strict=False):
            assert torch.equal(rln.reg_state[a]["folded"], resumed_rln.reg_state[b]["folded"])
            assert torch.equal(rln.reg_state[a]["r_prev"], resumed_rln.reg_state[b]["r_prev"])
        assert (model[0].weight == 0).any()
    else:
        assert not torch.equal(model[0].weight, make_model(dtype=dtype)[0].weight)


@pytest.mark.parametrize("decoupled", [False, True])
def test_rmsln_settings_travel_with_the_checkpoint(decoupled):
    data = noise_batches()

    def build():
        model = make_model(sizes=(8, 16, 4))
        inner = torch.optim.Adam(model.parameters(), lr=1e-2)
        groups = [{"params": [model[0].weight], "reg_lambda": 0.2}, {"params": [model[2].weight], "target": 0.5}]
        return model, RMSLNWrapper(inner, groups, reg_lambda=0.05, decoupled=decoupled)

    model, opt = build()
    train(model, opt, data, 7)
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
    train(model, opt, data, 6)
    train(model2, opt2, data, 6)
    assert_params_equal(model, model2)


@pytest.mark.parametrize("order", ["rmsln_outside", "rln_outside"])
def test_nested_wrappers_round_trip(order):
    data = noise_batches()

    def build():
        model = make_model(sizes=(8, 16, 4))
        adam = torch.optim.Adam(model.parameters(), lr=1e-2)
        if order == "rmsln_outside":
            opt = RMSLNWrapper(RLNOptimizer(adam, avg_reg=-8.0, reg_lr=1e4), reg_lambda=0.1)
        else:
            opt = RLNOptimizer(RMSLNWrapper(adam, reg_lambda=0.1), avg_reg=-8.0, reg_lr=1e4)
        return model, opt

    model, opt = build()
    train(model, opt, data, 5)
    sd = opt.state_dict()
    assert "rmsln_groups" in sd
    assert "rln_groups" in sd
    assert "rln_lam" in sd["state"][0]
    assert "exp_avg" in sd["state"][0]
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": sd}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model2, opt2 = build()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    train(model, opt, data, 5)
    train(model2, opt2, data, 5)
    assert_params_equal(model, model2)

    # both regularizers act: the result differs from RLN alone
    alone = make_model(sizes=(8, 16, 4))
    rln = RLNOptimizer(torch.optim.Adam(alone.parameters(), lr=1e-2), avg_reg=-8.0, reg_lr=1e4)
    train(alone, rln, data, 10)
    assert not torch.equal(alone[0].weight, model[0].weight)


INNER_DICT_REFUSED = {
    "rln": "has no 'rln_groups'.*optimizer.load_state_dict",
    "rmsln": "has no 'rmsln_groups'.*RMSLNWrapper.optimizer.load_state_dict",
}


@pytest.mark.parametrize("name", list(INNER_DICT_REFUSED))
def test_an_inner_optimizers_state_dict_is_refused(name):
    """A state dict without the wrapper's groups is not the wrapper's, unless
    torch.distributed.checkpoint made it (parameters keyed by name): loading the inner
    optimizer's checkpoint is a mistake."""
    model = make_model(sizes=(8, 16, 4))
    opt = WRAPPERS[name](torch.optim.Adam(model.parameters(), lr=1e-2), rmsln={"reg_lambda": 0.1})
    train(model, opt, noise_batches(), 2)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=INNER_DICT_REFUSED[name]):
        opt.load_state_dict(torch.optim.Adam(model.parameters(), lr=0.5).state_dict())
    assert opt.param_groups[0]["lr"] == 1e-2
    assert len(opt.state) == len(before["state"])


def test_rln_state_dict_layout_is_torchs():
    model = make_model()
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), [model[2].weight], norm=2)
    ((x, y),) = batches(1)
    train_step(model, opt, x, y)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups", "rln_groups"}
    assert sd["rln_groups"] == [{"norm": 2, "avg_reg": -7.5, "reg_lr": 6e5, "batch_dims": 0, "params": [2]}]
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_avg_sq", "rln_lam", "rln_r_prev", "rln_folded"}
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_rln_mismatched_checkpoints_are_refused_before_anything_changes():
    model = make_model()
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), [model[0].weight])
    ((x, y),) = batches(1)
    train_step(model, opt, x, y)
    saved = opt.state_dict()

    other = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), [model[2].weight])
    train_step(model, other, x, y)
    before = {k: v.clone() for k, v in other.reg_state[model[2].weight].items()}
    inner_before = other.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(ValueError, match=r"holds parameters \[2\] here but \[0\] in the state_dict"):
        other.load_state_dict(saved)
    assert torch.equal(other.reg_state[model[2].weight]["folded"], before["folded"])
    assert torch.equal(other.optimizer.state[model[0].weight]["exp_avg"], inner_before)

    bad_shape = opt.state_dict()
    bad_shape["state"] = dict(bad_shape["state"])
    bad_shape["state"][0] = {**bad_shape["state"][0], "rln_lam": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"state 'lam' of parameter 0 has shape \(3,\), the parameter \(16, 12\)"):
        opt.load_state_dict(bad_shape)
    bad_setting = {**opt.state_dict(), "rln_groups": [{**saved["rln_groups"][0], "norm": 5}]}
    with pytest.raises(ValueError, match="Invalid norm: 5"):
        opt.load_state_dict(bad_setting)
    with pytest.raises(ValueError, match=r"has no 'rln_groups'.*optimizer\.load_state_dict"):
        opt.load_state_dict(opt.optimizer.state_dict())
    lam = opt.lambdas(model[0].weight)
    fresh_inner = torch.optim.Adam(model.parameters(), lr=1e-2).state_dict()  # no state at all
    with pytest.raises(ValueError, match="has no 'rln_groups'"):
        opt.load_state_dict(fresh_inner)
    assert torch.equal(opt.lambdas(model[0].weight), lam)  # the coefficients are not wiped


def test_rln_state_written_straight_into_the_inner_state_is_taken_over():
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
            for p, w in zip(twin.parameters(), weights, strict=False):
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
    for a, b in zip(model.parameters(), twin.parameters(), strict=False):
        assert torch.equal(a, b)

    twin, twin_opt = fresh()
    twin_opt.state[twin[2].weight]["rln_lam"] = torch.zeros(3)
    before = twin[2].weight.detach().clone()
    with pytest.raises(ValueError, match=r"state 'lam' of parameter 2 has shape \(3,\)"):
        twin_opt.step()
    assert torch.equal(twin[2].weight, before)
    assert not twin_opt.reg_state


def test_rln_checkpoint_of_version_0_1_0_loads_and_continues():
    """tests/data/rln-0.1.0-sgd-momentum.pt was written by torch-rln 0.1.0 (commit 1f29b15, which
    kept lam itself and copied the weights before each step) after 20 float64 steps, with the
    weights and coefficients of the 20 steps that followed. It loads as is, and the run
    continues as 0.1.0 continued it, to float64 rounding amplified over 20 steps."""
    checkpoint = torch.load(Path(__file__).parent / "data" / "rln-0.1.0-sgd-momentum.pt", weights_only=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    opt = RLNOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), avg_reg=-4.0, reg_lr=1e3)
    g = torch.Generator().manual_seed(1)
    data = [
        (x, x[:, :3].sum(1, keepdim=True))
        for x in (torch.randn(32, 12, generator=g, dtype=torch.float64) for _ in range(40))
    ]
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    for p, lam in zip(opt.regularized_params(), checkpoint["lambdas_at_save"], strict=False):
        assert torch.equal(opt.lambdas(p), lam)
    for x, y in data[20:]:
        train_step(model, opt, x, y)
    for name, value in model.state_dict().items():
        expected = checkpoint["continued_model"][name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-9)
        assert torch.equal(value == 0, expected == 0)
    for p, lam in zip(opt.regularized_params(), checkpoint["lambdas_continued"], strict=False):
        torch.testing.assert_close(opt.lambdas(p), lam, rtol=0, atol=1e-8)
    assert (model[0].weight == 0).sum() > 40


# ---------------------------------------------------------------- checkpointing is read-only (issue 22.1)
LONG_RUN = batches(60, features=20)


def _rln_run(path, seed=3):
    """The issue's setting: a 20-16-1 MLP, Adam lr 1e-2, RLN at Theta -10 and nu 1e6."""
    model = make_model(seed=seed, sizes=(20, 16, 1))
    opt = RLNOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), avg_reg=-10.0, reg_lr=1e6, **PATHS[path])
    return model, opt


def _train_steps(model, opt, first, last, checkpoint_every=None):
    """Steps ``first`` to ``last`` (1-based) of LONG_RUN; ``state_dict()`` taken and discarded
    after every ``checkpoint_every``-th step."""
    for k in range(first, last + 1):
        train_step(model, opt, *LONG_RUN[k - 1])
        if checkpoint_every and k % checkpoint_every == 0:
            opt.state_dict()


def _weights_and_lambdas(model, opt):
    return [p.detach().clone() for p in model.parameters()], lambdas_of(opt)


def test_rln_taking_checkpoints_does_not_change_training(path):
    """Two identical 60-step runs, one of which calls state_dict() every 5 steps (step 30
    among them) and throws it away: the same weights and coefficients, to the bit."""
    runs = []
    for every in (None, 5):
        model, opt = _rln_run(path)
        _train_steps(model, opt, 1, 60, checkpoint_every=every)
        runs.append(_weights_and_lambdas(model, opt))
    assert same(runs[0], runs[1])
    assert (runs[0][0][0] == 0).any()  # RLN acted


def test_torch_optimizers_load_a_kept_state_dict_as_the_current_state():
    """What the next test holds RLNOptimizer to: torch's state_dict() refers to the live state
    tensors, so a state dict kept without a copy, loaded after another step, gives the
    current state (not the state at save time)."""
    model = make_model(sizes=(20, 16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train_steps(model, opt, 1, 10)
    kept = opt.state_dict()
    at_save = copy.deepcopy(kept)
    _train_steps(model, opt, 11, 11)
    current = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(kept)
    assert same(copy.deepcopy(opt.state_dict()), current)
    assert not same(current, at_save)


def test_rln_a_state_dict_kept_without_a_copy_loads_as_the_current_state(path):
    """As torch's optimizers: state_dict() at step 10, kept without a copy; one more step; then
    load_state_dict(kept) changes nothing, and training goes on as if it had not been called."""
    model, opt = _rln_run(path)
    twin, twin_opt = _rln_run(path)
    _train_steps(model, opt, 1, 10)
    _train_steps(twin, twin_opt, 1, 10)
    kept = opt.state_dict()
    twin_opt.state_dict()
    _train_steps(model, opt, 11, 11)
    _train_steps(twin, twin_opt, 11, 11)
    current = _weights_and_lambdas(model, opt)
    opt.load_state_dict(kept)
    assert same(_weights_and_lambdas(model, opt), current)
    _train_steps(model, opt, 12, 20)
    _train_steps(twin, twin_opt, 12, 20)
    assert same(_weights_and_lambdas(model, opt), _weights_and_lambdas(twin, twin_opt))


@pytest.mark.parametrize("via", ["torch_save", "deepcopy"])
def test_rln_resumed_run_equals_the_run_that_never_took_a_checkpoint(path, via):
    """Saved after step 30 (weights and optimizer), loaded into a fresh model and optimizer,
    trained to step 60: bit for bit the run that trained 60 steps without ever calling
    state_dict() (the reference of test_resume_from_checkpoint_is_bit_identical calls it too)."""
    reference, reference_opt = _rln_run(path)
    _train_steps(reference, reference_opt, 1, 60)

    model, opt = _rln_run(path)
    _train_steps(model, opt, 1, 30)
    checkpoint = {"model": model.state_dict(), "opt": opt.state_dict()}
    if via == "torch_save":
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
    else:
        checkpoint = copy.deepcopy(checkpoint)
    resumed, resumed_opt = _rln_run(path, seed=7)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    _train_steps(resumed, resumed_opt, 31, 60)
    assert same(_weights_and_lambdas(resumed, resumed_opt), _weights_and_lambdas(reference, reference_opt))
    assert same(resumed_opt.state_dict(), reference_opt.state_dict())
