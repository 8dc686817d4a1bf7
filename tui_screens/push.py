"""Push: pick a GGUF, a phone and an app; push it with a progress bar (speed, ETA) that
can be cancelled; then show the result and what to do in the app.

The copy itself is `edge.push.push(...)` (through the real adb); this screen runs it in a
thread worker, turns its progress callback into coalesced messages, and sets the cancel event.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Label, ProgressBar, Select, Static

from tui_screens import library
from tui_screens.common import StatusLine, describe_error, fmt_bytes


@dataclass
class PushProgress(Message):
    """Bytes sent so far; a newer one replaces an older one still in the queue."""

    sent: int
    total: int

    def __post_init__(self) -> None:
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PushProgress)


@dataclass
class PushDone(Message):
    """The push ended: `result` from edge.push, or `error`, or cancelled."""

    result: object | None = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        super().__init__()


def speed_line(sent: int, total: int, seconds: float) -> str:
    """'12.3 MiB/s · 40.0 MiB of 240.0 MiB · ETA 0:16' from bytes and elapsed seconds."""
    if seconds <= 0 or sent <= 0:
        return f"0 B of {fmt_bytes(total)}"
    rate = sent / seconds
    eta = (total - sent) / rate if rate else 0
    return f"{fmt_bytes(rate)}/s · {fmt_bytes(sent)} of {fmt_bytes(total)} · ETA {int(eta) // 60}:{int(eta) % 60:02d}"


class PushScreen(Screen):
    """A form (file, phone, app), a progress bar and the result with next steps."""

    BINDINGS = [Binding("ctrl+s", "push", "Push"),
                Binding("escape", "cancel", "Cancel push"),
                Binding("r", "refresh", "Refresh lists")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Push a GGUF to a phone", classes="title")
        with Vertical(id="push-form"):
            with Horizontal():
                yield Label("File")
                yield Select([], id="push-file", prompt="pick a GGUF (Variants screen: Enter)")
            with Horizontal():
                yield Label("Phone")
                yield Select([], id="push-device", prompt="no phone connected")
            with Horizontal():
                yield Label("App")
                yield Select([], id="push-app", prompt="pick the app that will load it")
        with Horizontal(id="push-buttons"):
            yield Button("Push", id="push-go", variant="primary")
            yield Button("Cancel", id="push-cancel", variant="error", disabled=True)
        yield ProgressBar(id="push-progress", show_eta=False)
        yield Static("", id="push-speed")
        yield StatusLine(id="push-status")
        yield Static("", id="push-result")
        yield Footer()

    def on_mount(self) -> None:
        self._cancel: threading.Event | None = None
        self._started = 0.0
        self.action_refresh()

    def on_screen_resume(self) -> None:
        self._fill_files()

    # ---- the lists ----------------------------------------------------------------------
    def _fill_files(self) -> None:
        files = [v.path for v in getattr(self.app, "variants", [])]
        chosen = getattr(self.app, "chosen_file", None)
        if chosen and chosen not in files:
            files.append(chosen)
        select = self.query_one("#push-file", Select)
        select.set_options([(f"{p.name}  ({fmt_bytes(p.stat().st_size) if p.exists() else 'missing'})", p)
                            for p in files])
        if chosen:
            select.value = chosen

    def action_refresh(self) -> None:
        self._fill_files()
        self.load_lists()

    @work(thread=True, exclusive=True, group="push-lists", exit_on_error=False)
    def load_lists(self) -> None:
        app = self.app
        try:
            apps = library.push_apps()
        except Exception as e:
            app.call_from_thread(app.show_error, "apps", e)
            apps = []
        try:
            listed = [d for d in library.connected_devices() if d.state == "device"]
            msg, kind = ("", "info") if listed else (library.NO_DEVICE_HELP, "warn")
        except Exception as e:  # adb not installed / server down: a state, with what to do
            listed, msg, kind = [], describe_error(e), "warn"
        app.call_from_thread(self._fill_lists, apps, listed, msg, kind)

    def _fill_lists(self, apps, devices, msg: str, kind: str) -> None:
        dev = self.query_one("#push-device", Select)
        dev.set_options([(f"{d.serial}  {getattr(d, 'model', '') or ''}".rstrip(), d.serial) for d in devices])
        if len(devices) == 1:
            dev.value = devices[0].serial
        app_select = self.query_one("#push-app", Select)
        keep = app_select.value
        app_select.set_options([(label, key) for key, label in apps])
        if keep != Select.BLANK and keep in {k for k, _ in apps}:
            app_select.value = keep
        elif apps:
            app_select.value = apps[0][0]
        if msg:
            self.query_one(StatusLine).show(msg, kind)
        elif not self._busy:
            self.query_one(StatusLine).show(f"{len(devices)} phone(s) ready · Ctrl+S or Push to start", "info")

    # ---- pushing ------------------------------------------------------------------------
    @property
    def _busy(self) -> bool:
        return self._cancel is not None

    def action_push(self) -> None:
        if self._busy:
            return
        values = {k: self.query_one(f"#push-{k}", Select).value for k in ("file", "device", "app")}
        missing = [k for k, v in values.items() if v == Select.BLANK]
        if missing:
            self.query_one(StatusLine).show(f"pick a {' and a '.join(missing)} first", "warn")
            return
        path: Path = values["file"]
        self._cancel = threading.Event()
        self._started = time.monotonic()
        bar = self.query_one(ProgressBar)
        bar.update(total=path.stat().st_size if path.exists() else None, progress=0)
        self.query_one("#push-speed", Static).update("")
        self.query_one("#push-result", Static).update("")
        self.query_one("#push-go", Button).disabled = True
        self.query_one("#push-cancel", Button).disabled = False
        self.query_one(StatusLine).show(f"pushing {path.name} to {values['device']}…", "busy")
        self.run_push(path, values["device"], values["app"], self._cancel)

    @work(thread=True, exclusive=True, group="push", exit_on_error=False)
    def run_push(self, path: Path, serial: str, app_key: str, cancel: threading.Event) -> None:
        try:
            result = library.push(path, app_key, serial,
                                  progress=lambda sent, total: self.post_message(PushProgress(sent, total)),
                                  cancel=cancel)
        except BaseException as e:  # shown in the app; a cancel arrives here too
            self.post_message(PushDone(error=e))
            return
        self.post_message(PushDone(result=result))

    def action_cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.query_one(StatusLine).show("cancelling…", "busy")

    def on_push_progress(self, msg: PushProgress) -> None:
        self.query_one(ProgressBar).update(total=msg.total, progress=msg.sent)
        self.query_one("#push-speed", Static).update(
            speed_line(msg.sent, msg.total, time.monotonic() - self._started))

    def on_push_done(self, msg: PushDone) -> None:
        cancelled = self._cancel is not None and self._cancel.is_set()
        self._cancel = None
        self.query_one("#push-go", Button).disabled = False
        self.query_one("#push-cancel", Button).disabled = True
        status = self.query_one(StatusLine)
        if msg.error is not None:
            status.show(("cancelled: " if cancelled else "push failed: ") + describe_error(msg.error),
                        "warn" if cancelled else "error")
            return
        status.show(library.push_summary(msg.result), "info")
        self.query_one("#push-result", Static).update(library.push_next_steps(msg.result))

    @on(Button.Pressed, "#push-go")
    def _go(self) -> None:
        self.action_push()

    @on(Button.Pressed, "#push-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()
