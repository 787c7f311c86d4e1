"""``torch-rln bench rmsln``: tune and train both models with progress bars, measure where
the write-up's figures come from, write the JSON and the figure, and return the report
section."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

from . import rmsln_investigation, rmsln_mnist1d
from .machine import machine
from .plots import rmsln_curves_plot
from .progress import apply_arguments, progress_bars
from .report_rmsln import rmsln_markdown, show_rmsln

QUICK_RMSLN: dict[str, Any] = {"trials": 4, "trial_epochs": 3, "epochs": 5, "seeds": 2}
INVESTIGATION_SEEDS = 3


def rmsln_settings(args: argparse.Namespace, device: str) -> rmsln_mnist1d.Settings:
    settings = rmsln_mnist1d.Settings(protocol=args.protocol, seed=args.seed, device=device, storage=args.storage)
    apply_arguments(settings, args, QUICK_RMSLN, ("trials", "trial_epochs", "epochs", "study_name", "batch_size"))
    if isinstance(args.seeds, list):
        settings.seed_list, settings.seeds = list(args.seeds), len(args.seeds)
    elif args.seeds is not None:
        settings.seeds = args.seeds
    if args.heartbeat is not None:
        settings.heartbeat_seconds = args.heartbeat
    if args.trial_epochs is None and not args.quick and settings.protocol == "published" and not args.batch_size:
        settings.trial_epochs = settings.epochs  # full batch: a trial of the final length is 100 cheap steps
    settings.investigate = settings.protocol == "published"
    return settings


class RmslnProgress:
    """The two bars: this phase (a study, the final runs, the investigation) and the whole run."""

    def __init__(self, progress: Progress, settings: rmsln_mnist1d.Settings) -> None:
        s = settings
        total = 2 * s.trials * s.trial_epochs + 2 * s.seeds * s.epochs
        if s.investigate:
            total += rmsln_investigation.runs_planned(min(s.seeds, INVESTIGATION_SEEDS)) * s.epochs
        self.progress = progress
        self.overall: TaskID = progress.add_task("whole run", total=total)
        self.current: TaskID = progress.add_task("starting", total=1)

    def on_phase(self, label: str, epochs: int) -> None:
        self.progress.reset(self.current, total=max(epochs, 1), description=label)

    def on_epoch(self, count: int = 1) -> None:
        self.progress.advance(self.current, count)
        self.progress.advance(self.overall, count)


def investigate(experiment: rmsln_mnist1d.Experiment, bars: RmslnProgress) -> dict[str, Any]:
    s = experiment.settings
    seeds = s.final_seeds()[:INVESTIGATION_SEEDS]
    bars.on_phase("investigation: batch sizes and penalty definitions", rmsln_investigation.runs_planned(len(seeds)))

    def on_run() -> None:
        bars.progress.advance(bars.current)
        bars.progress.advance(bars.overall, s.epochs)

    return rmsln_investigation.investigate(experiment.data, s, seeds, on_run)


def run_experiment(settings: rmsln_mnist1d.Settings, storage: str, console: Console) -> dict[str, Any]:
    with progress_bars(console) as progress:
        bars = RmslnProgress(progress, settings)
        experiment = rmsln_mnist1d.Experiment(settings, storage, bars.on_phase, bars.on_epoch, progress.console.log)
        result = experiment.run()
        investigation = None
        if settings.investigate and not result.interrupted:
            try:
                investigation = investigate(experiment, bars)
            except KeyboardInterrupt:
                result.interrupted = True
        progress.update(bars.overall, total=progress.tasks[bars.overall].completed)
    return rmsln_mnist1d.to_json(result, experiment.batch_size, investigation)


def run_rmsln(args: argparse.Namespace, device: str, out: Path, console: Console) -> tuple[int, str]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = rmsln_settings(args, device)
    storage = settings.storage or f"sqlite:///{(out / 'optuna-rmsln-mnist1d.db').resolve()}"
    console.rule("[bold]RMSLN vs Adam: MNIST-1D, tuned with Optuna")
    console.print(
        f"protocol [bold]{settings.protocol}[/], {settings.trials} trials x {settings.trial_epochs} epochs per model, "
        f"final {settings.seeds} seeds x {settings.epochs} epochs, batch "
        f"{settings.batch_size or ('the whole training set' if settings.protocol == 'published' else 100)}, "
        f"device {device}, storage {storage}"
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
