"""The PNG figures of the experiments (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .rln_boston import REAL_FEATURES, config_label  # noqa: E402


def _matches(config: dict[str, Any], published: dict[str, Any]) -> bool:
    return all(config.get(k) == v for k, v in published.items() if k not in ("mse_mean", "mse_std"))


def rln_mse_plot(report: dict[str, Any], path: Path) -> Path:
    """Test (or validation) MSE of every configuration, mean with std bars; published values marked."""
    runs = report["runs"]
    labels = [config_label(r) for r in runs]
    means = np.array([r["mse_mean"] for r in runs])
    stds = np.array([r["mse_std"] for r in runs])
    colors = {"none": "tab:gray", "l1": "tab:blue", "rln": "tab:red"}
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(runs) + 3), 4.8))
    x = np.arange(len(runs))
    ax.bar(x, means, yerr=stds, capsize=3, color=[colors[r["model"]] for r in runs], alpha=0.8)
    for name in ("none", "l1", "rln"):
        published = report["published"].get(name)
        if published:
            ax.axhline(published["mse_mean"], color=colors[name], linestyle="--", linewidth=1,
                       label=f"published best {name}: {published['mse_mean']:.2f}")
    marked = False
    for i, run in enumerate(runs):
        published = report["published"].get(run["model"], {})
        if published and _matches(run, published):
            ax.errorbar(i, published["mse_mean"], yerr=published["mse_std"], fmt="kD", capsize=4,
                        label=None if marked else "published (mean, std)")
            marked = True
    ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=8)
    score = "test MSE" if report["protocol"] == "published" else "validation MSE"
    ax.set_ylabel(f"{score} (mean, std over repeats)")
    ax.set_title(f"RLN vs L1 vs none, Boston housing + noise ({report['protocol']} protocol)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rln_features_plot(report: dict[str, Any], path: Path) -> Path:
    """First-layer input importance of each final model: real features against noise."""
    names = [n for n in ("none", "l1", "rln") if n in report["features"]]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.6 * max(1, len(names))), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        features = report["features"][name]
        importance = np.asarray(features["importance_mean"])
        idx = np.arange(len(importance))
        ax.scatter(idx[REAL_FEATURES:], importance[REAL_FEATURES:], s=4, color="tab:gray", label="noise features")
        ax.scatter(idx[:REAL_FEATURES], importance[:REAL_FEATURES], s=18, color="tab:red", label="the 13 real features")
        ax.set_yscale("symlog", linthresh=1e-3)
        best = report["best"][name]
        ax.set_title(
            f"{config_label(best)}: {features['real_in_top13_mean']:.1f} of 13 real features in the top 13, "
            f"{features['zero_fraction_mean']:.1%} of first-layer weights exactly 0",
            fontsize=9,
        )
        ax.set_ylabel("sum |W| (mean)")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("input feature (0-12 real, then noise)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rmsln_curves_plot(report: dict[str, Any], path: Path) -> Path:
    """Validation loss per epoch of both final models: mean over seeds with a +-std band."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = {"baseline": "tab:blue", "rmsln": "tab:red"}
    for name, final in report["final"].items():
        curves = np.asarray(final["curves"])
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        epochs = np.arange(1, len(mean) + 1)
        params = ", ".join(f"{k}={v:.3g}" for k, v in final["params"].items())
        ax.plot(epochs, mean, color=colors[name], label=f"{name} ({params}), {len(curves)} seeds")
        ax.fill_between(epochs, mean - std, mean + std, color=colors[name], alpha=0.2)
        published = report["published"].get(name, {}).get("final_val_loss")
        if published is not None:
            ax.axhline(published, color=colors[name], linestyle="--", linewidth=1,
                       label=f"published final {name}: {published}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (cross-entropy)")
    ax.set_title(f"MNIST-1D: Adam vs Adam + RMSLN ({report['protocol']} protocol)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
