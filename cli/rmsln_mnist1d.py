"""The published RMSLN experiment: Adam vs Adam + RMSLNWrapper on MNIST-1D, tuned with Optuna.

The write-up tuned a baseline (Adam; learning rate) and RMSLN (Adam + the RMS-norm
penalty; learning rate and ``reg_lambda``) with Optuna, trained the best of each for 100
epochs once, and compared validation-loss curves: baseline 1.3054, RMSLN 1.3818, "RMSLN
did not help". This rerun tunes both the same way, then trains each best setting with
several seeds and compares them seed by seed, with a confidence interval.

* Data: MNIST-1D regenerated offline (4000 training / 1000 test sequences of length 40).
* Model: MLP 40 -> 100 -> 100 -> 10 with ReLU, cross-entropy, Adam. Batch: the whole
  training set under ``protocol="published"`` (100 Adam steps in 100 epochs: the write-up
  does not give its batch, and only full batch comes near its figures; the report's batch
  table shows why), 100 under ``protocol="holdout"``; ``batch_size`` sets either.
* ``protocol="published"``: trials and final curves use the 1000-sequence split that the
  write-up calls validation. ``protocol="holdout"``: trials and curves use a validation
  split carved from the training set (800 sequences); the test split is scored once, at
  the end of each final run.
* Optuna: TPE with a fixed seed; baseline searches lr (log 1e-4..1e-1); RMSLN searches lr
  and reg_lambda (log 1e-6..1e-1). The objective is the validation loss after
  ``trial_epochs`` epochs (the write-up does not say how long its trials ran); a median
  pruner gets the validation loss of every epoch. Studies live in a storage (SQLite in
  the output folder by default), so a rerun resumes and never reruns a finished trial.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torch_rln import RMSLNWrapper

from .data import load_mnist1d
from .stats import mean_std, paired

EXPERIMENT = "rmsln-mnist1d"
MODELS = ("baseline", "rmsln")
PUBLISHED: dict[str, Any] = {
    "source": "RMSLN write-up (MNIST-1D, Optuna-tuned Adam vs Adam + RMSLN, one run each, 100 epochs)",
    "baseline": {"params": {"lr": 0.00540933691402168}, "final_val_loss": 1.3054},
    "rmsln": {"params": {"lr": 0.004529004680418813, "reg_lambda": 0.0003734033068009905}, "final_val_loss": 1.3818},
    "conclusion": "RMSLN did not help",
}
HOLDOUT_BATCH = 100
LR_RANGE = (1e-4, 1e-1)
REG_LAMBDA_RANGE = (1e-6, 1e-1)

FINISHED: tuple[Any, ...]  # the trial states that count
try:
    from optuna.trial import TrialState

    FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
except ImportError:  # the bench extra is missing: the CLI says so before this is used
    FINISHED = ()


@dataclass
class Settings:
    trials: int = 50
    trial_epochs: int = 30  # the command uses ``epochs`` at full batch (published), where trials are cheap
    epochs: int = 100
    seeds: int = 5
    hidden: tuple[int, ...] = (100, 100)
    batch_size: int | None = None  # None: the whole training set (published), 100 (holdout)
    protocol: str = "published"
    seed: int = 0
    device: str = "cpu"
    storage: str | None = None  # an Optuna storage URL; None: SQLite in the output folder
    study_name: str | None = None  # the shared studies' name (two studies: NAME-baseline, NAME-rmsln)
    heartbeat_seconds: int = 10  # a worker's RUNNING trial is failed after 3 missed heartbeats
    validation_size: int = 800
    seed_list: list[int] | None = None  # the final runs' seeds; None: seed, seed + 1, ... (``seeds`` of them)
    investigate: bool = True  # the batch table and the candidate definitions of the penalty (published only)

    def final_seeds(self) -> list[int]:
        return list(self.seed_list) if self.seed_list is not None else [self.seed + k for k in range(self.seeds)]

    def batch(self, n_train: int) -> int:
        """The training batch for a training set of ``n_train``."""
        if self.batch_size is not None:
            return self.batch_size
        return n_train if self.protocol == "published" else HOLDOUT_BATCH


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


class Data:
    """Tensors for the protocol: ``train`` to fit, ``val`` for curves and trials, ``test`` or None."""

    def __init__(self, protocol: str, validation_size: int, seed: int, device: torch.device) -> None:
        (x, y), (x_test, y_test) = load_mnist1d()
        self.test: tuple[torch.Tensor, torch.Tensor] | None
        if protocol == "holdout":
            order = np.random.default_rng(seed).permutation(len(x))
            val, fit = order[:validation_size], order[validation_size:]
            self.train = self._pair(x[fit], y[fit], device)
            self.val = self._pair(x[val], y[val], device)
            self.test = self._pair(x_test, y_test, device)
        else:
            self.train = self._pair(x, y, device)
            self.val = self._pair(x_test, y_test, device)
            self.test = None

    @staticmethod
    def _pair(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.as_tensor(np.asarray(x, dtype=np.float32), device=device),
            torch.as_tensor(np.asarray(y, dtype=np.int64), device=device),
        )


def make_model(hidden: tuple[int, ...], seed: int, device: torch.device) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = 40
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers).to(device)


def make_optimizer(model: torch.nn.Module, params: dict[str, float]) -> torch.optim.Optimizer:
    optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    if "reg_lambda" in params:
        optimizer = RMSLNWrapper(optimizer, reg_lambda=params["reg_lambda"], target=1.0)
    return optimizer


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    x, y = data
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, acc


Penalty = Callable[[torch.nn.Module], torch.Tensor]


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    on_epoch: Callable[[int, float, float], None] | None = None,
    penalty: Penalty | None = None,
) -> tuple[list[float], list[float]]:
    """Train ``model`` on ``data.train`` (shuffled with ``seed``), with ``penalty(model)`` added
    to the loss if given; return the validation loss and accuracy after every epoch."""
    generator = torch.Generator().manual_seed(seed)
    x, y = data.train
    losses, accs = [], []
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=generator).to(x.device).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            (loss if penalty is None else loss + penalty(model)).backward()
            optimizer.step()
        loss_value, acc = evaluate(model, data.val)
        losses.append(loss_value)
        accs.append(acc)
        if on_epoch is not None:
            on_epoch(epoch, loss_value, acc)
    return losses, accs


def train(
    params: dict[str, float],
    data: Data,
    settings: Settings,
    *,
    epochs: int,
    seed: int,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[list[float], list[float], torch.nn.Module]:
    """Train one model of the study; return the validation loss and accuracy after every epoch."""
    model = make_model(settings.hidden, seed, data.train[0].device)
    optimizer = make_optimizer(model, params)
    batch = settings.batch(len(data.train[0]))
    losses, accs = fit(model, optimizer, data, batch_size=batch, epochs=epochs, seed=seed, on_epoch=on_epoch)
    return losses, accs, model


def suggest(trial: Any, model_name: str) -> dict[str, float]:
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


def make_storage(url: str, heartbeat_seconds: int) -> Any:
    """An Optuna storage for ``url``; SQL databases get a heartbeat, so that the trial of a
    worker that died (SIGKILL, power loss) is marked FAIL by the next worker instead of
    staying RUNNING forever."""
    import optuna

    if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql"):
        return optuna.storages.get_storage(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=3 * heartbeat_seconds,
                )
        except Exception:
            if attempt == 4:
                raise
            time.sleep(0.5 + 0.5 * attempt)
    raise AssertionError("unreachable")


class SurplusTrial(Exception):
    """Raised by a trial that started after the study already had all its trials (several workers)."""


def finished_trials(study: Any) -> int:
    return sum(t.state in FINISHED for t in study.trials)


def fail_stale_trials(study: Any) -> int:
    """Mark trials left RUNNING by a killed single-worker run as FAIL (never rerun as finished)."""
    import optuna

    stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


class Experiment:
    def __init__(
        self,
        settings: Settings,
        storage_url: str,
        on_phase: Callable[[str, int], None] | None = None,
        on_epoch: Callable[[], None] | None = None,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.storage_url = storage_url
        self.on_phase = on_phase or (lambda label, total: None)
        self.on_epoch = on_epoch or (lambda: None)
        self.on_done = on_done or (lambda text: None)
        self.data = Data(settings.protocol, settings.validation_size, settings.seed, torch.device(settings.device))
        self.batch_size = settings.batch(len(self.data.train[0]))

    def _open_study(self, model_name: str) -> Any:
        import optuna

        s = self.settings
        return optuna.create_study(
            study_name=study_name(s, model_name, self.batch_size),
            storage=make_storage(self.storage_url, s.heartbeat_seconds),
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=s.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5),
            load_if_exists=True,
        )

    def _objective(self, study: Any, model_name: str) -> Callable[[Any], float]:
        """One trial: train ``trial_epochs`` epochs, report every epoch to the pruner."""
        import optuna

        s = self.settings

        def objective(trial: Any) -> float:
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            # Trial numbers are handed out atomically by the storage: the first `trials` trials
            # that are finished or running keep their places, a later one is surplus.
            active = study.get_trials(deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING))
            if sum(t.number < trial.number for t in active) >= s.trials:
                study.stop()  # other workers finish the study: this trial would be one too many
                trial.set_user_attr("surplus", True)
                raise SurplusTrial
            params = suggest(trial, model_name)

            def report(epoch: int, loss: float, acc: float) -> None:
                self.on_epoch()
                trial.report(loss, epoch)
                if not math.isfinite(loss) or trial.should_prune():
                    raise optuna.TrialPruned()

            losses, _, _ = train(params, self.data, s, epochs=s.trial_epochs, seed=s.seed, on_epoch=report)
            return losses[-1]

        return objective

    def _optimize(self, study: Any, model_name: str, remaining: int) -> bool:
        """Run the ``remaining`` trials; True if interrupted (the finished trials stay stored)."""
        import optuna

        if not remaining:
            return False
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        callback = optuna.study.MaxTrialsCallback(self.settings.trials, states=finished)
        try:
            study.optimize(
                self._objective(study, model_name), n_trials=remaining, callbacks=[callback], catch=(SurplusTrial,)
            )
        except KeyboardInterrupt:
            return True
        return False

    @staticmethod
    def _record(study: Any, model_name: str, result: Result, done_before: int, stale: int) -> str:
        """The study's counts and best parameters into ``result``; returns the log line."""
        states = [t.state.name for t in study.trials]
        result.studies[model_name] = {
            "study_name": study.study_name,
            "finished_before_this_run": done_before,
            "stale_marked_failed": stale,
            "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"),
        }
        completed = [t for t in study.trials if t.state.name == "COMPLETE"]
        if completed:
            best = min(completed, key=lambda t: t.value)
            result.best_params[model_name] = dict(best.params)
            result.studies[model_name]["best_value"] = best.value
        return (
            f"{model_name}: best {result.best_params.get(model_name)} "
            f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned)"
        )

    def tune(self, model_name: str, result: Result) -> None:
        """Run (or resume) the model's Optuna study until it has ``trials`` finished trials."""
        s = self.settings
        study = self._open_study(model_name)
        # One local worker (no --storage): whatever is RUNNING was left by a run that died.
        stale = fail_stale_trials(study) if s.storage is None else 0
        done_before = finished_trials(study)
        remaining = max(0, s.trials - done_before)
        self.on_phase(
            f"{model_name}: Optuna trials ({done_before} of {s.trials} already done)", remaining * s.trial_epochs
        )
        interrupted = self._optimize(study, model_name, remaining)
        self.on_done(self._record(study, model_name, result, done_before, stale))
        if interrupted:
            raise KeyboardInterrupt

    def final(self, model_name: str, result: Result) -> None:
        s = self.settings
        params = result.best_params[model_name]
        seeds = s.final_seeds()
        self.on_phase(f"{model_name}: final runs ({len(seeds)} seeds x {s.epochs} epochs)", len(seeds) * s.epochs)
        runs = result.finals.setdefault(model_name, [])
        for seed in seeds:
            losses, accs, model = train(
                params, self.data, s, epochs=s.epochs, seed=seed, on_epoch=lambda *_: self.on_epoch()
            )
            run = FinalRun(dict(params), seed, losses, accs)
            if self.data.test is not None:
                run.test_loss, run.test_acc = evaluate(model, self.data.test)
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


# ---------------------------------------------------------------------- summaries
def summarize(runs: list[FinalRun]) -> dict[str, Any]:
    final_loss = [r.val_loss[-1] for r in runs]
    min_loss = [min(r.val_loss) for r in runs]
    final_acc = [r.val_acc[-1] for r in runs]
    best_acc = [max(r.val_acc) for r in runs]
    out = {
        "params": runs[0].params,
        "seeds": [r.seed for r in runs],
        "val_loss_mean": mean_std(final_loss)[0],
        "val_loss_std": mean_std(final_loss)[1],
        "min_val_loss_mean": mean_std(min_loss)[0],
        "min_val_loss_std": mean_std(min_loss)[1],
        "acc_mean": mean_std(final_acc)[0],
        "acc_std": mean_std(final_acc)[1],
        "max_acc_mean": mean_std(best_acc)[0],
        "max_acc_std": mean_std(best_acc)[1],
        "final_val_loss": final_loss,
        "min_val_loss": min_loss,
        "curves": [r.val_loss for r in runs],
        "acc_curves": [r.val_acc for r in runs],
    }
    if runs[0].test_loss is not None:
        tl = [r.test_loss for r in runs if r.test_loss is not None]
        ta = [r.test_acc for r in runs if r.test_acc is not None]
        out.update(
            test_loss_mean=mean_std(tl)[0],
            test_loss_std=mean_std(tl)[1],
            test_acc_mean=mean_std(ta)[0],
            test_acc_std=mean_std(ta)[1],
        )
    return out


def comparison(finals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not set(MODELS) <= set(finals):
        return {}
    base, reg = finals["baseline"], finals["rmsln"]
    out: dict[str, Any] = {
        "final_val_loss_rmsln_minus_baseline": paired(base["final_val_loss"], reg["final_val_loss"]),
        "min_val_loss_rmsln_minus_baseline": paired(base["min_val_loss"], reg["min_val_loss"]),
    }
    ci = out["final_val_loss_rmsln_minus_baseline"]["ci95"]
    verdict: str
    holds: bool | None
    if ci is None:
        verdict, holds = "one seed: no interval, no verdict", None
    elif ci[1] < 0:
        verdict, holds = (
            "RMSLN lowered the final validation loss (95% CI below 0): the published conclusion does not hold here",
            False,
        )
    elif ci[0] > 0:
        verdict, holds = (
            "RMSLN raised the final validation loss (95% CI above 0): consistent with 'RMSLN did not help'",
            True,
        )
    else:
        verdict, holds = "no significant difference (95% CI contains 0): consistent with 'RMSLN did not help'", True
    out["verdict"] = verdict
    out["published_claim_holds"] = holds
    return out


def to_json(result: Result, batch_size: int, investigation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report; ``batch_size``: the batch the runs trained at; ``investigation``: what
    :func:`rmsln_investigation.investigate` measured (published protocol)."""
    s = result.settings
    finals = {name: summarize(runs) for name, runs in result.finals.items() if runs}
    return {
        "experiment": EXPERIMENT,
        "protocol": s.protocol,
        "validation": "the 1000-sequence split the write-up calls validation (MNIST-1D's test split)"
        if s.protocol == "published"
        else f"{s.validation_size} sequences carved from the training set; test scored once",
        "settings": {
            "trials": s.trials,
            "trial_epochs": s.trial_epochs,
            "epochs": s.epochs,
            "seeds": s.seeds,
            "hidden": list(s.hidden),
            "batch_size": batch_size,
            "full_batch": s.batch_size is None and s.protocol == "published",
            "final_seeds": s.final_seeds(),
            "seed": s.seed,
            "device": s.device,
            "lr_range": list(LR_RANGE),
            "reg_lambda_range": list(REG_LAMBDA_RANGE),
        },
        "studies": result.studies,
        "best_params": result.best_params,
        "final": finals,
        "published": PUBLISHED,
        "comparison": comparison(finals),
        "investigation": investigation,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 2),
    }
