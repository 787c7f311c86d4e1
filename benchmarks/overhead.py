"""What the wrappers cost, side by side with the bare optimizers and with a floor, in one run.

    python benchmarks/overhead.py [--quick] [--json PATH] [--device cpu|cuda|auto] [--repeats N]

Measures, as medians over repeats after warm-up (the candidates of one comparison are run
in turn, round after round, so that a slow minute of the machine hits all of them):

* **the floor**: a compiled kernel that does the unavoidable work of an RLN pass and
  nothing else: it reads the weight, the coefficients and the previous shrink, computes
  one ``log`` and one ``exp``, a comparison and two selections per element, and writes
  the three back. Beside it, the floor plus the reduction that the mean projection needs
  before the elementwise part (a dot product of the weight and the shrink). Both on a
  2,359,296-element float32 weight (ResNet-50's largest, 512 x 512 x 3 x 3) and on every
  ResNet-50 weight with ``ndim >= 2`` (25.5M elements in 54 tensors), on the same tensors
  as the RLN pass they are compared with;
* the RLN pass alone (the update that runs after the inner step), on the default path
  (compiled where ``torch.compile`` works) and on the eager foreach path, as ratios to
  the floor; RMSLN's pass against its floor (one norm reduction and one multiply-add pass);
* optimizer step time, bare vs ``RLNOptimizer`` (default and eager) vs ``RMSLNWrapper``,
  for SGD+momentum, Adam (foreach and fused), AdamW and RMSprop, on the Boston RLN model
  (first layer regularized), the MNIST-1D MLP and torchvision's ResNet-50 (every weight
  with ndim >= 2 regularized);
* a callback in the style of the published Keras one (weights to host NumPy every batch,
  updated there, copied back) on the Boston first layer, against our RLN pass;
* a full Boston training step (forward, backward, step) at batch 10, with and without RLN;
* the persistent state the wrappers add per regularized parameter byte;
* **fixed costs** (what surrounds the kernel, which dominates on tabular-sized models):
  ``step()`` on one 8 x 8 weight with SGD, Adam and RMSprop inner, for every path
  (bare, RLN default / foreach / per-tensor, RMSLN coupled / decoupled); 1024 stacked
  copies of it (``batch_dims=1``); the Boston first layer (180 x 1013) alone and as 10
  stacked copies (as ``torch-rln bench rln`` trains it), its pass against the floor with
  sums; a whole training step of a tabular-suite-sized model. Each as microseconds and as
  a ratio to the bare step in the same run;
* on CUDA: no host sync inside step() (``torch.cuda.set_sync_debug_mode("error")``) and
  the step captured in a CUDA graph.

Prints rich tables and writes every figure, the machine and the target ratios (under
``"ratios"``) to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper
from torch_rln.rln import _compiled_rln, _multi_tensor_rln, compiled_kernel_works
from torch_rln.rmsln import _multi_tensor_rmsln
from torch_rln_cli.common.machine import machine

RATIO_KEYS = (
    "rln_pass_vs_floor",
    "rln_pass_vs_floor_resnet50",
    "rln_pass_eager_vs_floor",
    "rln_pass_eager_vs_floor_resnet50",
    "floor_with_sums_vs_floor",
    "rmsln_pass_vs_floor_resnet50",
    "rln_adam_fused_resnet50",
    "rln_pass_bandwidth_fraction_resnet50",
    "boston_train_step_rln",
    "speedup_vs_callback_boston",
    "rln_state_bytes_per_param_byte",
    "rln_pass_vs_floor_with_sums",
    "rln_adam_fused_resnet50_vs_bare_plus_floor_with_sums",
    "rln_step_tiny_sgd",
    "rmsln_step_tiny_sgd",
    "rln_step_1024_copies_tiny_sgd",
    "rln_pass_stacked_boston_vs_floor_with_sums",
    "tabular_train_step_rln",
)
TARGETS = {
    "rln_pass_vs_floor": "<= 1.3",
    "rln_pass_vs_floor_resnet50": "<= 1.3",
    "rln_pass_eager_vs_floor": "<= 5",
    "rln_pass_eager_vs_floor_resnet50": "<= 5",
    "floor_with_sums_vs_floor": "(reference: what the mean's reduction adds to the floor)",
    "rmsln_pass_vs_floor_resnet50": "(reference: RMSLN against one norm and one multiply-add)",
    "rln_adam_fused_resnet50": "<= 2.2 (CPU), <= 2.0 (GPU)",
    "rln_pass_bandwidth_fraction_resnet50": ">= 0.5 (CPU), >= 0.7 (GPU)",
    "boston_train_step_rln": "<= 1.3",
    "speedup_vs_callback_boston": ">= 20",
    "rln_state_bytes_per_param_byte": "<= 2",
    "rln_pass_vs_floor_with_sums": "<= 1.3",
    "rln_adam_fused_resnet50_vs_bare_plus_floor_with_sums": "<= 1.15",
    "rln_step_tiny_sgd": "<= 4",
    "rmsln_step_tiny_sgd": "<= 3",
    "rln_step_1024_copies_tiny_sgd": "<= 4",
    "rln_pass_stacked_boston_vs_floor_with_sums": "<= 1.5",
    "tabular_train_step_rln": "(reference: a whole step of a tabular-suite model with RLN, over bare)",
}
# Bytes an RLN pass must move per float32 element: it reads w', the folded coefficient and
# r_prev, and writes all three (6 x 4).
RLN_PASS_BYTES = 6 * 4
THETA, NU = -10.0, 1e6


# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Median seconds of each function, run in turn for ``repeats`` rounds after ``warmup``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# ---------------------------------------------------------------------- models
def boston_model(depth: int = 4, inputs: int = 1013) -> torch.nn.Sequential:
    widths = [int(round(math.exp(math.log(inputs) * k / depth))) for k in range(depth - 1, 0, -1)]
    layers: list[torch.nn.Module] = []
    prev = inputs
    for w in widths:
        layers += [torch.nn.Linear(prev, w), torch.nn.ReLU()]
        prev = w
    layers.append(torch.nn.Linear(prev, 1))
    return torch.nn.Sequential(*layers)


def mnist1d_model() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(40, 100), torch.nn.ReLU(), torch.nn.Linear(100, 100),
                               torch.nn.ReLU(), torch.nn.Linear(100, 10))


def resnet50() -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet50(weights=None)


PARAM_SETS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[torch.nn.Module], list[torch.Tensor]]]] = {
    "boston": (boston_model, lambda m: [m[0].weight]),
    "mnist1d": (mnist1d_model, lambda m: [p for p in m.parameters() if p.ndim >= 2]),
    "resnet50": (resnet50, lambda m: [p for p in m.parameters() if p.ndim >= 2]),
}

INNER: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
    "adam_foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    "adam_fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-7, foreach=True),
}

VARIANTS: dict[str, Callable[[torch.optim.Optimizer, list[torch.Tensor]], torch.optim.Optimizer]] = {
    "bare": lambda inner, reg: inner,
    "rln": lambda inner, reg: RLNOptimizer(inner, params=reg, avg_reg=THETA, reg_lr=NU),
    "rln_eager": lambda inner, reg: RLNOptimizer(inner, params=reg, avg_reg=THETA, reg_lr=NU, compile=False),
    "rmsln": lambda inner, reg: RMSLNWrapper(inner, params=reg, reg_lambda=1e-4),
}


def step_times(set_name: str, inners: list[str], device: torch.device, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per ``step()`` with fixed random gradients, per inner optimizer and variant."""
    build, regularized = PARAM_SETS[set_name]
    out: dict[str, dict[str, float]] = {}
    for inner_name in inners:
        steps = {}
        for variant, wrap in VARIANTS.items():
            torch.manual_seed(0)
            model = build().to(device)
            params = [p for p in model.parameters() if p.requires_grad]
            for p in params:
                p.grad = 0.01 * torch.randn_like(p)
            steps[variant] = wrap(INNER[inner_name](params), regularized(model)).step
        out[inner_name] = interleaved_medians(steps, device, repeats)
    return out


# ---------------------------------------------------------------------- the floor
def floor_kernel(w: torch.Tensor, lam: torch.Tensor, r_prev: torch.Tensor, nu: float, theta: float) -> None:
    """The unavoidable work of an RLN pass: read the weight and the two state tensors, one
    ``log`` and one ``exp``, a comparison and two selections per element, write all three."""
    cap = torch.log(torch.abs(w))
    e = torch.exp(lam)
    bound = lam >= cap
    new_lam = torch.where(bound, cap, lam)
    shrink = torch.where(bound, w, e)
    w.copy_(w - shrink + nu * r_prev)
    lam.copy_(new_lam + theta)
    r_prev.copy_(shrink)


def floor_with_sums(w: torch.Tensor, lam: torch.Tensor, r_prev: torch.Tensor, nu: float, theta: float) -> None:
    """The floor, after the reduction the mean projection needs first (``sum(w r_prev)``)."""
    total = torch.dot(w.view(-1), r_prev.view(-1))
    floor_kernel(w, lam, r_prev, nu, theta + 0.0 * total)


def _rln_tensors(weights: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator(device=weights[0].device).manual_seed(0)
    return {
        "w": [w.detach().clone() for w in weights],
        "acc": [torch.full_like(w, THETA) for w in weights],
        "r": [1e-6 * torch.randn(w.shape, generator=g, device=w.device) for w in weights],
    }


def pass_vs_floor(weights: list[torch.Tensor], device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds of the floor, the floor with the mean's reduction, and the RLN pass (default
    and eager), each on its own copy of the same tensors."""
    compiled_floor = torch.compile(floor_kernel, dynamic=True, fullgraph=True)
    compiled_sums = torch.compile(floor_with_sums, dynamic=True, fullgraph=True)
    sets = {name: _rln_tensors(weights) for name in ("floor", "floor_with_sums", "rln", "rln_eager")}
    default = _compiled_rln if compiled_kernel_works(device, torch.float32) else _multi_tensor_rln

    def per_tensor(kernel: Callable[..., None], tensors: dict[str, list[torch.Tensor]]) -> Callable[[], None]:
        def run() -> None:
            for w, lam, r in zip(tensors["w"], tensors["acc"], tensors["r"]):
                kernel(w.view(-1), lam.view(-1), r.view(-1), 1e-12, 0.0)
        return run

    def rln(fn: Callable[..., None], tensors: dict[str, list[torch.Tensor]]) -> Callable[[], None]:
        return lambda: fn(tensors["w"], tensors["acc"], tensors["r"], norm=1, avg_reg=THETA, reg_lr=NU, project=True)

    return interleaved_medians({
        "floor": per_tensor(compiled_floor, sets["floor"]),
        "floor_with_sums": per_tensor(compiled_sums, sets["floor_with_sums"]),
        "rln": rln(default, sets["rln"]),
        "rln_eager": rln(_multi_tensor_rln, sets["rln_eager"]),
    }, device, repeats)


def rmsln_vs_floor(weights: list[torch.Tensor], device: torch.device, repeats: int) -> dict[str, float]:
    """RMSLN's pass (coupled: into the gradients) against its floor: one ``_foreach_norm``
    and one ``_foreach_addcmul_`` over the same weights."""
    grads = [torch.zeros_like(w) for w in weights]
    scales = [torch.tensor(1e-9, device=device) for _ in weights]

    def floor() -> None:
        torch._foreach_norm(weights)
        torch._foreach_addcmul_(grads, weights, scales)

    def rmsln() -> None:
        _multi_tensor_rmsln(weights, grads, reg_lambdas=[1e-4] * len(weights), targets=[1.0] * len(weights),
                            alphas=None)

    return interleaved_medians({"floor": floor, "rmsln": rmsln}, device, repeats)


# ---------------------------------------------------------------------- the published-style peer
class PublishedStyleCallback:
    """The Keras ``RLNCallback``'s arithmetic on host NumPy arrays, called after every batch.

    Like the original (which keeps pandas DataFrames of the transposed kernel), it copies the
    weights to the host, updates the coefficients there, and copies the weights back. Also
    like it, the cap is a clip (``lam > cap`` becomes ``cap``) and the shrink is always
    ``d exp(lam)``: where the cap binds this leaves rounding residues of the weight
    (``w - sign(w) exp(log|w|)``, e.g. 3e-35) instead of exact zeros. The library binds
    where ``lam >= cap`` and shrinks by the weight itself there (see ``torch_rln.rln``);
    ``tests/test_benchmarks.py`` holds the two equal to 1e-9 on a run where weights reach 0.
    """

    def __init__(self, weight: torch.Tensor, norm: int = 1, avg_reg: float = THETA, learning_rate: float = NU):
        self.weight = weight
        self.norm, self.avg_reg, self.lr = norm, avg_reg, learning_rate
        self.lambdas = np.full(tuple(weight.shape[::-1]), float(avg_reg))
        self.prev_weights = self.weights = self.prev_regularization = None

    def on_batch_end(self) -> None:
        self.prev_weights = self.weights
        self.weights = self.weight.detach().cpu().numpy().T.astype(np.float64)
        if self.prev_weights is not None and self.prev_regularization is not None:
            gradients = self.weights - self.prev_weights
            self.lambdas -= self.lr * gradients * self.prev_regularization
            self.lambdas += self.avg_reg - self.lambdas.mean()
        derivative = np.sign(self.weights) if self.norm == 1 else 2 * self.weights
        with np.errstate(divide="ignore", invalid="ignore"):
            cap = np.log(np.abs(self.weights / derivative))
        self.lambdas = np.where(self.lambdas > cap, cap, self.lambdas)  # a NaN cap does not clip
        regularization = derivative * np.exp(self.lambdas)
        self.weights = self.weights - regularization
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(self.weights.T))
        self.prev_regularization = regularization


def callback_vs_rln(device: torch.device, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    weight = boston_model().to(device)[0].weight
    callback = PublishedStyleCallback(weight)
    sets = {name: _rln_tensors([weight]) for name in ("rln", "rln_eager")}
    default = _compiled_rln if compiled_kernel_works(device, torch.float32) else _multi_tensor_rln

    def callback_step() -> None:
        with torch.no_grad():
            weight.add_(1e-4 * torch.randn_like(weight))
        callback.on_batch_end()

    def rln(fn: Callable[..., None], tensors: dict[str, list[torch.Tensor]]) -> Callable[[], None]:
        return lambda: fn(tensors["w"], tensors["acc"], tensors["r"], norm=1, avg_reg=THETA, reg_lr=NU, project=True)

    times = interleaved_medians({"callback": callback_step, "rln": rln(default, sets["rln"]),
                                 "rln_eager": rln(_multi_tensor_rln, sets["rln_eager"])}, device, repeats)
    return {"callback_seconds": times["callback"], "rln_seconds": times["rln"], "rln_eager_seconds": times["rln_eager"]}


# ---------------------------------------------------------------------- a full training step
def train_step_times(build: Callable[[], torch.nn.Sequential], inner: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                     rows: int, batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    """A whole training step (forward, backward, step) of ``build()``'s model, bare and with RLN
    on the first layer (default and eager), at ``batch`` rows of random data."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, build()[0].in_features, generator=g).to(device)
    y = torch.randn(rows, 1, generator=g).to(device)
    steps = {}
    for variant in ("bare", "rln", "rln_eager"):
        torch.manual_seed(0)
        model = build().to(device)
        steps[variant] = _train_step(model, VARIANTS[variant](inner(list(model.parameters())), [model[0].weight]),
                                     x, y, batch)
    return interleaved_medians(steps, device, repeats * 10, warmup=10)


def boston_train_step(device: torch.device, repeats: int) -> dict[str, float]:
    """The Boston model at batch 10 with RMSprop, as the tutorial trains it."""
    return train_step_times(boston_model, INNER["rmsprop"], 404, 10, device, repeats)


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch: int = 10) -> Callable[[], None]:
    batches = iter(range(10**9))
    rows = len(x) - len(x) % batch

    def train_step() -> None:
        start = (next(batches) * batch) % rows
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[start : start + batch]), y[start : start + batch]).backward()
        opt.step()

    return train_step


# ---------------------------------------------------------------------- fixed costs
TINY_INNER: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-7),
}

FIXED_VARIANTS: dict[str, Callable[[torch.optim.Optimizer, list[torch.Tensor], int], torch.optim.Optimizer]] = {
    "bare": lambda inner, reg, bd: inner,
    "rln": lambda inner, reg, bd: RLNOptimizer(inner, params=reg, avg_reg=THETA, reg_lr=NU, batch_dims=bd),
    "rln_foreach": lambda inner, reg, bd: RLNOptimizer(
        inner, params=reg, avg_reg=THETA, reg_lr=NU, batch_dims=bd, compile=False
    ),
    "rln_per_tensor": lambda inner, reg, bd: RLNOptimizer(
        inner, params=reg, avg_reg=THETA, reg_lr=NU, batch_dims=bd, compile=False, foreach=False
    ),
    "rmsln": lambda inner, reg, bd: RMSLNWrapper(inner, params=reg, reg_lambda=1e-4),
    "rmsln_decoupled": lambda inner, reg, bd: RMSLNWrapper(inner, params=reg, reg_lambda=1e-4, decoupled=True),
}


def _steps(opt: torch.optim.Optimizer, weight: torch.nn.Parameter, grads: list[torch.Tensor], count: int) -> Callable[[], None]:
    """``count`` steps, each setting ``.grad`` (from a few fixed gradients) and calling ``step()``."""

    def run() -> None:
        for k in range(count):
            weight.grad = grads[k % len(grads)]
            opt.step()

    return run


def fixed_costs(shape: tuple[int, ...], batch_dims: int, inners: list[str], variants: list[str],
                device: torch.device, repeats: int, count: int) -> dict[str, dict[str, float]]:
    """Seconds per ``step()`` on one weight of ``shape``, per inner optimizer and variant
    (medians of ``repeats`` rounds of ``count`` steps)."""
    out: dict[str, dict[str, float]] = {}
    for inner_name in inners:
        runs = {}
        for variant in variants:
            torch.manual_seed(0)
            weight = torch.nn.Parameter(0.1 * torch.randn(shape, device=device))
            grads = [0.01 * torch.randn(shape, device=device) for _ in range(4)]
            opt = FIXED_VARIANTS[variant](TINY_INNER[inner_name]([weight]), [weight], batch_dims)
            runs[variant] = _steps(opt, weight, grads, count)
        out[inner_name] = {k: v / count for k, v in interleaved_medians(runs, device, repeats).items()}
    return out


def tabular_model(inputs: int = 110, depth: int = 3) -> torch.nn.Sequential:
    """An MLP of the tabular suite's size: diabetes with 100 noise inputs, geometric widths."""
    return boston_model(depth, inputs)


def tabular_train_step(device: torch.device, repeats: int) -> dict[str, float]:
    """A tabular-suite-sized model at batch 32 with Adam."""
    return train_step_times(tabular_model, TINY_INNER["adam"], 320, 32, device, repeats)


def stacked_boston(device: torch.device, repeats: int) -> dict[str, Any]:
    """The Boston first layer (180 x 1013) alone and as 10 stacked copies (``batch_dims=1``):
    step times with RMSprop inner, and the stacked pass against its floor with sums."""
    inners = ["rmsprop"]
    variants = ["bare", "rln", "rln_foreach", "rmsln"]
    alone = fixed_costs((180, 1013), 0, inners, variants, device, repeats, 20)
    stacked = fixed_costs((10, 180, 1013), 1, inners, variants, device, repeats, 5)
    torch.manual_seed(0)
    weight = 0.05 * torch.randn(10, 180, 1013, device=device)
    compiled_sums = torch.compile(floor_with_sums, dynamic=True, fullgraph=True)
    sets = {name: _rln_tensors([weight]) for name in ("floor_with_sums", "rln")}
    default = _compiled_rln if compiled_kernel_works(device, torch.float32) else _multi_tensor_rln

    def floor() -> None:
        t = sets["floor_with_sums"]
        compiled_sums(t["w"][0].view(-1), t["acc"][0].view(-1), t["r"][0].view(-1), 1e-12, 0.0)

    def rln() -> None:
        t = sets["rln"]
        default(t["w"], t["acc"], t["r"], norm=1, avg_reg=THETA, reg_lr=NU, project=True, batch_dims=1)

    passes = interleaved_medians({"floor_with_sums": floor, "rln": rln}, device, repeats)
    return {"alone": alone["rmsprop"], "stacked_10": stacked["rmsprop"], "stacked_pass": passes}


# ---------------------------------------------------------------------- state
def state_bytes(device: torch.device) -> dict[str, float]:
    out = {}
    for name in ("rln", "rmsln"):
        model = mnist1d_model().to(device)
        reg = [p for p in model.parameters() if p.ndim >= 2]
        opt = VARIANTS[name](torch.optim.SGD(model.parameters(), lr=1e-3), reg)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        extra = sum(t.numel() * t.element_size() for s in opt.reg_state.values() for t in s.values())
        out[name] = extra / sum(p.numel() * p.element_size() for p in reg)
    return out


# ---------------------------------------------------------------------- CUDA only
def cuda_checks(device: torch.device) -> dict[str, Any]:
    results: dict[str, Any] = {}
    model = mnist1d_model().to(device)
    reg = [p for p in model.parameters() if p.ndim >= 2]
    for name in ("rln", "rln_eager", "rmsln"):
        opt = VARIANTS[name](torch.optim.SGD(model.parameters(), lr=1e-3, foreach=True), reg)
        for p in model.parameters():
            p.grad = 0.01 * torch.randn_like(p)
        opt.step()  # the first step allocates the state
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
            results[f"{name}_no_host_sync"] = True
        except RuntimeError as error:
            results[f"{name}_no_host_sync"] = f"failed: {error}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        results[f"{name}_cuda_graph"] = _captures(opt)
    return results


def _captures(opt: torch.optim.Optimizer) -> bool | str:
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                opt.step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        graph.replay()
        torch.cuda.synchronize()
        return True
    except Exception as error:  # noqa: BLE001 - report what failed
        return f"failed: {type(error).__name__}: {error}"[:300]


# ---------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    repeats = args.repeats or (3 if args.quick else 15)
    report: dict[str, Any] = {"machine": machine(device), "quick": args.quick, "repeats": repeats,
                              "targets": TARGETS, "compiled_kernel": compiled_kernel_works(device, torch.float32)}
    torch.manual_seed(0)
    resnet_weights = [p.detach().to(device) for p in resnet50().parameters() if p.ndim >= 2]
    largest = [max(resnet_weights, key=lambda w: w.numel())]
    report["pass_seconds"] = {
        "tensor_2p36m": pass_vs_floor(largest, device, repeats),
        "resnet50": pass_vs_floor(resnet_weights, device, repeats),
    }
    report["rmsln_pass_seconds_resnet50"] = rmsln_vs_floor(resnet_weights, device, repeats)
    report["elements"] = {"tensor_2p36m": largest[0].numel(), "resnet50": sum(w.numel() for w in resnet_weights)}
    report["step_seconds"] = {
        "boston": step_times("boston", list(INNER), device, repeats),
        "mnist1d": step_times("mnist1d", list(INNER), device, repeats),
        "resnet50": step_times("resnet50", ["adam_fused"] if args.quick else list(INNER), device, repeats),
    }
    report["callback_boston"] = callback_vs_rln(device, repeats)
    report["boston_train_step_seconds"] = boston_train_step(device, repeats)
    report["state_bytes_per_param_byte"] = state_bytes(device)
    count = 50 if args.quick else 400
    report["fixed_step_seconds"] = {
        "tiny_8x8": fixed_costs((8, 8), 0, list(TINY_INNER), list(FIXED_VARIANTS), device, repeats, count),
        "tiny_8x8_1024_copies": fixed_costs((1024, 8, 8), 1, ["sgd"], ["bare", "rln", "rln_foreach", "rmsln"],
                                            device, repeats, max(count // 10, 5)),
    }
    report["boston_layer"] = stacked_boston(device, repeats)
    report["tabular_train_step_seconds"] = tabular_train_step(device, repeats)
    if device.type == "cuda":
        report["cuda"] = cuda_checks(device)
    report["ratios"] = ratios(report)
    return report


def ratios(report: dict[str, Any]) -> dict[str, float]:
    big, net = report["pass_seconds"]["tensor_2p36m"], report["pass_seconds"]["resnet50"]
    resnet = report["step_seconds"]["resnet50"]["adam_fused"]
    train = report["boston_train_step_seconds"]
    rmsln = report["rmsln_pass_seconds_resnet50"]
    tiny, copies = report["fixed_step_seconds"]["tiny_8x8"], report["fixed_step_seconds"]["tiny_8x8_1024_copies"]
    layer, tabular = report["boston_layer"], report["tabular_train_step_seconds"]
    return {
        "rln_pass_vs_floor": big["rln"] / big["floor"],
        "rln_pass_vs_floor_resnet50": net["rln"] / net["floor"],
        "rln_pass_eager_vs_floor": big["rln_eager"] / big["floor"],
        "rln_pass_eager_vs_floor_resnet50": net["rln_eager"] / net["floor"],
        "floor_with_sums_vs_floor": big["floor_with_sums"] / big["floor"],
        "rmsln_pass_vs_floor_resnet50": rmsln["rmsln"] / rmsln["floor"],
        "rln_adam_fused_resnet50": resnet["rln"] / resnet["bare"],
        "rln_pass_bandwidth_fraction_resnet50": _bandwidth_fraction(report),
        "boston_train_step_rln": train["rln"] / train["bare"],
        "speedup_vs_callback_boston": report["callback_boston"]["callback_seconds"] / report["callback_boston"]["rln_seconds"],
        "rln_state_bytes_per_param_byte": report["state_bytes_per_param_byte"]["rln"],
        "rln_pass_vs_floor_with_sums": big["rln"] / big["floor_with_sums"],
        "rln_adam_fused_resnet50_vs_bare_plus_floor_with_sums": resnet["rln"] / (resnet["bare"] + net["floor_with_sums"]),
        "rln_step_tiny_sgd": tiny["sgd"]["rln"] / tiny["sgd"]["bare"],
        "rmsln_step_tiny_sgd": tiny["sgd"]["rmsln"] / tiny["sgd"]["bare"],
        "rln_step_1024_copies_tiny_sgd": copies["sgd"]["rln"] / copies["sgd"]["bare"],
        "rln_pass_stacked_boston_vs_floor_with_sums": layer["stacked_pass"]["rln"] / layer["stacked_pass"]["floor_with_sums"],
        "tabular_train_step_rln": tabular["rln"] / tabular["bare"],
    }


def _bandwidth_fraction(report: dict[str, Any]) -> float:
    """The default pass's bytes per second over those of an elementwise add (one read, one
    read, one write) measured on the same number of elements."""
    n = report["elements"]["resnet50"]
    if "add_seconds" not in report:
        device = torch.device(report["machine"]["device"])
        a, b, c = (torch.randn(n, device=device) for _ in range(3))
        report["add_seconds"] = interleaved_medians({"add": lambda: torch.add(a, b, out=c)}, device,
                                                    report["repeats"])["add"]
    pass_rate = n * RLN_PASS_BYTES / report["pass_seconds"]["resnet50"]["rln"]
    add_rate = n * 12 / report["add_seconds"]
    return pass_rate / add_rate


def show(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = report["machine"]
    console.print(f"[bold]torch-rln overhead[/] on {m['cpu']} ({m['cores']} threads), {m['device']}, torch {m['torch']}"
                  f"{' (quick)' if report['quick'] else ''}; medians of {report['repeats']} rounds; "
                  f"compiled kernel: {report['compiled_kernel']}")
    passes = Table(title="RLN pass against the floor, ms (ratio to the floor)")
    for column in ("weights", "floor", "floor + sums", "RLN (default)", "RLN (eager)"):
        passes.add_column(column, justify="right")
    for name, times in report["pass_seconds"].items():
        floor = times["floor"]
        passes.add_row(f"{name} ({report['elements'][name] / 1e6:.2f}M)", *[
            f"{1e3 * times[k]:.2f} ({times[k] / floor:.2f}x)" for k in ("floor", "floor_with_sums", "rln", "rln_eager")])
    console.print(passes)
    steps = Table(title="optimizer step, ms (ratio to bare)")
    for column in ("params", "inner", *VARIANTS):
        steps.add_column(column, justify="right")
    for set_name, by_inner in report["step_seconds"].items():
        for inner, times in by_inner.items():
            bare = times["bare"]
            steps.add_row(set_name, inner, *[f"{1e3 * times[v]:.2f}" + ("" if v == "bare" else f" ({times[v] / bare:.2f}x)")
                                             for v in VARIANTS])
    console.print(steps)
    fixed = Table(title="fixed cost of step(): microseconds per step (ratio to bare; the rest, over bare, in us)")
    for column in ("weight", "inner", *FIXED_VARIANTS):
        fixed.add_column(column, justify="right")
    rows = [(name, inner, times) for name, by_inner in report["fixed_step_seconds"].items()
            for inner, times in by_inner.items()]
    rows += [(f"boston {name}", "rmsprop", report["boston_layer"][name]) for name in ("alone", "stacked_10")]
    for name, inner, times in rows:
        bare = times["bare"]
        fixed.add_row(name, inner, *[
            "" if v not in times else f"{1e6 * times[v]:.1f}" + ("" if v == "bare" else
                                                                f" ({times[v] / bare:.1f}x, +{1e6 * (times[v] - bare):.1f})")
            for v in FIXED_VARIANTS])
    console.print(fixed)
    c, t = report["callback_boston"], report["boston_train_step_seconds"]
    console.print(f"Boston first layer: published-style callback {1e3 * c['callback_seconds']:.2f} ms per batch; "
                  f"our pass {1e3 * c['rln_seconds']:.2f} ms (default), {1e3 * c['rln_eager_seconds']:.2f} ms (eager)")
    console.print(f"Boston training step at batch 10: bare {1e3 * t['bare']:.2f} ms, RLN {1e3 * t['rln']:.2f} ms, "
                  f"RLN eager {1e3 * t['rln_eager']:.2f} ms")
    table = Table(title="target ratios")
    for column in ("ratio", "measured", "target"):
        table.add_column(column)
    for key in RATIO_KEYS:
        table.add_row(key, f"{report['ratios'][key]:.3g}", TARGETS[key])
    console.print(table)
    if "cuda" in report:
        console.print(f"CUDA checks: {report['cuda']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds, ResNet-50 with fused Adam only")
    parser.add_argument("--json", metavar="PATH", help="write every figure here")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--repeats", type=int, help="timed rounds per comparison (default 15, quick 3)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected a positive integer")
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    show(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
