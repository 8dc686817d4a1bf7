"""Snapshot tests of the TUI's screens (pytest-textual-snapshot): a fixed 120x34 terminal,
cursor blink frozen, tiny GGUF files written at a fixed path, no live adb and no host column
(so nothing depends on this machine). Accepted screenshots live in
tests/__snapshots__/test_tui_snapshots/; after an intended change to a screen:

    .venv/bin/pytest tests/test_tui_snapshots.py --snapshot-update     # then look at the SVGs
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

pytest.importorskip("pytest_textual_snapshot")

from tests.test_tui_gguf import tiny_variants  # noqa: E402
from tui import EdgeApp  # noqa: E402

SIZE = (120, 34)
# A fixed folder: paths appear on screen (the sub-title), so they must not change between runs.
FIXED = Path(tempfile.gettempdir()) / "edge-tui-snapshots" / "ggufs"


@pytest.fixture(scope="module")
def folder() -> Path:
    shutil.rmtree(FIXED, ignore_errors=True)
    tiny_variants(FIXED)
    yield FIXED
    shutil.rmtree(FIXED.parent, ignore_errors=True)


def settled(*keys: str):
    """A run_before hook: freeze cursor blink, wait for the workers, press keys, wait again."""
    async def run_before(pilot) -> None:
        app = pilot.app
        for _ in range(2):
            await app.workers.wait_for_complete()
            await pilot.pause()
        for key in keys:
            await pilot.press(key)
            for _ in range(2):
                await app.workers.wait_for_complete()
                await pilot.pause()
        for widget in app.screen.query("*"):
            if hasattr(widget, "cursor_blink"):
                widget.cursor_blink = False
        await pilot.pause()
    return run_before


def test_variants_screen(snap_compare, folder):
    assert snap_compare(EdgeApp(folder=folder, live=False, host=False), terminal_size=SIZE,
                        run_before=settled())


def test_help_screen(snap_compare, folder):
    assert snap_compare(EdgeApp(folder=folder, live=False, host=False), terminal_size=SIZE,
                        run_before=settled("question_mark"))
