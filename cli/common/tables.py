"""One description of each results table, rendered both to the terminal (rich) and to
report.md (markdown), so that the two can never disagree.

A table is described once, as data: a tuple of :class:`Column` (a header and the function
that gives a row's cell), then built from any rows with :func:`build`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rich.table import Table
from rich.text import Text

Row = TypeVar("Row")


@dataclass
class TableSpec:
    """A titled table of plain-text cells; the first column is left-aligned, the rest right."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells for the {len(self.columns)} columns of {self.title!r}")
        self.rows.append(list(cells))

    def rich(self) -> Table:
        table = Table(title=self.title)
        for k, column in enumerate(self.columns):
            table.add_column(column, justify="left" if k == 0 else "right")
        for row in self.rows:
            table.add_row(*(Text(cell) for cell in row))  # plain text: no rich markup in the cells
        return table

    def markdown(self) -> list[str]:
        """The table as markdown lines: its title in bold, then the table."""
        escape = [[cell.replace("|", "\\|") for cell in row] for row in [self.columns, *self.rows]]
        lines = [f"**{self.title}**", "", "| " + " | ".join(escape[0]) + " |", "|" + "---|" * len(self.columns)]
        return lines + ["| " + " | ".join(row) + " |" for row in escape[1:]]


@dataclass(frozen=True)
class Column(Generic[Row]):
    """One column of a table: its header, and the function that gives a row's cell."""

    header: str
    cell: Callable[[Row], str]


def build(title: str, columns: Sequence[Column[Row]], rows: Iterable[Row]) -> TableSpec:
    """The table of ``rows``, one cell per column."""
    table = TableSpec(title, [column.header for column in columns])
    for row in rows:
        table.add(*(column.cell(row) for column in columns))
    return table


def mean_std(mean: float, std: float, digits: int = 2, percent: bool = False) -> str:
    """``mean (std)``, as every table prints a spread: ``12.34 (0.56)``, or ``12.3% (0.6%)``."""
    spec = f".{digits}{'%' if percent else 'f'}"
    return f"{mean:{spec}} ({std:{spec}})"


def field_mean_std(key: str, digits: int = 2, percent: bool = False) -> Callable[[dict[str, Any]], str]:
    """The cell ``mean (std)`` of a row's ``KEY_mean`` and ``KEY_std``."""
    return lambda row: mean_std(row[f"{key}_mean"], row[f"{key}_std"], digits, percent)


def field_number(key: str, spec: str = ".2f", missing: str = "-") -> Callable[[dict[str, Any]], str]:
    """The cell of a row's number ``key`` formatted with ``spec`` (``missing`` for None or absent)."""

    def cell(row: dict[str, Any]) -> str:
        value = row.get(key)
        return missing if value is None else format(value, spec)

    return cell
