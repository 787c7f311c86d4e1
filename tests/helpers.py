"""What the tests share, in one place: the small models and their data, one training step
and loop, the snapshot, the inner optimizers, the wrappers, and the update paths.

Tests import these (``from helpers import ...``); the fixtures built on them (the ``path``
fixture, which skips the compiled path where no compiler works, and ``compiler``) are in
``conftest.py``.
"""

from __future__ import annotations

import torch

from torch_rln import RLNOptimizer, RMSLNWrapper


# ---------------------------------------------------------------- models and data
def make_model(seed=0, dtype=torch.float32, sizes=(12, 16, 1)):
    """Linear, ReLU, Linear: the two weight matrices are what the wrappers regularize."""
    d_in, hidden, d_out = sizes
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))
    return model.to(dtype)


def batches(n, seed=1, dtype=torch.float32, features=12):
    """``n`` batches of 32 rows whose target is the sum of the first three inputs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(32, features, generator=g).to(dtype)
        out.append((x, x[:, :3].sum(1, keepdim=True)))
    return out


def noise_batches(n=4, seed=1, dtype=torch.float32, features=8, targets=4):
    """``n`` batches of 32 rows with random targets (nothing to learn: the penalty shows)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(32, features, generator=gen).to(dtype), torch.randn(32, targets, generator=gen).to(dtype))
        for _ in range(n)
    ]


def weights(model):
    """The weight matrices of a Sequential's Linear layers (what params=None regularizes)."""
    return [m.weight for m in model if isinstance(m, torch.nn.Linear)]


# ---------------------------------------------------------------- training
def mse(model, x, y):
    return ((model(x) - y) ** 2).mean()


def train_step(model, opt, x, y):
    opt.zero_grad()
    loss = mse(model, x, y)
    loss.backward()
    opt.step()
    return loss


def train(model, opt, data, steps=None):
    """``steps`` training steps (one per batch by default), cycling through ``data``."""
    for k in range(len(data) if steps is None else steps):
        train_step(model, opt, *data[k % len(data)])


def train_ranked(model, opt, x, y, steps, rank=None, world=2):
    """Steps ``steps`` of the batches ``x[step]``, ``y[step]``; on a rank, its share of each."""
    for step in steps:
        xs, ys = (x[step], y[step]) if rank is None else (x[step].chunk(world)[rank], y[step].chunk(world)[rank])
        opt.zero_grad()
        ((model(xs) - ys) ** 2).mean().backward()
        opt.step()


# ---------------------------------------------------------------- snapshots
def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def reg_state_of(opt):
    """Every regularizer's state down a stack of wrappers, keyed by (wrapper, tensor, name)."""
    state = {}
    current = opt
    while hasattr(current, "reg_state"):
        for p, entries in current.reg_state.items():
            state.update({(type(current).__name__, id(p), k): v.clone() for k, v in entries.items()})
        current = current.optimizer
    return state


def snapshot(model, opt):
    """The weights and the regularizers' state, copied."""
    return params_of(model), reg_state_of(opt)


def assert_snapshots_equal(before, after):
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True))
    assert before[1].keys() == after[1].keys()
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])


def assert_params_equal(model_a, model_b):
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b), (a - b).abs().max()


def rln_of(opt):
    """The RLNOptimizer in a stack of wrappers, or None."""
    while opt is not None and not isinstance(opt, RLNOptimizer):
        opt = getattr(opt, "optimizer", None)
    return opt


# ---------------------------------------------------------------- inner optimizers
INNER = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-7),
    "lbfgs": lambda ps: torch.optim.LBFGS(ps, lr=0.1, max_iter=4),  # lr 0.5 diverges once RLN moves the weights
}


# ---------------------------------------------------------------- wrappers
RLN_SETTINGS = {"avg_reg": -4.0, "reg_lr": 1e3, "compile": False}
RMSLN_SETTINGS = {"reg_lambda": 1e-2}


def _rln(inner, rln=None, **kw):
    return RLNOptimizer(inner, **{**RLN_SETTINGS, **(rln or {}), **kw})


def _rmsln(inner, rmsln=None, **kw):
    return RMSLNWrapper(inner, **{**RMSLN_SETTINGS, **(rmsln or {}), **kw})


# name -> factory(inner, rln=..., rmsln=..., **kw): ``rln``/``rmsln`` override the settings of
# that layer; the other keywords (params, foreach, compile, ...) go to the outermost wrapper.
WRAPPERS = {
    "rln": lambda inner, rln=None, rmsln=None, **kw: _rln(inner, rln, **kw),
    "rmsln": lambda inner, rln=None, rmsln=None, **kw: _rmsln(inner, rmsln, **kw),
    "rmsln_decoupled": lambda inner, rln=None, rmsln=None, **kw: _rmsln(inner, rmsln, decoupled=True, **kw),
    "rmsln_over_rln": lambda inner, rln=None, rmsln=None, **kw: _rmsln(_rln(inner, rln), rmsln, **kw),
}


# ---------------------------------------------------------------- update paths
# The ``path`` fixture (conftest.py) takes these names and skips "compiled" where no compiler works.
PATHS = {
    "per_tensor": {"foreach": False, "compile": False},
    "foreach": {"foreach": True, "compile": False},
    "compiled": {"compile": True},
}


def train_with_penalty(model, opt, data, steps=None, reg_lambda=0.05, target=1.0):
    """The oracle of coupled RMSLN: the plain optimizer on the loss plus rms_penalty."""
    from torch_rln import rms_penalty

    for k in range(len(data) if steps is None else steps):
        x, y = data[k % len(data)]
        opt.zero_grad()
        (mse(model, x, y) + rms_penalty(weights(model), reg_lambda, target)).backward()
        opt.step()
