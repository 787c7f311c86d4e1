"""The experiments' data sets, loaded offline.

* Boston housing ships inside this package (36 KB); the split is the Keras one.
* MNIST-1D is regenerated with the ``mnist1d`` package, never downloaded.
"""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np

BOSTON_FEATURES = ("CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT")
KERAS_SPLIT_SEED = 113
KERAS_TEST_SPLIT = 0.2


def _read_boston() -> tuple[np.ndarray, np.ndarray]:
    text = resources.files(__package__).joinpath("boston_housing.csv").read_text()
    rows = list(csv.reader(text.splitlines()))
    header, body = rows[0], rows[1:]
    expected = [*BOSTON_FEATURES, "MEDV"]
    if header != expected:
        raise RuntimeError(f"boston_housing.csv has columns {header}, expected {expected}")
    table = np.array(body, dtype=np.float64)
    return table[:, :-1], table[:, -1]


Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


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


def standardize(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every column to zero mean and unit variance with the training set's statistics."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (x_train, *others)]


def load_mnist1d() -> Arrays:
    """MNIST-1D (Greydanus, 2020), regenerated offline with the published arguments.

    ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())`` rebuilds the frozen
    data set (4000 training and 1000 test sequences of length 40, seed 42) to within 3e-16;
    nothing is downloaded. Returns ``(x_train, y_train), (x_test, y_test)`` as numpy arrays
    (float64 sequences, int64 labels 0-9).
    """
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    return (data["x"], data["y"].astype(np.int64)), (data["x_test"], data["y_test"].astype(np.int64))
