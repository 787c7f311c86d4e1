"""The RMSLN experiment's command-line options (the standard library only: they are added
before the ``bench`` extra is checked)."""

from __future__ import annotations

import argparse

from ..common.arguments import positive_int

TITLE = "rmsln experiment"
HELP = "Adam vs Adam + RMSLN on MNIST-1D, tuned with Optuna"
NEGATIVE_VALUE_OPTIONS: tuple[str, ...] = ()


def add_arguments(rmsln: argparse._ArgumentGroup) -> None:
    rmsln.add_argument("--trials", type=positive_int("--trials"), help="Optuna trials per model (default 50)")
    rmsln.add_argument(
        "--trial-epochs",
        type=positive_int("--trial-epochs"),
        help="epochs per trial (default: --epochs at full batch under --protocol published, else 30)",
    )
    rmsln.add_argument(
        "--batch-size",
        type=positive_int("--batch-size"),
        help="training batch (default: the whole training set for --protocol published, as the "
        "write-up's figures need; 100 for holdout)",
    )
    rmsln.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna storage URL shared by workers, e.g. postgresql://... "
        "(default: SQLite in --out, which a rerun resumes)",
    )
    rmsln.add_argument(
        "--study-name",
        metavar="NAME",
        help="join the shared studies NAME-baseline and NAME-rmsln in --storage (several workers)",
    )
    rmsln.add_argument(
        "--heartbeat",
        type=positive_int("--heartbeat"),
        metavar="SECONDS",
        help="Optuna heartbeat: a dead worker's trial is marked failed after 3 missed beats (default 10)",
    )
    rmsln.add_argument(
        "--investigate",
        action="store_true",
        help="also measure where the write-up's figures come from: its batch, and candidate definitions of the "
        "RMSLN penalty (published protocol; a few dozen more training runs of --epochs)",
    )
