"""``torch-rln bench tabular``: run the protocol on each data set with a progress bar, and
write ``tabular.json``, the report.md section and the figures.

Sizes (data sets, seeds, trials) come from one of four presets, then the arguments:

* ``--quick``: a smoke run (two small data sets, two seeds, two trials, three epochs);
* the default of ``torch-rln bench tabular``: the sets with irrelevant inputs that fit
  in a few minutes on a 2-core CPU;
* ``torch-rln bench`` (every experiment): a smaller default, and the output says how to
  run the full suite;
* ``--full``: every data set, 5 seeds, the full trial budget.

Everything finished is kept in the Optuna storage (SQLite in ``--out`` unless
``--storage``): a rerun of the same command continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from rich.console import Console

from ..common.machine import machine
from ..common.progress import Bars, progress_bars
from ..common.studies import make_storage
from .analysis import dataset_json, summary_json
from .arguments import OWN_OPTIONS
from .csv_input import InputError, file_digest, read_csv
from .datasets import DATASETS, Table, load
from .methods import GB_MAX_ITER, METHODS
from .plots import features_plot, scores_plot
from .protocol import DatasetRun, Settings
from .report import plural, show_tabular, tabular_markdown
from .trainer import Schedule
from .tuning import Studies
from .verdicts import verdicts

EXPERIMENT = "tabular"


@dataclass(frozen=True)
class Preset:
    datasets: tuple[str, ...]
    seeds: int
    trials: int
    schedule: Schedule = field(default_factory=Schedule)
    ask_batch: int = 8
    gb_max_iter: int = GB_MAX_ITER


PRESETS = {
    "quick": Preset(("friedman1", "breast_cancer_noise"), 2, 2, Schedule(max_epochs=3, patience=2), 2, 20),
    "default": Preset(("boston_noise", "diabetes_noise", "friedman1", "make_classification"), 3, 16),
    "suite": Preset(("boston_noise", "friedman1"), 3, 8),
    "full": Preset(DATASETS, 5, 20, ask_batch=10),
}
FULL_COMMAND = "torch-rln bench tabular --full --out runs/tabular-full"


def preset_name(args: argparse.Namespace) -> str:
    if args.quick:
        return "quick"
    if args.full:
        return "full"
    return "default" if args.experiment == EXPERIMENT else "suite"


def shortened(args: argparse.Namespace) -> bool:
    """A preset smaller than ``--full`` on the built-in data sets: the output names the full suite."""
    return preset_name(args) != "full" and not args.datasets and not args.csv


def seed_list(args: argparse.Namespace, count: int) -> list[int]:
    if isinstance(args.seeds, list):
        return list(args.seeds)
    return [args.seed + k for k in range(args.seeds or count)]


def settings_for(args: argparse.Namespace, device: str) -> tuple[Settings, list[str]]:
    """The protocol's settings and the built-in data sets to run."""
    preset = PRESETS[preset_name(args)]
    schedule = preset.schedule
    if args.depth:
        schedule = replace(schedule, depth=args.depth)
    if args.epochs:
        schedule = replace(schedule, max_epochs=args.epochs)
    if args.batch_size:
        schedule = replace(schedule, batch_size=args.batch_size)
    settings = Settings(
        seeds=seed_list(args, preset.seeds),
        trials=args.trials or preset.trials,
        ask_batch=min(preset.ask_batch, args.trials or preset.trials),
        schedule=schedule,
        impute=args.impute,
        device=device,
        study_prefix=args.study_name,
        gb_max_iter=preset.gb_max_iter,
        compile_rln=not args.quick and not args.no_compile,
    )
    if args.datasets:
        names = list(args.datasets)
    elif args.csv:
        names = []
    else:
        names = list(preset.datasets)
    return settings, names


def load_tables(args: argparse.Namespace, names: list[str]) -> tuple[list[Table], dict[str, str]]:
    """The data sets, and the digest of the CSV file by its table's name (the CSV: an error is
    one line on stderr and exit status 2)."""
    tables = [load(name) for name in names]
    digests: dict[str, str] = {}
    if args.csv:
        try:
            table = read_csv(args.csv, args.target, args.task, args.impute)
            digests[table.name] = file_digest(Path(args.csv))
        except InputError as error:
            print(f"torch-rln bench tabular: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        if table.name in names:
            table.name = f"csv_{table.name}"
        tables.append(table)
    return tables, digests


def records_of(run: DatasetRun) -> dict[str, dict[int, dict[str, Any]]]:
    """The final records stored in the studies, by method and seed."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for (method, seed), record in run.records().items():
        out.setdefault(method, {})[seed] = record
    return {m: out[m] for m in METHODS if m in out}


def build_report(runs: list[DatasetRun], settings: Settings, command: str, seconds: float) -> dict[str, Any]:
    datasets = {}
    for run in runs:
        records = records_of(run)
        if records:
            datasets[run.table.name] = dataset_json(run.table, run.classes, settings.seeds, records)
    s = settings.schedule
    return {
        "experiment": EXPERIMENT,
        "command": command,
        "settings": {
            "seeds": settings.seeds,
            "trials": settings.trials,
            "trials_at_once": settings.ask_batch,
            "depth": s.depth,
            "batch_size": s.batch_size,
            "max_epochs": s.max_epochs,
            "patience": s.patience,
            "hist_gb_max_iter": settings.gb_max_iter,
            "impute": settings.impute,
            "device": settings.device,
            "splits": "60% training, 20% validation, 20% test; stratified for classification",
            "methods": {m: METHODS[m].label for m in settings.methods},
        },
        "datasets": datasets,
        "summary": summary_json(datasets),
        "verdicts": verdicts(datasets),
        "seconds": round(seconds, 1),
    }


def command_of(args: argparse.Namespace) -> str:
    """The command that reruns (and so resumes) this run."""
    parts = ["torch-rln", "bench", *([args.experiment] if args.experiment else [])]
    for flag in ("quick", "full"):
        if getattr(args, flag):
            parts.append(f"--{flag}")
    for key in ("datasets", "csv", "target", "task", "impute", "depth", "trials", "epochs", "batch_size", "seeds",
                "study_name"):  # fmt: skip
        value = getattr(args, key, None)
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            parts += [f"--{key.replace('_', '-')}", text]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    if args.storage:
        parts += ["--storage", "URL"]
    parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def run_all(runs: list[DatasetRun], on_done: Callable[[], None]) -> None:
    """Tune every data set to its budget and train its final models; a data set whose
    remaining trials other workers hold is left for later, and the loop comes back to it."""
    pending = list(runs)
    while pending:
        progressed = False
        for run in list(pending):
            if run.tune():
                run.finals()
                pending.remove(run)
                on_done()
                progressed = True
        if pending and not progressed:
            time.sleep(1.0)


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The combinations argparse cannot check (exit status 2); ``--storage`` is checked with
    the RMSLN experiment's options, which define it."""
    own = [f"--{k.replace('_', '-')}" for k in OWN_OPTIONS if getattr(args, k, None)]
    if own and args.experiment != EXPERIMENT:
        parser.error(f"{', '.join(own)}: name the experiment, as in `torch-rln bench tabular {own[0]} ...`")
    if args.csv and not args.target:
        parser.error("--csv: name the target column with --target COLUMN")
    if not args.csv and (args.target or args.task or args.impute):
        parser.error("--target, --task and --impute describe a CSV file: give it with --csv PATH")


def run(args: argparse.Namespace, device: str, out: Path, console: Console) -> tuple[int, str]:
    """The experiment, on one torch thread: its models are small, and on a 2-core CPU shared
    with anything else a second thread's synchronization costs more than it computes (a
    stacked round took 3x as long with two threads on a busy machine). To use more cores,
    run several workers on one ``--storage``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args, device, out, console)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, device: str, out: Path, console: Console) -> tuple[int, str]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU builds
    settings, names = settings_for(args, device)
    tables, digests = load_tables(args, names)
    preset = preset_name(args)
    url = args.storage or f"sqlite:///{(out / 'optuna-tabular.db').resolve()}"
    heartbeat = args.heartbeat or 10
    studies = Studies(make_storage(url, heartbeat), settings.trials, args.storage is not None, heartbeat)
    command = command_of(args)
    short = shortened(args)
    console.rule("[bold]Tabular data: RLN against the regularizers and the trees")
    console.print(
        f"{plural(len(tables), 'data set')} ({', '.join(t.name for t in tables)}); "
        f"seeds {', '.join(map(str, settings.seeds))}; "
        f"{settings.trials} trials per method, data set and seed; device {device}; storage "
        f"{'(given with --storage)' if args.storage else url}" + (f"; the full suite: {FULL_COMMAND}" if short else ""),
        highlight=False,
    )
    for table in tables:
        for note in table.notes:
            console.print(f"  {table.name}: {note}", markup=False, highlight=False)
    start = time.perf_counter()
    interrupted = False
    runs: list[DatasetRun] = []
    report: dict[str, Any] = {}

    def save() -> None:
        nonlocal report
        report = build_report(runs, settings, command, time.perf_counter() - start)
        report["interrupted"] = interrupted
        report["preset"] = preset
        if short:
            report["full_suite_command"] = FULL_COMMAND
        report["storage"] = url if args.storage is None else "(given with --storage)"
        report["machine"] = machine(device)
        (out / "tabular.json").write_text(json.dumps(report, indent=2))

    with progress_bars(console) as progress:
        planned: list[int] = []
        bars = Bars(progress, lambda _: sum(planned))
        try:
            for table in tables:
                runs.append(DatasetRun(table, settings, studies, bars, digests.get(table.name)))
            planned += [r.planned() for r in runs]
            run_all(runs, save)
        except KeyboardInterrupt:
            interrupted = True
        bars.finish()
    save()
    figures = []
    if report["datasets"]:
        figures.append(scores_plot(report, out / "tabular-scores.png").name)
        path = features_plot(report, out / "tabular-features.png")
        if path is not None:
            figures.append(path.name)
    show_tabular(report, console)
    if interrupted:
        console.print("[bold yellow]Interrupted:[/] finished trials and final models are kept; rerun to continue.")
    return (130 if interrupted else 0), tabular_markdown(report, figures)
