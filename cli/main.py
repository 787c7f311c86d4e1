"""``torch-rln``: rerun the published experiments with torch-rln's wrappers.

    torch-rln bench NAME    one experiment (NAME: a key of the table in :mod:`.experiments`)
    torch-rln bench         every experiment, one report

Only the standard library is imported before the arguments are checked, so that a
missing ``bench`` extra is reported with the exact command that installs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from . import experiments
from .common.arguments import positive_int, seeds

BENCH_MODULES = {
    "numpy": "numpy",
    "rich": "rich",
    "matplotlib": "matplotlib",
    "optuna": "optuna",
    "mnist1d": "mnist1d",
    "scikit-learn": "sklearn",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torch-rln", description="torch-rln: rerun the published experiments.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    listing = "; ".join(f"{name}: {experiments.arguments(name).HELP}" for name in experiments.EXPERIMENTS)
    bench = commands.add_parser(
        "bench",
        help="rerun the published experiments and compare with the published numbers",
        description=f"Rerun the published experiments ({listing}); with no EXPERIMENT, all of them.",
    )
    _common_arguments(bench)
    for name in experiments.EXPERIMENTS:
        module = experiments.arguments(name)
        module.add_arguments(bench.add_argument_group(module.TITLE))
    return parser


def _common_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "experiment", nargs="?", choices=tuple(experiments.EXPERIMENTS), help="which experiment (default: all)"
    )
    bench.add_argument(
        "--quick", action="store_true", help="a smoke run: a few tiny configurations, to check that everything works"
    )
    bench.add_argument(
        "--protocol",
        choices=("published", "holdout"),
        default="published",
        help="published: select on the test set, as the paper; holdout: select on a validation split",
    )
    bench.add_argument("--repeats", type=positive_int("--repeats"), help="training runs per configuration (default 10)")
    bench.add_argument("--epochs", type=positive_int("--epochs"), help="epochs per (final) run (default 100)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the noise features, initialization and shuffles")
    bench.add_argument(
        "--seeds",
        type=seeds,
        metavar="N|S1,S2,...",
        help="rln: run the whole protocol once per seed (N: --seed, --seed+1, ...; default: --seed "
        "alone); rmsln: the seeds of the final runs (default 5)",
    )
    bench.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    bench.add_argument("--out", default="runs/bench", metavar="DIR", help="where results go (default runs/bench)")


def missing_bench_modules() -> list[str]:
    return [name for name, module in BENCH_MODULES.items() if importlib.util.find_spec(module) is None]


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--rln-grid -10:6`` as ``--rln-grid=-10:6``: argparse would take ``-10:6`` for an option."""
    options = {
        option for name in experiments.EXPERIMENTS for option in experiments.arguments(name).NEGATIVE_VALUE_OPTIONS
    }
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in options:
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    missing = missing_bench_modules()
    if missing:
        print(
            f"torch-rln {args.command} needs the 'bench' extra (missing: {', '.join(missing)}).\n"
            "Install it with:  pip install 'torch-rln[bench]'",
            file=sys.stderr,
        )
        return 2
    from .bench import run_bench

    return run_bench(args, parser)


if __name__ == "__main__":
    raise SystemExit(main())
