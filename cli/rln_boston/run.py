"""``torch-rln bench rln``: run the RLN experiment (one or several seeds) with progress bars,
write its JSON and figures, and return its report.md section."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from ..common.arguments import apply_arguments
from ..common.machine import machine
from ..common.progress import Bars, progress_bars
from . import results, search
from .model import compile_works
from .plots import rln_features_plot, rln_scores_plot
from .protocol import Settings, depth_rule
from .report import rln_markdown, show_rln

QUICK_RLN: dict[str, Any] = {
    "depths": [2, 3, 4],
    "l1_values": [0.1, 1.0],
    "rln_grid": [(-10.0, 6.0), (-8.0, 6.0)],
    "repeats": 3,
    "epochs": 3,
}
JSON_NAME = "rln-boston.json"


def rln_settings(args: argparse.Namespace, device: str) -> Settings:
    settings = Settings(protocol=args.protocol, seed=args.seed, device=device)
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


def planned_steps(settings: Settings, seeds: int) -> Callable[[int], int]:
    """The whole run's steps, estimated from the first configuration's: the configurations a
    search usually trains (it stops early where a deeper model or a stronger L1 gets worse)."""
    s = settings
    configs = min(len(s.depths), 4) + min(len(s.l1_values), 3) + len(s.rln_grid)
    configs += 3 if s.protocol == "holdout" else 0
    return lambda steps: configs * steps * seeds


def write_report(found: list[search.Result], seeds: list[int], seconds: float, out: Path) -> dict[str, Any]:
    """The JSON report of the seeds so far (written after every seed, so a killed run keeps them)."""
    report = results.to_json(found, seconds, several=len(seeds) > 1)
    report["machine"] = machine(found[0].settings.device)
    (out / JSON_NAME).write_text(json.dumps(report, indent=2))
    return report


def figures(report: dict[str, Any], out: Path) -> list[str]:
    names = []
    if report.get("runs") or report.get("seeds"):
        names.append(rln_scores_plot(report, out / "rln-boston-mse.png").name)
    first = report["seeds"][0] if report.get("seeds") else report
    if first.get("features"):
        names.append(rln_features_plot(report, out / "rln-boston-features.png").name)
    return names


def finish(report: dict[str, Any], out: Path, console: Console) -> tuple[int, str]:
    """The figures, the tables in the terminal, the exit status and the report section."""
    names = figures(report, out)
    show_rln(report, console)
    if report["interrupted"]:
        console.print("[bold yellow]Interrupted:[/] the tables hold the seeds and configurations that finished.")
    return (130 if report["interrupted"] else 0), rln_markdown(report, names)


def combine_runs(paths: list[str], out: Path, console: Console) -> tuple[int, str]:
    """``--combine``: one report across the seeds of several runs' JSON files."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    report = results.combine(reports)
    noise = report["settings"]["noise_features"]
    console.rule(f"[bold]RLN vs L1 vs none: Boston housing + {noise} noise features, runs combined")
    report["machine"] = reports[0].get("machine", {})
    report["combined_from"] = [{"path": p, "seconds": r["seconds"]} for p, r in zip(paths, reports, strict=True)]
    (out / JSON_NAME).write_text(json.dumps(report, indent=2))
    return finish(report, out, console)


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Arguments this experiment cannot take (exits with status 2)."""
    if args.combine and args.experiment != "rln":
        parser.error("--combine: name the experiment, as in `torch-rln bench rln --combine a.json b.json`")


def run(args: argparse.Namespace, device: str, out: Path, console: Console) -> tuple[int, str]:
    if args.combine:
        return combine_runs(args.combine, out, console)
    settings = rln_settings(args, device)
    if settings.compile and not compile_works(device):
        console.print(
            "[yellow]torch.compile does not run here: RLN takes the eager foreach path (slower, same math).[/]"
        )
        settings.compile = False
    seeds = seed_list(args)
    console.rule(f"[bold]RLN vs L1 vs none: Boston housing + {settings.noise_features} noise features")
    console.print(
        f"protocol [bold]{settings.protocol}[/], seeds {', '.join(map(str, seeds))}, {settings.repeats} repeats x "
        f"{settings.epochs} epochs, batch {settings.batch_size}, device {device}, "
        f"RLN update {'compiled' if settings.compile else 'eager'}; depth chosen by {depth_rule(settings)}"
    )
    start = time.perf_counter()
    found: list[search.Result] = []

    def save(result: search.Result) -> None:
        found.append(result)
        write_report(found, seeds, time.perf_counter() - start, out)

    with progress_bars(console) as progress:
        bars = Bars(progress, planned_steps(settings, len(seeds)))
        search.run_seeds(settings, seeds, bars, save)
        bars.finish()
    report = write_report(found, seeds, time.perf_counter() - start, out)
    return finish(report, out, console)
