"""What the screens share: number formatting, the status line, and running library calls
in thread workers so that an error is shown in the app and never crashes it."""

from __future__ import annotations

from textual.widgets import DataTable, Static

from edge.errors import EdgeError


def row_table(table_id: str, columns) -> DataTable:
    """A row-cursor, striped DataTable with (key, label) columns."""
    table = DataTable(id=table_id, cursor_type="row", zebra_stripes=True)
    for key, label in columns:
        table.add_column(label, key=key)
    return table


def fmt_bytes(n: float | int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '—' (the library did not know)."""
    if n is None:
        return "—"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_num(x: float | int | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def fmt_temp(c: float | None) -> str:
    return "—" if c is None else f"{c:.1f} °C"


def describe_error(error: BaseException) -> str:
    """One line for the status bar: EdgeError messages are already written for people;
    anything else is our bug, shown with its type so it can be reported."""
    if isinstance(error, EdgeError):
        return str(error)
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename} not found"
    return f"{type(error).__name__}: {error}"


class StatusLine(Static):
    """One line under a table: what is going on, or what went wrong and what to do."""

    DEFAULT_CLASSES = "status"

    def show(self, text: str, kind: str = "info") -> None:
        """kind: info, busy, warn or error (styled in tui_screens/tui.tcss)."""
        for k in ("info", "busy", "warn", "error"):
            self.set_class(k == kind, f"-{k}")
        self.update(text)
