"""A step is all or nothing: a Ctrl-C (a real SIGINT) anywhere inside ``step()``, or a step
that fails before the inner optimizer moves, leaves the weights and every optimizer state as
they were before the step, or as the finished step leaves them; and a failed step can be
retried. (Issue 22.2 and, for coupled RMSLN, 22.7; the property version is in
test_properties.py.)"""

import copy

import pytest
import torch
from helpers import (
    INNER,
    PATHS,
    WRAPPERS,
    batches,
    full_state,
    global_hook_dicts,
    interrupted_at,
    library_lines,
    make_model,
    mse,
    process_state,
    restore_process_state,
    same,
)
from torch.optim.optimizer import register_optimizer_step_post_hook

from torch_rln import RLNOptimizer


def _warm(inner, path, steps=3):
    """A model and its RLN optimizer after ``steps`` steps (the gradient term is live), and the
    gradients of the next step (a deep copy does not copy ``.grad``)."""
    data = batches(steps + 1)
    model = make_model()
    opt = RLNOptimizer(INNER[inner](model.parameters()), avg_reg=-4.0, reg_lr=1e3, **PATHS[path])
    for x, y in data[:steps]:
        opt.zero_grad()
        mse(model, x, y).backward()
        opt.step()
    opt.zero_grad()
    mse(model, *data[steps]).backward()
    return model, opt, [p.grad.clone() for p in model.parameters()]


def _fresh(warm):
    model, opt, grads = warm
    model, opt = copy.deepcopy((model, opt))
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    return model, opt


@pytest.mark.parametrize(("path", "inner"), [("per_tensor", "adam"), ("foreach", "sgd_momentum")], indirect=["path"])
def test_rln_ctrl_c_at_any_line_of_a_step_leaves_it_undone_or_done(inner, path):
    """A SIGINT at each line of torch_rln's code that a step runs, one run per line (not a
    random sample): after the KeyboardInterrupt, the weights, the gradients, the coefficients
    and the whole state dict equal those before the step, or those after an uninterrupted step;
    and the process is as the step found it (grad mode on, torch's global step hooks in place:
    a global hook is registered, so the wrapper's step handles them)."""
    fired = []
    canary = register_optimizer_step_post_hook(lambda o, args, kwargs: fired.append(o))
    dicts, process = global_hook_dicts(), process_state()
    try:
        warm = _warm(inner, path)
        model, opt = _fresh(warm)
        before = full_state(model.parameters(), opt)
        model, opt = _fresh(warm)
        opt.step()
        after = full_state(model.parameters(), opt)
        model, opt = _fresh(warm)
        lines = library_lines(opt.step)
        assert lines > 50  # the tracer sees the library's code
        neither, broken = [], []
        for k in range(1, lines + 1):
            model, opt = _fresh(warm)
            assert interrupted_at(k, opt.step), f"the SIGINT at line event {k} never arrived"
            if process_state() != process:
                broken.append(k)
                restore_process_state(dicts)
            state = full_state(model.parameters(), opt)
            if not (same(state, before) or same(state, after)):
                neither.append(k)
    finally:
        restore_process_state(dicts)
        canary.remove()
    assert (neither, broken) == ([], []), (
        f"of {lines} interrupt points, {len(neither)} left a half-done step (line events {neither[:12]}) and "
        f"{len(broken)} left grad mode or torch's global step hooks changed (line events {broken[:12]})"
    )


def test_rln_ctrl_c_before_the_step_reaches_the_library_changes_nothing():
    """The harness itself: a SIGINT at the first line of torch_rln's code leaves the state as before."""
    warm = _warm("adam", "foreach")
    model, opt = _fresh(warm)
    before, process = full_state(model.parameters(), opt), process_state()
    model, opt = _fresh(warm)
    assert interrupted_at(1, opt.step)
    assert process_state() == process
    assert same(full_state(model.parameters(), opt), before)


@pytest.mark.parametrize("name", ["rln", "rmsln", "rmsln_decoupled", "rmsln_over_rln"])
def test_a_step_whose_inner_optimizer_fails_changes_nothing_and_its_retry_is_exact(name):
    """The inner optimizer's step pre-hook raises once (a transient error): the step changes
    nothing (gradients included: coupled RMSLN puts back the gradients it added its penalty's
    to), and calling step() again gives the uninterrupted result (the penalty added once)."""
    data = batches(6)

    def run(fail_at):
        model = make_model()
        inner = torch.optim.Adam(model.parameters(), lr=1e-2)
        opt = WRAPPERS[name](inner, rmsln={"reg_lambda": 0.5})
        failures = [fail_at]

        def flaky(optimizer, args, kwargs):
            if failures and failures[0] == step:
                failures.pop()
                raise RuntimeError("transient")

        inner.register_step_pre_hook(flaky)
        for step, (x, y) in enumerate(data):
            opt.zero_grad()
            mse(model, x, y).backward()
            if step == fail_at:
                before = full_state(model.parameters(), opt, state_dict=False)
                with pytest.raises(RuntimeError, match="transient"):
                    opt.step()
                assert same(full_state(model.parameters(), opt, state_dict=False), before)
            opt.step()
        return full_state(model.parameters(), opt)

    assert same(run(fail_at=4), run(fail_at=-1))
    assert same(run(fail_at=0), run(fail_at=-1))
