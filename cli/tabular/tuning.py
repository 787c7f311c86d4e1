"""Optuna studies for the tabular experiment: one per (data set, method, seed), asked in batches.

* Storage: SQLite in ``--out`` by default (a rerun resumes: finished trials are never run
  again), or ``--storage URL`` shared by several workers (PostgreSQL across machines).
* Sampler: TPE with ``constant_liar=True``, seeded per study. An MLP study is asked for
  several trials at once (``study.ask()`` that many times) so that they train together
  in one stacked model; each is told its value once the stack has trained.
* Budget: a study counts its first ``budget`` complete trials (by trial number), never
  more, so every method gets exactly ``--trials``. A worker asks only for the trials that
  are neither complete nor running; a trial that a race still made one too many is
  marked failed as ``surplus`` before it trains.
* Workers that die: every asked trial sends a heartbeat from a background thread while it
  trains; a trial whose heartbeats stop is failed by the next worker that looks
  (``optuna.storages.fail_stale_trials``) and asked again. A run on its own storage (no
  ``--storage``) fails its own leftovers at once when it starts.
* Results: each (data set, method, seed)'s final model, trained once tuning is done, is
  stored in its study (user attribute ``final``), so that a rerun or another worker finds
  it there and nothing finished is lost.

Only Optuna's public API is used.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

FINAL_KEY = "final"


def sampler_seed(*parts: object) -> int:
    """A stable seed for a study's sampler from its identity (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def study_name(prefix: str | None, dataset: str, fingerprint: str, method: str, seed: int) -> str:
    """``--study-name``'s studies are ``NAME-<data set>-<method>-seed<S>``; without it the name
    also carries a fingerprint of the data and of what a trial measures, so that a rerun
    resumes only studies of the same data, protocol and training schedule."""
    if prefix:
        return f"{prefix}-{dataset}-{method}-seed{seed}"
    return f"tabular-{dataset}-{fingerprint}-{method}-seed{seed}"


class Studies:
    """The studies of one run, opened on first use, on one storage."""

    def __init__(self, storage: Any, budget: int, shared: bool, heartbeat_seconds: int) -> None:
        self.storage = storage
        self.budget = budget
        self.shared = shared  # --storage given: other workers may be running trials right now
        self.heartbeat_seconds = heartbeat_seconds
        self._open: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        import optuna

        if name in self._open:
            return self._open[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=sampler_seed(name), constant_liar=True)
        study = optuna.create_study(
            study_name=name, storage=self.storage, direction="minimize", sampler=sampler, load_if_exists=True
        )
        if not self.shared:  # one worker: whatever is RUNNING was left by a run that died
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        self._open[name] = study
        return study

    # ------------------------------------------------------------------ the budget
    def counted(self, study: Any) -> list[Any]:
        """The study's first ``budget`` complete trials, by number: the ones that count."""
        import optuna

        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return sorted(complete, key=lambda t: t.number)[: self.budget]

    def done(self, study: Any) -> bool:
        return len(self.counted(study)) >= self.budget

    def free(self, study: Any) -> int:
        """How many more trials this worker may ask: the budget less the complete and running ones."""
        import optuna

        if self.shared:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        active = [t for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("surplus")]
        return max(0, self.budget - len(active))

    def ask(self, study: Any, n: int) -> list[Any]:
        """Up to ``n`` new trials of ``study`` within its budget (fewer if other workers hold
        the rest); one that a race made surplus is failed at once and left out."""
        import optuna

        with warnings.catch_warnings():  # heartbeats are sent here, by a thread of our own
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            asked = [study.ask() for _ in range(min(n, self.free(study)))]
        if not asked:
            return []
        if not self.shared:
            return asked  # one worker: nothing can make these surplus
        self._beat(study, asked)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        active = [t.number for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("surplus")]
        kept = []
        for trial in asked:
            if sum(number < trial.number for number in active) >= self.budget:
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                kept.append(trial)
        return kept

    def tell(self, study: Any, trial: Any, value: float, seconds: float, **measured: Any) -> None:
        """Tell the trial its value, with its time and anything else ``measured`` (one user
        attribute ``measured``: each attribute is a write, and a write to SQLite costs milliseconds)."""
        import optuna

        info = {"seconds": round(seconds, 3), "worker": f"{socket.gethostname()}:{os.getpid()}", **measured}
        try:
            trial.set_user_attr("measured", info)
            study.tell(trial, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # its heartbeats were late and another worker failed it: it will be asked again

    def best(self, study: Any, counted: list[Any] | None = None) -> Any:
        """The counted trial with the lowest validation loss (the first such, by number)."""
        return min(self.counted(study) if counted is None else counted, key=lambda t: (t.value, t.number))

    # ------------------------------------------------------------------ the results
    def final(self, study: Any) -> dict[str, Any] | None:
        """The stored final result, if it was made from the current budget's best trial."""
        counted = self.counted(study)
        if len(counted) < self.budget:
            return None
        record = study.user_attrs.get(FINAL_KEY)
        if not record or record.get("trial") != self.best(study, counted).number:
            return None
        return dict(record)

    def store_final(self, study: Any, record: dict[str, Any]) -> None:
        study.set_user_attr(FINAL_KEY, record)

    # ------------------------------------------------------------------ heartbeats
    def _trial_ids(self, study: Any, trials: list[Any]) -> list[int]:
        study_id = self.storage.get_study_id_from_name(study.study_name)
        return [self.storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]

    def _beat(self, study: Any, trials: list[Any]) -> None:
        if hasattr(self.storage, "record_heartbeat") and self.storage.get_heartbeat_interval():
            for trial_id in self._trial_ids(study, trials):
                self.storage.record_heartbeat(trial_id)

    @contextmanager
    def heartbeats(self, batches: list[tuple[Any, list[Any]]]) -> Iterator[None]:
        """While the trials of ``batches`` (``(study, trials)`` pairs) train, a background thread
        records their heartbeats every ``heartbeat_seconds`` (shared storage only)."""
        if not self.shared or not (hasattr(self.storage, "record_heartbeat") and self.storage.get_heartbeat_interval()):
            yield
            return
        ids = [i for study, trials in batches for i in self._trial_ids(study, trials)]
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_seconds):
                for trial_id in ids:
                    try:
                        self.storage.record_heartbeat(trial_id)
                    except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                        time.sleep(0)

        thread = threading.Thread(target=beat, name="tabular-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
