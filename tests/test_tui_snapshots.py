"""Snapshot tests of the TUI's screens (pytest-textual-snapshot): a fixed 120x34 terminal,
cursor blink frozen, tiny GGUF files written at a fixed path, no live adb and no host column
(so nothing depends on this machine). Accepted screenshots live in
tests/__snapshots__/test_tui_snapshots/; after an intended change to a screen:

    .venv/bin/pytest tests/test_tui_snapshots.py --snapshot-update     # then look at the SVGs
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("pytest_textual_snapshot")

from tests.test_tui_gguf import tiny_variants  # noqa: E402
from tui import EdgeApp  # noqa: E402

SIZE = (120, 34)
# A fixed folder, shown on screen by a relative name (the sub-title) so it never changes.
FIXED = Path(tempfile.gettempdir()) / "edge-tui-snapshots" / "ggufs"


@pytest.fixture(scope="module")
def made() -> Path:
    shutil.rmtree(FIXED, ignore_errors=True)
    tiny_variants(FIXED)
    yield FIXED
    shutil.rmtree(FIXED.parent, ignore_errors=True)


@pytest.fixture
def folder(made, monkeypatch) -> Path:
    """The variants as a relative path (it is shown on screen): the same on every machine."""
    monkeypatch.chdir(made.parent)
    return Path(made.name)


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


def pinned_budget(paths, devices, *, ctx, report, notes=()):
    """A BudgetResult with pinned numbers (3 variants x 4 devices, every verdict kind): the
    snapshot then changes only when the screen changes, not when edge.budget is recalibrated.
    The live numbers are checked against edge.budget in tests/test_tui.py."""
    from edge.budget import Verdict
    from tui_screens.library import BudgetResult, Column

    names = [p.name for p in paths]
    cols = [Column("host", "this machine", None), Column("pixel_7", "Google Pixel 7", None),
            Column("galaxy_a12", "Samsung Galaxy A12", None), Column("oneplus_12", "OnePlus 12 (16 GB)", None)]
    table = {  # device -> per variant (verdict, max_ctx, tok_s, sustained)
        "host": [("fits", 32768, 61.0, None), ("fits", 32768, 35.2, None), ("fits", 32768, 18.4, None)],
        "pixel_7": [("fits", 32768, 40.1, 26.7), ("fits", 16384, 23.0, 15.3), ("tight", 0, 12.1, 8.0)],
        "galaxy_a12": [("fits", 8192, 9.8, 6.5), ("tight", 0, 5.6, 3.7), ("does not fit", 0, None, None)],
        "oneplus_12": [("fits", 32768, 71.5, 47.6), ("fits", 32768, 41.0, 27.3), ("fits", 32768, 21.5, 14.3)],
    }
    verdicts = {}
    for c in cols:
        for n, (word, mc, tok, sust) in zip(names, table[c.key]):
            throttles = sust is not None and sust < 10
            verdicts[c.key, n] = Verdict(
                variant=n, device=c.key, device_kind="host" if c.key == "host" else "profile", ctx=ctx,
                verdict=word, total_bytes=400 << 20, peak_bytes=420 << 20, usable_bytes=5 << 30, max_ctx=mc,
                tok_s=tok, tok_s_full=None if tok is None else tok / 2, sustained_tok_s=sust,
                energy_mj_per_token=None, thermal=("throttles to about 8 tok/s" if throttles else "holds"),
                pocketpal={"fits": word != "does not fit"}, anythingllm={"fits": word == "fits"},
                estimate={"weights_bytes": 250 << 20, "kv_bytes": 36 << 20, "compute_bytes": 20 << 20,
                          "overhead_bytes": 94 << 20})
    rec = {"host": names[2], "pixel_7": names[1], "galaxy_a12": names[0], "oneplus_12": names[2]}
    return BudgetResult(names, cols, verdicts, rec, {k: "lowest KL divergence among variants that fit" for k in rec},
                        ctx, list(notes))


def test_budget_screen(snap_compare, folder, monkeypatch):
    from tui_screens import library

    monkeypatch.setattr(library, "budget", pinned_budget)
    assert snap_compare(EdgeApp(folder=folder, live=False, host=False), terminal_size=SIZE,
                        run_before=settled("b"))


def test_push_screen(snap_compare, folder):
    app = EdgeApp(folder=folder, live=False, host=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=settled("down", "enter"))
