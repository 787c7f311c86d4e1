"""Small statistics shared by the experiments: mean and std, Student's t intervals.

SciPy is not a dependency: the two-sided 95% quantiles of Student's t are tabulated
for 1 to 30 degrees of freedom (the usual printed table, to 3 decimals) and computed
beyond that with the Cornish-Fisher expansion around the normal quantile, whose error
there is below 1e-3.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)  # fmt: skip
Z975 = 1.959963984540054  # the normal's 97.5% quantile


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"Invalid degrees of freedom: {df} (expected >= 1)")
    if df <= len(_T95):
        return _T95[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the population std (as numpy's default), NaN for no values."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values)


def mean_ci95(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """The mean and its 95% Student's t interval (None for fewer than two values)."""
    mean = statistics.fmean(values) if values else math.nan
    if len(values) < 2:
        return mean, None
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, [mean - half, mean + half]


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``b - a`` pair by pair: mean, std and a 95% t confidence interval."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean, ci = mean_ci95(diffs)
    out: dict[str, Any] = {"differences": diffs, "mean": mean, "ci95": ci, "n": len(diffs)}
    if ci is not None:
        out["std"] = statistics.stdev(diffs)
    return out
