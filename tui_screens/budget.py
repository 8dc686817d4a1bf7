"""Budget: every variant x every device (bundled profiles, connected phones, this laptop):
fits / tight / does not fit, the largest n_ctx, predicted speed and a thermal note, with the
recommended variant marked. The details of the cell under the cursor are shown below.

All numbers are `edge.budget`'s (the same as `edge budget`); this screen lays them out.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tui_screens import library
from tui_screens.common import StatusLine, describe_error

STAR = "★"
VERDICT_STYLE = {"fits": ("✓ fits", "green"), "tight": ("~ tight", "yellow"),
                 "no": ("✗ no fit", "red")}


def cell_text(verdict) -> Text:
    """'✓ fits · 32k ctx · 41 tok/s' coloured by verdict."""
    label, style = VERDICT_STYLE.get(library.verdict_kind(verdict), (str(library.verdict_kind(verdict)), ""))
    parts = [label]
    n_ctx = library.verdict_max_ctx(verdict)
    if n_ctx:
        parts.append(f"{n_ctx // 1024}k ctx" if n_ctx >= 1024 else f"{n_ctx} ctx")
    speed = library.verdict_speed(verdict)
    if speed is not None:
        parts.append(f"{speed:.0f} tok/s")
    if library.verdict_thermal(verdict):
        parts.append("🌡")
    return Text(" · ".join(parts), style=style)


class BudgetScreen(Screen):
    """The matrix, a legend, and the details of the selected cell."""

    BINDINGS = [Binding("r", "reload", "Refresh")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Budget: which variant fits which phone", classes="title")
        yield DataTable(id="budget-table", cursor_type="cell", zebra_stripes=True)
        yield Static(f"{STAR} recommended · ✓ fits · ~ tight (may be killed under memory pressure) · "
                     "✗ does not fit · 🌡 thermal note · ctx = largest n_ctx that fits",
                     id="budget-legend")
        yield Static("", id="budget-detail")
        yield StatusLine(id="budget-status")
        yield Footer()

    def on_mount(self) -> None:
        self._cells: dict[tuple[str, str], object] = {}
        self.action_reload()

    def on_screen_resume(self) -> None:
        if getattr(self.app, "variants", None) and not self._cells:
            self.action_reload()

    def action_reload(self) -> None:
        self.query_one(StatusLine).show("estimating…", "busy")
        self.compute()

    @work(thread=True, exclusive=True, group="budget", exit_on_error=False)
    def compute(self) -> None:
        app = self.app
        try:
            variants = getattr(app, "variants", None)
            if not variants:
                _, variants = library.variants(app.run_dir, app.folder)
                app.variants = variants
            devices = library.budget_devices(live=app.live, host=app.host)
            result = library.budget_matrix([v.path for v in variants], devices)
        except Exception as e:  # shown in the app, never a crash
            app.call_from_thread(self.query_one(StatusLine).show, describe_error(e), "error")
            return
        app.call_from_thread(self._show, result)

    def _show(self, result) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        rows, columns, cells, recommended, notes = library.matrix_layout(result)
        table.add_column("variant", key="variant")
        for key, label in columns:
            table.add_column(label, key=key)
        self._cells = cells
        for row_key, label in rows:
            name = Text(f"{STAR} {label}", style="bold") if row_key == recommended else Text(f"  {label}")
            table.add_row(name, *[cell_text(cells[row_key, c]) for c, _ in columns], key=row_key)
        msg = f"{len(rows)} variant(s) × {len(columns)} device(s)"
        if recommended:
            msg += f" · recommended: {dict(rows)[recommended]}"
        if notes:
            msg += " · " + " · ".join(notes)
        self.query_one(StatusLine).show(msg, "info")
        if rows and columns:
            table.move_cursor(row=0, column=1)
            self._detail(rows[0][0], columns[0][0])

    @on(DataTable.CellHighlighted, "#budget-table")
    def _highlighted(self, event: DataTable.CellHighlighted) -> None:
        self._detail(event.cell_key.row_key.value, event.cell_key.column_key.value)

    def _detail(self, row: str, column: str) -> None:
        verdict = self._cells.get((row, column))
        self.query_one("#budget-detail", Static).update(
            library.verdict_detail(verdict) if verdict is not None else "")
