"""The RLN experiment's protocol: its settings, the models compared, the search's default
values, and the published figures they are compared with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EXPERIMENT = "rln-boston"
REAL_FEATURES = 13
MODELS = ("none", "l1", "rln")  # in the order the protocol searches them
MODEL_NAMES = {"none": "none", "l1": "L1", "rln": "RLN"}  # as tables and figures print them

PUBLISHED: dict[str, Any] = {
    "source": "Shavitt & Segal (2018), RLN tutorial notebook (Boston housing + 1000 noise features)",
    "none": {"depth": 4, "mse_mean": 106.84, "mse_std": 10.62},
    "l1": {"depth": 4, "l1": 0.1, "mse_mean": 48.57, "mse_std": 4.31},
    "rln": {"depth": 4, "theta": -10.0, "log10_nu": 6.0, "mse_mean": 21.34, "mse_std": 2.37},
    "quantity": "the loss Keras' evaluate() reported: test MSE, plus 0.1 sum|W1| for L1",
}

DEFAULT_DEPTHS = tuple(range(2, 11))
DEFAULT_L1 = tuple(10.0**k for k in range(-2, 4))
DEFAULT_RLN_GRID = ((-8.0, 6.0), (-10.0, 5.0), (-10.0, 6.0), (-10.0, 7.0), (-12.0, 6.0))


@dataclass
class Settings:
    depths: Sequence[int] = DEFAULT_DEPTHS
    l1_values: Sequence[float] = DEFAULT_L1
    rln_grid: Sequence[tuple[float, float]] = DEFAULT_RLN_GRID
    repeats: int = 10
    epochs: int = 100
    batch_size: int = 10
    noise_features: int = 1000
    seed: int = 0
    protocol: str = "published"
    device: str = "cpu"
    validation_fraction: float = 0.2
    compile: bool = True  # RLNOptimizer(compile=True): the same math, one fused kernel
    exclude_collapsed: bool = False  # the search uses the mean over repeats that did not collapse


def config_label(config: dict[str, Any]) -> str:
    """A configuration as tables, logs and figures name it."""
    if config["model"] == "none":
        return f"none, depth {config['depth']}"
    if config["model"] == "l1":
        return f"L1 {config['l1']:g}, depth {config['depth']}"
    return f"RLN Theta={config['theta']:g} log10(nu)={config['log10_nu']:g}, depth {config['depth']}"


def matches(config: dict[str, Any], published: dict[str, Any]) -> bool:
    """Whether ``config`` is the published configuration ``published`` (its non-score keys)."""
    return all(config.get(k) == v for k, v in published.items() if k not in ("mse_mean", "mse_std"))


def rule_text(exclude_collapsed: bool) -> str:
    """The rule that compares configurations in the search, in words."""
    if exclude_collapsed:
        return "the rule of --exclude-collapsed: the mean over the repeats that did not collapse"
    return "the published protocol's rule: the mean over all repeats, collapsed ones included"


def selection_label(settings: Settings) -> str:
    """Where the search's scores come from, in words."""
    if settings.protocol == "published":
        return "test set (as published)"
    return f"validation split ({settings.validation_fraction:.0%} of the training set); test scored once"


def depth_rule(settings: Settings) -> str:
    """The rule that chose the depth (and the rest) in a run with ``settings``."""
    return rule_text(settings.exclude_collapsed)
