"""Figure helpers the experiments share: a new figure, saving it, colours, and a mean
curve with its spread (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

SEED_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def new_figure(rows: int, size: tuple[float, float], cols: int = 1) -> tuple[Any, np.ndarray]:
    """A figure of ``rows`` by ``cols`` axes, and the axes as a ``(rows, cols)`` array."""
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return fig, axes


def save(fig: Any, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    """Lay ``fig`` out within ``rect`` (the share of the figure left to the axes: room above
    for a legend), write it to ``path`` as a PNG and free it."""
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mean_band(ax: Any, curves: np.ndarray, color: str, label: str) -> None:
    """The mean of ``curves`` (one per row, x = 1, 2, ...) as a line with a band of ± one std."""
    mean, std = curves.mean(axis=0), curves.std(axis=0)
    x = np.arange(1, len(mean) + 1)
    ax.plot(x, mean, color=color, label=label)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
