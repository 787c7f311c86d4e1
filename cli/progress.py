"""The rich progress bars and the settings plumbing shared by the experiments' runners."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def apply_arguments(settings: Any, args: argparse.Namespace, quick: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """``settings`` with the ``--quick`` values, then the arguments the user gave, applied."""
    if args.quick:
        for key, value in quick.items():
            setattr(settings, key, value)
    for key in keys:
        value = getattr(args, key)
        if value is not None:
            setattr(settings, key, value)
    return settings
