"""The user's own data: a CSV file read into a :class:`~.datasets.Table`, or a one-line error.

Read with the standard library's ``csv`` module (the delimiter sniffed among ``,``
``;`` tab and ``|``), opened read-only: the file is never written. A column is numeric
when every non-missing cell parses as a number, else categorical (one-hot encoded
later, on the training split). Missing cells are the empty cell and the markers pandas
reads as missing (``NA``, ``N/A``, ``NaN``, ``null``, ``None``, ...).

Every problem the protocol cannot work around is an :class:`InputError` whose one-line
message names it: the file, the target column, the missing values per column, a
non-numeric regression target, a single class, too few rows, duplicate column names.
A column with one value in every row is dropped, and the notes say so.
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import numpy as np

from .datasets import Table, drop_constant_columns

MISSING = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
     "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip
MIN_ROWS = 40  # 60% / 20% / 20%: at least 8 validation and 8 test rows
MIN_CLASS_ROWS = 5  # every class in every split, stratified
MAX_CLASSES_INFERRED = 20  # a numeric target with at most this many integer values is taken as classes
TASKS = ("regression", "classification")
IMPUTE = ("mean", "most_frequent")


class InputError(Exception):
    """A problem with the user's data; its message is one line that names it."""


def file_digest(path: Path) -> str:
    """The SHA-256 of the file's bytes (it names the file's studies, so a changed file starts afresh)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def _read_rows(path: Path) -> tuple[list[list[str]], str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a directory, not a CSV file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8 CSV") from None
    if not text.strip():
        raise InputError(f"{path}: the file is empty")
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:16384], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(text.splitlines(), dialect) if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from None
    return rows, str(dialect.delimiter)


def _header(path: Path, rows: list[list[str]]) -> list[str]:
    header = [cell.strip() for cell in rows[0]]
    names = [name or f"unnamed_{k}" for k, name in enumerate(header)]
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    duplicates = [name for name, count in seen.items() if count > 1]
    if duplicates:
        listed = ", ".join(f"{name!r} ({seen[name]} times)" for name in duplicates)
        raise InputError(f"{path}: duplicate column names: {listed}; every column needs its own name")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(names):
            raise InputError(f"{path}: a row has {len(row)} fields where the header has {len(names)} (row {line})")
    return names


def _column(cells: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
    """``(numbers, missing)``: the column as float64 if every present cell is a number, else None."""
    missing = np.array([c in MISSING for c in cells], dtype=bool)
    values = np.full(len(cells), math.nan)
    for i, cell in enumerate(cells):
        if missing[i]:
            continue
        number = _number(cell)
        if number is None:
            return None, missing
        values[i] = number
    return values, missing


def _numbers(cells: list[str], delimiter: str) -> tuple[np.ndarray | None, np.ndarray, bool]:
    """``(numbers, missing, decimal_comma)``: :func:`_column`, and where the delimiter is not a
    comma, a column of numbers written with decimal commas (``1,5``) read as numbers too."""
    values, missing = _column(cells)
    if values is None and delimiter != ",":
        values, missing = _column([c.replace(",", ".", 1) if c.count(",") == 1 and "." not in c else c for c in cells])
        return values, missing, values is not None
    return values, missing, False


def _infer_task(values: np.ndarray | None) -> tuple[str, str]:
    """The task and why, for a target column (None: not numeric)."""
    if values is None:
        return "classification", "the target is text"
    distinct = np.unique(values)
    if len(distinct) <= MAX_CLASSES_INFERRED and np.all(distinct == np.round(distinct)):
        return "classification", f"the target has {len(distinct)} integer values"
    return "regression", "the target is numeric" + (
        f" with {len(distinct)} distinct values" if np.all(distinct == np.round(distinct)) else ""
    )


def _target(path: Path, name: str, cells: list[str], task: str | None, delimiter: str) -> tuple[np.ndarray, str, str]:
    values, missing, _ = _numbers(cells, delimiter)
    if missing.any():
        raise InputError(
            f"{path}: the target column {name!r} has {int(missing.sum())} missing values (rows "
            f"{_rows(missing)}); remove those rows: a row without a target can be neither trained nor scored"
        )
    if task is None:
        task, why = _infer_task(values)
        note = f"task inferred: {task} ({why}; --task sets it)"
    else:
        note = f"task: {task} (--task)"
    if task == "regression":
        if values is None:
            example = next(c for c in cells if _number(c) is None)
            raise InputError(
                f"{path}: the target column {name!r} is not numeric (e.g. {example!r}), so it cannot be a "
                "regression target; use --task classification"
            )
        if not np.isfinite(values).all():
            raise InputError(
                f"{path}: the target column {name!r} has infinite values (rows {_rows(~np.isfinite(values))})"
            )
        return values, task, note
    labels = np.array(cells, dtype=object) if values is None else values
    classes = np.unique(labels.astype(str) if values is None else labels)
    if len(classes) < 2:
        raise InputError(
            f"{path}: the target column {name!r} has a single class ({str(classes[0])!r}); nothing to classify"
        )
    return labels, task, note + f"; {len(classes)} classes"


def _rows(mask: np.ndarray, most: int = 5) -> str:
    """The CSV rows (header = row 1) where ``mask`` is True, the first few."""
    rows = [str(i + 2) for i in np.flatnonzero(mask)[:most]]
    return ", ".join(rows) + (", ..." if mask.sum() > most else "")


def read_csv(path: str | Path, target: str, task: str | None = None, impute: str | None = None) -> Table:
    """The CSV file at ``path`` as a :class:`Table` with ``target`` as the target.

    ``task``: ``"regression"`` or ``"classification"``, or None to infer it (text, or at
    most :data:`MAX_CLASSES_INFERRED` integer values: classification). ``impute``: None
    (missing feature values are an error), ``"mean"`` or ``"most_frequent"`` (filled on
    the training split later; text columns always get the most frequent value).
    Raises :class:`InputError` with a one-line message.
    """
    path = Path(path)
    if task is not None and task not in TASKS:
        raise InputError(f"--task {task}: expected one of {', '.join(TASKS)}")
    if impute is not None and impute not in IMPUTE:
        raise InputError(f"--impute {impute}: expected one of {', '.join(IMPUTE)}")
    rows, delimiter = _read_rows(path)
    names = _header(path, rows)
    if target not in names:
        shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
        raise InputError(f"{path}: no column named {target!r} (--target); the columns are {shown}")
    body = [[cell.strip() for cell in row] for row in rows[1:]]
    if not body:
        raise InputError(f"{path}: a header and no data rows")
    columns = {name: [row[k] for row in body] for k, name in enumerate(names)}
    y, task, task_note = _target(path, target, columns.pop(target), task, delimiter)
    unnamed = [n for n in columns if n.startswith("unnamed_") and n not in [c.strip() for c in rows[0]]]

    numeric, numeric_names, categorical, categorical_names = [], [], [], []
    missing_counts: dict[str, int] = {}
    decimal_commas, many_levels, identifiers = [], [], []
    for name, cells in columns.items():
        values, missing, decimal_comma = _numbers(cells, delimiter)
        if decimal_comma:
            decimal_commas.append(name)
        if missing.any():
            missing_counts[name] = int(missing.sum())
        if values is not None:
            if np.isinf(values).any():
                raise InputError(f"{path}: column {name!r} has infinite values (rows {_rows(np.isinf(values))})")
            numeric.append(values)
            numeric_names.append(name)
        else:
            present = [c for c, m in zip(cells, missing, strict=True) if not m]
            levels = len(set(present))
            if levels == len(present) > 20:  # a value per row: no category recurs, one-hot learns nothing
                identifiers.append(name)
                continue
            categorical.append(np.array([None if m else c for c, m in zip(cells, missing, strict=True)], dtype=object))
            categorical_names.append(name)
            if levels > max(20, len(cells) // 2):
                many_levels.append(f"{name} ({levels} values)")
    n = len(body)
    table = Table(
        path.stem,
        task,
        np.stack(numeric, axis=1) if numeric else np.empty((n, 0)),
        numeric_names,
        y,
        "csv",
        f"{path.name} ({n} rows x {len(names) - 1} columns, target {target!r})",
        categorical=np.stack(categorical, axis=1) if categorical else np.empty((n, 0), dtype=object),
        categorical_names=categorical_names,
        notes=[task_note],
    )
    if decimal_commas:
        table.notes.append(f"decimal commas read as numbers (e.g. 1,5 as 1.5): {', '.join(decimal_commas)}")
    if identifiers:
        table.notes.append(
            f"text column{'s' if len(identifiers) > 1 else ''} with a different value in every row dropped (an "
            f"identifier? one-hot encoding learns nothing from it): {', '.join(identifiers)}"
        )
    if many_levels:
        table.notes.append(
            "text columns with a value for nearly every row, one-hot encoded all the same (an identifier or free "
            f"text? remove it if so): {', '.join(many_levels)}"
        )
    if unnamed:
        table.notes.append(
            f"column{'s' if len(unnamed) > 1 else ''} without a name used as input{'s' if len(unnamed) > 1 else ''} "
            f"{', '.join(unnamed)} (a row index written with the data? it numbers the rows: remove it if so)"
        )
    table = drop_constant_columns(table)
    kept = set(table.inputs)
    missing_counts = {k: v for k, v in missing_counts.items() if k in kept}
    if not table.inputs:
        raise InputError(f"{path}: no input column left besides the target (the others are constant)")
    if missing_counts and impute is None:
        listed = ", ".join(f"{k} ({v})" for k, v in missing_counts.items())
        raise InputError(
            f"{path}: missing values in {len(missing_counts)} column{'s' if len(missing_counts) > 1 else ''}: "
            f"{listed}; pass --impute mean or --impute most_frequent, or fill them in"
        )
    if missing_counts:
        listed = ", ".join(f"{k} ({v})" for k, v in missing_counts.items())
        table.notes.append(f"missing values imputed ({impute}, fit on each training split): {listed}")
    _check_size(path, table)
    if table.categorical_names:
        table.notes.append(
            f"{len(table.categorical_names)} text column{'s' if len(table.categorical_names) > 1 else ''} one-hot "
            f"encoded (fit on each training split): " + ", ".join(table.categorical_names)
        )
    return table


def _check_size(path: Path, table: Table) -> None:
    if table.rows < MIN_ROWS:
        raise InputError(
            f"{path}: {table.rows} rows; the protocol needs at least {MIN_ROWS} "
            "(60% training, 20% validation, 20% test)"
        )
    if table.task == "classification":
        labels = table.y.astype(str)
        classes, counts = np.unique(labels, return_counts=True)
        small = [f"{str(c)!r} ({k})" for c, k in zip(classes, counts, strict=True) if k < MIN_CLASS_ROWS]
        if small:
            raise InputError(
                f"{path}: too few rows of class {', '.join(small)}; the protocol needs at least {MIN_CLASS_ROWS} of "
                "each class (every class in the training, validation and test splits)"
            )
