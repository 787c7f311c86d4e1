"""The holdout protocol on one data set, for every method and seed.

Per seed (:mod:`.prepare`): split the rows 60 / 20 / 20 into training, validation and
test (stratified for classification), and fit every input transform on the training
rows. Per (method, seed): an Optuna study of exactly ``trials`` trials, each trained on the
training split and early-stopped and scored on the validation split (:mod:`.tuning`);
then the best trial's setting is trained once more, from that trial's own seed (so the
MLP is the chosen trial's model again, kept at its best validation epoch), and the test
split is scored once. A seed's studies see its training and validation rows alone:
each seed has its own split, so one seed's test rows are another's training rows, and a
study shared across seeds would let them steer the tuning.

The MLP methods train together: each round asks every MLP study for up to
``ask_batch`` trials and trains all of them, every method and seed, as one stacked
model (:mod:`.trainer`). The scikit-learn methods take their trials one at a time.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from ..common.data import as_tensor
from ..common.progress import Observer
from .datasets import Table
from .methods import (
    GB_MAX_ITER,
    METHODS,
    NN_METHODS,
    SKLEARN_METHODS,
    fit_sklearn,
    predict,
    sklearn_eliminated,
    sklearn_importance,
)
from .metrics import test_scores, validation_loss
from .prepare import Prepared, classes_of, prepare
from .trainer import Copies, Schedule, Splits, Trained, train
from .tuning import Studies, sampler_seed, study_name

PROTOCOL = "tabular-v1"  # part of every study's fingerprint: change it when what a trial measures changes


@dataclass
class Settings:
    seeds: list[int]
    trials: int
    ask_batch: int = 8  # MLP trials asked at once per study (and trained in one stack)
    schedule: Schedule = field(default_factory=Schedule)
    impute: str | None = None
    device: str = "cpu"
    methods: tuple[str, ...] = tuple(METHODS)
    study_prefix: str | None = None  # --study-name
    gb_max_iter: int = GB_MAX_ITER  # HistGradientBoosting's most boosting rounds (early-stopped on validation)
    compile_rln: bool = True  # RLN's update compiled where torch.compile works (same math)


def nn_task(table: Table, classes: int) -> str:
    if table.task == "regression":
        return "regression"
    return "binary" if classes == 2 else "multiclass"


def fingerprint(table: Table, settings: Settings, digest: str | None = None) -> str:
    """What a trial measures, in 8 hex digits: the data (or the CSV's digest), the split,
    the network and its training schedule. Studies of another fingerprint are other studies."""
    s = settings.schedule
    if digest is None:
        h = hashlib.sha256(np.ascontiguousarray(table.numeric).tobytes())
        h.update(np.asarray(table.y).astype(str).tobytes())
        h.update(repr((table.inputs, table.categorical.tolist())).encode())
        digest = h.hexdigest()
    key = (PROTOCOL, digest, table.task, s.depth, s.batch_size, s.max_epochs, s.patience, settings.impute)
    return f"{sampler_seed(*key, settings.gb_max_iter):08x}"


def _shares(seconds: float, epochs: list[int]) -> list[float]:
    """A stacked training's time split among its copies in proportion to the epochs each trained."""
    total = sum(epochs) or 1
    return [seconds * e / total for e in epochs]


def _pad(arrays: list[np.ndarray], width: int) -> np.ndarray:
    """Stack per-seed matrices, zero-padded to ``width`` columns (one-hot widths differ by seed)."""
    return np.stack([np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays])


class DatasetRun:
    """Tuning and final models of every (method, seed) of one data set.

    Progress goes to ``observer`` in units of work: a stacked training is a phase of
    ``max_epochs`` units, one per epoch (those an early stop leaves out are counted when
    it stops); the scikit-learn fits are a phase of one unit per fit. :meth:`planned`
    says how many units are left.
    """

    def __init__(
        self, table: Table, settings: Settings, studies: Studies, observer: Observer, digest: str | None = None
    ) -> None:
        self.table, self.settings, self.studies, self.observer = table, settings, studies, observer
        self.classes = len(classes_of(table)) if table.task == "classification" else 0
        self.task = nn_task(table, self.classes)
        self.outputs = self.classes if self.task == "multiclass" else 1
        self.prepared = {seed: prepare(table, seed, settings.impute) for seed in settings.seeds}
        self.fingerprint = fingerprint(table, settings, digest)
        self.nn = [m for m in settings.methods if m in NN_METHODS]
        self.sk = [m for m in settings.methods if m in SKLEARN_METHODS]
        self.study: dict[tuple[str, int], optuna.Study] = {}
        for method in settings.methods:
            for seed in settings.seeds:
                name = study_name(settings.study_prefix, table.name, self.fingerprint, method, seed)
                self.study[method, seed] = studies.open(name)
        self.device = torch.device(settings.device)
        self.splits = self._splits()
        self.started = False

    def _splits(self) -> Splits:
        seeds = self.settings.seeds
        width = max(self.prepared[s].x_train.shape[1] for s in seeds)
        y_dtype = torch.long if self.task == "multiclass" else torch.float32
        return Splits(
            x_train=as_tensor(_pad([self.prepared[s].x_train for s in seeds], width), torch.float32, self.device),
            y_train=as_tensor(np.stack([self.prepared[s].y_train for s in seeds]), y_dtype, self.device),
            x_val=as_tensor(_pad([self.prepared[s].x_val for s in seeds], width), torch.float32, self.device),
            y_val=as_tensor(np.stack([self.prepared[s].y_val for s in seeds]), y_dtype, self.device),
            task=self.task,
            outputs=self.outputs,
        )

    # ------------------------------------------------------------------ the MLPs
    def _copies(self, entries: list[tuple[str, int, dict[str, float], int]]) -> Copies:
        """One copy per ``(method, seed, params, init_seed)``, in that order."""
        seeds = self.settings.seeds
        copies = Copies(slot=[], init_seed=[], lr=[], l1=[], weight_decay=[], dropout=[], rln={})
        for c, (method, seed, params, init_seed) in enumerate(entries):
            copies.slot.append(seeds.index(seed))
            copies.init_seed.append(init_seed)
            copies.lr.append(params["lr"])
            copies.l1.append(params.get("l1", 0.0) if method == "l1" else 0.0)
            copies.weight_decay.append(params.get("weight_decay", 0.0) if method == "weight_decay" else 0.0)
            copies.dropout.append(params.get("dropout", 0.0) if method == "dropout" else 0.0)
            if method == "rln":
                copies.rln[c] = (params["theta"], params["log10_nu"])
        return copies

    def _train(self, label: str, copies: Copies, keep_best: bool) -> tuple[Trained, float]:
        s = self.settings.schedule
        self.observer.phase(label, s.max_epochs)
        start = time.perf_counter()
        trained = train(
            copies,
            self.splits,
            s,
            keep_best=keep_best,
            compile_rln=self.settings.compile_rln,
            on_epoch=lambda e: self.observer.advance(),
        )
        self.observer.advance(s.max_epochs - trained.epochs)  # the epochs that the early stop left out
        return trained, time.perf_counter() - start

    def nn_round(self) -> int:
        """Ask every MLP study that has room for up to ``ask_batch`` trials, train them all in
        one stack and tell each its validation loss. Returns the number of trials trained."""
        batches = []
        for method in self.nn:
            for seed in self.settings.seeds:
                study = self.study[method, seed]
                trials = self.studies.ask(study, self.settings.ask_batch)  # none once the study is full
                if trials:
                    batches.append((method, seed, study, trials))
        if not batches:
            return 0
        entries = []
        for method, seed, _, trials in batches:
            for trial in trials:
                params = METHODS[method].suggest(trial, self.table.task)
                entries.append((method, seed, params, sampler_seed(self.table.name, method, seed, trial.number)))
        label = (
            f"{self.table.name}: {len(entries)} MLP trials ({', '.join(self.nn)}) x {len(self.settings.seeds)} seeds"
        )
        with self.studies.running([(study, trials) for _, _, study, trials in batches]):
            trained, seconds = self._train(label, self._copies(entries), keep_best=False)
        shares = _shares(seconds, trained.trained_epochs)
        c = 0
        for _, _, study, trials in batches:
            for trial in trials:
                self.studies.tell(study, trial, trained.best_loss[c], shares[c], best_epoch=trained.best_epoch[c])
                c += 1
        return len(entries)

    # ------------------------------------------------------------------ scikit-learn
    def sklearn_trials(self) -> int:
        """Every trial the scikit-learn studies still have room for, one at a time."""
        remaining = sum(self.studies.free(self.study[m, s]) for m in self.sk for s in self.settings.seeds)
        if remaining:
            self.observer.phase(f"{self.table.name}: {', '.join(self.sk)} trials", remaining)
        count = 0
        for method in self.sk:
            for seed in self.settings.seeds:
                study = self.study[method, seed]
                while trials := self.studies.ask(study, 1):  # none once the study is full
                    trial = trials[0]
                    with self.studies.running([(study, [trial])]):
                        start = time.perf_counter()
                        value = self._sklearn_trial(method, seed, METHODS[method].suggest(trial, self.table.task))
                        seconds = time.perf_counter() - start
                    self.studies.tell(study, trial, value, seconds)
                    self.observer.advance()
                    count += 1
        return count

    def _fit(self, method: str, seed: int, params: dict[str, float]) -> Any:
        p = self.prepared[seed]
        task, classes = self.table.task, self.classes
        x_train, y_train, x_val, y_val = p.x_train, p.y_train, p.x_val, p.y_val
        return fit_sklearn(
            method, params, task, classes, x_train, y_train, x_val, y_val, seed, self.settings.gb_max_iter
        )

    def _sklearn_trial(self, method: str, seed: int, params: dict[str, float]) -> float:
        p = self.prepared[seed]
        model = self._fit(method, seed, params)
        return validation_loss(self.table.task, self.classes, p.y_val, predict(model, self.table.task, p.x_val))

    # ------------------------------------------------------------------ tuning, to the end
    def planned(self) -> int:
        """The units of work left: a stack's ``max_epochs`` per round of MLP trials and for the
        final MLPs, and one per scikit-learn trial and final model."""
        s = self.settings
        free = {key: self.studies.free(study) for key, study in self.study.items()}
        rounds = -(-max((free[m, seed] for m in self.nn for seed in s.seeds), default=0) // s.ask_batch)
        missing = self.missing_finals()
        rounds += any(m in NN_METHODS for m, _ in missing)
        fits = sum(free[m, seed] for m in self.sk for seed in s.seeds) + sum(m in SKLEARN_METHODS for m, _ in missing)
        return rounds * s.schedule.max_epochs + fits

    def tuned(self) -> bool:
        return all(self.studies.done(study) for study in self.study.values())

    def tune(self) -> bool:
        """Run trials until every study has its budget; False if other workers still hold some
        of the remaining trials (come back later), True when all are done."""
        if not self.started:
            self.started = True
            self.observer.log(
                f"{self.table.name}: tuning {len(self.settings.methods)} methods x {len(self.settings.seeds)} seeds"
            )
        while self.nn_round():
            pass
        self.sklearn_trials()
        return self.tuned()

    # ------------------------------------------------------------------ the final models
    def missing_finals(self) -> list[tuple[str, int]]:
        return [(m, s) for (m, s), study in self.study.items() if self.studies.final(study) is None]

    def finals(self) -> dict[tuple[str, int], dict[str, Any]]:
        """Train each (method, seed)'s best setting once more and score its test split once;
        the records are stored in the studies as they finish."""
        missing = self.missing_finals()
        nn = [(m, s) for m, s in missing if m in NN_METHODS]
        if nn:
            self._nn_finals(nn)
        sk = [(m, s) for m, s in missing if m in SKLEARN_METHODS]
        if sk:
            self.observer.phase(f"{self.table.name}: {', '.join(self.sk)} final models, test scored once", len(sk))
        for method, seed in sk:
            self._sklearn_final(method, seed)
            self.observer.advance()
        return self.records()

    def records(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The final records stored in the studies, by (method, seed)."""
        return {(m, s): record for (m, s), study in self.study.items() if (record := self.studies.final(study))}

    def _record(
        self,
        method: str,
        seed: int,
        best: optuna.trial.FrozenTrial,
        test: dict[str, float],
        eliminated: np.ndarray | None,
        importance: np.ndarray | None = None,
    ) -> dict[str, Any]:
        study = self.study[method, seed]
        tuning = sum(t.user_attrs.get("measured", {}).get("seconds", 0.0) for t in self.studies.counted(study))
        record: dict[str, Any] = {
            "trial": best.number,
            "params": dict(best.params),
            "validation": best.value,
            "test": test,
            "tuning_seconds": round(tuning, 3),
            "trials": self.settings.trials,
        }
        if eliminated is not None:
            record["eliminated"] = self._inputs_eliminated(seed, eliminated)
            record["inputs"] = len(self.table.inputs)
        if importance is not None:
            record["importance"] = self._inputs_importance(seed, importance)
        return record

    def _inputs_importance(self, seed: int, importance: np.ndarray) -> list[float]:
        """Per input (``table.inputs``), the sum of ``importance`` over its encoded columns."""
        out = np.zeros(len(self.table.inputs))
        columns = self.prepared[seed].columns
        np.add.at(out, columns, np.asarray(importance[: len(columns)], dtype=np.float64))
        return [float(f"{v:.6g}") for v in out]

    def _inputs_eliminated(self, seed: int, eliminated: np.ndarray) -> list[int]:
        """The inputs (indices into ``table.inputs``) whose every encoded column was eliminated."""
        columns = self.prepared[seed].columns
        alive = {columns[j] for j in range(len(columns)) if not eliminated[j]}
        return sorted(set(columns) - alive)

    def _nn_finals(self, pairs: list[tuple[str, int]]) -> None:
        """The chosen trial of each (method, seed) trained again, from its own seed: each copy
        draws all its randomness from a generator of its own, so this is the chosen trial's
        model (up to float rounding in the stack), now kept at its best epoch and scored once."""
        entries = []
        for method, seed in pairs:
            best = self.studies.best(self.study[method, seed])
            entries.append((method, seed, dict(best.params), sampler_seed(self.table.name, method, seed, best.number)))
        label = f"{self.table.name}: final MLPs ({len(entries)}), test scored once"
        trained, seconds = self._train(label, self._copies(entries), keep_best=True)
        assert trained.eliminated is not None  # keep_best
        assert trained.model is not None
        shares = _shares(seconds, trained.trained_epochs)
        predictions = self._nn_test_predictions(trained, [self.settings.seeds.index(s) for _, s in pairs])
        for c, (method, seed) in enumerate(pairs):
            study = self.study[method, seed]
            best = self.studies.best(study)
            test = self._score(seed, predictions[c])
            importance = trained.model.first_weight()[c].detach().abs().sum(dim=0).cpu().numpy()
            record = self._record(method, seed, best, test, trained.eliminated[c].numpy(), importance)
            record.update(refit_validation=trained.best_loss[c], refit_epoch=trained.best_epoch[c])
            record["final_seconds"] = round(shares[c], 3)
            self.studies.store_final(study, record)

    @torch.no_grad()
    def _nn_test_predictions(self, trained: Trained, slots: list[int]) -> list[np.ndarray]:
        """Each final copy's predictions on its seed's test rows: the only forward pass over them."""
        seeds = self.settings.seeds
        width = self.splits.x_train.shape[-1]
        x_test = as_tensor(_pad([self.prepared[s].x_test for s in seeds], width), torch.float32, self.device)
        assert trained.model is not None  # keep_best
        out = trained.model(x_test[torch.tensor(slots, device=self.device)])
        if self.task == "regression":
            return [o.squeeze(-1).cpu().numpy().astype(np.float64) for o in out]
        if self.task == "binary":
            p1 = torch.sigmoid(out.squeeze(-1).double())
            return [torch.stack([1 - p, p], dim=1).cpu().numpy() for p in p1]
        return [torch.softmax(o.double(), dim=1).cpu().numpy() for o in out]

    def _score(self, seed: int, prediction: np.ndarray) -> dict[str, float]:
        """The test metrics of one prediction on seed's test rows (regression: back in the target's units)."""
        p: Prepared = self.prepared[seed]
        if self.table.task == "regression":
            prediction = prediction * p.y_std + p.y_mean
        return test_scores(self.table.task, self.classes, p.y_test, prediction)

    def _sklearn_final(self, method: str, seed: int) -> None:
        study = self.study[method, seed]
        best = self.studies.best(study)
        start = time.perf_counter()
        model = self._fit(method, seed, dict(best.params))
        test = self._score(seed, predict(model, self.table.task, self.prepared[seed].x_test))
        record = self._record(
            method, seed, best, test, sklearn_eliminated(method, model), sklearn_importance(method, model)
        )
        record["final_seconds"] = round(time.perf_counter() - start, 3)
        self.studies.store_final(study, record)
