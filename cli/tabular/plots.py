"""The tabular experiment's figures: every seed's test score per method and data set with
the mean and its 95% interval, and the feature recovery."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch

from ..common.plots import new_figure, save
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
    fig, axes = new_figure(rows, (4.6 * cols, 3.6 * rows), cols)
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
    return save(fig, path)


BARS = (
    ("noise_eliminated_share", None, "noise inputs eliminated"),
    ("real_kept_share", "//", "other inputs kept"),
    ("real_in_top_share", "..", "other inputs among the k most important"),
)


def features_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Per data set whose noise inputs are known, per method: the share of noise inputs
    eliminated, of the other inputs kept, and of the other inputs among the k most
    important (bars: the mean; points: the seeds)."""
    shown = {name: d for name, d in report["datasets"].items() if d["features"]["noise"] and d["features"]["methods"]}
    if not shown:
        return None
    fig, axes = _grid(len(shown))
    width = 0.27
    for ax, (name, d) in zip(axes.flat, shown.items(), strict=False):
        methods = [m for m in COLORS if m in d["features"]["methods"]]
        for x, method in enumerate(methods):
            entry = d["features"]["methods"][method]
            for k, (key, hatch, _) in enumerate(BARS):
                if key not in entry:
                    continue
                values = [v for v in entry[key]["values"] if v is not None]
                offset = (k - 1) * width
                ax.bar(x + offset, entry[key]["mean"] or 0.0, width=width * 0.95, color=COLORS[method], alpha=0.55,
                       hatch=hatch, edgecolor="black", linewidth=0.5)  # fmt: skip
                ax.scatter([x + offset] * len(values), values, s=8, color="black", zorder=3)
        ax.set_xticks(range(len(methods)), [SHORT[m] for m in methods], rotation=35, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(
            f"{name} ({len(d['features']['noise'])} noise of {len(d['features']['inputs'])} inputs)", fontsize=9
        )
        ax.set_ylabel("share (higher is better)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor="white", edgecolor="black", hatch=hatch, label=label) for _, hatch, label in BARS]
    rows = axes.shape[0]
    top = 1 - 0.6 / (3.6 * rows + 0.75)  # room for the title and the legend, whatever the rows
    fig.set_size_inches(fig.get_size_inches()[0], 3.6 * rows + 0.75)
    fig.suptitle("Feature recovery per method (bars: mean over seeds; points: seeds)", fontsize=9, y=0.995)
    fig.legend(
        handles=handles, loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 1 - 0.3 / (3.6 * rows + 0.75))
    )
    return save(fig, path, rect=(0, 0, 1, top))
