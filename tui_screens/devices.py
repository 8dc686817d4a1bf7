"""Devices: the phones connected over adb, read live every few seconds (free RAM, thermal
status, battery temperature), and the bundled phone profiles the budget also uses.

Listing and reading go through `edge.device` (the one door to adb); profiles come from
`edge.budget`. "adb not installed" and "no phone connected" are ordinary states, shown with
what to do.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tui_screens import library
from tui_screens.common import StatusLine, describe_error, fmt_bytes, fmt_temp, row_table

PHONE_COLUMNS = [("serial", "serial"), ("model", "model"), ("soc", "SoC"), ("free", "RAM free"),
                 ("total", "RAM total"), ("thermal", "thermal"), ("battery", "battery"), ("storage", "storage free"),
                 ("notes", "warnings")]
PROFILE_COLUMNS = [("key", "profile"), ("ram", "RAM"), ("usable", "one app can use"), ("bw", "memory GB/s"),
                   ("isa", "dotprod / i8mm"), ("tier", "tier"), ("soc", "SoC"), ("name", "phone")]


def phone_cells(serial: str, state) -> list[str]:
    """One row from an `edge.readings.DeviceState`."""
    thermal = state.thermal_status_name if state.thermal_status is not None else "—"
    if state.thermal_status is not None:
        thermal = f"{state.thermal_status} {thermal}"
    battery = fmt_temp(state.battery_temp_c)
    if state.battery_level is not None:
        battery += f" · {state.battery_level}%"
    return [serial, state.model or "—", state.soc or "—", fmt_bytes(state.available_bytes),
            fmt_bytes(state.total_bytes), thermal, battery, fmt_bytes(state.storage_free_bytes),
            "; ".join(state.warnings()) or "ok"]


def profile_cells(p, usable: int) -> list[str]:
    """One row from an `edge.profiles.Profile` (sources: `edge profiles` or the .toml file)."""
    isa = " / ".join(("yes" if p.dotprod else "no", "yes" if p.i8mm else "no"))
    return [p.key, f"{p.ram_gb:g} GB", fmt_bytes(usable), f"{p.bandwidth_gbs:.1f}", isa, p.tier, p.soc, p.name]


class DevicesScreen(Screen):
    """Connected phones (live) over the bundled profiles."""

    BINDINGS = [Binding("r", "refresh", "Refresh")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Connected phones", classes="title")
        yield row_table("devices-table", PHONE_COLUMNS)
        yield StatusLine(id="devices-status")
        yield Static("Bundled profiles", classes="title")
        yield row_table("profiles-table", PROFILE_COLUMNS)
        yield Footer()

    def on_mount(self) -> None:
        self.load_profiles()
        if self.app.live:
            self.query_one(StatusLine).show("looking for phones…", "busy")
            self.action_refresh()
            self.set_interval(self.app.refresh_s, self.action_refresh)
        else:
            self.query_one(StatusLine).show("live readings off (started with live=False)", "info")

    def action_refresh(self) -> None:
        if self.app.live:
            self.poll()

    @work(thread=True, exclusive=True, group="devices-poll", exit_on_error=False)
    def poll(self) -> None:
        """List the phones, then read each one's state (adb shell), off the UI thread."""
        app = self.app
        try:
            listed = library.connected_devices()
        except Exception as e:  # adb missing, server refused: a state, not a crash
            app.call_from_thread(self._show_phones, [], describe_error(e), "warn")
            return
        rows, problems = [], []
        for d in listed:
            if d.state != "device":
                problems.append(f"{d.serial}: {d.state} ({d.note or 'not ready'})")
                continue
            try:
                rows.append(phone_cells(d.serial, library.read_state(d.serial)))
            except Exception as e:
                problems.append(f"{d.serial}: {describe_error(e)}")
        if problems:
            msg, kind = " · ".join(problems), "warn"
        elif rows:
            msg, kind = f"{len(rows)} phone(s) · refreshed every {self.app.refresh_s:g} s · r: now", "info"
        else:
            msg, kind = library.NO_DEVICE_HELP, "warn"
        app.call_from_thread(self._show_phones, rows, msg, kind)

    @on(DataTable.RowSelected, "#devices-table")
    def _phone_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a phone: push to it."""
        self.app.push_this(serial=event.row_key.value)

    def _show_phones(self, rows: list[list[str]], msg: str, kind: str) -> None:
        table = self.query_one("#devices-table", DataTable)
        cursor = table.cursor_row
        table.clear()
        for cells in rows:
            table.add_row(*cells, key=cells[0])
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))
        self.query_one(StatusLine).show(msg, kind)

    @work(thread=True, exclusive=True, group="profiles", exit_on_error=False)
    def load_profiles(self) -> None:
        try:
            rows = [profile_cells(p, library.usable_bytes(p)) for p in library.profiles()]
        except Exception as e:
            self.app.call_from_thread(self.app.show_error, "profiles", e)
            return
        self.app.call_from_thread(self._show_profiles, rows)

    def _show_profiles(self, rows: list[list[str]]) -> None:
        table = self.query_one("#profiles-table", DataTable)
        table.clear()
        for cells in rows:
            table.add_row(*cells, key=cells[0])
