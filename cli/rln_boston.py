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

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torch_rln import RLNOptimizer

from .data import load_boston_housing, standardize
from .stacked import StackedMLP, collapsed, geometric_widths, steps_per_epoch, train_stacked

EXPERIMENT = "rln-boston"
REAL_FEATURES = 13
MODELS = ("none", "l1", "rln")
MODEL_NAMES = {"none": "none", "l1": "L1", "rln": "RLN"}  # as tables and figures print them

PUBLISHED: dict[str, Any] = {
    "source": "Shavitt & Segal (2018), RLN tutorial notebook (Boston housing + 1000 noise features)",
    "none": {"depth": 4, "mse_mean": 106.84, "mse_std": 10.62},
    "l1": {"depth": 4, "l1": 0.1, "mse_mean": 48.57, "mse_std": 4.31},
    "rln": {"depth": 4, "theta": -10.0, "log10_nu": 6.0, "mse_mean": 21.34, "mse_std": 2.37},
    "quantity": "the loss Keras' evaluate() reported: test MSE, plus 0.1 sum|W1| for L1",
}

DEFAULT_DEPTHS = tuple(range(2, 11))
DEFAULT_L1 = tuple(10.0**k for k in range(-2, 4))
DEFAULT_RLN_GRID = ((-8.0, 6.0), (-10.0, 5.0), (-10.0, 6.0), (-10.0, 7.0), (-12.0, 6.0))

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x, y to fit; x, y to score


def collapse_check_epochs(epochs: int) -> list[int]:
    """The epochs (1-based) after which collapse is looked for: 1, 2, 4, 8, ... and the last.

    One check is a forward pass over the training set, about as costly as a few dozen
    steps; checking every epoch would add a tenth to the run, these few add under 1%.
    """
    checks = [e for e in (2**k for k in range(epochs.bit_length())) if e < epochs]
    return [*checks, epochs]


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
    exclude_collapsed: bool = False  # the search uses the mean over repeats that did not collapse


@dataclass
class Scores:
    """One configuration's scores on one split, per repeat."""

    mse: list[float]
    keras: list[float]  # what Keras' evaluate() reports: MSE + the model's regularization penalty


@dataclass
class Run:
    """One configuration trained ``repeats`` times."""

    config: dict[str, Any]
    scores: list[float]  # per repeat: the selection score (test or validation MSE)
    seconds: float
    first_layer: np.ndarray | None = None  # (R, hidden, inputs), kept for the final models
    test_scores: list[float] | None = None  # holdout protocol: test MSE of the final model
    keras: list[float] = field(default_factory=list)  # per repeat: scores + the L1 penalty (Keras' figure)
    test_keras: list[float] | None = None  # holdout protocol: the final model's Keras figure on the test set
    collapsed: list[int] = field(default_factory=list)  # indices of the repeats that collapsed
    collapse_epochs: list[int] = field(default_factory=list)  # for each: the first check epoch that saw it
    eliminated: np.ndarray | None = None  # (R, inputs) bool: inputs whose first-layer column is all 0

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))

    @property
    def median(self) -> float:
        return float(np.median(self.scores))

    @property
    def mean_alive(self) -> float:
        """The mean over repeats that did not collapse (NaN if all did)."""
        alive = [v for i, v in enumerate(self.scores) if i not in self.collapsed]
        return float(np.mean(alive)) if alive else math.nan

    def selection_score(self, exclude_collapsed: bool) -> float:
        """What the search compares: the protocol's mean, or the mean over live repeats."""
        if not exclude_collapsed:
            return self.mean
        return math.inf if math.isnan(self.mean_alive) else self.mean_alive

    def as_json(self) -> dict[str, Any]:
        return {
            **self.config,
            "mse_mean": self.mean,
            "mse_std": self.std,
            "repeats": len(self.scores),
            "mse": self.scores,
            "seconds": round(self.seconds, 2),
            "keras_loss": self.keras,
            "keras_loss_mean": float(np.mean(self.keras)),
            "keras_loss_std": float(np.std(self.keras)),
            "collapsed": self.collapsed,
            "collapse_epochs": self.collapse_epochs,
            "mse_median": self.median,
            "mse_mean_alive": None if math.isnan(self.mean_alive) else self.mean_alive,
        }


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


def matches(config: dict[str, Any], published: dict[str, Any]) -> bool:
    """Whether ``config`` is the published configuration ``published`` (its non-score keys)."""
    return all(config.get(k) == v for k, v in published.items() if k not in ("mse_mean", "mse_std"))


def keras_penalty(model: StackedMLP, config: dict[str, Any]) -> torch.Tensor:
    """The regularization loss Keras adds to ``evaluate()``, per repeat: ``l1 * sum|W1|``
    for L1 (``keras.regularizers.l1``), 0 for none and RLN (its callback adds no loss)."""
    w = model.weights[0].detach()
    if config["model"] == "l1":
        penalty: torch.Tensor = config["l1"] * w.abs().sum(dim=(1, 2))
        return penalty
    return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)


def eliminated_inputs(model: StackedMLP, optimizer: torch.optim.Optimizer) -> np.ndarray:
    """``(R, inputs)`` bool: the inputs whose whole first-layer column is exactly 0. RLN's
    own statistics (``RLNOptimizer.stats``) where it ran, the same test on the weights otherwise."""
    if isinstance(optimizer, RLNOptimizer):
        mask = optimizer.stats({"W1": model.weights[0]})["W1"].eliminated_mask
        assert mask is not None  # a weight (out, in) per repeat always has one
    else:
        mask = (model.weights[0].detach() == 0).all(dim=1)
    out: np.ndarray = mask.cpu().numpy()
    return out


class CollapseWatch:
    """Looks for collapsed repeats after the epochs of :func:`collapse_check_epochs` and keeps
    the first epoch at which each repeat was seen collapsed."""

    def __init__(self, model: StackedMLP, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        self.model, self.x, self.target_std = model, x, float(y.std())
        self.checks = set(collapse_check_epochs(epochs))
        self.first_seen: dict[int, int] = {}

    def __call__(self, epoch: int) -> None:
        if epoch + 1 in self.checks:
            for r in torch.nonzero(collapsed(self.model, self.x, self.target_std)).flatten().tolist():
                self.first_seen.setdefault(int(r), epoch + 1)

    def at_end(self) -> tuple[list[int], list[int]]:
        """The repeats collapsed at the end of training, and the first epoch each was seen."""
        now = torch.nonzero(collapsed(self.model, self.x, self.target_std)).flatten().tolist()
        return [int(r) for r in now], [self.first_seen.get(int(r), -1) for r in now]


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
        x_train_s, x_test_s = standardize(x_train, x_test)
        self.full_data = (self._tensor(x_train_s), self._tensor(y_train), self._tensor(x_test_s), self._tensor(y_test))
        self.search_data = self.full_data if settings.protocol == "published" else self._holdout(x_train, y_train)
        self.input_dim = x_train.shape[1]

    def _holdout(self, x_train: np.ndarray, y_train: np.ndarray) -> Data:
        """The search's data under the holdout protocol: a validation split of the training set."""
        s = self.settings
        n_val = round(len(x_train) * s.validation_fraction)
        order = np.random.default_rng(s.seed).permutation(len(x_train))
        fit, val = order[n_val:], order[:n_val]
        x_fit, x_val = standardize(x_train[fit], x_train[val])
        return self._tensor(x_fit), self._tensor(y_train[fit]), self._tensor(x_val), self._tensor(y_train[val])

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    # ------------------------------------------------------------------ one configuration
    def _model_and_optimizer(
        self, config: dict[str, Any], generator: torch.Generator
    ) -> tuple[StackedMLP, torch.optim.Optimizer, Callable[[], torch.Tensor] | None]:
        """The stacked model, its optimizer and the training penalty (L1) of ``config``."""
        s = self.settings
        sizes = [self.input_dim, *geometric_widths(self.input_dim, config["depth"]), 1]
        model = StackedMLP(sizes, s.repeats, generator).to(self.device)
        optimizer: torch.optim.Optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        if config["model"] == "l1":
            first, strength = model.weights[0], config["l1"]
            return model, optimizer, lambda: strength * first.abs().sum()  # Keras' l1(strength), per repeat, summed
        if config["model"] == "rln":
            optimizer = RLNOptimizer(
                optimizer,
                params=[model.weights[0]],
                norm=1,
                avg_reg=config["theta"],
                reg_lr=10.0 ** config["log10_nu"],
                batch_dims=1,
                compile=s.compile,
            )
        return model, optimizer, None

    def train(self, config: dict[str, Any], data: Data, keep_first_layer: bool = False) -> Run:
        s = self.settings
        x, y, x_eval, y_eval = data
        generator = torch.Generator().manual_seed(s.seed)
        model, optimizer, penalty = self._model_and_optimizer(config, generator)
        self.on_config(config_label(config), s.epochs * steps_per_epoch(x.shape[0], s.batch_size))
        start = time.perf_counter()
        watch = CollapseWatch(model, x, y, s.epochs)
        train_stacked(
            model,
            optimizer,
            x,
            y.unsqueeze(-1),
            epochs=s.epochs,
            batch_size=s.batch_size,
            generator=generator,
            loss_fn=lambda pred, target: ((pred - target) ** 2).mean(dim=(1, 2)),
            penalty=penalty,
            on_step=self.on_step,
            on_epoch=watch,
        )
        with torch.no_grad():
            pred = model(x_eval.expand(s.repeats, -1, -1)).squeeze(-1)
            mse = ((pred - y_eval) ** 2).mean(dim=1)
            keras = mse + keras_penalty(model, config)
        run = Run(dict(config), [float(v) for v in mse.tolist()], time.perf_counter() - start)
        run.keras = [float(v) for v in keras.tolist()]
        run.collapsed, run.collapse_epochs = watch.at_end()
        if keep_first_layer:
            run.first_layer = model.weights[0].detach().cpu().numpy()
            run.eliminated = eliminated_inputs(model, optimizer)
        return run

    def _evaluate(self, config: dict[str, Any], result: Result) -> Run:
        run = self.train(config, self.search_data, keep_first_layer=self.settings.protocol == "published")
        result.runs.append(run)
        self.on_run(run)
        return run

    def _search(self, name: str, configs: Iterable[dict[str, Any]], result: Result, until_worse: bool) -> Run:
        """Evaluate ``configs`` in order (with ``until_worse``: until one's selection score is
        worse than the best so far); ``result.best[name]`` always holds the best finished run."""
        exclude = self.settings.exclude_collapsed
        for config in configs:
            run = self._evaluate(config, result)
            best = result.best.get(name)
            if best is None or run.selection_score(exclude) < best.selection_score(exclude):
                result.best[name] = run
            elif until_worse and run.selection_score(exclude) > best.selection_score(exclude):
                break
        return result.best[name]

    # ------------------------------------------------------------------ the search
    def _protocol(self, result: Result) -> None:
        s = self.settings
        depth = self._search("none", ({"model": "none", "depth": d} for d in s.depths), result, True).config["depth"]
        self._search("l1", ({"model": "l1", "depth": depth, "l1": v} for v in s.l1_values), result, True)
        rln = ({"model": "rln", "depth": depth, "theta": t, "log10_nu": nu} for t, nu in s.rln_grid)
        self._search("rln", rln, result, False)
        if s.protocol == "holdout":
            for name, run in result.best.items():
                final = self.train(run.config, self.full_data, keep_first_layer=True)
                run.test_scores, run.test_keras = final.scores, final.keras
                run.first_layer, run.eliminated = final.first_layer, final.eliminated
                result.final[name] = final

    def run(self) -> Result:
        result = Result(self.settings)
        start = time.perf_counter()
        try:
            self._protocol(result)
        except KeyboardInterrupt:
            result.interrupted = True
        result.seconds = time.perf_counter() - start
        return result


def run_seeds(
    settings: Settings,
    seeds: Sequence[int],
    make_experiment: Callable[[Settings], Experiment],
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """The whole protocol once per seed (its noise features, initializations and shuffles).

    Stops at the first interrupted seed; the results of the seeds that finished, and the
    interrupted one's finished configurations, are returned.
    """
    results = []
    for seed in seeds:
        result = make_experiment(dataclasses.replace(settings, seed=seed)).run()
        results.append(result)
        if on_result is not None:
            on_result(result)
        if result.interrupted:
            break
    return results
