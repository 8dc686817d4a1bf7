"""Variants: the GGUF files of a run (or a folder), with size, bits per weight, and the
quality numbers of the quantize report (`report.json`) when there is one.

Which files: the run's `run.json` outputs (quantize and export stages), else every `*.gguf`
under the folder, else the embedded Gemma 3 270M. Quality numbers come from `report.json`
(written by `edge quantize`), matched by file name; bits per weight from the report, else from
the GGUF itself (read in a worker: a 262k-token vocabulary takes seconds to parse).
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tui_screens import library
from tui_screens.common import StatusLine, describe_error, fmt_bytes, fmt_num, row_table

COLUMNS = [("name", "variant"), ("recipe", "recipe"), ("size", "size"), ("bpw", "bpw"),
           ("kld", "KLD mean"), ("kld99", "KLD p99"), ("top1", "top-1"), ("ppl", "ppl"),
           ("tok_s", "tok/s"), ("acc", "task acc")]


def row_cells(v: library.Variant) -> list[str]:
    return [v.name, v.recipe or "—", fmt_bytes(v.size_bytes), fmt_num(v.bpw, ".2f"),
            fmt_num(v.kld_mean, ".4f"), fmt_num(v.kld_p99, ".4f"),
            fmt_num(None if v.top1 is None else 100 * v.top1, ".1f", "%"),
            fmt_num(v.ppl, ".2f"), fmt_num(v.tok_s, ".1f"),
            fmt_num(None if v.task_accuracy is None else 100 * v.task_accuracy, ".0f", "%")]


class VariantsScreen(Screen):
    """A table of the GGUF variants; Enter picks one as the file to push."""

    BINDINGS = [Binding("r", "reload", "Refresh"),
                Binding("enter", "pick", "Push this", show=True)]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Variants", classes="title")
        yield Static("", id="variants-source", classes="subtitle")
        yield row_table("variants-table", COLUMNS)
        yield StatusLine(id="variants-status")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.query_one(StatusLine).show("reading the run…", "busy")
        self.load()

    @work(thread=True, exclusive=True, group="variants", exit_on_error=False)
    def load(self) -> None:
        app = self.app
        try:
            source, variants, report = library.variants(app.run_dir, app.folder)
        except Exception as e:  # shown in the app, never a crash
            app.call_from_thread(self.query_one(StatusLine).show, describe_error(e), "error")
            return
        app.call_from_thread(self._show, source, variants, report)
        # Bits per weight the report did not give: read each GGUF (slow for big vocabularies).
        for v in variants:
            if v.bpw is None:
                try:
                    v.bpw = library.bits_per_weight(v.path)
                except Exception as e:
                    app.call_from_thread(self.query_one(StatusLine).show,
                                         f"{v.path.name}: {describe_error(e)}", "warn")
                    continue
                app.call_from_thread(self._update_row, v)
        app.call_from_thread(self._done, variants)

    def _show(self, source: str, variants: list[library.Variant], report: Path | None) -> None:
        self.app.variants, self.app.report = variants, report
        self.query_one("#variants-source", Static).update(source)
        table = self.query_one(DataTable)
        table.clear()
        for v in variants:
            table.add_row(*row_cells(v), key=str(v.path))
        pending = sum(v.bpw is None for v in variants)
        self.query_one(StatusLine).show(
            f"{len(variants)} variant(s); reading bits per weight of {pending} file(s)…" if pending
            else f"{len(variants)} variant(s)", "busy" if pending else "info")

    def _update_row(self, v: library.Variant) -> None:
        table = self.query_one(DataTable)
        if str(v.path) in table.rows:
            table.update_cell(str(v.path), "bpw", fmt_num(v.bpw, ".2f"))

    def _done(self, variants: list[library.Variant]) -> None:
        status = self.query_one(StatusLine)
        if not status.has_class("-warn") and not status.has_class("-error"):
            note = "" if any(v.kld_mean is not None for v in variants) else \
                "; no quality report (run `edge quantize` to add KLD and tok/s)"
            status.show(f"{len(variants)} variant(s){note} · Enter: push the selected one", "info")

    def action_pick(self) -> None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        self.app.push_this(file=Path(key))

    @on(DataTable.RowSelected, "#variants-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_pick()
