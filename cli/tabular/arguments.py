"""The tabular experiment's command-line options (the standard library only: they are added
before the ``bench`` extra is checked).

It also takes options that other experiments define: ``--trials`` (per method, data set and
seed), ``--seeds``, ``--epochs`` (the most per MLP, early-stopped), ``--batch-size``,
``--no-compile``, ``--storage``, ``--study-name`` and ``--heartbeat``.
"""

from __future__ import annotations

import argparse

TITLE = "tabular experiment"
HELP = "RLN vs the regularizers and the trees on tabular data (or your CSV)"
NEGATIVE_VALUE_OPTIONS: tuple[str, ...] = ()
SHARED_OPTIONS = "--trials, --seeds, --epochs, --batch-size, --no-compile, --storage, --study-name, --heartbeat"

# The data sets by name (kept here, free of imports; a test holds it equal to datasets.DATASETS).
DATASET_NAMES = (
    "boston", "diabetes", "breast_cancer", "digits",
    "boston_noise", "diabetes_noise", "breast_cancer_noise", "digits_noise",
    "friedman1", "make_classification",
)  # fmt: skip
OWN_OPTIONS = ("datasets", "full", "csv", "target", "task", "impute", "depth")  # the options only this experiment takes


def _datasets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASET_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"invalid --datasets: {text!r} ({'unknown: ' + ', '.join(unknown) if unknown else 'empty'}; "
            f"expected names from {', '.join(DATASET_NAMES)})"
        )
    return list(dict.fromkeys(names))


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"invalid --depth: {text!r} (expected an integer >= 2)")
    return value


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.description = f"also {SHARED_OPTIONS} (--trials: per method, data set and seed; --epochs: the most per MLP)"
    group.add_argument(
        "--datasets",
        type=_datasets,
        metavar="NAME,...",
        help="the data sets to run (default: boston_noise, diabetes_noise, friedman1, make_classification; "
        f"--full: all): {', '.join(DATASET_NAMES)}",
    )
    group.add_argument(
        "--full",
        action="store_true",
        help="every data set, 5 seeds, 20 trials (default: 3 seeds, 16 trials; in `torch-rln bench`: "
        "boston_noise and friedman1, 3 seeds, 8 trials)",
    )
    group.add_argument("--csv", metavar="PATH", help="your own data: a CSV file (with --target)")
    group.add_argument("--target", metavar="COLUMN", help="the CSV's target column")
    group.add_argument(
        "--task", choices=("regression", "classification"), help="the CSV's task (default: inferred from the target)"
    )
    group.add_argument(
        "--impute",
        choices=("mean", "most_frequent"),
        help="fill the CSV's missing input values (fit on each training split; default: missing values are an error)",
    )
    group.add_argument("--depth", type=_depth, help="the MLPs' depth, hidden layers + 1 (default 3)")
