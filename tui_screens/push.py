"""Push: pick a GGUF, a phone and an app; push it with a progress bar (speed, ETA) that
can be cancelled; then show the result and what to do in the app.

The copy itself is `edge.push.push(...)` (through the real adb); this screen runs it in a
thread worker, turns its progress callback into coalesced messages, and sets the cancel event.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Label, ProgressBar, Select, Static

from edge.device import HASH_LABEL
from tui_screens import library
from tui_screens.common import StatusLine, describe_error, fmt_bytes


@dataclass
class PushProgress(Message):
    """An `edge.device.Progress` (stage, bytes done/total, speed, ETA) posted from the push
    worker; a newer one replaces an older one still waiting in the queue."""

    progress: object

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PushProgress)


@dataclass
class PushDone(Message):
    """The push ended: `result` (an `edge.push.PushResult`) or `error`."""

    result: object | None = None
    error: BaseException | None = None


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def progress_line(p) -> str:
    """'push · 12.3 MiB/s · 40.0 MiB of 240.0 MiB · ETA 0:16' from the library's Progress."""
    line = f"{p.stage} · {fmt_bytes(p.bytes_per_s)}/s · {fmt_bytes(p.done)} of {fmt_bytes(p.total)} · ETA {fmt_eta(p.eta_s)}"
    return line + (f" · {p.message}" if p.message else "")


def result_text(r) -> str:
    """The PushResult as a few lines: where it went, how fast, checks, warnings, next steps."""
    where = f"https://huggingface.co/{r.hf_repo}" if r.hf_repo else f"{r.serial}:{r.remote_path}"
    lines = [f"[b]pushed[/b] {Path(r.file).name} ({fmt_bytes(r.size_bytes)}) → {where}"]
    if r.route != "huggingface":
        lines.append(f"{r.mb_per_s:.1f} MB/s · {r.seconds:.1f} s · "
                     + (f"{HASH_LABEL} verified on the phone ({r.segments_verified} segment(s))" if r.verified
                        else "[yellow]not verified[/yellow]")
                     + (f" · resumed {len(r.resumed_at)}x" if r.resumed_at else ""))
    if r.budget:
        lines.append(f"budget on this phone at n_ctx {r.ctx}: {r.budget}")
    lines += [f"[yellow]warning:[/yellow] {w}" for w in r.warnings]
    if r.next_steps:
        lines.append("")
        lines.append("[b]Next steps[/b]")
        lines += [f" {i}. {step}" for i, step in enumerate(r.next_steps, 1)]
    return "\n".join(lines)


HINT = """Pick a file, a phone and an app, then [b]Ctrl+S[/b] (or Push). [b]Esc[/b] cancels a push.

The copy is `edge push`: it checks that the file is a GGUF and that our budget says it fits
the phone at the Budget screen's n_ctx (tick [i]force[/i] to push anyway), copies it under a temporary name, has the phone
compute a SHA-1 of every part, resumes after a dropped link, then renames it. The app's next
steps are shown here when it is done."""


class PushScreen(Screen):
    """A form (file, phone, app), a progress bar and the result with next steps."""

    BINDINGS = [Binding("ctrl+s", "push", "Push"),
                Binding("escape", "cancel", "Cancel"),
                Binding("r", "refresh", "Refresh")]

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
            yield Checkbox("force: replace a file of the same name; push even if it does not fit",
                           id="push-force")
        yield ProgressBar(id="push-progress", total=1, show_eta=False)
        yield Static("", id="push-speed")
        yield StatusLine(id="push-status")
        yield Static(HINT, id="push-result")
        yield Footer()

    def on_mount(self) -> None:
        self._cancel: threading.Event | None = None
        self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    # ---- the lists ----------------------------------------------------------------------
    def _fill_files(self) -> None:
        files = [v.path for v in getattr(self.app, "variants", [])]
        chosen = getattr(self.app, "chosen_file", None)
        if chosen and chosen not in files:
            files.append(chosen)
        select = self.query_one("#push-file", Select)
        keep = select.value
        select.set_options([(f"{p.name}  ({fmt_bytes(p.stat().st_size) if p.exists() else 'missing'})", p)
                            for p in files])
        if chosen:
            select.value = chosen
        elif keep in files:
            select.value = keep

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
        if not app.live:
            listed, msg, kind = [], "adb off (the app was started with live=False)", "info"
        else:
            try:
                listed = [d for d in library.connected_devices() if d.state == "device"]
                msg, kind = ("", "info") if listed else (library.NO_DEVICE_HELP, "warn")
            except Exception as e:  # adb not installed / server down: a state, with what to do
                listed, msg, kind = [], describe_error(e), "warn"
        app.call_from_thread(self._fill_lists, apps, listed, msg, kind)

    def _fill_lists(self, apps, devices, msg: str, kind: str) -> None:
        dev = self.query_one("#push-device", Select)
        keep = dev.value
        dev.set_options([(f"{d.serial}  {d.model}".rstrip(), d.serial) for d in devices])
        serials = [d.serial for d in devices]
        wanted = self.app.chosen_serial if self.app.chosen_serial in serials else keep
        if wanted in serials:
            dev.value = wanted
        elif len(devices) == 1:
            dev.value = devices[0].serial
        app_select = self.query_one("#push-app", Select)
        keep = app_select.value
        app_select.set_options([(label, key) for key, label in apps])
        if keep in {k for k, _ in apps}:
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
        selects = {k: self.query_one(f"#push-{k}", Select) for k in ("file", "device", "app")}
        missing = [{"device": "phone"}.get(k, k) for k, sel in selects.items() if sel.is_blank()]
        if missing:
            self.query_one(StatusLine).show(f"pick a {' and a '.join(missing)} first", "warn")
            return
        values = {k: sel.value for k, sel in selects.items()}
        path: Path = values["file"]
        self._cancel = threading.Event()
        bar = self.query_one(ProgressBar)
        bar.update(total=path.stat().st_size if path.exists() else None, progress=0)
        self.query_one("#push-speed", Static).update("")
        self.query_one("#push-result", Static).update("")
        self.query_one("#push-go", Button).disabled = True
        self.query_one("#push-cancel", Button).disabled = False
        ctx = self.app.chosen_ctx
        self.query_one(StatusLine).show(f"pushing {path.name} to {values['device']} (budget at n_ctx {ctx})…", "busy")
        self.run_push(path, values["device"], values["app"], self.query_one("#push-force", Checkbox).value,
                      ctx, self._cancel)

    @work(thread=True, exclusive=True, group="push", exit_on_error=False)
    def run_push(self, path: Path, serial: str, app_key: str, force: bool, ctx: int,
                 cancel: threading.Event) -> None:
        try:
            result = library.push(path, app_key, serial, force=force, ctx=ctx,
                                  progress=lambda p: self.post_message(PushProgress(p)), cancel=cancel)
        except BaseException as e:  # shown in the app; a cancel arrives here too
            self.post_message(PushDone(error=e))
            return
        self.post_message(PushDone(result=result))

    def action_cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.query_one(StatusLine).show("cancelling…", "busy")

    def on_push_progress(self, msg: PushProgress) -> None:
        p = msg.progress
        self.query_one(ProgressBar).update(total=p.total or None, progress=p.done)
        self.query_one("#push-speed", Static).update(progress_line(p))

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
        status.show(f"done: {Path(msg.result.file).name} is on {msg.result.serial}", "info")
        self.query_one("#push-result", Static).update(result_text(msg.result))

    @on(Select.Changed, "#push-file")
    def _file_changed(self, event: Select.Changed) -> None:
        if not event.select.is_blank():
            self.app.chosen_file = event.value

    @on(Select.Changed, "#push-device")
    def _device_changed(self, event: Select.Changed) -> None:
        if not event.select.is_blank():
            self.app.chosen_serial = event.value

    @on(Button.Pressed, "#push-go")
    def _go(self) -> None:
        self.action_push()

    @on(Button.Pressed, "#push-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()
