"""The Textual app (`tui.py`): each screen's main flow driven with Pilot (`App.run_test`),
against tiny GGUF files (tests/test_tui_gguf.py) and the adb device simulator
(edge/adbsim/, through the real adb server), plus a smoke test that starts `edge tui` in a
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

from edge.errors import EdgeError
from tests.conftest import ROOT
from tests.test_tui_gguf import ONE_B_KV2, tiny_variants, write_sparse_gguf
from tui import EdgeApp
from tui_screens import library
from tui_screens.budget import fmt_ctx
from tui_screens.help import HelpScreen

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


def test_the_library_never_imports_textual():
    """The core is reachable without the TUI (harlequin's import contract): no module of edge/ or
    quantize/ imports textual, and the TUI's screens import no torch at module level."""
    import ast

    for pkg in ("edge", "quantize"):
        for py in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(), str(py))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n.split(".")[0] == "textual" for n in names), f"{py} imports textual"
    code = "import sys, tui; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


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
    imatrix = run.root / "imatrix.gguf"           # a GGUF, but not a model: not a variant
    from gguf import GGUFWriter
    import numpy as np

    w = GGUFWriter(str(imatrix), "gemma3")
    w.add_type("imatrix")
    w.add_tensor("blk.0.ffn_down.weight.in_sum2", np.ones(64, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    run.record("quantize", outputs={"variant": [kept]})
    run.record("imatrix", outputs={"imatrix": imatrix})     # a GGUF, recorded as what it is: not a variant
    app = EdgeApp(run=run.root, live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        rows = table_rows(app.screen.query_one("#variants-table"))
        assert [r[0] for r in rows] == ["tiny-F16"]
        source = str(app.screen.query_one("#variants-source").render())
        assert source.startswith("run ") and "stray" not in source


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
async def test_two_files_of_one_name_are_listed_once(tmp_path, variants_dir):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(variants_dir / "tiny-F16.gguf", tmp_path / sub / "x.gguf")
    app = EdgeApp(folder=tmp_path, live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert [r[0] for r in table_rows(app.screen.query_one("#variants-table"))] == ["x"]
        assert "same name as another" in str(app.screen.query_one("#variants-source").render())


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
        await pilot.press("ctrl+s")                   # no phone (adb off): nothing starts, it says why
        status = app.screen.query_one("#push-status")
        assert "pick a phone first" in str(status.render()) and status.has_class("-warn")


# ---- Budget -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def budget_dir(tmp_path_factory, variants_dir) -> Path:
    """A tiny Q8_0 (with its report row) and a sparse file shaped like a Gemma 3 4B in F16."""
    folder = tmp_path_factory.mktemp("tui") / "mixed"
    folder.mkdir()
    shutil.copy(variants_dir / "tiny-Q8_0.gguf", folder)
    report = json.loads((variants_dir / "report.json").read_text())
    report["variants"] = report["variants"][:1]
    (folder / "report.json").write_text(json.dumps(report))
    write_sparse_gguf(folder / "big-F16.gguf")
    return folder


@async_test
async def test_budget_grid_is_the_librarys(budget_dir):
    """Every cell shows edge.budget's verdict and largest n_ctx; stars are edge.budget.recommend's."""
    from edge import budget
    from edge.profiles import load_profiles

    app = EdgeApp(folder=budget_dir, live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("b")
        await settle(app, pilot)
        table = app.screen.query_one("#budget-table")
        profiles = load_profiles()
        assert table.row_count == len(profiles)
        files = [budget_dir / "tiny-Q8_0.gguf", budget_dir / "big-F16.gguf"]    # smallest first
        marks = {"fits": "✓", "tight": "~", "does not fit": "✗"}
        seen = set()
        for i, profile in enumerate(profiles.values()):
            row = [str(c) for c in table.get_row_at(i)]
            assert profile.name.startswith(row[0])
            best = budget.recommend(files, profile, report=budget_dir / "report.json", ctx=4096).choice
            for f, cell in zip(files, row[1:]):
                v = budget.verdict(f, profile, ctx=4096)
                seen.add(v.verdict)
                assert cell.lstrip("★ ").startswith(marks[v.verdict]), (profile.key, f.name, cell)
                if v.verdict == "does not fit":
                    assert "does not fit" in cell
                else:
                    assert (fmt_ctx(v.max_ctx) if v.max_ctx else v.verdict) in cell
                assert cell.startswith("★") == (best == f.name)
        assert {"fits", "does not fit"} <= seen      # the 4B does not fit small phones
        # details of the cell under the cursor, and n_ctx cycling
        assert "tiny-Q8_0.gguf on" in str(app.screen.query_one("#budget-detail").render())
        await pilot.press("right")
        assert "big-F16.gguf on" in str(app.screen.query_one("#budget-detail").render())
        await pilot.press("c")
        await settle(app, pilot)
        assert "n_ctx 8192" in str(app.screen.query_one("#budget-detail").render())
        await pilot.press("right", "enter")            # Enter on a cell: push that variant
        await settle(app, pilot)
        assert app.current_mode == "push"
        assert app.screen.query_one("#push-file").value == budget_dir / "big-F16.gguf"


# ---- Devices and Push, through the real adb server to the simulated phone ---------------------
needs_adb = pytest.mark.skipif(shutil.which("adb") is None, reason="adb not installed (scripts/setup.sh)")


@pytest.fixture
def phone(sim):
    """The simulated Pixel 7 (tests/conftest.py), attached to this module's private adb server."""
    return sim


async def wait_until(pilot, check, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        await pilot.pause(0.1)
    raise AssertionError("condition not met in time")


@needs_adb
@async_test
async def test_devices_screen_reads_the_phone_live(phone, variants_dir):
    from edge.device import read_state

    state = read_state(phone.serial)
    app = EdgeApp(folder=variants_dir, live=True, host=False, refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        table = app.screen.query_one("#devices-table")
        await wait_until(pilot, lambda: table.row_count == 1)
        row = [str(c) for c in table.get_row_at(0)]
        assert row[0] == phone.serial and row[1] == "Pixel 7"
        assert row[3] == "{:.1f} GiB".format(state.available_bytes / 2**30)     # RAM free
        assert row[5] == "0 NONE" and row[6].startswith("32.6 °C")
        # the phone heats up: the next refresh shows it, with the library's warning
        fx = phone.phone.fixtures             # what the simulated `dumpsys battery` prints
        fx["battery"] = fx["battery"].replace("temperature: 326", "temperature: 415")
        await wait_until(pilot, lambda: str(table.get_row_at(0)[6]).startswith("41.5 °C"))
        assert "battery at 41.5 C" in str(table.get_row_at(0)[8])
        assert app.screen.query_one("#profiles-table").row_count >= 10
        # the budget has a row for the live phone, with edge.budget's verdict for its state now
        from edge.budget import verdict

        await pilot.press("b")
        grid = app.screen.query_one("#budget-table")
        await wait_until(pilot, lambda: grid.row_count > 0 and "phone" in str(grid.get_row_at(0)[0]))
        assert str(grid.get_row_at(0)[0]) == "phone: Pixel 7"
        v = verdict(variants_dir / "tiny-Q8_0.gguf", read_state(phone.serial), ctx=4096)
        assert fmt_ctx(v.max_ctx) in str(grid.get_row_at(0)[1]) and v.verdict == "fits"


@needs_adb
@async_test
async def test_no_phone_and_no_adb_are_states_with_advice(adb_server, variants_dir, monkeypatch):
    app = EdgeApp(folder=variants_dir, live=True, host=False, refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        status = app.screen.query_one("#devices-status")
        await wait_until(pilot, lambda: "no phone connected" in str(status.render()))
        assert "USB debugging" in str(status.render())
        monkeypatch.setenv("PATH", str(Path(variants_dir)))       # no adb on the PATH any more
        monkeypatch.delenv("EDGE_ADB", raising=False)
        await wait_until(pilot, lambda: "adb not found" in str(status.render()))
        assert "apt-get install adb" in str(status.render()) and app.is_running
        await pilot.press("p")
        await wait_until(pilot, lambda: "adb not found" in str(app.screen.query_one("#push-status").render()))


def _gguf_of_mib(path: Path, mib: int) -> Path:
    """A Gemma 3 GGUF of about `mib` MiB (one layer, a wide F32 embedding), for a slow push."""
    import numpy as np

    from tests.test_tui_gguf import _writer
    from gguf import GGMLQuantizationType

    w = _writer(path, "slow", GGMLQuantizationType.F32, n_layers=1, width=1024, ffn=1024, heads=4,
                kv_heads=1, head_dim=256)
    w.add_tensor("token_embd.weight", np.random.default_rng(0).standard_normal((mib * 256, 1024)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(1024, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


@needs_adb
@async_test
async def test_push_from_the_tui_to_the_phone(phone, variants_dir):
    """Variants: Enter on a file -> Push: the phone and ChatterUI preselected -> Ctrl+S ->
    the file is on the (simulated) phone, byte for byte, and the app's next steps are shown."""
    app = EdgeApp(folder=variants_dir, live=True, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")                      # tiny-Q8_0, the first row
        device = app.screen.query_one("#push-device")
        await wait_until(pilot, lambda: device.value == phone.serial)
        assert app.screen.query_one("#push-app").value == "chatterui"
        await pilot.press("ctrl+s")
        status = app.screen.query_one("#push-status")
        await wait_until(pilot, lambda: "done" in str(status.render()) or status.has_class("-error"))
        assert "done" in str(status.render()), str(status.render())
        local = (variants_dir / "tiny-Q8_0.gguf").read_bytes()
        assert phone.phone.files("/sdcard/Download") == {"tiny-Q8_0.gguf": local}
        result = str(app.screen.query_one("#push-result").render())
        assert "SHA-1 verified on the phone" in result and "Next steps" in result and "Import Model" in result
        assert app.screen.query_one("#push-progress").progress == len(local)
        # the same again: the library refuses to overwrite; the error is shown, not raised
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: status.has_class("-error"))
        assert "already exists" in str(status.render()) and app.is_running


@needs_adb
@async_test
async def test_the_budget_screens_n_ctx_reaches_the_push(phone, tmp_path):
    """Budget: `c` to n_ctx 32768, Enter on the phone's cell -> Push -> Ctrl+S: the push is
    checked at 32768, where this 2 GB file does not fit (at the default 4096 it does)."""
    folder = tmp_path / "one"
    folder.mkdir()
    write_sparse_gguf(folder / "one-b-F16.gguf", ONE_B_KV2)
    app = EdgeApp(folder=folder, live=True, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("b")
        grid = app.screen.query_one("#budget-table")
        await wait_until(pilot, lambda: grid.row_count > 0 and "phone" in str(grid.get_row_at(0)[0]))
        assert "✓" in str(grid.get_row_at(0)[1])                # fits at n_ctx 4096
        for _ in range(3):                                      # 4096 -> 8192 -> 16384 -> 32768
            await pilot.press("c")
            await settle(app, pilot)
        await wait_until(pilot, lambda: app.screen.result.ctx == 32768 and grid.row_count > 0)
        assert "✗" in str(grid.get_row_at(0)[1])
        await pilot.press("enter")                              # the cursor is on the phone's cell
        await wait_until(pilot, lambda: app.current_mode == "push")
        assert app.chosen_ctx == 32768
        device = app.screen.query_one("#push-device")
        await wait_until(pilot, lambda: device.value == phone.serial)
        await pilot.press("ctrl+s")
        status = app.screen.query_one("#push-status")
        await wait_until(pilot, lambda: status.has_class("-error"))
        assert "does not fit Pixel 7" in str(status.render()) and "n_ctx 32768" in str(status.render())
    assert not phone.phone.files("/sdcard/Download")


@needs_adb
@async_test
async def test_cancel_a_push(phone, tmp_path):
    big = _gguf_of_mib(tmp_path / "slow.gguf", 6)
    phone.phone.throttle_bps = 2e6                      # about 3 s for the whole file
    app = EdgeApp(folder=tmp_path, live=True, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.query_one("#push-device").value == phone.serial)
        await pilot.press("ctrl+s")
        bar = app.screen.query_one("#push-progress")
        await wait_until(pilot, lambda: (bar.progress or 0) > 0)
        assert "MiB/s" in str(app.screen.query_one("#push-speed").render()) or \
            "KiB/s" in str(app.screen.query_one("#push-speed").render())
        await pilot.press("escape")
        status = app.screen.query_one("#push-status")
        await wait_until(pilot, lambda: "cancelled" in str(status.render()))
        assert bar.progress < big.stat().st_size
        await wait_until(pilot, lambda: not app.screen.query_one("#push-cancel").disabled is False)
    assert phone.phone.files("/sdcard/Download") == {}
    assert not [p for p in phone.phone.root.rglob("*") if "edge-partial" in p.name]


# ---- Pipeline ----------------------------------------------------------------------------------
@async_test
async def test_pipeline_shows_stages_and_follows_the_loss_log(tmp_path, variants_dir):
    """run.json stages; the loss plot follows the adapter's log.jsonl as the fine-tune appends
    to it; Start runs the real `edge run`, whose refusal of bad input is shown."""
    from edge.finetune import LOG
    from edge.runfolder import Run

    run = Run.open(tmp_path / "run")
    shutil.copy(variants_dir / "tiny-Q8_0.gguf", run.root / "ref.gguf")
    run.record("export", outputs=[run.root / "ref.gguf"], seconds=12.0, summary={"outtype": "f32"})
    log = run.root / "adapter" / LOG
    log.parent.mkdir()
    lines = [{"step": i, "loss": 3.0 / i, "tok_s": 500.0, "elapsed": 1.5 * i} for i in range(1, 9)]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines[:5]))
    app = EdgeApp(run=run.root, live=False, host=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await settle(app, pilot)
        rows = {r[0]: r for r in table_rows(app.screen.query_one("#pipeline-table"))}
        assert rows["export"][1:4] == ["done", "1", "12 s"] and rows["fine-tune"][1] == "not run"
        spark = app.screen.query_one("#pipeline-loss")
        assert list(spark.data) == [r["loss"] for r in lines[:5]]
        with log.open("a") as f:                      # training goes on
            f.write("".join(json.dumps(r) + "\n" for r in lines[5:]))
        await wait_until(pilot, lambda: len(spark.data) == 8, timeout=20)
        assert "step 8" in str(app.screen.query_one("#pipeline-loss-label").render())
        app.screen.query_one("#pipeline-data").value = str(tmp_path / "no-such-chats.jsonl")
        await pilot.press("ctrl+t")                   # bad input: edge run refuses, exit 2
        status = app.screen.query_one("#pipeline-status")
        await wait_until(pilot, lambda: status.has_class("-error"), timeout=60)
        assert "no such file" in str(status.render()) and "exit 2" in str(status.render())
        rows = {r[0]: r for r in table_rows(app.screen.query_one("#pipeline-table"))}
        assert rows["fine-tune"][1] == "not run" and rows["export"][1] == "done"   # nothing lost or redone
        assert (run.root / "ref.gguf").is_file() and log.is_file()


@async_test
async def test_pipeline_offers_the_gpus_it_sees_and_follows_a_full_fine_tune(tmp_path, monkeypatch):
    """Two GPUs visible: the form shows the count and `edge run` gets --gpus; none: no field, no
    flag. With --full recorded in run.json the plot follows model/log.jsonl, not adapter/."""
    import tui_screens.pipeline as pipeline
    from edge.finetune import LOG
    from edge.runfolder import Run

    run = Run.open(tmp_path / "run")
    run.data["settings"] = {"full": True}
    run.save()
    (run.root / "model").mkdir()
    (run.root / "model" / LOG).write_text("".join(json.dumps({"step": i, "loss": 2.0 / i}) + "\n" for i in (1, 2)))
    for seen in (2, 0):
        monkeypatch.setattr(pipeline, "visible_gpus", lambda: seen)
        app = EdgeApp(run=run.root, live=False, host=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("5")
            await settle(app, pilot)
            screen = app.screen
            field = screen.query_one("#pipeline-gpus")
            assert field.display is (seen > 1)
            argv = screen.argv()
            if seen:
                assert "GPUs (of 2)" in str(screen.query_one("#pipeline-gpus-label").render())
                assert argv[argv.index("--gpus") + 1] == "2"
                field.value = "1"
                assert "--gpus" not in screen.argv()
            else:
                assert "--gpus" not in argv
            assert list(screen.query_one("#pipeline-loss").data) == [2.0, 1.0]


def test_screenshot_is_made_by_the_app(variants_dir, tmp_path):
    """`python tui.py --screenshot` (how docs/tui-budget.svg is made): a headless run that
    saves the budget screen as SVG."""
    from tui import main, screenshot

    out = screenshot(EdgeApp(folder=variants_dir, live=False, host=False), tmp_path / "b.svg", "budget", (130, 30))
    svg = out.read_text()
    assert svg.startswith("<svg") and "Budget" in svg and "tiny" in svg and "Galaxy" in svg
    with pytest.raises(EdgeError, match="no such folder"):     # bad input: one line, before the screen
        main(folder=str(tmp_path / "nope"))


# ---- a real terminal --------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (scripts/setup.sh installs it)")
@needs_adb
def test_edge_tui_starts_in_a_real_terminal(variants_dir, tmp_path, adb_server):
    """`edge tui --folder ...` in tmux (talking to the tests' private adb server): the Variants
    table appears, `b` shows the budget, `d` says no phone is connected, `q` quits with 0."""
    edge = ROOT / ".venv" / "bin" / "edge"
    cmd = [str(edge)] if edge.exists() else [sys.executable, "-m", "edge.cli"]
    sock = f"edge-tui-test-{os.getpid()}"
    tmux = ["tmux", "-L", sock]
    env = {**os.environ, "TERM": "xterm-256color"}   # ANDROID_ADB_SERVER_PORT: the private server
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
        wait_for("Samsung Galaxy A12")
        subprocess.run(tmux + ["send-keys", "-t", "t", "d"], check=True)
        wait_for("no phone connected")
        subprocess.run(tmux + ["send-keys", "-t", "t", "q"], check=True)
        end = time.time() + 10
        while time.time() < end and not (tmp_path / "rc").exists():
            time.sleep(0.2)
        assert (tmp_path / "rc").read_text().strip() == "EXIT=0"
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
