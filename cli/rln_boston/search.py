"""The RLN experiment's search: train one configuration's repeats and score them, then
search depth, L1 strength and RLN's grid in the protocol's order, once per seed."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..common.progress import Observer
from ..common.stacked import CollapseWatch, steps_per_epoch, train_stacked
from . import model as configuration
from .data import Split, experiment_data
from .protocol import Settings, config_label


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


def run_line(run: Run, seed: int) -> str:
    """The log line of a finished configuration."""
    collapsed = f", {len(run.collapsed)} collapsed" if run.collapsed else ""
    return (
        f"seed {seed}: {config_label(run.config)}: MSE {run.mean:.2f} ({run.std:.2f}), "
        f"as Keras reports {sum(run.keras) / len(run.keras):.2f}{collapsed}, {run.seconds:.0f} s"
    )


class Experiment:
    """One seed's search; reports each configuration to ``observer`` as a phase of training steps."""

    def __init__(self, settings: Settings, observer: Observer | None = None) -> None:
        self.settings = settings
        self.observer = observer or Observer()
        self.data = experiment_data(settings)

    # ------------------------------------------------------------------ one configuration
    def train(self, config: dict[str, Any], data: Split, keep_first_layer: bool = False) -> Run:
        s = self.settings
        x, y, x_eval, y_eval = data
        generator = torch.Generator().manual_seed(s.seed)
        model, optimizer, penalty = configuration.build(
            config, self.data.input_dim, s.repeats, generator, s.device, s.compile
        )
        steps = s.epochs * steps_per_epoch(x.shape[0], s.batch_size)
        self.observer.phase(f"seed {s.seed}: {config_label(config)}", steps)
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
            on_step=self.observer.advance,
            on_epoch=watch,
        )
        with torch.no_grad():
            pred = model(x_eval.expand(s.repeats, -1, -1)).squeeze(-1)
            mse = ((pred - y_eval) ** 2).mean(dim=1)
            keras = mse + configuration.keras_penalty(model, config)
        run = Run(dict(config), [float(v) for v in mse.tolist()], time.perf_counter() - start)
        run.keras = [float(v) for v in keras.tolist()]
        run.collapsed, run.collapse_epochs = watch.at_end()
        if keep_first_layer:
            run.first_layer = model.weights[0].detach().cpu().numpy()
            run.eliminated = configuration.eliminated_inputs(model, optimizer)
        return run

    def _evaluate(self, config: dict[str, Any], result: Result) -> Run:
        run = self.train(config, self.data.search, keep_first_layer=self.settings.protocol == "published")
        result.runs.append(run)
        self.observer.log(run_line(run, self.settings.seed))
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
                final = self.train(run.config, self.data.full, keep_first_layer=True)
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
    observer: Observer | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """The whole protocol once per seed (its noise features, initializations and shuffles).

    Stops at the first interrupted seed; the results of the seeds that finished, and the
    interrupted one's finished configurations, are returned.
    """
    results = []
    for seed in seeds:
        result = Experiment(dataclasses.replace(settings, seed=seed), observer).run()
        results.append(result)
        if on_result is not None:
            on_result(result)
        if result.interrupted:
            break
    return results
