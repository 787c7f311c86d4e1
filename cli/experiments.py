"""The table of experiments: ``torch-rln bench NAME`` runs the subpackage named beside NAME.

Adding an experiment is one line in :data:`EXPERIMENTS` and a subpackage with two modules:

* ``arguments.py``, the standard library only (the options are added before the ``bench``
  extra is checked): ``TITLE``, ``HELP``, ``NEGATIVE_VALUE_OPTIONS`` (options whose value
  may start with ``-``) and ``add_arguments(group)``;
* ``run.py``: ``check(args, parser)`` (exit with ``parser.error`` on arguments it cannot
  take) and ``run(args, device, out, console) -> (exit status, report.md section)``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from rich.console import Console

EXPERIMENTS = {  # the command's name -> the subpackage; `torch-rln bench` runs them in this order
    "rln": "rln_boston",
    "rmsln": "rmsln_mnist1d",
    "tabular": "tabular",
}


class Arguments(Protocol):
    """An experiment's ``arguments`` module."""

    TITLE: str
    HELP: str
    NEGATIVE_VALUE_OPTIONS: tuple[str, ...]

    def add_arguments(self, group: argparse._ArgumentGroup) -> None: ...


class Runner(Protocol):
    """An experiment's ``run`` module."""

    def check(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, device: str, out: Path, console: Console) -> tuple[int, str]: ...


def arguments(name: str) -> Arguments:
    return cast(Arguments, importlib.import_module(f"{__package__}.{EXPERIMENTS[name]}.arguments"))


def runner(name: str) -> Runner:
    return cast(Runner, importlib.import_module(f"{__package__}.{EXPERIMENTS[name]}.run"))
