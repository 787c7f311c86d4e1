"""The RMSLN experiment's Optuna studies: what each model searches, each study's name, the
objective (a short training run that reports every epoch to the pruner), and one study
tuned, or resumed, to its budget (the plumbing is :mod:`~torch_rln_cli.common.studies`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from ..common import studies
from ..common.progress import Observer
from . import training
from .data import Data
from .protocol import EXPERIMENT, LR_RANGE, REG_LAMBDA_RANGE, Settings


def suggest(trial: optuna.Trial, model_name: str) -> dict[str, float]:
    params = {"lr": trial.suggest_float("lr", *LR_RANGE, log=True)}
    if model_name == "rmsln":
        params["reg_lambda"] = trial.suggest_float("reg_lambda", *REG_LAMBDA_RANGE, log=True)
    return params


def study_name(settings: Settings, model_name: str, batch_size: int) -> str:
    """The study's name: ``--study-name``'s, or one that names what its trials measured, so that
    a rerun in the same storage resumes only a study of the same protocol, batch and length."""
    if settings.study_name:
        return f"{settings.study_name}-{model_name}"
    s = settings
    return f"{EXPERIMENT}-{model_name}-{s.protocol}-seed{s.seed}-batch{batch_size}-{s.trial_epochs}epochs"


def objective(model_name: str, data: Data, settings: Settings, observer: Observer) -> Callable[[optuna.Trial], float]:
    """One trial: train ``trial_epochs`` epochs, report every epoch to the pruner."""

    def run(trial: optuna.Trial) -> float:
        params = suggest(trial, model_name)

        def report(epoch: int, loss: float, acc: float) -> None:
            observer.advance()
            trial.report(loss, epoch)
            if not math.isfinite(loss) or trial.should_prune():
                raise optuna.TrialPruned()

        losses, _, _ = training.train(
            params, data, settings, epochs=settings.trial_epochs, seed=settings.seed, on_epoch=report
        )
        return losses[-1]

    return run


@dataclass
class Tuned:
    """One model's study after this run: its counts, its best parameters (None before a trial
    completes), and whether Ctrl-C stopped it."""

    record: dict[str, Any]
    best_params: dict[str, float] | None
    interrupted: bool

    def log_line(self, model_name: str) -> str:
        r = self.record
        return f"{model_name}: best {self.best_params} ({r['complete']} complete, {r['pruned']} pruned)"


def tune(model_name: str, data: Data, settings: Settings, storage_url: str, observer: Observer) -> Tuned:
    """Run (or resume) the model's study until it holds ``trials`` finished trials."""
    s = settings
    batch_size = s.batch(len(data.train[0]))
    study = studies.open_study(
        study_name(s, model_name, batch_size), studies.make_storage(storage_url, s.heartbeat_seconds), s.seed
    )
    # One local worker (no --storage): whatever is RUNNING was left by a run that died.
    stale = studies.fail_stale_trials(study) if s.storage is None else 0
    done_before = studies.finished_trials(study)
    remaining = max(0, s.trials - done_before)
    observer.phase(
        f"{model_name}: Optuna trials ({done_before} of {s.trials} already done)", remaining * s.trial_epochs
    )
    interrupted = studies.optimize(study, s.trials, objective(model_name, data, s, observer))
    record: dict[str, Any] = {
        "study_name": study.study_name,
        "finished_before_this_run": done_before,
        "stale_marked_failed": stale,
        **studies.state_counts(study),
    }
    best = studies.best_trial(study)
    if best is not None:
        record["best_value"] = best.value
    return Tuned(record, None if best is None else dict(best.params), interrupted)
