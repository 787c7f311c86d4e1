"""The RLN experiment's command-line options (the standard library only: they are added
before the ``bench`` extra is checked)."""

from __future__ import annotations

import argparse

TITLE = "rln experiment"
HELP = "RLN vs L1 vs none on Boston housing + 1000 noise features"
NEGATIVE_VALUE_OPTIONS = ("--rln-grid",)  # options whose value may start with '-'


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


def add_arguments(rln: argparse._ArgumentGroup) -> None:
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
