"""The Textual app (`tui.py`): each screen's main flow driven with Pilot (`App.run_test`),
against tiny GGUF files (tests/test_tui_gguf.py) and the adb device simulator
(tests/adbsim.py, through the real adb server), plus a smoke test that starts `edge tui` in a
real terminal (tmux) and reads the screen back.

    .venv/bin/pytest tests/test_tui.py tests/test_tui_snapshots.py
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_tui_gguf import tiny_variants  # noqa: E402
from tui import EdgeApp  # noqa: E402
from tui_screens import library  # noqa: E402
from tui_screens.help import HelpScreen  # noqa: E402

SIZE = (120, 34)


def async_test(fn):
    """Run an async test function with asyncio (no pytest async plugin needed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


@pytest.fixture(scope="module")
def variants_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tui") / "ggufs"
    tiny_variants(folder)
    return folder


async def settle(app, pilot) -> None:
    """Wait for every worker (library calls) and the messages they posted."""
    for _ in range(3):
        await app.workers.wait_for_complete()
        await pilot.pause()


def table_rows(table) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


# ---- Variants ---------------------------------------------------------------------------------
@async_test
async def test_variants_lists_files_with_report_numbers(variants_dir):
    app = EdgeApp(folder=variants_dir, live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        rows = table_rows(app.screen.query_one("#variants-table"))
        assert [r[0] for r in rows] == ["tiny-Q8_0", "tiny-F16", "tiny-F32"]   # smallest first
        q8 = rows[0]
        assert q8[1] == "Q8_0" and q8[3] == "8.50" and q8[4] == "0.0123" and q8[8] == "812.0"
        # Not in the report: size from the file, bits per weight read from the GGUF itself.
        f32 = rows[2]
        assert f32[4] == "—" and f32[3] == "32.00"
        assert f32[2] == "{:.1f} KiB".format((variants_dir / "tiny-F32.gguf").stat().st_size / 1024)


@async_test
async def test_variants_of_a_run_come_from_run_json(tmp_path, variants_dir):
    from edge.runfolder import Run

    run = Run.open(tmp_path / "run")
    (run.root / "gguf").mkdir()
    kept = run.root / "gguf" / "tiny-F16.gguf"
    shutil.copy(variants_dir / "tiny-F16.gguf", kept)
    shutil.copy(variants_dir / "tiny-F32.gguf", run.root / "gguf" / "stray.gguf")  # not in run.json
    run.record("quantize", outputs=[kept])
    app = EdgeApp(run=run.root, live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        rows = table_rows(app.screen.query_one("#variants-table"))
        assert [r[0] for r in rows] == ["tiny-F16"]
        assert "run" in str(app.screen.query_one("#variants-source").render())


@async_test
async def test_a_missing_folder_is_an_error_in_the_app(tmp_path):
    app = EdgeApp(folder=tmp_path / "nope", live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        status = app.screen.query_one("#variants-status")
        assert status.has_class("-error")
        assert "does not exist" in str(status.render())
        await pilot.press("b")          # the other screens still work
        await settle(app, pilot)
        assert app.current_mode == "budget"
        assert app.is_running


@async_test
async def test_a_damaged_gguf_is_a_warning_not_a_crash(tmp_path, variants_dir):
    data = (variants_dir / "tiny-F32.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    app = EdgeApp(folder=tmp_path, live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        status = app.screen.query_one("#variants-status")
        assert status.has_class("-warn") and "cut.gguf" in str(status.render())
        assert table_rows(app.screen.query_one("#variants-table"))[0][3] == "—"


@async_test
async def test_help_opens_and_closes():
    app = EdgeApp(folder=ROOT / "no-such-dir", live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@async_test
async def test_enter_on_a_variant_opens_push_with_that_file(variants_dir):
    app = EdgeApp(folder=variants_dir, live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("down", "enter")
        await settle(app, pilot)
        assert app.current_mode == "push"
        assert app.screen.query_one("#push-file").value == variants_dir / "tiny-F16.gguf"


# ---- a real terminal --------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (scripts/setup.sh installs it)")
def test_edge_tui_starts_in_a_real_terminal(variants_dir, tmp_path):
    """`edge tui --folder ...` in tmux: the Variants table appears, `b` switches, `q` quits."""
    edge = ROOT / ".venv" / "bin" / "edge"
    cmd = [str(edge)] if edge.exists() else [sys.executable, "-m", "edge.cli"]
    sock = f"edge-tui-test-{os.getpid()}"
    tmux = ["tmux", "-L", sock]
    env = {**os.environ, "TERM": "xterm-256color"}
    line = " ".join(cmd + ["tui", "--folder", str(variants_dir)]) + f"; echo EXIT=$? > {tmp_path / 'rc'}"
    subprocess.run(tmux + ["new-session", "-d", "-s", "t", "-x", "120", "-y", "34", line], check=True, env=env)

    def screen_text() -> str:
        return subprocess.run(tmux + ["capture-pane", "-p", "-t", "t"], capture_output=True, text=True).stdout

    def wait_for(text: str, timeout: float = 30) -> str:
        end = time.time() + timeout
        while time.time() < end:
            out = screen_text()
            if text in out:
                return out
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared; screen:\n{screen_text()}")

    try:
        out = wait_for("tiny-Q8_0")
        assert "Variants" in out and "tiny-F32" in out
        subprocess.run(tmux + ["send-keys", "-t", "t", "b"], check=True)
        wait_for("Budget")
        subprocess.run(tmux + ["send-keys", "-t", "t", "q"], check=True)
        end = time.time() + 10
        while time.time() < end and not (tmp_path / "rc").exists():
            time.sleep(0.2)
        assert (tmp_path / "rc").read_text().strip() == "EXIT=0"
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
