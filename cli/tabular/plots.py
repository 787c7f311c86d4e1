"""The tabular experiment's figures: every seed's test score per method and data set with
the mean and its 95% interval, and the feature recovery."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .features import RECOVERY_METHODS
from .metrics import LOWER_IS_BETTER, NAMES

COLORS = {
    "none": "tab:gray",
    "l1": "tab:blue",
    "weight_decay": "tab:cyan",
    "dropout": "tab:purple",
    "rln": "tab:red",
    "hist_gb": "tab:green",
    "l1_linear": "tab:olive",
}
SHORT = {
    "none": "none",
    "l1": "L1",
    "weight_decay": "WD",
    "dropout": "dropout",
    "rln": "RLN",
    "hist_gb": "HGB",
    "l1_linear": "L1 lin.",
}


def _grid(count: int) -> tuple[Any, np.ndarray]:
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def scores_plot(report: dict[str, Any], path: Path) -> Path:
    """One panel per data set: one point per seed per method (the primary metric), the mean
    as a bar with its 95% t interval."""
    datasets = report["datasets"]
    fig, axes = _grid(len(datasets))
    rng = np.random.default_rng(0)
    for ax, (name, d) in zip(axes.flat, datasets.items(), strict=False):
        metric = d["primary"]
        methods = [m for m, v in d["methods"].items() if v["seeds"]]
        for x, method in enumerate(methods):
            entry = d["methods"][method]["test"][metric]
            values = np.asarray(entry["values"], dtype=float)
            ax.scatter(
                x + rng.uniform(-0.12, 0.12, len(values)), values, s=14, color=COLORS[method], alpha=0.8, zorder=3
            )
            ci = entry["ci95"]
            low, high = ci if ci is not None else (entry["mean"], entry["mean"])
            ax.errorbar(
                x + 0.28, entry["mean"], yerr=[[entry["mean"] - low], [high - entry["mean"]]],
                fmt="_", color="black", markersize=12, capsize=3, zorder=4,
            )  # fmt: skip
        ax.set_xticks(range(len(methods)), [SHORT[m] for m in methods], rotation=35, fontsize=8)
        better = "lower" if metric in LOWER_IS_BETTER else "higher"
        ax.set_ylabel(f"test {NAMES[metric]} ({better} is better)", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "Test score per seed (points) and mean with 95% t interval (black), each method tuned with the same budget",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def features_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Per data set whose noise inputs are known: the share of noise inputs each method
    eliminated and the share of the other inputs it kept (bars: mean; points: seeds)."""
    shown = {
        name: d
        for name, d in report["datasets"].items()
        if d["features"]["noise"] and any(m in d["features"]["methods"] for m in RECOVERY_METHODS)
    }
    if not shown:
        return None
    fig, axes = _grid(len(shown))
    for ax, (name, d) in zip(axes.flat, shown.items(), strict=False):
        methods = [m for m in RECOVERY_METHODS if m in d["features"]["methods"]]
        for x, method in enumerate(methods):
            entry = d["features"]["methods"][method]
            for offset, key, hatch in ((-0.18, "noise_eliminated_share", None), (0.18, "real_kept_share", "//")):
                values = [v for v in entry[key]["values"] if v is not None]
                mean = entry[key]["mean"] or 0.0
                ax.bar(x + offset, mean, width=0.34, color=COLORS[method], alpha=0.55, hatch=hatch, edgecolor="black")
                ax.scatter([x + offset] * len(values), values, s=10, color="black", zorder=3)
        ax.set_xticks(range(len(methods)), [SHORT[m] for m in methods], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(
            f"{name} ({len(d['features']['noise'])} noise of {len(d['features']['inputs'])} inputs)", fontsize=9
        )
        ax.set_ylabel("share", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Plain bars: share of noise inputs eliminated (higher is better); hatched: share of the other "
                 "inputs kept (higher is better)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
