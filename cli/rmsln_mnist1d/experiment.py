"""The RMSLN experiment's run: tune both models (or resume their studies), then train each
best setting once per final seed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..common.progress import Observer
from . import training, tuning
from .data import Data
from .protocol import MODELS, Settings


@dataclass
class FinalRun:
    params: dict[str, float]
    seed: int
    val_loss: list[float]
    val_acc: list[float]
    test_loss: float | None = None
    test_acc: float | None = None


@dataclass
class Result:
    settings: Settings
    best_params: dict[str, dict[str, float]] = field(default_factory=dict)
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    finals: dict[str, list[FinalRun]] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0


class Experiment:
    """Tunes and trains both models; reports each study and each model's final runs to
    ``observer`` as a phase of epochs."""

    def __init__(self, settings: Settings, storage_url: str, observer: Observer | None = None) -> None:
        self.settings = settings
        self.storage_url = storage_url
        self.observer = observer or Observer()
        self.data = Data(settings.protocol, settings.validation_size, settings.seed, settings.device)
        self.batch_size = settings.batch(len(self.data.train[0]))

    def tune(self, model_name: str, result: Result) -> None:
        """Run (or resume) the model's study; Ctrl-C is raised again once its counts are kept."""
        tuned = tuning.tune(model_name, self.data, self.settings, self.storage_url, self.observer)
        result.studies[model_name] = tuned.record
        if tuned.best_params is not None:
            result.best_params[model_name] = tuned.best_params
        self.observer.log(tuned.log_line(model_name))
        if tuned.interrupted:
            raise KeyboardInterrupt

    def final(self, model_name: str, result: Result) -> None:
        s = self.settings
        params = result.best_params[model_name]
        seeds = s.final_seeds()
        self.observer.phase(f"{model_name}: final runs ({len(seeds)} seeds x {s.epochs} epochs)", len(seeds) * s.epochs)
        runs = result.finals.setdefault(model_name, [])
        for seed in seeds:
            losses, accs, model = training.train(
                params, self.data, s, epochs=s.epochs, seed=seed, on_epoch=lambda *_: self.observer.advance()
            )
            run = FinalRun(dict(params), seed, losses, accs)
            if self.data.test is not None:
                run.test_loss, run.test_acc = training.evaluate(model, self.data.test)
            runs.append(run)

    def run(self) -> Result:
        result = Result(self.settings)
        start = time.perf_counter()
        try:
            for name in MODELS:
                self.tune(name, result)
            for name in MODELS:
                if name in result.best_params:
                    self.final(name, result)
        except KeyboardInterrupt:
            result.interrupted = True
        result.seconds = time.perf_counter() - start
        return result
