"""The published RLN experiment: Boston housing + 1000 noise features, RLN vs L1 vs none.

The protocol of the RLN authors' tutorial, reproduced with :class:`torch_rln.RLNOptimizer`:

* data: Boston housing, Keras split (404 / 102), 1000 N(0, 1) noise features appended,
  standardized with the training set's statistics;
* model: a ReLU MLP with geometric widths (:func:`stacked.geometric_widths`), then a
  linear output; Keras' ``glorot_normal`` weights, zero biases; RMSprop with the Keras
  defaults (lr 1e-3, rho 0.9, eps 1e-7); MSE; batch 10; 100 epochs; 10 repeats;
* search: depth 2, 3, ... until the mean gets worse; then L1 on the first layer with
  strength 1e-2, 1e-1, 1, ... until worse; then RLN on the first layer over a
  (Theta, log10 nu) grid, all at the best depth.

Differences from the Keras original, forced by torch or chosen and documented: the
repeats of a configuration train together as one stacked model (identical math, see
:mod:`stacked`); the random streams (initialization, shuffles, noise) are torch's and
NumPy's, not TensorFlow's, so single numbers differ while the distributions match.

``protocol="published"`` picks configurations by their test score, as the tutorial does.
``protocol="holdout"`` picks them on a validation split of the training set and scores
the chosen ones on the test set once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torch_rln import RLNOptimizer

from .data import load_boston_housing, standardize
from .stacked import StackedMLP, geometric_widths, steps_per_epoch, train_stacked

EXPERIMENT = "rln-boston"
REAL_FEATURES = 13

PUBLISHED = {
    "source": "Shavitt & Segal (2018), RLN tutorial notebook (Boston housing + 1000 noise features)",
    "none": {"depth": 4, "mse_mean": 106.84, "mse_std": 10.62},
    "l1": {"depth": 4, "l1": 0.1, "mse_mean": 48.57, "mse_std": 4.31},
    "rln": {"depth": 4, "theta": -10.0, "log10_nu": 6.0, "mse_mean": 21.34, "mse_std": 2.37},
}

DEFAULT_DEPTHS = tuple(range(2, 11))
DEFAULT_L1 = tuple(10.0**k for k in range(-2, 4))
DEFAULT_RLN_GRID = ((-8.0, 6.0), (-10.0, 5.0), (-10.0, 6.0), (-10.0, 7.0), (-12.0, 6.0))


@dataclass
class Settings:
    depths: Sequence[int] = DEFAULT_DEPTHS
    l1_values: Sequence[float] = DEFAULT_L1
    rln_grid: Sequence[tuple[float, float]] = DEFAULT_RLN_GRID
    repeats: int = 10
    epochs: int = 100
    batch_size: int = 10
    noise_features: int = 1000
    seed: int = 0
    protocol: str = "published"
    device: str = "cpu"
    validation_fraction: float = 0.2
    compile: bool = True  # RLNOptimizer(compile=True): the same math, one fused kernel


@dataclass
class Run:
    """One configuration trained ``repeats`` times."""

    config: dict[str, Any]
    scores: list[float]  # per repeat: the selection score (test or validation MSE)
    seconds: float
    first_layer: np.ndarray | None = None  # (R, hidden, inputs), kept for the final models
    test_scores: list[float] | None = None  # holdout protocol: test MSE of the final model

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))

    def as_json(self) -> dict[str, Any]:
        return {**self.config, "mse_mean": self.mean, "mse_std": self.std, "repeats": len(self.scores),
                "mse": self.scores, "seconds": round(self.seconds, 2)}


@dataclass
class Result:
    settings: Settings
    runs: list[Run] = field(default_factory=list)
    best: dict[str, Run] = field(default_factory=dict)
    final: dict[str, Run] = field(default_factory=dict)  # holdout: the best refit and tested
    interrupted: bool = False
    seconds: float = 0.0


def compile_works(device: str) -> bool:
    """Whether ``RLNOptimizer(compile=True)`` runs here (torch.compile needs a C++ compiler on CPU)."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU builds
    try:
        w = torch.nn.Parameter(torch.randn(2, 3, device=device))
        opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), compile=True)
        for _ in range(2):
            w.grad = torch.ones_like(w)
            opt.step()
        return True
    except Exception:  # noqa: BLE001 - any failure means: use the eager path
        return False


def config_label(config: dict[str, Any]) -> str:
    if config["model"] == "none":
        return f"none, depth {config['depth']}"
    if config["model"] == "l1":
        return f"L1 {config['l1']:g}, depth {config['depth']}"
    return f"RLN Theta={config['theta']:g} log10(nu)={config['log10_nu']:g}, depth {config['depth']}"


class Experiment:
    """Runs the search; reports progress through ``on_config(label, steps)`` and ``on_step()``."""

    def __init__(
        self,
        settings: Settings,
        on_config: Callable[[str, int], None] | None = None,
        on_step: Callable[[], None] | None = None,
        on_run: Callable[[Run], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_config = on_config or (lambda label, steps: None)
        self.on_step = on_step
        self.on_run = on_run or (lambda run: None)
        self.device = torch.device(settings.device)
        (x_train, y_train), (x_test, y_test) = load_boston_housing(settings.noise_features, settings.seed)
        if settings.protocol == "holdout":
            n_val = int(round(len(x_train) * settings.validation_fraction))
            order = np.random.default_rng(settings.seed).permutation(len(x_train))
            fit, val = order[n_val:], order[:n_val]
            x_fit, x_val = standardize(x_train[fit], x_train[val])
            self.search_data = (
                self._tensor(x_fit), self._tensor(y_train[fit]), self._tensor(x_val), self._tensor(y_train[val])
            )
        x_train_s, x_test_s = standardize(x_train, x_test)
        self.full_data = (self._tensor(x_train_s), self._tensor(y_train), self._tensor(x_test_s), self._tensor(y_test))
        if settings.protocol == "published":
            self.search_data = self.full_data
        self.input_dim = x_train.shape[1]

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    def steps_per_config(self, n_train: int | None = None) -> int:
        n = self.search_data[0].shape[0] if n_train is None else n_train
        return self.settings.epochs * steps_per_epoch(n, self.settings.batch_size)

    # ------------------------------------------------------------------ one configuration
    def train(self, config: dict[str, Any], data, keep_first_layer: bool = False) -> Run:
        s = self.settings
        x, y, x_eval, y_eval = data
        generator = torch.Generator().manual_seed(s.seed)
        sizes = [self.input_dim, *geometric_widths(self.input_dim, config["depth"]), 1]
        model = StackedMLP(sizes, s.repeats, generator).to(self.device)
        optimizer: torch.optim.Optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        penalty = None
        if config["model"] == "l1":
            first, strength = model.weights[0], config["l1"]
            penalty = lambda: strength * first.abs().sum()  # noqa: E731 - Keras' l1(strength), per repeat, summed
        elif config["model"] == "rln":
            optimizer = RLNOptimizer(
                optimizer, params=[model.weights[0]], norm=1,
                avg_reg=config["theta"], reg_lr=10.0 ** config["log10_nu"], batch_dims=1, compile=s.compile,
            )
        self.on_config(config_label(config), s.epochs * steps_per_epoch(x.shape[0], s.batch_size))
        start = time.perf_counter()
        train_stacked(
            model, optimizer, x, y.unsqueeze(-1),
            epochs=s.epochs, batch_size=s.batch_size, generator=generator,
            loss_fn=lambda pred, target: ((pred - target) ** 2).mean(dim=(1, 2)),
            penalty=penalty, on_step=self.on_step,
        )
        with torch.no_grad():
            pred = model(x_eval.expand(s.repeats, -1, -1)).squeeze(-1)
            scores = ((pred - y_eval) ** 2).mean(dim=1).cpu().tolist()
        first_layer = model.weights[0].detach().cpu().numpy() if keep_first_layer else None
        return Run(dict(config), [float(v) for v in scores], time.perf_counter() - start, first_layer)

    def _evaluate(self, config: dict[str, Any], result: Result) -> Run:
        run = self.train(config, self.search_data, keep_first_layer=self.settings.protocol == "published")
        result.runs.append(run)
        self.on_run(run)
        return run

    def _search(self, name: str, configs, result: Result, until_worse: bool) -> Run:
        """Evaluate ``configs`` in order (with ``until_worse``: until one's mean is worse than
        the best so far); ``result.best[name]`` always holds the best finished run."""
        for config in configs:
            run = self._evaluate(config, result)
            best = result.best.get(name)
            if best is None or run.mean < best.mean:
                result.best[name] = run
            elif until_worse and run.mean > best.mean:
                break
        return result.best[name]

    # ------------------------------------------------------------------ the search
    def run(self) -> Result:
        s = self.settings
        result = Result(s)
        start = time.perf_counter()
        try:
            depth = self._search("none", ({"model": "none", "depth": d} for d in s.depths), result, True).config["depth"]
            self._search("l1", ({"model": "l1", "depth": depth, "l1": v} for v in s.l1_values), result, True)
            rln = ({"model": "rln", "depth": depth, "theta": t, "log10_nu": nu} for t, nu in s.rln_grid)
            self._search("rln", rln, result, False)
            if s.protocol == "holdout":
                for name, run in result.best.items():
                    final = self.train(run.config, self.full_data, keep_first_layer=True)
                    run.test_scores = final.scores
                    run.first_layer = final.first_layer
                    result.final[name] = final
        except KeyboardInterrupt:
            result.interrupted = True
        result.seconds = time.perf_counter() - start
        return result


# ---------------------------------------------------------------------- analysis
def feature_recovery(first_layer: np.ndarray, real: int = REAL_FEATURES) -> dict[str, Any]:
    """Input importance (sum of |first-layer weights| per input) and what it recovers.

    ``first_layer``: ``(R, hidden, inputs)``. Per repeat: how many of the ``real`` real
    features rank among the top ``real`` inputs, and the fraction of first-layer
    weights that are exactly 0.
    """
    importance = np.abs(first_layer).sum(axis=1)  # (R, inputs)
    top = np.argsort(-importance, axis=1, kind="stable")[:, :real]
    real_in_top = (top < real).sum(axis=1)
    zeros = (first_layer == 0).mean(axis=(1, 2))
    return {
        "real_in_top13": real_in_top.tolist(),
        "real_in_top13_mean": float(real_in_top.mean()),
        "zero_fraction": zeros.tolist(),
        "zero_fraction_mean": float(zeros.mean()),
        "importance_mean": importance.mean(axis=0).tolist(),
    }


def verdicts(result: Result) -> list[dict[str, Any]]:
    """The published claims, checked against our best configurations' scores."""
    key = "test_scores" if result.settings.protocol == "holdout" else "scores"
    means = {}
    for name, run in result.best.items():
        scores = getattr(run, key)
        if scores:
            means[name] = float(np.mean(scores))
    out = []
    if {"none", "l1", "rln"} <= set(means):
        holds = means["rln"] < means["l1"] < means["none"]
        out.append({
            "claim": "RLN < L1 < no regularization (test MSE)",
            "holds": bool(holds),
            "ours": f"RLN {means['rln']:.2f}, L1 {means['l1']:.2f}, none {means['none']:.2f}",
        })
    if {"l1", "rln"} <= set(result.best):
        theta = result.best["rln"].config["theta"]
        strength = result.best["l1"].config["l1"]
        ratio = strength / math.exp(theta)
        out.append({
            "claim": "exp(Theta) << best L1 strength (at least 100x smaller)",
            "holds": bool(ratio >= 100),
            "ours": f"exp({theta:g}) = {math.exp(theta):.2e} vs L1 {strength:g} ({ratio:.1e}x)",
        })
    return out


def to_json(result: Result) -> dict[str, Any]:
    s = result.settings
    features = {}
    for name, run in result.best.items():
        if run.first_layer is not None:
            features[name] = feature_recovery(run.first_layer)
    best = {}
    for name, run in result.best.items():
        entry = run.as_json()
        if run.test_scores is not None:
            entry.update(test_mse=run.test_scores, test_mse_mean=float(np.mean(run.test_scores)),
                         test_mse_std=float(np.std(run.test_scores)))
        best[name] = entry
    return {
        "experiment": EXPERIMENT,
        "protocol": s.protocol,
        "selection": "test set (as published)" if s.protocol == "published"
        else f"validation split ({s.validation_fraction:.0%} of the training set); test scored once",
        "settings": {
            "depths": list(s.depths), "l1_values": list(s.l1_values),
            "rln_grid": [list(p) for p in s.rln_grid], "repeats": s.repeats, "epochs": s.epochs,
            "batch_size": s.batch_size, "noise_features": s.noise_features, "seed": s.seed, "device": s.device,
            "compiled_rln": s.compile,
        },
        "runs": [
            {**run.as_json(), "selected": any(run is b for b in result.best.values())} for run in result.runs
        ],
        "best": best,
        "published": PUBLISHED,
        "verdicts": verdicts(result),
        "features": features,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 2),
    }
