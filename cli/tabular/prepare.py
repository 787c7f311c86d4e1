"""One seed's split of a data set, and its inputs and target made ready on the training rows alone.

* Split: 60% training, 20% validation, 20% test (``sklearn.model_selection.train_test_split``
  twice, seeded, stratified by class for classification).
* Inputs: missing values imputed (``--impute``; text columns: the most frequent value),
  text columns one-hot encoded (categories seen in training; another category in
  validation or test encodes as all zeros), numeric columns standardized; every one of
  these is fit on the training rows, then applied to the validation and test rows.
* Target: for regression, standardized with the training rows' mean and std (the models
  train and are tuned on that scale; the test metrics are in the target's own units);
  for classification, class indices 0..K-1 in sorted order of the labels.

No test row reaches any fit: the test rows are transformed, never learned from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from .datasets import Table

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2


@dataclass
class Split:
    """Row indices of one seed's three splits (disjoint, together every row)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_rows(table: Table, seed: int) -> Split:
    rows = np.arange(table.rows)
    strata = table.y.astype(str) if table.task == "classification" else None
    rest, test = train_test_split(rows, test_size=TEST_FRACTION, random_state=seed, stratify=strata)
    strata_rest = None if strata is None else strata[rest]
    val_share = VALIDATION_FRACTION / (1 - TEST_FRACTION)
    train, val = train_test_split(rest, test_size=val_share, random_state=seed, stratify=strata_rest)
    return Split(np.sort(train), np.sort(val), np.sort(test))


class Inputs:
    """The input transform of one seed, fit on its training rows: impute, one-hot, standardize."""

    def __init__(self, impute: str | None) -> None:
        self.impute = impute
        self.columns: list[int] = []  # encoded column -> index of its input in table.inputs
        self.names: list[str] = []  # encoded column names

    def fit(self, table: Table, rows: np.ndarray) -> Inputs:
        numeric, categorical = table.numeric[rows], table.categorical[rows]
        self.numeric_imputer = None
        if self.impute is not None or np.isnan(numeric).any():  # also when only validation or test rows miss values
            self.numeric_imputer = SimpleImputer(strategy=self.impute or "mean", keep_empty_features=True).fit(numeric)
            numeric = self.numeric_imputer.transform(numeric)
        self.scaler = StandardScaler().fit(numeric) if numeric.shape[1] else None
        self.text_imputer = self.encoder = None
        if categorical.shape[1]:
            self.text_imputer = SimpleImputer(
                strategy="most_frequent", missing_values=None, keep_empty_features=True
            ).fit(categorical)
            self.encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(
                self.text_imputer.transform(categorical).astype(str)
            )
        p = table.numeric.shape[1]
        self.columns = list(range(p))
        self.names = list(table.numeric_names)
        if self.encoder is not None:
            for j, categories in enumerate(self.encoder.categories_):
                self.columns += [p + j] * len(categories)
                self.names += [f"{table.categorical_names[j]}={c}" for c in categories]
        return self

    def transform(self, table: Table, rows: np.ndarray) -> np.ndarray:
        numeric, categorical = table.numeric[rows], table.categorical[rows]
        if self.numeric_imputer is not None:
            numeric = self.numeric_imputer.transform(numeric)
        parts = [self.scaler.transform(numeric)] if self.scaler is not None else []
        if self.encoder is not None and self.text_imputer is not None:
            parts.append(self.encoder.transform(self.text_imputer.transform(categorical).astype(str)))
        out: np.ndarray = np.concatenate(parts, axis=1) if parts else np.empty((len(rows), 0))
        return out


@dataclass
class Prepared:
    """One seed's data, ready: inputs as float32, the target as the models use it."""

    seed: int
    split: Split
    x_train: np.ndarray
    x_val: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray  # regression: standardized; classification: class indices
    y_val: np.ndarray
    y_test: np.ndarray  # regression: in the target's units; classification: class indices
    columns: list[int]  # encoded column -> its input (index into table.inputs)
    names: list[str]
    y_mean: float = 0.0
    y_std: float = 1.0


def classes_of(table: Table) -> np.ndarray:
    """The class labels in sorted order (classification)."""
    classes: np.ndarray = np.unique(table.y)
    return classes


def prepare(table: Table, seed: int, impute: str | None = None) -> Prepared:
    """Split ``table`` with ``seed`` and fit every transform on the training rows alone."""
    split = split_rows(table, seed)
    inputs = Inputs(impute).fit(table, split.train)
    x_train, x_val, x_test = (
        inputs.transform(table, r).astype(np.float32) for r in (split.train, split.val, split.test)
    )
    if table.task == "regression":
        y = table.y.astype(np.float64)
        mean, std = float(y[split.train].mean()), float(y[split.train].std())
        std = std if std > 0 else 1.0
        return Prepared(
            seed, split, x_train, x_val, x_test,
            (y[split.train] - mean) / std, (y[split.val] - mean) / std, y[split.test],
            inputs.columns, inputs.names, mean, std,
        )  # fmt: skip
    index = np.searchsorted(classes_of(table), table.y).astype(np.int64)
    return Prepared(
        seed, split, x_train, x_val, x_test, index[split.train], index[split.val], index[split.test],
        inputs.columns, inputs.names,
    )  # fmt: skip
