"""What an experiment reports while it runs (:class:`Observer`), and the rich progress bars
that show it (:class:`Bars`)."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Observer:
    """Receives an experiment's progress. This one ignores it (tests, use from Python);
    :class:`Bars` shows it."""

    def phase(self, label: str, units: int) -> None:
        """A phase of ``units`` units of work (steps, epochs) starts."""

    def advance(self, units: int = 1) -> None:
        """``units`` units of the current phase are done."""

    def log(self, text: str) -> None:
        """A line worth keeping: what a phase found."""


def progress_bars(console: Console) -> Progress:
    """The rich display that :class:`Bars` draws in: description, bar, count, time, ETA."""
    return Progress(
        TextColumn("{task.description}", style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


class Bars(Observer):
    """Two bars, the current phase and the whole run, with the log lines printed above them.

    The whole run's total is ``plan(units)``, called with the first phase's units (an
    experiment whose size is known before it starts returns a constant); it grows if the
    run turns out longer.
    """

    def __init__(self, progress: Progress, plan: Callable[[int], int]) -> None:
        self.progress, self.plan = progress, plan
        self.overall = progress.add_task("whole run", total=1)
        self.current = progress.add_task("starting", total=1)
        self.planned: int | None = None

    def phase(self, label: str, units: int) -> None:
        self.progress.reset(self.current, total=max(units, 1), description=label)
        if self.planned is None:
            self.planned = self.plan(units)
        done = self.progress.tasks[self.overall].completed
        self.progress.update(self.overall, total=max(self.planned, done + units))

    def advance(self, units: int = 1) -> None:
        self.progress.advance(self.current, units)
        self.progress.advance(self.overall, units)

    def log(self, text: str) -> None:
        self.progress.console.log(text)

    def finish(self) -> None:
        """The whole run is done (or stopped): its bar ends where the work did."""
        self.progress.update(self.overall, total=self.progress.tasks[self.overall].completed)
