"""``torch-rln``: rerun the published experiments with torch-rln's wrappers.

    torch-rln bench rln     RLN vs L1 vs none on Boston housing + 1000 noise features
    torch-rln bench rmsln   Adam vs Adam + RMSLN on MNIST-1D, tuned with Optuna
    torch-rln bench tabular RLN vs the regularizers and the trees on tabular data (or your CSV)
    torch-rln bench         every experiment, one report

Only the standard library is imported before the arguments are checked, so that a
missing ``bench`` extra is reported with the exact command that installs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence

from .tabular.arguments import add_tabular_arguments, check_tabular_arguments

EXPERIMENTS = ("rln", "rmsln", "tabular")
BENCH_MODULES = {
    "numpy": "numpy",
    "rich": "rich",
    "matplotlib": "matplotlib",
    "optuna": "optuna",
    "mnist1d": "mnist1d",
    "sklearn": "sklearn",
}


def _positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {name}: {text!r} (expected a positive integer)") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"invalid {name}: {text!r} (expected a positive integer)")
        return value

    return parse


def _seeds(text: str) -> int | list[int]:
    """``N`` (a count) or ``S1,S2,...`` (the seeds themselves)."""
    message = f"invalid --seeds: {text!r} (expected a count N >= 1 or a list of seeds, e.g. 0,1,2)"
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or ("," not in text and values[0] < 1) or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(message)
    return values if "," in text else values[0]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --depths: {text!r} (expected integers >= 2, e.g. 2,3,4)") from None
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"invalid --depths: {text!r} (expected integers >= 2, e.g. 2,3,4)")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid --l1-values: {text!r} (expected numbers > 0, e.g. 0.01,0.1,1)"
        ) from None
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"invalid --l1-values: {text!r} (expected numbers > 0, e.g. 0.01,0.1,1)")
    return values


def _rln_grid(text: str) -> list[tuple[float, float]]:
    grid = []
    for item in (i for i in text.split(",") if i.strip()):
        parts = item.split(":")
        try:
            theta, log10_nu = (float(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid --rln-grid entry {item!r} in {text!r} (expected THETA:LOG10NU pairs, e.g. -10:6,-8:6)"
            ) from None
        if not all(abs(v) < float("inf") for v in (theta, log10_nu)) or log10_nu > 300:
            raise argparse.ArgumentTypeError(f"invalid --rln-grid entry {item!r}: values must be finite")
        grid.append((theta, log10_nu))
    if not grid:
        raise argparse.ArgumentTypeError(f"invalid --rln-grid: {text!r} (expected THETA:LOG10NU pairs)")
    return grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torch-rln", description="torch-rln: rerun the published experiments.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    bench = commands.add_parser(
        "bench",
        help="rerun the published experiments and compare with the published numbers",
        description="Rerun the published experiments; with no EXPERIMENT, all of them.",
    )
    _common_arguments(bench)
    _rmsln_arguments(bench.add_argument_group("rmsln experiment"))
    _rln_arguments(bench.add_argument_group("rln experiment"))
    add_tabular_arguments(
        bench.add_argument_group(
            "tabular experiment",
            "also --trials (per method, data set and seed), --seeds, --epochs (the most per MLP, early-stopped), "
            "--batch-size, --no-compile, --storage, --study-name and --heartbeat",
        )
    )
    return parser


def _common_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("experiment", nargs="?", choices=EXPERIMENTS, help="which experiment (default: all)")
    bench.add_argument(
        "--quick", action="store_true", help="a smoke run: a few tiny configurations, to check that everything works"
    )
    bench.add_argument(
        "--protocol",
        choices=("published", "holdout"),
        default="published",
        help="published: select on the test set, as the paper; holdout: select on a validation split",
    )
    bench.add_argument(
        "--repeats", type=_positive_int("--repeats"), help="training runs per configuration (default 10)"
    )
    bench.add_argument("--epochs", type=_positive_int("--epochs"), help="epochs per (final) run (default 100)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the noise features, initialization and shuffles")
    bench.add_argument(
        "--seeds",
        type=_seeds,
        metavar="N|S1,S2,...",
        help="rln: run the whole protocol once per seed (N: --seed, --seed+1, ...; default: --seed "
        "alone); rmsln: the seeds of the final runs (default 5)",
    )
    bench.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    bench.add_argument("--out", default="runs/bench", metavar="DIR", help="where results go (default runs/bench)")


def _rmsln_arguments(rmsln: argparse._ArgumentGroup) -> None:
    rmsln.add_argument("--trials", type=_positive_int("--trials"), help="Optuna trials per model (default 50)")
    rmsln.add_argument(
        "--trial-epochs",
        type=_positive_int("--trial-epochs"),
        help="epochs per trial (default: --epochs at full batch under --protocol published, else 30)",
    )
    rmsln.add_argument(
        "--batch-size",
        type=_positive_int("--batch-size"),
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
        type=_positive_int("--heartbeat"),
        metavar="SECONDS",
        help="Optuna heartbeat: a dead worker's trial is marked failed after 3 missed beats (default 10)",
    )


def _rln_arguments(rln: argparse._ArgumentGroup) -> None:
    rln.add_argument(
        "--no-compile",
        action="store_true",
        help="run RLN's update eagerly instead of as a compiled kernel (same math; --quick implies it)",
    )
    rln.add_argument("--depths", type=_int_list, help="depths to search, in order, until worse (default 2,3,...)")
    rln.add_argument(
        "--l1-values", type=_float_list, help="L1 strengths, in order, until worse (default 0.01,0.1,1,...)"
    )
    rln.add_argument(
        "--exclude-collapsed",
        action="store_true",
        help="search with the mean over repeats that did not collapse (default: over all, as published)",
    )
    rln.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="train nothing: one report across the seeds of runs made apart (their rln-boston.json files, "
        "e.g. one process per seed), with the summary of --seeds",
    )
    rln.add_argument(
        "--rln-grid", type=_rln_grid, help="THETA:LOG10NU pairs, e.g. -10:6,-8:6 (default -8:6,-10:5,-10:6,-10:7,-12:6)"
    )


def missing_bench_modules() -> list[str]:
    return [name for name, module in BENCH_MODULES.items() if importlib.util.find_spec(module) is None]


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--rln-grid -10:6`` as ``--rln-grid=-10:6``: argparse would take ``-10:6`` for an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--rln-grid":
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
    if args.combine and args.experiment != "rln":
        parser.error("--combine: name the experiment, as in `torch-rln bench rln --combine a.json b.json`")
    check_tabular_arguments(args, parser)
    from .bench import run_bench

    return run_bench(args, parser)


if __name__ == "__main__":
    raise SystemExit(main())
