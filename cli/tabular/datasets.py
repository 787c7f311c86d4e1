"""The experiment's data sets, all offline: loaded from this package or from scikit-learn's
bundled files, or generated; nothing is downloaded.

* ``boston``: Boston housing, 506 x 13, regression (the copy shipped in this package; see
  :func:`torch_rln_cli.rln_boston.data.load_boston_housing` on its feature ``B``).
* ``diabetes`` (442 x 10, regression), ``breast_cancer`` (569 x 30, binary) and ``digits``
  (1797 x 64, 10 classes): ``sklearn.datasets.load_*``, bundled with scikit-learn.
* ``<name>_noise``: each of those four once more with ``NOISE_FACTOR`` times its feature
  count of N(0, 1) noise columns appended (the tutorial appended 1000 to Boston's 13),
  drawn once with a fixed seed, so that the data set is the same in every run.
* ``friedman1``: ``make_friedman1``, 600 rows, 5 informative inputs and 50 noise inputs.
* ``make_classification``: 600 rows, binary, 5 informative, 5 redundant (linear
  combinations of the informative) and 50 noise inputs; the true relevant inputs are the
  informative and the redundant ones.

A column constant over the whole data set carries nothing and is dropped, the same rule
as for a CSV file (digits: the pixels 0, 32 and 39 are 0 in every image); the table says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sklearn.datasets

from ..rln_boston.data import BOSTON_FEATURES, load_boston_housing

NOISE_FACTOR = 10  # noise columns per real column in the *_noise sets
NOISE_SEED = 0  # the noise columns are drawn once: the data set is the same in every run
SYNTHETIC_ROWS = 600
SYNTHETIC_NOISE = 50
SYNTHETIC_SEED = 0


@dataclass
class Table:
    """A data set as read, before any split or scaling.

    ``numeric`` holds the numeric columns (NaN where a value is missing), ``categorical``
    the text columns (None where missing); the inputs are the numeric columns, then the
    categorical ones, in the order of ``numeric_names + categorical_names``.
    """

    name: str
    task: str  # "regression" or "classification"
    numeric: np.ndarray
    numeric_names: list[str]
    y: np.ndarray  # float64 for regression, the labels (any type) for classification
    kind: str  # "real", "noised", "synthetic" or "csv"
    description: str
    categorical: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=object))
    categorical_names: list[str] = field(default_factory=list)
    relevant: list[str] | None = None  # the inputs known to matter (synthetic sets)
    noise: list[str] | None = None  # the inputs known to be noise (synthetic and noised sets)
    notes: list[str] = field(default_factory=list)  # what was done to the data, for the report

    def __post_init__(self) -> None:
        if self.categorical.size == 0:
            self.categorical = np.empty((len(self.y), 0), dtype=object)

    @property
    def inputs(self) -> list[str]:
        return [*self.numeric_names, *self.categorical_names]

    @property
    def rows(self) -> int:
        return len(self.y)


def drop_constant_columns(table: Table) -> Table:
    """``table`` without the columns whose non-missing values are all equal; the notes say which."""
    keep_num = [j for j in range(table.numeric.shape[1]) if len(np.unique(_present(table.numeric[:, j]))) > 1]
    keep_cat = [j for j in range(table.categorical.shape[1]) if len(set(_present_text(table.categorical[:, j]))) > 1]
    dropped = [n for j, n in enumerate(table.numeric_names) if j not in keep_num]
    dropped += [n for j, n in enumerate(table.categorical_names) if j not in keep_cat]
    if not dropped:
        return table
    table.notes.append(
        f"{len(dropped)} constant column{'s' if len(dropped) > 1 else ''} dropped (one value in every row): "
        + ", ".join(dropped)
    )
    table.numeric = table.numeric[:, keep_num]
    table.numeric_names = [table.numeric_names[j] for j in keep_num]
    table.categorical = table.categorical[:, keep_cat]
    table.categorical_names = [table.categorical_names[j] for j in keep_cat]
    for attribute in ("relevant", "noise"):
        names = getattr(table, attribute)
        if names is not None:
            setattr(table, attribute, [n for n in names if n not in dropped])
    return table


def _present(column: np.ndarray) -> np.ndarray:
    present: np.ndarray = column[~np.isnan(column)]
    return present


def _present_text(column: np.ndarray) -> list[object]:
    return [v for v in column if v is not None]


# ---------------------------------------------------------------------- the loaders
def _boston() -> tuple[np.ndarray, np.ndarray, list[str]]:
    (x_train, y_train), (x_test, y_test) = load_boston_housing(noise_features=0)
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]), list(BOSTON_FEATURES)


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if name == "diabetes":
        bunch = sklearn.datasets.load_diabetes(scaled=False)
    else:
        bunch = getattr(sklearn.datasets, f"load_{name}")()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target), [str(n) for n in bunch.feature_names]


REAL = {
    "boston": ("regression", "Boston housing (506 x 13), shipped in this package", _boston),
    "diabetes": ("regression", "scikit-learn's diabetes (442 x 10)", lambda: _sklearn("diabetes")),
    "breast_cancer": (
        "classification",
        "scikit-learn's breast cancer (569 x 30, binary)",
        lambda: _sklearn("breast_cancer"),
    ),
    "digits": ("classification", "scikit-learn's digits (1797 x 64, 10 classes)", lambda: _sklearn("digits")),
}


def _real(name: str) -> Table:
    task, description, load = REAL[name]
    x, y, names = load()
    y = y.astype(np.float64) if task == "regression" else y.astype(np.int64)
    return drop_constant_columns(Table(name, task, x, names, y, "real", description))


def _noised(name: str) -> Table:
    base = _real(name)
    real = base.numeric.shape[1]
    count = NOISE_FACTOR * real
    rng = np.random.default_rng(NOISE_SEED)
    noise = rng.standard_normal((base.rows, count))
    noise_names = [f"noise_{k}" for k in range(count)]
    return Table(
        f"{name}_noise",
        base.task,
        np.concatenate([base.numeric, noise], axis=1),
        [*base.numeric_names, *noise_names],
        base.y,
        "noised",
        f"{base.description} + {count} N(0, 1) noise columns ({NOISE_FACTOR}x its {real} features)",
        noise=noise_names,
        notes=list(base.notes),
    )


def _friedman1() -> Table:
    features = 5 + SYNTHETIC_NOISE
    x, y = sklearn.datasets.make_friedman1(
        n_samples=SYNTHETIC_ROWS, n_features=features, noise=1.0, random_state=SYNTHETIC_SEED
    )
    names = [f"x{k}" for k in range(features)]
    return Table(
        "friedman1",
        "regression",
        x,
        names,
        y,
        "synthetic",
        f"Friedman #1 ({SYNTHETIC_ROWS} x {features}): 5 informative inputs, {SYNTHETIC_NOISE} noise inputs",
        relevant=names[:5],
        noise=names[5:],
    )


def _make_classification() -> Table:
    informative, redundant = 5, 5
    features = informative + redundant + SYNTHETIC_NOISE
    x, y = sklearn.datasets.make_classification(
        n_samples=SYNTHETIC_ROWS,
        n_features=features,
        n_informative=informative,
        n_redundant=redundant,
        n_repeated=0,
        n_classes=2,
        shuffle=False,  # the informative columns first, then the redundant, then the noise
        random_state=SYNTHETIC_SEED,
    )
    names = (
        [f"informative_{k}" for k in range(informative)]
        + [f"redundant_{k}" for k in range(redundant)]
        + [f"noise_{k}" for k in range(SYNTHETIC_NOISE)]
    )
    return Table(
        "make_classification",
        "classification",
        x,
        names,
        y.astype(np.int64),
        "synthetic",
        f"make_classification ({SYNTHETIC_ROWS} x {features}, binary): {informative} informative, {redundant} "
        f"redundant, {SYNTHETIC_NOISE} noise inputs",
        relevant=names[: informative + redundant],
        noise=names[informative + redundant :],
    )


LOADERS: dict[str, Callable[[], Table]] = {
    **{name: (lambda name=name: _real(name)) for name in REAL},  # type: ignore[misc]
    **{f"{name}_noise": (lambda name=name: _noised(name)) for name in REAL},  # type: ignore[misc]
    "friedman1": _friedman1,
    "make_classification": _make_classification,
}
DATASETS = tuple(LOADERS)


def load(name: str) -> Table:
    """The data set ``name`` (one of :data:`DATASETS`)."""
    if name not in LOADERS:
        raise ValueError(f"Unknown data set: {name!r} (expected one of {', '.join(DATASETS)})")
    return LOADERS[name]()
