"""The RMSLN experiment's figure: the validation loss per epoch of both final models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..common.plots import mean_band, new_figure, save

MODEL_COLORS = {"baseline": "tab:blue", "rmsln": "tab:red"}


def rmsln_curves_plot(report: dict[str, Any], path: Path) -> Path:
    """Validation loss per epoch of both final models: mean over seeds with a ±std band, and
    the published final losses as dashed lines."""
    fig, axes = new_figure(1, (8, 4.8))
    ax = axes[0, 0]
    for name, final in report["final"].items():
        curves = np.asarray(final["curves"])
        params = ", ".join(f"{k}={v:.3g}" for k, v in final["params"].items())
        mean_band(ax, curves, MODEL_COLORS[name], f"{name} ({params}), {len(curves)} seeds")
        published = report["published"].get(name, {}).get("final_val_loss")
        if published is not None:
            ax.axhline(
                published,
                color=MODEL_COLORS[name],
                linestyle="--",
                linewidth=1,
                label=f"published final {name}: {published}",
            )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation loss (cross-entropy)")
    ax.set_title(
        f"MNIST-1D: Adam vs Adam + RMSLN ({report['protocol']} protocol, batch {report['settings']['batch_size']})"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)
