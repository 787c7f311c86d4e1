"""Optuna plumbing for studies that several runs or workers share, through Optuna's public
API only: the storage (with a heartbeat), resuming, stale trials, and the trial budget.

A study lives in a storage (an SQLite file by default, or a server that several workers
share), so a rerun resumes it and never reruns a finished trial. :func:`optimize` runs
trials until the study holds ``trials`` finished ones, whichever worker finished them.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trial states that count
HEARTBEAT_SCHEMES = ("sqlite", "postgresql", "mysql")


def make_storage(url: str, heartbeat_seconds: int) -> optuna.storages.RDBStorage:
    """The storage at the SQLAlchemy ``url``. SQL databases get a heartbeat, so that the trial
    of a worker that died (SIGKILL, power loss) is marked FAIL by the next worker instead of
    staying RUNNING forever. Retried a few times (several workers may create it at once)."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    heartbeat: dict[str, Any] = {}
    if scheme in HEARTBEAT_SCHEMES:
        heartbeat = {"heartbeat_interval": heartbeat_seconds, "grace_period": 3 * heartbeat_seconds}
    engine_kwargs = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except Exception:
            if attempt == 4 or scheme not in HEARTBEAT_SCHEMES:
                raise
            time.sleep(0.5 + 0.5 * attempt)
    raise AssertionError("unreachable")


def open_study(name: str, storage: optuna.storages.RDBStorage, seed: int) -> optuna.Study:
    """The study ``name`` in ``storage``, created if new: minimize, TPE with ``seed``, median pruning."""
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5),
        load_if_exists=True,
    )


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark the trials left RUNNING by a killed single-worker run as FAIL (never counted as
    finished, never resumed); the number marked. Only for a study no other worker uses."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(stale)


class SurplusTrial(Exception):
    """Raised by a trial that started after the study already had all its trials (several workers)."""


def budgeted(study: optuna.Study, trials: int, objective: Callable[[optuna.Trial], float]) -> Callable[[Any], float]:
    """``objective`` within a budget of ``trials`` for the whole study, whichever worker runs
    them: a trial that starts when the first ``trials`` are finished or running stops the
    study and is marked ``surplus``. Each trial records the worker (host:pid) that ran it."""

    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        # Trial numbers are handed out atomically by the storage: the first `trials` trials
        # that are finished or running keep their places, a later one is surplus.
        active = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if sum(t.number < trial.number for t in active) >= trials:
            study.stop()  # other workers finish the study: this trial would be one too many
            trial.set_user_attr("surplus", True)
            raise SurplusTrial
        return objective(trial)

    return run


def optimize(study: optuna.Study, trials: int, objective: Callable[[optuna.Trial], float]) -> bool:
    """Run trials of ``objective`` until the study holds ``trials`` finished ones; True if
    interrupted with Ctrl-C (the finished trials stay stored, a rerun resumes)."""
    remaining = max(0, trials - finished_trials(study))
    if not remaining:
        return False
    callback = optuna.study.MaxTrialsCallback(trials, states=FINISHED)
    try:
        study.optimize(
            budgeted(study, trials, objective), n_trials=remaining, callbacks=[callback], catch=(SurplusTrial,)
        )
    except KeyboardInterrupt:
        return True
    return False


def state_counts(study: optuna.Study) -> dict[str, int]:
    """How many of the study's trials are complete, pruned and failed."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
    }


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the lowest value (None before one completes)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda t: float(t.value if t.value is not None else "inf"), default=None)
