"""torch.distributed.checkpoint's get/set_optimizer_state_dict in one process, for every
wrapper. (Across processes, with FSDP2 and tensor parallelism: test_fsdp.py.)"""

import copy

import pytest
import torch
from helpers import WRAPPERS, batches, make_model, rln_of, train_step
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)


def checkpointed_run(name, make_inner, rln):
    """Ten steps, the optimizer saved through torch.distributed.checkpoint after five; a
    fresh model holding the weights of step 5 with a fresh optimizer to resume in, and a
    function that resumes it and checks that it ends exactly where the first run did."""
    data = batches(10)
    model = make_model()
    opt = WRAPPERS[name](make_inner(model.parameters()), rln=rln)
    for x, y in data[:5]:
        train_step(model, opt, x, y)
    saved = copy.deepcopy(get_optimizer_state_dict(model, opt))
    weights = [p.detach().clone() for p in model.parameters()]
    for x, y in data[5:]:
        train_step(model, opt, x, y)

    resumed = make_model(seed=7)
    with torch.no_grad():
        for p, w in zip(resumed.parameters(), weights, strict=False):
            p.copy_(w)
    resumed_opt = WRAPPERS[name](make_inner(resumed.parameters()), rln=rln)

    def resume_and_compare():
        for x, y in data[5:]:
            train_step(resumed, resumed_opt, x, y)
        for a, b in zip(model.parameters(), resumed.parameters(), strict=False):
            assert torch.equal(a, b)
        if rln_of(opt) is not None:
            assert (model[0].weight == 0).any()  # RLN is at work

    return model, opt, saved, resumed, resumed_opt, resume_and_compare


def test_distributed_checkpoint_functions_round_trip_in_one_process(wrapper_name):
    """get/set_optimizer_state_dict key the state by parameter name and keep only "state"
    and "param_groups": the RLN tensors come back, the settings stay the wrapper's own, and
    training resumes bit-identically."""
    model, opt, saved, resumed, resumed_opt, resume_and_compare = checkpointed_run(
        wrapper_name, lambda ps: torch.optim.Adam(ps, lr=1e-2), {"avg_reg": -5.0, "reg_lr": 1e4, "compile": None}
    )
    assert set(saved) == {"state", "param_groups"}
    if rln_of(opt) is not None:
        assert "rln_lam" in saved["state"]["0.weight"]
    set_optimizer_state_dict(resumed, resumed_opt, saved)
    resume_and_compare()

    flat = get_optimizer_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))
    if rln_of(opt) is None:
        # RMSLN keeps no state of its own: the flattened layout loses nothing of it, and loads.
        set_optimizer_state_dict(
            resumed, resumed_opt, flat, options=StateDictOptions(flatten_optimizer_state_dict=True)
        )
        return
    # RLN's state would be lost: refused, with a message that names the option.
    with pytest.raises(ValueError, match="flatten_optimizer_state_dict=True"):
        set_optimizer_state_dict(
            resumed, resumed_opt, flat, options=StateDictOptions(flatten_optimizer_state_dict=True)
        )


def test_distributed_checkpoint_of_a_stateless_inner_optimizer_loads_with_strict_false():
    """Over plain SGD only RLN's regularized weights have state: torch.distributed.checkpoint's
    strict load refuses that (as the README says), and strict=False resumes exactly."""
    _, _, saved, resumed, resumed_opt, resume_and_compare = checkpointed_run(
        "rln", lambda ps: torch.optim.SGD(ps, lr=0.05), {"avg_reg": -4.0, "reg_lr": 1e3, "compile": None}
    )
    with pytest.raises(RuntimeError, match=r"Missing optimizer state for parameter '0\.bias'"):
        set_optimizer_state_dict(resumed, resumed_opt, saved)
    set_optimizer_state_dict(resumed, resumed_opt, saved, options=StateDictOptions(strict=False))
    resume_and_compare()
