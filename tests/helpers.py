"""What the tests share, in one place: the small models and their data, one training step
and loop, the snapshot, the inner optimizers, the wrappers, and the update paths; the
command run in this process or as a worker process; a small CSV file for the tabular
experiment; the PostgreSQL server's programs.

Tests import these (``from helpers import ...``); the fixtures built on them (the ``path``
fixture, which skips the compiled path where no compiler works, and ``compiler``) are in
``conftest.py``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys

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
def compiler_works():
    """Whether torch.compile works on this machine (RLN's float32 kernel, probed once per process)."""
    import warnings

    import torch_rln.rln as rln_module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # compiled_kernel_works warns once where it fails
        return rln_module.compiled_kernel_works(torch.device("cpu"), torch.float32)


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


# ---------------------------------------------------------------- comparing whole states
def same(a, b):
    """Whether two nested structures (dicts, lists, tuples, tensors, numbers) are equal, tensors
    to the bit (same dtype, shape and values, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
            return False
        return a.device.type == "meta" or bool(torch.equal(a, b) or ((a == b) | (a.isnan() & b.isnan())).all())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def lambdas_of(opt):
    """The coefficients of every tensor the RLNOptimizer in a stack regularizes (public: ``lambdas``)."""
    rln = rln_of(opt)
    return [] if rln is None else [rln.lambdas(p) for p in rln.regularized_params()]


def full_state(params, opt, state_dict=True):
    """Everything a step may change, copied through public API: the weights, their gradients,
    the RLN coefficients, ``optimizer.state`` per parameter and (``state_dict``) the whole
    state dict (inner state, every regularizer's state and settings). ``state_dict()`` is
    called: take it last, or on runs that all call it alike."""
    import copy

    params = list(params)
    state = {
        "weights": [p.detach().clone() for p in params],
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in params],
        "lambdas": lambdas_of(opt),
        "state": [copy.deepcopy(dict(opt.state.get(p, {}))) for p in params],
    }
    if state_dict:
        state["state_dict"] = copy.deepcopy(opt.state_dict())
    return state


# ---------------------------------------------------------------- interrupts
def _in_library(filename):
    import os

    import torch_rln

    return filename.startswith(os.path.dirname(torch_rln.__file__) + os.sep)


def library_lines(fn):
    """The number of lines of torch_rln's own code that ``fn()`` executes (trace line events)."""
    import sys

    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame, event, arg):
        return local if _in_library(frame.f_code.co_filename) else None

    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def interrupted_at(k, fn):
    """Run ``fn()`` and deliver a real SIGINT (``signal.raise_signal``) at the ``k``-th line of
    torch_rln's own code that it executes, as a Ctrl-C in a terminal or a notebook's
    interrupt would. Returns whether ``fn`` ended with KeyboardInterrupt (it is caught).
    See :func:`process_state` for what an interrupt may leave behind in the process."""
    import signal
    import sys

    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count == k:
                sys.settrace(None)
                signal.raise_signal(signal.SIGINT)
        return local

    def calls(frame, event, arg):
        return local if _in_library(frame.f_code.co_filename) else None

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.settrace(calls)
        try:
            fn()
        finally:
            sys.settrace(None)
    except KeyboardInterrupt:
        return True
    finally:
        signal.signal(signal.SIGINT, previous)
    return False


def process_state():
    """The process-wide state a step must leave as it found it, even when interrupted: grad
    mode and torch's global step-hook dicts (identity and content). (The dicts are private
    torch names, read here only.)"""
    import torch.optim.optimizer as torch_optimizer

    pre, post = torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks
    return torch.is_grad_enabled(), id(pre), id(post), list(pre), list(post)


def restore_process_state(saved_dicts):
    """Put grad mode back on and torch's global step-hook dicts back to ``saved_dicts`` (the
    objects themselves), so that one broken run does not break the tests that follow."""
    import torch.optim.optimizer as torch_optimizer

    torch.set_grad_enabled(True)
    torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks = saved_dicts


def global_hook_dicts():
    import torch.optim.optimizer as torch_optimizer

    return torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks


# ---------------------------------------------------------------- devices
def optimizer_to_device(optimizer, device):
    """Lightning's ``lightning_fabric.utilities.optimizer._optimizer_to_device`` (2.x), as it
    moves the state of an optimizer between devices: each tensor of ``optimizer.state``
    except ``step`` (copied here, the original being private to Lightning)."""
    for entry in optimizer.state.values():
        for key, value in entry.items():
            if key != "step" and isinstance(value, torch.Tensor):
                entry[key] = value.to(device)


def module_to(module, device):
    """``module.to(device)`` keeping the parameter objects (torch's swap_tensors mode), so the
    optimizer's references stay valid, as they do for a CPU -> CUDA move."""
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        module.to(device)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


# ---------------------------------------------------------------- the torch-rln command
def run_cli(argv, capsys):
    """``torch-rln ARGV`` in this process: its exit status and everything it printed."""
    from torch_rln_cli import main as cli_main

    code = cli_main.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def tiny_model(repeats=2, sizes=(3, 4, 2, 1)):
    """A stacked MLP of the command (``repeats`` copies of ``sizes``), seeded."""
    from torch_rln_cli.common.stacked import StackedMLP

    return StackedMLP(list(sizes), repeats, torch.Generator().manual_seed(0))


def cli_process(argv):
    """``python -m torch_rln_cli ARGV`` as a worker process of its own (one thread), its
    output in one pipe; end it with :func:`finish`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch_rln_cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )


def finish(process, timeout=240):
    """Wait for a :func:`cli_process` (killed after ``timeout`` seconds): its status and output."""
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out.decode(errors="replace")


def tabular_csv(path, rows=60):
    """A small regression CSV at ``path``: two numeric inputs ``a`` and ``b``, a text column
    ``color`` (one-hot encoded), a constant column ``const`` (dropped) and the target
    ``y = 2 a + [color is red] + noise``."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = ["a,b,color,const,y"]
    for i in range(rows):
        a, b = rng.normal(), rng.normal()
        color = ["red", "green", "blue"][i % 3]
        lines.append(f"{a:.4f},{b:.4f},{color},7,{2 * a + (color == 'red') + 0.1 * rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- a PostgreSQL server (conftest's postgres_url)
def pg_bin(name):
    """The path of a PostgreSQL server program, on PATH or in Debian's versioned folders."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
