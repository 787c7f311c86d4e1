"""Command-line arguments the experiments share: the parsers of their values and the
settings they fill in. The standard library only: the options are added before the
``bench`` extra is checked."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def positive_int(name: str) -> Callable[[str], int]:
    """The parser of an option ``name`` that takes an integer >= 1."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {name}: {text!r} (expected a positive integer)") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"invalid {name}: {text!r} (expected a positive integer)")
        return value

    return parse


def seeds(text: str) -> int | list[int]:
    """``--seeds``: ``N`` (a count) or ``S1,S2,...`` (the seeds themselves)."""
    message = f"invalid --seeds: {text!r} (expected a count N >= 1 or a list of seeds, e.g. 0,1,2)"
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or ("," not in text and values[0] < 1) or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(message)
    return values if "," in text else values[0]


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
