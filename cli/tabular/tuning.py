"""The tabular experiment's Optuna studies: one per (data set, method, seed), asked in batches
(the plumbing is :mod:`~torch_rln_cli.common.studies`).

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
  trains; a trial whose heartbeats stop is failed by the next worker that looks, and
  asked again. A run on its own storage (no ``--storage``) fails its own leftovers at
  once when it starts.
* Results: each (data set, method, seed)'s final model, trained once tuning is done, is
  stored in its study (user attribute ``final``), so that a rerun or another worker finds
  it there and nothing finished is lost.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..common import studies

FINAL_KEY = "final"


def sampler_seed(*parts: object) -> int:
    """A stable seed from an identity (Python's hash() is salted per process)."""
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
    """The studies of one run, opened on first use, on one storage, each with a budget of
    ``budget`` complete trials. ``shared``: other workers may be running trials right now
    (``--storage``)."""

    def __init__(self, storage: optuna.storages.BaseStorage, budget: int, shared: bool, heartbeat_seconds: int) -> None:
        self.storage, self.budget, self.shared, self.heartbeat_seconds = storage, budget, shared, heartbeat_seconds
        self._open: dict[str, optuna.Study] = {}

    def open(self, name: str) -> optuna.Study:
        if name not in self._open:
            study = studies.open_study(name, self.storage, sampler_seed(name), asked_together=True)
            if not self.shared:  # one worker: whatever is RUNNING was left by a run that died
                studies.fail_stale_trials(study)
            self._open[name] = study
        return self._open[name]

    # ------------------------------------------------------------------ the budget
    def counted(self, study: optuna.Study) -> list[FrozenTrial]:
        """The study's first ``budget`` complete trials, by number: the ones that count."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return sorted(complete, key=lambda t: t.number)[: self.budget]

    def done(self, study: optuna.Study) -> bool:
        return len(self.counted(study)) >= self.budget

    def free(self, study: optuna.Study) -> int:
        """How many more trials this worker may ask: the budget less the complete and running ones."""
        if self.shared:
            studies.fail_dead_workers_trials(study)
        active = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        return max(0, self.budget - sum(not t.user_attrs.get("surplus") for t in active))

    def ask(self, study: optuna.Study, n: int) -> list[optuna.Trial]:
        """Up to ``n`` new trials of ``study`` within its budget (fewer if other workers hold
        the rest); one that a race made surplus is failed at once and left out."""
        with warnings.catch_warnings():  # heartbeats are sent by studies.heartbeats, not by optimize()
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            asked = [study.ask() for _ in range(min(n, self.free(study)))]
        if not asked or not self.shared:
            return asked  # one worker: nothing can make these surplus
        studies.record_heartbeats(self.storage, [(study, asked)])
        kept = []
        for trial in asked:
            if studies.surplus(study, trial.number, self.budget):
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
            else:
                kept.append(trial)
        return kept

    @contextmanager
    def running(self, asked: Sequence[tuple[optuna.Study, Sequence[optuna.Trial]]]) -> Iterator[None]:
        """While the trials of ``asked`` train: their heartbeats (shared storage only)."""
        if not self.shared:
            yield
            return
        with studies.heartbeats(self.storage, asked, self.heartbeat_seconds):
            yield

    def tell(self, study: optuna.Study, trial: optuna.Trial, value: float, seconds: float, **measured: Any) -> None:
        """Tell the trial its value, with its time and anything else ``measured`` (one user
        attribute ``measured``: each attribute is a write, and a write to SQLite costs milliseconds)."""
        info = {"seconds": round(seconds, 3), "worker": studies.worker(), **measured}
        try:
            trial.set_user_attr("measured", info)
            study.tell(trial, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # its heartbeats were late and another worker failed it: it will be asked again

    def best(self, study: optuna.Study, counted: list[FrozenTrial] | None = None) -> FrozenTrial:
        """The counted trial with the lowest validation loss (the first such, by number)."""
        return min(self.counted(study) if counted is None else counted, key=lambda t: (t.value, t.number))

    # ------------------------------------------------------------------ the results
    def final(self, study: optuna.Study) -> dict[str, Any] | None:
        """The stored final result, if it was made from the current budget's best trial."""
        counted = self.counted(study)
        if len(counted) < self.budget:
            return None
        record = study.user_attrs.get(FINAL_KEY)
        if not record or record.get("trial") != self.best(study, counted).number:
            return None
        return dict(record)

    def store_final(self, study: optuna.Study, record: dict[str, Any]) -> None:
        study.set_user_attr(FINAL_KEY, record)
