"""One description of each results table, rendered both to the terminal (rich) and to
report.md (markdown), so that the two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text


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
