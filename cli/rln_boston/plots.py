"""The RLN experiment's figures: every repeat's score against the published figures, and
the first-layer input importance of the best models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter

from ..common.plots import SEED_COLORS, new_figure, save
from .protocol import MODEL_NAMES, MODELS, REAL_FEATURES, config_label, matches

MODEL_COLORS = {"none": "tab:gray", "l1": "tab:blue", "rln": "tab:red"}


def _seed_runs(report: dict[str, Any]) -> list[tuple[int, list[dict[str, Any]]]]:
    if "seeds" in report:
        return [(r["seed"], r["runs"]) for r in report["seeds"]]
    return [(report["settings"]["seed"], report["runs"])]


def _columns(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The configurations of every seed, each once, in the order they were first trained."""
    seen: dict[str, dict[str, Any]] = {}
    for _, runs in _seed_runs(report):
        for run in runs:
            seen.setdefault(config_label(run), run)
    return sorted(seen.values(), key=lambda run: MODELS.index(run["model"]))


def _published_band(ax: Any, x: float, run: dict[str, Any], report: dict[str, Any], labelled: bool) -> bool:
    """The published mean +- std as a band over column ``x`` if ``run`` is the published configuration."""
    p = report["published"].get(run["model"], {})
    if not (p and matches(run, p)):
        return labelled
    low, high = p["mse_mean"] - p["mse_std"], p["mse_mean"] + p["mse_std"]
    ax.fill_between(
        [x - 0.45, x + 0.45],
        low,
        high,
        color="gold",
        alpha=0.45,
        zorder=0,
        label=None if labelled else "published mean ± std (as Keras reports)",
    )
    ax.plot([x - 0.45, x + 0.45], [p["mse_mean"]] * 2, color="goldenrod", linewidth=1.5, zorder=0)
    return True


def _repeat_points(ax: Any, x: float, run: dict[str, Any], color: str, jitter: np.ndarray, legend: set[str]) -> None:
    """One point per repeat: MSE filled, Keras' figure (L1 only: it differs) hollow, collapsed
    repeats as black crosses; a black dash at the mean over all repeats (what the search compares)."""
    mse, keras = np.asarray(run["mse"]), np.asarray(run["keras_loss"])
    alive = np.array([i not in run["collapsed"] for i in range(len(mse))], dtype=bool)
    xs = x - 0.06 + jitter[: len(mse)] if run["model"] == "l1" else x + jitter[: len(mse)]
    ax.scatter(xs[alive], mse[alive], s=14, color=color, zorder=3)
    ax.plot(
        [x - 0.1, x + 0.1],
        [mse.mean()] * 2,
        color="black",
        linewidth=1.2,
        zorder=4,
        label=None if "mean" in legend else "mean over all repeats",
    )
    legend.add("mean")
    if run["model"] == "l1":
        label = None if "keras" in legend else "L1 as Keras reports it (MSE + penalty)"
        ax.scatter(xs[alive] + 0.12, keras[alive], s=14, facecolors="none", edgecolors=color, zorder=3, label=label)
        legend.add("keras")
    if (~alive).any():
        label = None if "collapsed" in legend else "collapsed repeat"
        ax.scatter(xs[~alive], mse[~alive], s=50, marker="X", color="black", zorder=4, label=label)
        legend.add("collapsed")


def _published_lines(ax: Any, report: dict[str, Any]) -> None:
    for name in MODELS:
        p = report["published"].get(name)
        if p:
            ax.axhline(
                p["mse_mean"],
                color=MODEL_COLORS[name],
                linestyle=":",
                linewidth=1,
                label=f"published best {MODEL_NAMES[name]}: {p['mse_mean']:.2f}",
            )


def rln_scores_plot(report: dict[str, Any], path: Path) -> Path:
    """Every repeat of every configuration as a point (several seeds side by side in each
    column, coloured by seed), collapsed repeats as crosses, the published mean ± std as a
    band over the published configuration and the published bests as dotted lines."""
    columns = _columns(report)
    labels = [config_label(run) for run in columns]
    seeds = _seed_runs(report)
    fig, axes = new_figure(1, (max(8.0, 0.8 * len(columns) + 5), 5.6))
    ax = axes[0, 0]
    jitter = np.random.default_rng(0).uniform(-0.05, 0.05, size=max(len(r["mse"]) for _, runs in seeds for r in runs))
    legend: set[str] = set()
    for k, (seed, runs) in enumerate(seeds):
        color = SEED_COLORS[k % len(SEED_COLORS)]
        offset = (k - (len(seeds) - 1) / 2) * (0.7 / len(seeds))
        if len(seeds) > 1:
            ax.scatter([], [], color=color, s=14, label=f"seed {seed}")
        for run in runs:
            x = labels.index(config_label(run)) + offset
            _repeat_points(ax, x, run, color if len(seeds) > 1 else MODEL_COLORS[run["model"]], jitter, legend)
    banded = False
    for x, run in enumerate(columns):
        banded = _published_band(ax, x, run, report, banded)
    _published_lines(ax, report)
    _finish_scores_axes(ax, labels, report)
    return save(fig, path)


def _finish_scores_axes(ax: Any, labels: list[str], report: dict[str, Any]) -> None:
    ax.set_xticks(np.arange(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "235" else ""))
    score = "test MSE" if report["protocol"] == "published" else "validation MSE"
    ax.set_ylabel(f"{score} per repeat (log scale)")
    noise = report["settings"]["noise_features"]
    ax.set_title(
        f"Boston housing + {noise} noise features, {report['protocol']} protocol: one point per repeat", fontsize=10
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)


def rln_features_plot(report: dict[str, Any], path: Path) -> Path:
    """First-layer input importance of each final model: real features against noise
    (of the first seed, where there are several)."""
    report = report["seeds"][0] if "seeds" in report else report
    names = [n for n in MODELS if n in report["features"]]
    fig, axes = new_figure(len(names), (9, 2.6 * max(1, len(names))))
    for ax, name in zip(axes[:, 0], names, strict=True):
        features = report["features"][name]
        importance = np.asarray(features["importance_mean"])
        idx = np.arange(len(importance))
        ax.scatter(idx[REAL_FEATURES:], importance[REAL_FEATURES:], s=4, color="tab:gray", label="noise features")
        ax.scatter(
            idx[:REAL_FEATURES],
            importance[:REAL_FEATURES],
            s=18,
            color="tab:red",
            label=f"the {REAL_FEATURES} real features",
        )
        ax.set_ylim(bottom=0)  # an eliminated input sits at 0
        best = report["best"][name]
        eliminated = (
            f", {features.get('eliminated_mean', 0):.1f} inputs eliminated" if "eliminated_mean" in features else ""
        )
        ax.set_title(
            f"{config_label(best)}: {features['real_in_top13_mean']:.1f} of {REAL_FEATURES} real features in the top "
            f"{REAL_FEATURES}, "
            f"{features['zero_fraction_mean']:.1%} of first-layer weights exactly 0{eliminated}",
            fontsize=9,
        )
        ax.set_ylabel("sum |W| (mean over repeats)")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel(f"input feature (0-{REAL_FEATURES - 1} real, then noise)")
    return save(fig, path)
