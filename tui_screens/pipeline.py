"""Pipeline: the stages of a run (its run.json), and a fine-tune started from here with a live
loss plot.

The fine-tune is the `edge finetune` command itself, run as a child process (torch stays out
of the TUI), writing into `<run>/adapter`; the plot follows the `log.jsonl` it appends one
line to per step (the same file `loss.png` is drawn from). Stop sends Ctrl-C: `edge finetune`
saves a checkpoint and a later start with "resume" continues from it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Checkbox, DataTable, Footer, Header, Input, Label, Sparkline, Static

from tui_screens.common import StatusLine, row_table

STAGE_COLUMNS = [("stage", "stage"), ("status", "status"), ("outputs", "outputs"), ("seconds", "time"),
                 ("finished", "finished"), ("summary", "summary")]
EDGE = [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())"]


def stage_rows(run_dir: Path | None) -> list[list[str]]:
    """One row per stage of `edge demo`, from the run's run.json (read only)."""
    from edge.demo import STAGES
    from edge.runfolder import MANIFEST

    stages = {}
    if run_dir is not None and (run_dir / MANIFEST).is_file():
        stages = json.loads((run_dir / MANIFEST).read_text()).get("stages", {})
    rows = []
    for name in [s[0] for s in STAGES] + [s for s in stages if s not in {x[0] for x in STAGES}]:
        e = stages.get(name)
        if e is None:
            rows.append([name, "not run", "", "", "", ""])
            continue
        summary = ", ".join(f"{k}={v}" for k, v in (e.get("summary") or {}).items() if not isinstance(v, (dict, list)))
        secs = e.get("seconds")
        rows.append([name, "done", str(len(e.get("outputs", []))), "" if secs is None else f"{secs:.0f} s",
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
    """run.json stages, a fine-tune form, the live loss plot."""

    BINDINGS = [Binding("r", "refresh", "Refresh"),
                Binding("ctrl+t", "train", "Fine-tune"),
                Binding("escape", "stop", "Stop")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Pipeline: the run's stages (run.json)", classes="title")
        yield row_table("pipeline-table", STAGE_COLUMNS)
        yield Static("Fine-tune (edge finetune) into the run's adapter/ folder", classes="title")
        with Horizontal(classes="pipeline-form"):
            yield Label("model")
            yield Input("embedded", id="pipeline-model")
            yield Label("data")
            yield Input(id="pipeline-data")
        with Horizontal(classes="pipeline-form"):
            yield Label("steps")
            yield Input("60", id="pipeline-steps", type="integer")
            yield Checkbox("resume", id="pipeline-resume")
            yield Checkbox("replace", id="pipeline-force")
            yield Button("Start", id="pipeline-start", variant="primary")
            yield Button("Stop", id="pipeline-stop", variant="error", disabled=True)
        yield Static("", id="pipeline-loss-label")
        yield Sparkline([], id="pipeline-loss")
        yield StatusLine(id="pipeline-status")
        yield Footer()

    def on_mount(self) -> None:
        from edge.task import TRAIN

        self.proc: subprocess.Popen | None = None
        self._steps = "60"
        self.query_one("#pipeline-data", Input).value = str(TRAIN)
        self.query_one(StatusLine).show(
            f"run folder: {self.adapter_dir.parent}" if self.app.run_dir else
            f"no --run given: fine-tunes go to {self.adapter_dir}", "info")
        self.action_refresh()
        self.set_interval(1.0, self.action_refresh)

    @property
    def adapter_dir(self) -> Path:
        return (self.app.run_dir or Path("runs") / "tui") / "adapter"

    def action_refresh(self) -> None:
        """Re-read run.json and log.jsonl (small files: read here, no worker needed)."""
        from edge.finetune import LOG

        table = self.query_one("#pipeline-table", DataTable)
        rows = stage_rows(self.app.run_dir)
        if [list(map(str, table.get_row_at(i))) for i in range(table.row_count)] != rows:
            table.clear()
            for r in rows:
                table.add_row(*r, key=r[0])
        records = read_log(self.adapter_dir / LOG)
        losses = [r["loss"] for r in records if "loss" in r]
        self.query_one(Sparkline).data = losses
        label = self.query_one("#pipeline-loss-label", Static)
        if records:
            last = records[-1]
            evals = [r["eval_loss"] for r in records if "eval_loss" in r]
            label.update(f"loss by step (log.jsonl): step {last['step']} · loss {last['loss']:.4f}"
                         + (f" · eval {evals[-1]:.4f}" if evals else "")
                         + f" · {last.get('tok_s', 0):.0f} tok/s · {last.get('elapsed', 0):.0f} s"
                         + (f"   [dim](plot from {min(losses):.4f} to {max(losses):.4f})[/dim]" if losses else ""))
            if self.proc is not None:
                self.query_one(StatusLine).show(f"edge finetune → {self.adapter_dir}: step {last['step']} of "
                                                f"{self._steps} · Esc stops with a checkpoint", "busy")
        else:
            label.update(f"loss by step: no {LOG} in {self.adapter_dir} yet")

    def action_train(self) -> None:
        if self.proc is not None:
            return
        steps = self.query_one("#pipeline-steps", Input).value.strip() or "60"
        self._steps = steps
        argv = EDGE + ["finetune", "--model", self.query_one("#pipeline-model", Input).value.strip() or "embedded",
                       "--data", self.query_one("#pipeline-data", Input).value.strip(),
                       "--out", str(self.adapter_dir), "--steps", steps, "--json"]
        if self.query_one("#pipeline-resume", Checkbox).value:
            argv.append("--resume")
        if self.query_one("#pipeline-force", Checkbox).value:
            argv.append("--force")
        self.query_one("#pipeline-start", Button).disabled = True
        self.query_one("#pipeline-stop", Button).disabled = False
        self.query_one(StatusLine).show(f"edge finetune → {self.adapter_dir} (starting; loading the model)…", "busy")
        self.run_finetune(argv)

    @work(thread=True, exclusive=True, group="pipeline", exit_on_error=False)
    def run_finetune(self, argv: list[str]) -> None:
        app = self.app
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = self.proc.communicate()
            rc = self.proc.returncode
        except OSError as e:
            out, err, rc = "", str(e), 1
        finally:
            self.proc = None
        app.call_from_thread(self._finished, rc, out, err)

    def _finished(self, rc: int, out: str, err: str) -> None:
        self.query_one("#pipeline-start", Button).disabled = False
        self.query_one("#pipeline-stop", Button).disabled = True
        status = self.query_one(StatusLine)
        lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if "checkpoint" in ln), lines[-1] if lines else "")
        if rc == 0:
            try:
                r = json.loads(out)
                status.show(f"fine-tuned to step {r['steps']} in {r['seconds']:.0f} s · train loss "
                            f"{r['train_loss']:.4f} · adapter {r['out']} · next: edge merge --adapter {r['out']}", "info")
            except (json.JSONDecodeError, KeyError, TypeError):
                status.show(f"edge finetune finished: {out.strip()[-200:]}", "info")
        elif rc in (130, -signal.SIGINT):
            status.show(f"stopped: {last or 'interrupted'}", "warn")
        else:
            status.show(f"edge finetune failed (exit {rc}): {last or 'no message'}", "error")
        self.action_refresh()

    def action_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)     # edge finetune saves a checkpoint and exits
            self.query_one(StatusLine).show("stopping: edge finetune saves a checkpoint first…", "busy")

    @on(Button.Pressed, "#pipeline-start")
    def _start(self) -> None:
        self.action_train()

    @on(Button.Pressed, "#pipeline-stop")
    def _stop(self) -> None:
        self.action_stop()
