"""What the wrappers cost, side by side with the bare optimizers, in one run.

    python benchmarks/overhead.py [--quick] [--json PATH] [--device cpu|cuda|auto] [--repeats N]

Measures (medians over repeats, after warm-up):

* optimizer step time, bare vs RLNOptimizer (foreach and compiled) vs RMSLNWrapper, for
  SGD+momentum, Adam (foreach and fused), AdamW and RMSprop, on the Boston RLN model (first
  layer regularized), the MNIST-1D MLP and torchvision's ResNet-50 (every weight with
  ndim >= 2 regularized);
* the RLN pass alone on ResNet-50's weights: bytes it must move per element / time, against
  the copy and add bandwidth measured in the same run;
* a callback in the style of the published Keras one (weights to host NumPy every batch,
  updated there, copied back) on the Boston first layer, against our RLN pass;
* a full Boston training step (forward, backward, step) at batch 10, with and without RLN;
* the persistent state the wrappers add per regularized parameter byte;
* on CUDA: no host sync inside step() (``torch.cuda.set_sync_debug_mode("error")``) and
  the step captured in a CUDA graph.

Prints a rich table and writes every figure, the machine and the target ratios (under
``"ratios"``) to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torch_rln import RLNOptimizer, RMSLNWrapper
from torch_rln.rln import _compiled_rln, _multi_tensor_rln

RATIO_KEYS = (
    "rln_adam_fused_resnet50",
    "rln_pass_bandwidth_fraction_resnet50",
    "boston_train_step_rln",
    "speedup_vs_callback_boston",
    "rln_state_bytes_per_param_byte",
)
TARGETS = {
    "rln_adam_fused_resnet50": "<= 2.0",
    "rln_pass_bandwidth_fraction_resnet50": ">= 0.5 (CPU), >= 0.7 (GPU)",
    "boston_train_step_rln": "<= 1.10",
    "speedup_vs_callback_boston": ">= 20",
    "rln_state_bytes_per_param_byte": "<= 2",
}
# Bytes the RLN update moves per float32 element: it reads w', w_prev, lam, r_prev and
# writes W, lam, r_prev (7 x 4). The copy of W taken before the inner step adds 2 x 4.
RLN_UPDATE_BYTES = 7 * 4
RLN_SNAPSHOT_BYTES = 2 * 4


# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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
    "rln": lambda inner, reg: RLNOptimizer(inner, params=reg, avg_reg=-10.0, reg_lr=1e6),
    "rln_compiled": lambda inner, reg: RLNOptimizer(inner, params=reg, avg_reg=-10.0, reg_lr=1e6, compile=True),
    "rmsln": lambda inner, reg: RMSLNWrapper(inner, params=reg, reg_lambda=1e-4),
}


def step_times(set_name: str, inners: list[str], device: torch.device, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per ``step()`` with fixed random gradients, per inner optimizer and variant."""
    build, regularized = PARAM_SETS[set_name]
    torch.manual_seed(0)
    model = build().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [0.01 * torch.randn_like(p) for p in params]
    start = [p.detach().clone() for p in params]
    out: dict[str, dict[str, float]] = {}
    for inner_name in inners:
        out[inner_name] = {}
        for variant, wrap in VARIANTS.items():
            with torch.no_grad():
                for p, s in zip(params, start):
                    p.copy_(s)
            opt = wrap(INNER[inner_name](params), regularized(model))
            for p, g in zip(params, grads):
                p.grad = g
            out[inner_name][variant] = median_time(opt.step, device, repeats, warmup=3)
            del opt
    return out


# ---------------------------------------------------------------------- the RLN pass alone
def rln_pass(device: torch.device, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    weights = [p.detach().clone() for p in resnet50().to(device).parameters() if p.ndim >= 2]
    n = sum(w.numel() for w in weights)
    lams = [torch.full_like(w, -10.0) for w in weights]
    r_prevs = [1e-6 * torch.randn_like(w) for w in weights]
    settings = dict(norm=1, avg_reg=-10.0, reg_lr=1e6, project=True)

    def run(fn):
        fn(weights, lams, r_prevs, **settings)

    results: dict[str, Any] = {"elements": n, "bytes_per_element_update": RLN_UPDATE_BYTES,
                               "bytes_per_element_with_snapshot": RLN_UPDATE_BYTES + RLN_SNAPSHOT_BYTES}
    for name, fn in (("foreach", _multi_tensor_rln), ("compiled", _compiled_rln)):
        seconds = median_time(lambda: run(fn), device, repeats)
        results[f"{name}_seconds"] = seconds
        results[f"{name}_gb_per_s"] = n * (RLN_UPDATE_BYTES + RLN_SNAPSHOT_BYTES) / seconds / 1e9
    a = torch.randn(n, device=device)
    b = torch.randn(n, device=device)
    c = torch.empty(n, device=device)
    copy_s = median_time(lambda: c.copy_(a), device, repeats)
    add_s = median_time(lambda: torch.add(a, b, out=c), device, repeats)
    results["copy_gb_per_s"] = n * 8 / copy_s / 1e9
    results["add_gb_per_s"] = n * 12 / add_s / 1e9
    best = max(results["foreach_gb_per_s"], results["compiled_gb_per_s"])
    results["best_fraction_of_add_bandwidth"] = best / results["add_gb_per_s"]
    return results


# ---------------------------------------------------------------------- the published-style peer
class PublishedStyleCallback:
    """The Keras ``RLNCallback``'s arithmetic on host NumPy arrays, called after every batch.

    Like the original (which keeps pandas DataFrames of the transposed kernel), it copies the
    weights to the host, updates the coefficients there, and copies the weights back.
    """

    def __init__(self, weight: torch.Tensor, norm: int = 1, avg_reg: float = -10.0, learning_rate: float = 1e6):
        self.weight = weight
        self.norm, self.avg_reg, self.lr = norm, avg_reg, learning_rate
        self.lambdas = np.full(tuple(weight.shape[::-1]), float(avg_reg))
        self.prev_weights = self.weights = self.prev_regularization = None

    def on_batch_end(self) -> None:
        self.prev_weights = self.weights
        self.weights = self.weight.detach().cpu().numpy().T.astype(np.float64)
        if self.prev_weights is not None:
            gradients = self.weights - self.prev_weights
            self.lambdas -= self.lr * gradients * self.prev_regularization
            self.lambdas += self.avg_reg - self.lambdas.mean()
        derivative = np.sign(self.weights) if self.norm == 1 else 2 * self.weights
        with np.errstate(divide="ignore", invalid="ignore"):
            cap = np.log(np.abs(self.weights / derivative))
        self.lambdas = np.where(self.lambdas > cap, cap, self.lambdas)  # NaN caps do not cap
        regularization = derivative * np.exp(self.lambdas)
        self.weights = self.weights - regularization
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(self.weights.T))
        self.prev_regularization = regularization


def callback_vs_rln(device: torch.device, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = boston_model().to(device)
    weight = model[0].weight
    callback = PublishedStyleCallback(weight)

    def callback_step():
        with torch.no_grad():
            weight.add_(1e-4 * torch.randn_like(weight))
        callback.on_batch_end()

    callback_s = median_time(callback_step, device, repeats)
    results = {"callback_seconds": callback_s}
    w = weight.detach().clone()
    for name, fn in (("foreach", _multi_tensor_rln), ("compiled", _compiled_rln)):
        lam, r_prev = torch.full_like(w, -10.0), torch.zeros_like(w)

        def ours():
            fn([w], [lam], [r_prev], norm=1, avg_reg=-10.0, reg_lr=1e6, project=True)

        results[f"rln_{name}_seconds"] = median_time(ours, device, repeats)
    return results


# ---------------------------------------------------------------------- a full training step
def boston_train_step(device: torch.device, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(404, 1013, generator=g).to(device)
    y = torch.randn(404, 1, generator=g).to(device)
    results = {}
    for variant in ("bare", "rln", "rln_compiled"):
        torch.manual_seed(0)
        model = boston_model().to(device)
        inner = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        opt = VARIANTS[variant](inner, [model[0].weight])
        batches = iter(range(10**9))

        def train_step():
            start = (next(batches) * 10) % 400
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[start : start + 10]), y[start : start + 10]).backward()
            opt.step()

        results[variant] = median_time(train_step, device, repeats * 10, warmup=5)
    return results


# ---------------------------------------------------------------------- state
def state_bytes(device: torch.device) -> dict[str, float]:
    out = {}
    for name, wrap in (("rln", VARIANTS["rln"]), ("rmsln", VARIANTS["rmsln"])):
        model = mnist1d_model().to(device)
        reg = [p for p in model.parameters() if p.ndim >= 2]
        opt = wrap(torch.optim.SGD(model.parameters(), lr=1e-3), reg)
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
    for name, wrap in (("rln", VARIANTS["rln"]), ("rmsln", VARIANTS["rmsln"])):
        opt = wrap(torch.optim.SGD(model.parameters(), lr=1e-3, foreach=True), reg)
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
            results[f"{name}_cuda_graph"] = True
        except Exception as error:  # noqa: BLE001 - report what failed
            results[f"{name}_cuda_graph"] = f"failed: {type(error).__name__}: {error}"[:300]
    return results


# ---------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    repeats = args.repeats or (3 if args.quick else 7)
    report: dict[str, Any] = {"machine": machine(device), "quick": args.quick, "repeats": repeats,
                              "targets": TARGETS}
    inners_small = list(INNER)
    inners_resnet = ["adam_fused"] if args.quick else list(INNER)
    report["step_seconds"] = {
        "boston": step_times("boston", inners_small, device, repeats),
        "mnist1d": step_times("mnist1d", inners_small, device, repeats),
        "resnet50": step_times("resnet50", inners_resnet, device, repeats),
    }
    report["rln_pass_resnet50"] = rln_pass(device, repeats)
    report["callback_boston"] = callback_vs_rln(device, repeats)
    report["boston_train_step_seconds"] = boston_train_step(device, repeats)
    report["state_bytes_per_param_byte"] = state_bytes(device)
    if device.type == "cuda":
        report["cuda"] = cuda_checks(device)

    resnet = report["step_seconds"]["resnet50"]["adam_fused"]
    train = report["boston_train_step_seconds"]
    callback = report["callback_boston"]
    best_rln = min(callback["rln_foreach_seconds"], callback["rln_compiled_seconds"])
    report["ratios"] = {
        "rln_adam_fused_resnet50": min(resnet["rln"], resnet["rln_compiled"]) / resnet["bare"],
        "rln_pass_bandwidth_fraction_resnet50": report["rln_pass_resnet50"]["best_fraction_of_add_bandwidth"],
        "boston_train_step_rln": min(train["rln"], train["rln_compiled"]) / train["bare"],
        "speedup_vs_callback_boston": callback["callback_seconds"] / best_rln,
        "rln_state_bytes_per_param_byte": report["state_bytes_per_param_byte"]["rln"],
    }
    report["ratio_notes"] = {
        "rln_adam_fused_resnet50": "best of RLNOptimizer(foreach) and RLNOptimizer(compile=True) over the bare step",
        "boston_train_step_rln": "forward+backward+step at batch 10, best RLN path over bare",
        "speedup_vs_callback_boston": "published-style NumPy callback per batch over our RLN pass (best path)",
    }
    return report


def show(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = report["machine"]
    console.print(f"[bold]torch-rln overhead[/] on {m['cpu']} ({m['cores']} threads), {m['device']}, torch {m['torch']}"
                  f"{' (quick)' if report['quick'] else ''}; medians of {report['repeats']} repeats")
    table = Table(title="optimizer step, ms (ratio to bare)")
    for column in ("params", "inner", *VARIANTS):
        table.add_column(column, justify="right")
    for set_name, by_inner in report["step_seconds"].items():
        for inner, times in by_inner.items():
            bare = times["bare"]
            table.add_row(set_name, inner, *[f"{1e3 * times[v]:.2f}" + ("" if v == "bare" else f" ({times[v] / bare:.2f}x)")
                                             for v in VARIANTS])
    console.print(table)
    p = report["rln_pass_resnet50"]
    console.print(f"RLN pass on ResNet-50's {p['elements'] / 1e6:.1f}M regularized weights "
                  f"({p['bytes_per_element_with_snapshot']} B/element): foreach {1e3 * p['foreach_seconds']:.1f} ms "
                  f"({p['foreach_gb_per_s']:.1f} GB/s), compiled {1e3 * p['compiled_seconds']:.1f} ms "
                  f"({p['compiled_gb_per_s']:.1f} GB/s); copy {p['copy_gb_per_s']:.1f} GB/s, add {p['add_gb_per_s']:.1f} GB/s")
    c = report["callback_boston"]
    console.print(f"Boston first layer: published-style callback {1e3 * c['callback_seconds']:.2f} ms per batch; "
                  f"our pass {1e3 * c['rln_foreach_seconds']:.2f} ms (foreach), {1e3 * c['rln_compiled_seconds']:.2f} ms (compiled)")
    t = report["boston_train_step_seconds"]
    console.print(f"Boston training step at batch 10: bare {1e3 * t['bare']:.2f} ms, RLN {1e3 * t['rln']:.2f} ms, "
                  f"RLN compiled {1e3 * t['rln_compiled']:.2f} ms")
    ratios = Table(title="target ratios")
    for column in ("ratio", "measured", "target"):
        ratios.add_column(column)
    for key in RATIO_KEYS:
        ratios.add_row(key, f"{report['ratios'][key]:.3g}", TARGETS[key])
    console.print(ratios)
    if "cuda" in report:
        console.print(f"CUDA checks: {report['cuda']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats, ResNet-50 with fused Adam only")
    parser.add_argument("--json", metavar="PATH", help="write every figure here")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--repeats", type=int, help="timed repeats per figure (default 7, quick 3)")
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
