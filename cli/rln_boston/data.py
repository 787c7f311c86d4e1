"""The RLN experiment's data: Boston housing (shipped with this package, 36 KB) with the
Keras split and appended noise features, as tensors for the protocol's splits."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from ..common.data import Arrays, as_tensor, standardize
from .protocol import Settings

BOSTON_FEATURES = ("CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT")
KERAS_SPLIT_SEED = 113
KERAS_TEST_SPLIT = 0.2

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x, y to fit; x, y to score


def _read_boston() -> tuple[np.ndarray, np.ndarray]:
    text = resources.files(__package__).joinpath("boston_housing.csv").read_text()
    rows = list(csv.reader(text.splitlines()))
    header, body = rows[0], rows[1:]
    expected = [*BOSTON_FEATURES, "MEDV"]
    if header != expected:
        raise RuntimeError(f"boston_housing.csv has columns {header}, expected {expected}")
    table = np.array(body, dtype=np.float64)
    return table[:, :-1], table[:, -1]


def load_boston_housing(noise_features: int = 1000, seed: int = 0) -> Arrays:
    """Boston housing with the Keras split, plus standard-normal noise features.

    The 506 rows are shuffled with ``numpy.random.RandomState(113).shuffle`` and the first
    ``int(506 * 0.8) = 404`` rows are the training set, the other 102 the test set (as
    ``keras.datasets.boston_housing.load_data``). Then ``noise_features`` columns of
    N(0, 1) noise, drawn with ``numpy.random.default_rng(seed)``, are appended to both.

    Returns ``(x_train, y_train), (x_test, y_test)`` as float64 arrays, unstandardized,
    with the 13 real features first (in the order of :data:`BOSTON_FEATURES`).

    Note: the feature ``B`` encodes a racial statistic of the town
    (``1000 (Bk - 0.63)^2``); it is why some libraries dropped this data set. It is
    kept here because the published experiment uses all 13 features.
    """
    if isinstance(noise_features, bool) or not isinstance(noise_features, int) or noise_features < 0:
        raise ValueError(f"Invalid noise_features: {noise_features!r} (expected an int >= 0)")
    x, y = _read_boston()
    indices = np.arange(len(x))
    np.random.RandomState(KERAS_SPLIT_SEED).shuffle(indices)
    x, y = x[indices], y[indices]
    n_train = int(len(x) * (1 - KERAS_TEST_SPLIT))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((len(x), noise_features))
    x = np.concatenate([x, noise], axis=1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


@dataclass
class ExperimentData:
    """The tensors of one seed's run: ``full`` (the training set to fit, the test set to score)
    and ``search`` (what the search scores: ``full`` under the published protocol, a
    validation split of the training set under the holdout one)."""

    full: Split
    search: Split
    input_dim: int


def _split(x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray, y_score: np.ndarray, device: str) -> Split:
    """Standardized with the fitted part's statistics, float32 on ``device``."""
    x_fit_s, x_score_s = standardize(x_fit, x_score)
    return (
        as_tensor(x_fit_s, torch.float32, device),
        as_tensor(y_fit, torch.float32, device),
        as_tensor(x_score_s, torch.float32, device),
        as_tensor(y_score, torch.float32, device),
    )


def experiment_data(settings: Settings) -> ExperimentData:
    """The data of a run with ``settings`` (its seed draws the noise features and the validation split)."""
    s = settings
    (x_train, y_train), (x_test, y_test) = load_boston_housing(s.noise_features, s.seed)
    full = _split(x_train, y_train, x_test, y_test, s.device)
    search = full
    if s.protocol == "holdout":
        n_val = round(len(x_train) * s.validation_fraction)
        order = np.random.default_rng(s.seed).permutation(len(x_train))
        fit, val = order[n_val:], order[:n_val]
        search = _split(x_train[fit], y_train[fit], x_train[val], y_train[val], s.device)
    return ExperimentData(full, search, x_train.shape[1])
