"""``torch-rln bench rln``: run the RLN experiment (one or several seeds) with progress bars,
write its JSON and figures, and return its report.md section."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

from . import rln_analysis, rln_boston
from .machine import machine
from .plots import rln_features_plot, rln_scores_plot
from .progress import apply_arguments, progress_bars
from .report_rln import rln_markdown, show_rln

QUICK_RLN: dict[str, Any] = {
    "depths": [2, 3, 4],
    "l1_values": [0.1, 1.0],
    "rln_grid": [(-10.0, 6.0), (-8.0, 6.0)],
    "repeats": 3,
    "epochs": 3,
}


def rln_settings(args: argparse.Namespace, device: str) -> rln_boston.Settings:
    settings = rln_boston.Settings(protocol=args.protocol, seed=args.seed, device=device)
    apply_arguments(settings, args, QUICK_RLN, ("depths", "l1_values", "rln_grid", "repeats", "epochs"))
    settings.compile = not args.no_compile and not args.quick
    settings.exclude_collapsed = args.exclude_collapsed
    return settings


def seed_list(args: argparse.Namespace) -> list[int]:
    """``--seeds``: a list as given, a count N as ``--seed``, ``--seed`` + 1, ...; default ``--seed``."""
    if args.seeds is None:
        return [args.seed]
    if isinstance(args.seeds, list):
        return list(args.seeds)
    return [args.seed + k for k in range(args.seeds)]


class RlnProgress:
    """The two bars (this configuration; the whole run, estimated from the first
    configuration's steps) and the log line of each finished configuration."""

    def __init__(self, progress: Progress, settings: rln_boston.Settings, seeds: int) -> None:
        self.progress, self.settings, self.seeds = progress, settings, seeds
        self.overall: TaskID = progress.add_task("whole run", total=1)
        self.current: TaskID = progress.add_task("starting", total=1)
        self.planned = 0
        self.seed = settings.seed

    def on_config(self, label: str, steps: int) -> None:
        self.progress.reset(self.current, total=steps, description=f"seed {self.seed}: {label}")
        if self.planned == 0:
            s = self.settings
            configs = min(len(s.depths), 4) + min(len(s.l1_values), 3) + len(s.rln_grid)
            configs += 3 if s.protocol == "holdout" else 0
            self.planned = configs * steps * self.seeds
        done = self.progress.tasks[self.overall].completed
        self.progress.update(self.overall, total=max(self.planned, done + steps))

    def on_step(self) -> None:
        self.progress.advance(self.current)
        self.progress.advance(self.overall)

    def on_run(self, run: rln_boston.Run) -> None:
        collapsed = f", {len(run.collapsed)} collapsed" if run.collapsed else ""
        self.progress.console.log(
            f"seed {self.seed}: {rln_boston.config_label(run.config)}: MSE {run.mean:.2f} ({run.std:.2f}), "
            f"as Keras reports {sum(run.keras) / len(run.keras):.2f}{collapsed}, {run.seconds:.0f} s"
        )

    def experiment(self, settings: rln_boston.Settings) -> rln_boston.Experiment:
        self.seed = settings.seed
        return rln_boston.Experiment(settings, self.on_config, self.on_step, self.on_run)


def write_report(results: list[rln_boston.Result], seeds: list[int], seconds: float, out: Path) -> dict[str, Any]:
    """The JSON report of the seeds so far (written after every seed, so a killed run keeps them)."""
    report = rln_analysis.to_json(results, seconds, several=len(seeds) > 1)
    report["machine"] = machine(results[0].settings.device)
    (out / "rln-boston.json").write_text(json.dumps(report, indent=2))
    return report


def figures(report: dict[str, Any], out: Path) -> list[str]:
    names = []
    if report.get("runs") or report.get("seeds"):
        names.append(rln_scores_plot(report, out / "rln-boston-mse.png").name)
    first = report["seeds"][0] if report.get("seeds") else report
    if first.get("features"):
        names.append(rln_features_plot(report, out / "rln-boston-features.png").name)
    return names


def combine_runs(paths: list[str], out: Path, console: Console) -> tuple[int, str]:
    """``--combine``: one report across the seeds of several runs' JSON files."""
    console.rule("[bold]RLN vs L1 vs none: Boston housing + 1000 noise features, runs combined")
    reports = [json.loads(Path(p).read_text()) for p in paths]
    report = rln_analysis.combine(reports)
    report["machine"] = reports[0].get("machine", {})
    report["combined_from"] = [{"path": p, "seconds": r["seconds"]} for p, r in zip(paths, reports, strict=True)]
    (out / "rln-boston.json").write_text(json.dumps(report, indent=2))
    names = figures(report, out)
    show_rln(report, console)
    return (130 if report["interrupted"] else 0), rln_markdown(report, names)


def run_rln(args: argparse.Namespace, device: str, out: Path, console: Console) -> tuple[int, str]:
    if args.combine:
        return combine_runs(args.combine, out, console)
    settings = rln_settings(args, device)
    if settings.compile and not rln_boston.compile_works(device):
        console.print(
            "[yellow]torch.compile does not run here: RLN takes the eager foreach path (slower, same math).[/]"
        )
        settings.compile = False
    seeds = seed_list(args)
    console.rule("[bold]RLN vs L1 vs none: Boston housing + 1000 noise features")
    console.print(
        f"protocol [bold]{settings.protocol}[/], seeds {', '.join(map(str, seeds))}, {settings.repeats} repeats x "
        f"{settings.epochs} epochs, batch {settings.batch_size}, device {device}, "
        f"RLN update {'compiled' if settings.compile else 'eager'}; depth chosen by "
        f"{rln_analysis.depth_rule(settings)}"
    )
    start = time.perf_counter()
    with progress_bars(console) as progress:
        bars = RlnProgress(progress, settings, len(seeds))
        results: list[rln_boston.Result] = []

        def save(result: rln_boston.Result) -> None:
            results.append(result)
            write_report(results, seeds, time.perf_counter() - start, out)

        rln_boston.run_seeds(settings, seeds, bars.experiment, save)
        progress.update(bars.overall, total=progress.tasks[bars.overall].completed)
    report = write_report(results, seeds, time.perf_counter() - start, out)
    names = figures(report, out)
    show_rln(report, console)
    if report["interrupted"]:
        console.print("[bold yellow]Interrupted:[/] the tables hold the seeds and configurations that finished.")
    return (130 if report["interrupted"] else 0), rln_markdown(report, names)
