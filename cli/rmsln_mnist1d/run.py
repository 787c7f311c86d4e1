"""``torch-rln bench rmsln``: tune and train both models with progress bars, with
``--investigate`` measure where the write-up's figures come from, write the JSON and the
figure, and return the report section."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from ..common.arguments import apply_arguments
from ..common.machine import machine
from ..common.progress import Bars, progress_bars
from ..common.studies import make_storage
from . import investigation, results
from .experiment import Experiment
from .plots import rmsln_curves_plot
from .protocol import HOLDOUT_BATCH, Settings
from .report import rmsln_markdown, show_rmsln

QUICK_RMSLN: dict[str, Any] = {"trials": 4, "trial_epochs": 3, "epochs": 5, "seeds": 2}


def rmsln_settings(args: argparse.Namespace, device: str) -> Settings:
    settings = Settings(protocol=args.protocol, seed=args.seed, device=device, storage=args.storage)
    apply_arguments(settings, args, QUICK_RMSLN, ("trials", "trial_epochs", "epochs", "study_name", "batch_size"))
    if isinstance(args.seeds, list):
        settings.seed_list, settings.seeds = list(args.seeds), len(args.seeds)
    elif args.seeds is not None:
        settings.seeds = args.seeds
    if args.heartbeat is not None:
        settings.heartbeat_seconds = args.heartbeat
    if args.trial_epochs is None and not args.quick and settings.protocol == "published" and not args.batch_size:
        settings.trial_epochs = settings.epochs  # full batch: a trial of the final length is 100 cheap steps
    settings.investigate = args.investigate
    return settings


def investigation_seeds(settings: Settings) -> list[int]:
    return settings.final_seeds()[: investigation.SEEDS]


def planned_epochs(settings: Settings) -> int:
    """The whole run's epochs: both studies, both models' final runs, and the investigation."""
    s = settings
    total = 2 * s.trials * s.trial_epochs + 2 * s.seeds * s.epochs
    if s.investigate:
        total += investigation.runs_planned(len(investigation_seeds(s))) * s.epochs
    return total


def investigate(experiment: Experiment, bars: Bars) -> dict[str, Any]:
    s = experiment.settings
    seeds = investigation_seeds(s)
    runs = investigation.runs_planned(len(seeds))
    bars.phase("investigation: batch sizes and penalty definitions", runs * s.epochs)
    return investigation.investigate(experiment.data, s, seeds, lambda: bars.advance(s.epochs))


def run_experiment(settings: Settings, storage: str, console: Console) -> dict[str, Any]:
    with progress_bars(console) as progress:
        total = planned_epochs(settings)
        bars = Bars(progress, lambda _: total)
        experiment = Experiment(settings, storage, bars)
        result = experiment.run()
        found = None
        if settings.investigate and not result.interrupted:
            try:
                found = investigate(experiment, bars)
            except KeyboardInterrupt:
                result.interrupted = True
        bars.finish()
    return results.to_json(result, experiment.batch_size, found)


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Arguments this experiment cannot take, and a ``--storage`` that does not open (exit status 2)."""
    if args.investigate and args.protocol != "published":
        parser.error(
            "--investigate: the investigation reproduces the write-up's figures; it needs --protocol published"
        )
    if args.storage:
        try:
            make_storage(args.storage, args.heartbeat or Settings.heartbeat_seconds)
        except Exception as error:  # noqa: BLE001 - any failure to open it is the user's to fix
            parser.error(f"--storage {args.storage}: cannot open this Optuna storage ({type(error).__name__}: {error})")


def run(args: argparse.Namespace, device: str, out: Path, console: Console) -> tuple[int, str]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = rmsln_settings(args, device)
    storage = settings.storage or f"sqlite:///{(out / 'optuna-rmsln-mnist1d.db').resolve()}"
    console.rule("[bold]RMSLN vs Adam: MNIST-1D, tuned with Optuna")
    console.print(
        f"protocol [bold]{settings.protocol}[/], {settings.trials} trials x {settings.trial_epochs} epochs per model, "
        f"final {settings.seeds} seeds x {settings.epochs} epochs, batch "
        f"{settings.batch_size or ('the whole training set' if settings.protocol == 'published' else HOLDOUT_BATCH)}, "
        f"device {device}, storage {storage}"
        + ("" if settings.investigate else "; the investigation of the write-up's figures: --investigate")
    )
    report = run_experiment(settings, storage, console)
    report["storage"] = storage if settings.storage is None else "(given with --storage)"
    report["machine"] = machine(device)
    (out / "rmsln-mnist1d.json").write_text(json.dumps(report, indent=2))
    figures = [rmsln_curves_plot(report, out / "rmsln-mnist1d-curves.png").name] if report["final"] else []
    show_rmsln(report, console)
    if report["interrupted"]:
        console.print("[bold yellow]Interrupted:[/] finished trials are kept in the storage; rerun to resume.")
    return (130 if report["interrupted"] else 0), rmsln_markdown(report, figures)
