"""Pipeline: `edge run` driven from here, every stage's state from the run's run.json, and the
fine-tune's live loss plot.

`edge run` runs as a child process (torch stays out of the TUI), writing into the run folder;
the stage table follows run.json (each stage "running" while it works, "done" with its time
and summary), the status line shows the child's latest progress line (its tqdm bars: fine-tune
steps, quantize files, scored variants), and the plot follows adapter/log.jsonl, the file
`loss.png` is drawn from. Stop sends Ctrl-C: the fine-tune saves a checkpoint, every other file
is written under a temporary name; Start again resumes (finished stages are skipped).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Checkbox, DataTable, Footer, Header, Input, Label, Sparkline, Static

from edge.distributed import visible_gpus
from edge.runfolder import Run
from tui_screens.common import StatusLine, row_table

STAGE_COLUMNS = [("stage", "stage"), ("status", "status"), ("outputs", "outputs"), ("seconds", "time"),
                 ("finished", "finished"), ("summary", "summary")]
EDGE = [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())"]


def read_manifest(run_dir: Path | None) -> dict:
    """The run's run.json, read only; {} when there is none or it cannot be read."""
    from edge.runfolder import MANIFEST

    try:
        data = json.loads((run_dir / MANIFEST).read_text()) if run_dir is not None else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_rows(manifest: dict, active: bool = False) -> list[list[str]]:
    """One row per stage of `edge run`, from the run's run.json (`read_manifest`). A stage left
    "running" by a process that is gone reads "interrupted" (the next run resumes it)."""
    from edge.pipeline import STAGE_NAMES

    stages = manifest.get("stages")
    stages = stages if isinstance(stages, dict) else {}
    rows = []
    for name in list(STAGE_NAMES) + [s for s in stages if s not in STAGE_NAMES]:
        e = stages.get(name)
        if not isinstance(e, dict):
            rows.append([name, "not run", "", "", "", ""])
            continue
        state = e.get("state", "done")
        if state == "running":
            rows.append([name, "running" if active else "interrupted", "", "", str(e.get("started", "")), ""])
            continue
        summary = ", ".join(f"{k}={v}" for k, v in (e.get("summary") or {}).items() if not isinstance(v, (dict, list)))
        secs = e.get("seconds")
        rows.append([name, state, str(len(e.get("outputs", []))),
                     "" if not isinstance(secs, (int, float)) else f"{secs:.0f} s",
                     str(e.get("finished", "")), summary[:80]])
    return rows


def read_log(log: Path) -> list[dict]:
    """The records `edge finetune` appended to log.jsonl (a line being written is skipped)."""
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class PipelineScreen(Screen):
    """`edge run` into the run folder: the stages (run.json), a form, live progress, the loss plot."""

    BINDINGS = [Binding("r", "refresh", "Refresh"),
                Binding("ctrl+t", "start", "Run"),
                Binding("escape", "stop", "Stop")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Pipeline: edge run into the run folder (stages from run.json)", classes="title")
        yield row_table("pipeline-table", STAGE_COLUMNS)
        with Horizontal(classes="pipeline-form"):
            yield Label("data")
            yield Input(id="pipeline-data")
            yield Label("model")
            yield Input("embedded", id="pipeline-model")
        with Horizontal(classes="pipeline-form"):
            yield Label("steps")
            yield Input("60", id="pipeline-steps", type="integer")
            yield Label("recipes")
            yield Input("", id="pipeline-recipes", placeholder="default")
            yield Label("", id="pipeline-gpus-label")
            yield Input("1", id="pipeline-gpus", type="integer")
            yield Checkbox("redo all", id="pipeline-force")
            yield Button("Start", id="pipeline-start", variant="primary")
            yield Button("Stop", id="pipeline-stop", variant="error", disabled=True)
        yield Static("", id="pipeline-loss-label")
        yield Sparkline([], id="pipeline-loss")
        yield StatusLine(id="pipeline-status")
        yield Footer()

    def on_mount(self) -> None:
        from edge.task import TRAIN

        self.proc: subprocess.Popen | None = None
        self._latest = ""
        self._lock = threading.Lock()
        self.query_one("#pipeline-data", Input).value = str(TRAIN)
        self.show_gpus(visible_gpus())
        self.query_one(StatusLine).show(
            f"run folder: {self.run_dir}" if self.app.run_dir else
            f"no --run given: edge run writes into {self.run_dir}", "info")
        self.action_refresh()
        self.set_interval(1.0, self.action_refresh)

    @property
    def run_dir(self) -> Path:
        return self.app.run_dir or Path("runs") / "tui"

    def show_gpus(self, n: int) -> None:
        """With more than one GPU visible, the form shows how many and lets the user choose
        how many the fine-tune uses (`edge run --gpus N`); with one or none it shows nothing."""
        label, field = self.query_one("#pipeline-gpus-label", Label), self.query_one("#pipeline-gpus", Input)
        self.gpus_visible = n
        label.update(f"GPUs (of {n})")
        field.value = str(n) if n > 1 else "1"
        label.display = field.display = n > 1

    def log_dir(self, manifest: dict) -> Path:
        """Where the fine-tune writes log.jsonl: its folder in the run, adapter or (full) model,
        by the settings run.json records."""
        from edge.stages import finetune_out

        settings = manifest.get("settings")
        full = bool(settings.get("full")) if isinstance(settings, dict) else False
        return finetune_out(Run(self.run_dir, {}), full)

    def action_refresh(self) -> None:
        """Re-read run.json and log.jsonl (small files: read here, no worker needed)."""
        from edge.finetune import LOG

        table = self.query_one("#pipeline-table", DataTable)
        manifest = read_manifest(self.run_dir)       # once per refresh: the table and the plot's folder
        rows = stage_rows(manifest, active=self.proc is not None)
        if [list(map(str, table.get_row_at(i))) for i in range(table.row_count)] != rows:
            table.clear()
            for r in rows:
                table.add_row(*r, key=r[0])
        folder = self.log_dir(manifest)
        records = read_log(folder / LOG)
        losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
        self.query_one(Sparkline).data = losses
        label = self.query_one("#pipeline-loss-label", Static)
        if records and losses:
            last = records[-1]
            evals = [r["eval_loss"] for r in records if "eval_loss" in r]
            label.update(f"fine-tune loss by step (log.jsonl): step {last.get('step')} · loss {losses[-1]:.4f}"
                         + (f" · eval {evals[-1]:.4f}" if evals else "")
                         + f" · {last.get('tok_s', 0):.0f} tok/s · {last.get('elapsed', 0):.0f} s"
                         + f"   [dim](plot from {min(losses):.4f} to {max(losses):.4f})[/dim]")
        else:
            label.update(f"fine-tune loss by step: no {LOG} in {folder} yet")
        if self.proc is not None:
            running = next((r[0] for r in rows if r[1] == "running"), "starting")
            with self._lock:
                latest = self._latest
            self.query_one(StatusLine).show(f"edge run → {self.run_dir}: {running} · {latest[-90:]} · Esc stops",
                                            "busy")

    def argv(self) -> list[str]:
        value = lambda key: self.query_one(f"#pipeline-{key}", Input).value.strip()
        argv = EDGE + ["run", "--data", value("data"), "--out", str(self.run_dir),
                       "--model", value("model") or "embedded", "--steps", value("steps") or "60"]
        if value("recipes"):
            argv += ["--recipes", value("recipes")]
        if self.gpus_visible > 1 and value("gpus") not in ("", "0", "1"):
            argv += ["--gpus", value("gpus")]
        if self.query_one("#pipeline-force", Checkbox).value:
            argv += ["--from", "data"]
        return argv

    def action_start(self) -> None:
        if self.proc is not None:
            return
        self.query_one("#pipeline-start", Button).disabled = True
        self.query_one("#pipeline-stop", Button).disabled = False
        self.query_one(StatusLine).show(f"edge run → {self.run_dir} (starting; loading the model)…", "busy")
        self.run_pipeline(self.argv())

    @work(thread=True, exclusive=True, group="pipeline", exit_on_error=False)
    def run_pipeline(self, argv: list[str]) -> None:
        app, tail = self.app, []
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         bufsize=1, errors="replace")
            piece = ""
            while True:          # tqdm redraws with \r: keep the latest piece as the live progress
                ch = self.proc.stdout.read(1)
                if not ch:
                    break
                if ch in "\r\n":
                    if piece.strip():
                        with self._lock:
                            self._latest = piece.strip()
                        if ch == "\n":
                            tail = (tail + [piece.strip()])[-20:]
                    piece = ""
                else:
                    piece += ch
            rc = self.proc.wait()
        except OSError as e:
            tail, rc = [str(e)], 1
        finally:
            self.proc = None
        app.call_from_thread(self._finished, rc, tail)

    def _finished(self, rc: int, tail: list[str]) -> None:
        self.query_one("#pipeline-start", Button).disabled = False
        self.query_one("#pipeline-stop", Button).disabled = True
        status = self.query_one(StatusLine)
        last = tail[-1] if tail else ""
        if rc == 0:
            recs = [ln for ln in tail if ln.startswith("recommended on")]
            status.show(f"edge run finished · {'; '.join(recs)[:160] or last}", "info")
        elif rc in (130, -signal.SIGINT):
            status.show("stopped: Start resumes (finished stages are skipped; the fine-tune continues from its "
                        "checkpoint)", "warn")
        else:
            err = next((ln for ln in reversed(tail) if "error" in ln), last)
            status.show(f"edge run failed (exit {rc}): {err or 'no message'}", "error")
        self.action_refresh()

    def action_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)     # the fine-tune saves a checkpoint; files are atomic
            self.query_one(StatusLine).show("stopping: edge run saves a checkpoint first…", "busy")

    @on(Button.Pressed, "#pipeline-start")
    def _start(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#pipeline-stop")
    def _stop(self) -> None:
        self.action_stop()
