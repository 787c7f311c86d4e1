"""Optuna plumbing for studies that several runs or workers share, through Optuna's public
API only: the storage (with a heartbeat), resuming, stale trials, and the trial budget.

A study lives in a storage (an SQLite file by default, or a server that several workers
share), so a rerun resumes it and never reruns a finished trial. :func:`optimize` runs
trials until the study holds ``trials`` finished ones, whichever worker finished them.

A study whose trials are asked several at a time and told later (``study.ask()`` /
``study.tell()``, to train them together) gets from here what ``study.optimize`` does by
itself: :func:`heartbeats` while its trials run, :func:`fail_dead_workers_trials`, and
:func:`surplus` for the budget.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
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
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
            if scheme == "sqlite":
                _write_ahead_log(storage.engine)
            return storage
        except Exception:
            if attempt == 4 or scheme not in HEARTBEAT_SCHEMES:
                raise
            time.sleep(0.5 + 0.5 * attempt)
    raise AssertionError("unreachable")


def _write_ahead_log(engine: sqlalchemy.engine.Engine) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints rather than at every commit: a
    study writes a few rows per trial, and on a virtual machine's disk each synced commit
    took 10-20 ms, a third of a short run. A killed process loses no commit; a power loss
    or an operating-system crash keeps the database whole but may lose its last commits,
    whose trials a rerun runs again. The mode is kept in the file: several processes on
    one machine share it as before (not over a network file system)."""

    def pragmas(connection: Any, _: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", pragmas)
    engine.dispose()  # the connections opened before the listener: the next ones get the pragmas


def open_study(
    name: str, storage: optuna.storages.BaseStorage, seed: int, asked_together: bool = False
) -> optuna.Study:
    """The study ``name`` in ``storage``, created if new: minimize, TPE with ``seed``, median pruning.

    ``asked_together``: its trials are asked several at a time and told once they have all
    trained, so TPE's ``constant_liar`` spreads the ones asked together, and nothing prunes.
    """
    if asked_together:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar: experimental
            sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
    return optuna.create_study(
        study_name=name, storage=storage, direction="minimize", sampler=sampler, pruner=pruner, load_if_exists=True
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


def fail_dead_workers_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose heartbeats stopped (their worker died), as
    ``study.optimize`` does before each trial; for studies whose trials are asked by hand."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def worker() -> str:
    """This process, as the trials it runs record it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def surplus(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether trial ``number`` is one too many: ``budget`` trials numbered before it are
    finished or running (trial numbers are handed out atomically by the storage, so the
    first ``budget`` keep their places whichever worker runs them). A trial already marked
    ``surplus`` holds no place."""
    active = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(t.number < number and not t.user_attrs.get("surplus") for t in active) >= budget


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether ``storage`` keeps heartbeats (:func:`make_storage` gives SQL databases one)."""
    return isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None


Asked = Sequence[tuple[optuna.Study, Sequence[optuna.Trial]]]  # trials asked by hand, with their study


def _trial_ids(storage: optuna.storages.BaseStorage, asked: Asked) -> list[int]:
    ids = []
    for study, trials in asked:
        study_id = storage.get_study_id_from_name(study.study_name)
        ids += [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]
    return ids


def record_heartbeats(storage: optuna.storages.BaseStorage, asked: Asked) -> None:
    """One heartbeat for each trial of ``asked`` (nothing where the storage keeps none)."""
    if has_heartbeat(storage):
        assert isinstance(storage, optuna.storages.RDBStorage)
        for trial_id in _trial_ids(storage, asked):
            storage.record_heartbeat(trial_id)


@contextmanager
def heartbeats(storage: optuna.storages.BaseStorage, asked: Asked, seconds: float) -> Iterator[None]:
    """While the trials of ``asked`` run, a background thread records their heartbeats in
    ``storage`` every ``seconds``, as ``study.optimize`` does for its own trials; nothing
    where the storage keeps no heartbeat."""
    if not has_heartbeat(storage):
        yield
        return
    assert isinstance(storage, optuna.storages.RDBStorage)
    ids = _trial_ids(storage, asked)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(seconds):
            for trial_id in ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                    continue

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class SurplusTrial(Exception):
    """Raised by a trial that started after the study already had all its trials (several workers)."""


def budgeted(study: optuna.Study, trials: int, objective: Callable[[optuna.Trial], float]) -> Callable[[Any], float]:
    """``objective`` within a budget of ``trials`` for the whole study, whichever worker runs
    them: a trial that starts when the first ``trials`` are finished or running stops the
    study and is marked ``surplus``. Each trial records the worker (host:pid) that ran it."""

    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker())
        if surplus(study, trial.number, trials):
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
