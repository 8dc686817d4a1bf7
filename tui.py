"""The terminal UI: which variants of my model fit which phone, and push the right one.

    edge tui --run runs/demo          # the variants of a run folder (run.json + report.json)
    edge tui --folder path/to/ggufs   # or any folder of GGUF files
    python tui.py --run runs/demo

A thin Textual app over the library: every number on screen comes from `edge.budget`,
`edge.readings`, `edge.device`, `edge.push` or the quantize report. The screens live in
`tui_screens/` (one module each), the styles in `tui_screens/tui.tcss`
(package data, so an installed wheel has them).

Keys: 1-5 (or v d b p) switch screens, ? shows help, q quits. Mouse works too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textual.app import App
from textual.binding import Binding

import tui_screens
from edge.errors import EdgeError
from tui_screens.budget import BudgetScreen
from tui_screens.devices import DevicesScreen
from tui_screens.help import HelpScreen
from tui_screens.pipeline import PipelineScreen
from tui_screens.push import PushScreen
from tui_screens.variants import VariantsScreen

class EdgeApp(App):
    """Variants, devices, budget, push and pipeline, one screen each (Textual modes)."""

    TITLE = "edge"
    CSS_PATH = Path(tui_screens.__file__).resolve().parent / "tui.tcss"
    MODES = {
        "variants": VariantsScreen,
        "devices": DevicesScreen,
        "budget": BudgetScreen,
        "push": PushScreen,
        "pipeline": PipelineScreen,
    }
    DEFAULT_MODE = "variants"
    BINDINGS = [
        Binding("1,v", "switch_mode('variants')", "Variants"),
        Binding("2,d", "switch_mode('devices')", "Devices"),
        Binding("3,b", "switch_mode('budget')", "Budget"),
        Binding("4,p", "switch_mode('push')", "Push"),
        Binding("5", "switch_mode('pipeline')", "Pipeline"),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, run: str | Path | None = None, folder: str | Path | None = None, *,
                 live: bool = True, host: bool = True, refresh_s: float = 3.0):
        """
        Args:
            run: a run folder whose variants to show (run.json / report.json).
            folder: a folder of GGUF files, used when there is no run.
            live: poll adb for connected phones (tests and snapshots turn it off).
            host: include this laptop as a device in the budget.
            refresh_s: seconds between two readings of the connected phones.
        """
        super().__init__()
        self.run_dir = Path(run) if run else None
        self.folder = Path(folder) if folder else None
        self.live = live
        self.host = host
        self.refresh_s = refresh_s
        self.variants: list = []            # tui_screens.library.Variant, set by the Variants screen
        self.report: Path | None = None     # the quality report (report.json) of those variants
        self.chosen_file: Path | None = None  # the file the Push screen starts with
        self.chosen_serial: str | None = None  # ... and the phone
        self.chosen_ctx: int = 4096            # ... and the n_ctx its budget check uses (Budget screen's)
        self.sub_title = str(self.run_dir or self.folder or "no run or folder given")

    def push_this(self, file: Path | None = None, serial: str | None = None, ctx: int | None = None) -> None:
        """Open the Push screen with this file and/or phone selected, its budget checked at n_ctx `ctx`."""
        if ctx is not None:
            self.chosen_ctx = ctx
        if file is not None:
            self.chosen_file = Path(file)
        if serial is not None:
            self.chosen_serial = serial
        self.switch_mode("push")

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def show_error(self, what: str, error: BaseException) -> None:
        """Show an error in the app (never crash): one line, what failed and why."""
        self.notify(f"{what}: {error}", title="error", severity="error", timeout=8)


def screenshot(app: EdgeApp, path: str | Path, screen: str = "budget", size: tuple[int, int] = (120, 34),
               keys: tuple[str, ...] = ()) -> Path:
    """Run `app` headless at `size`, open `screen`, wait for its library calls, press `keys`,
    and save an SVG screenshot to `path` (the README's picture is made this way)."""
    path = Path(path)

    async def pilot_script(pilot) -> None:
        for step in ("wait", f"mode:{screen}", "wait", *keys, "wait"):
            if step == "wait":
                for _ in range(3):
                    await pilot.app.workers.wait_for_complete()
                    await pilot.pause(0.2)
            elif step.startswith("mode:"):
                await pilot.app.switch_mode(step[5:])
            else:
                await pilot.press(step)
        pilot.app.save_screenshot(path.name, str(path.parent.resolve()))
        pilot.app.exit()

    path.parent.mkdir(parents=True, exist_ok=True)
    app.run(headless=True, size=size, auto_pilot=pilot_script)
    return path


def main(run: str | None = None, folder: str | None = None) -> None:
    """Run the app in this terminal (`edge tui` calls this). A run or folder that does not
    exist is bad input: EdgeError (one line, exit 2) before the screen is taken over."""
    for flag, path in (("--run", run), ("--folder", folder)):
        if path and not Path(path).is_dir():
            raise EdgeError(f"{flag} {path}: no such folder; give an existing folder "
                            "(a run from `edge demo --out`, or a folder of .gguf files)")
    EdgeApp(run=run, folder=folder).run()


def tui_cmd(*, run: str = "", folder: str = "") -> None:
    """Open the terminal UI.

    Args:
        run: a run folder (from `edge demo --out`) whose variants to show.
        folder: a folder of GGUF files to show instead of a run.
    """
    main(run=run or None, folder=folder or None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python tui.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a run folder (from `edge demo --out`)")
    parser.add_argument("--folder", default=None, help="a folder of GGUF files")
    parser.add_argument("--screenshot", default=None, metavar="SVG",
                        help="save a screenshot of --screen to this SVG file instead of opening the app")
    parser.add_argument("--screen", default="budget", choices=list(EdgeApp.MODES), help="screen for --screenshot")
    parser.add_argument("--size", default="120x34", help="terminal size for --screenshot, WIDTHxHEIGHT")
    args = parser.parse_args()
    try:
        if args.screenshot:
            w, _, h = args.size.partition("x")
            if not (w.isdigit() and h.isdigit()):
                raise EdgeError(f"--size {args.size}: expected WIDTHxHEIGHT, e.g. 120x34")
            for flag, p in (("--run", args.run), ("--folder", args.folder)):
                if p and not Path(p).is_dir():
                    raise EdgeError(f"{flag} {p}: no such folder")
            print(screenshot(EdgeApp(run=args.run, folder=args.folder, live=False), args.screenshot,
                             args.screen, (int(w), int(h))))
        else:
            main(run=args.run, folder=args.folder)
    except EdgeError as e:
        print(f"tui.py: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
