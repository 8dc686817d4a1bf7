"""edge push against the simulated phone through a REAL adb server: delivery, verification,
resume after a dropped link, faults, hostile file names, and the three app routes."""

from __future__ import annotations

import json
import os
import shutil
import threading
import types

import numpy as np
import pytest

from edge import apps, device, push as push_mod
from edge.cli import main
from edge.errors import EdgeError
from edge.push import push
from edge.adbsim import AdbSim, Phone
from tests.test_device import NASTY
from tests.test_tui_gguf import ONE_B_KV2, write_sparse_gguf

pytestmark = pytest.mark.skipif(shutil.which("adb") is None, reason="adb not installed (scripts/setup.sh)")
SEG = 1 << 20       # 1 MiB verification segments: several per test file


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A small real GGUF (gguf-py writer), 3.3 MB: three full segments and a partial one."""
    import gguf

    path = tmp_path_factory.mktemp("g") / "tiny-Q8_0.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(1)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((800, 1024)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(1024, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def named_copy(src, tmp_path, name):
    d = tmp_path / "n"
    d.mkdir(exist_ok=True)
    p = d / name
    shutil.copyfile(src, p)
    return p


def leftovers(sim) -> list[str]:
    return [str(p.relative_to(sim.phone.root)) for p in sim.phone.root.rglob("*") if "edge-partial" in p.name]


def test_chatterui_route(sim, gguf_file):
    seen = []
    res = push(gguf_file, "chatterui", sim.serial, progress=seen.append, segment_bytes=SEG)
    assert sim.phone.files("/sdcard/Download") == {gguf_file.name: gguf_file.read_bytes()}
    assert res.remote_path == f"/sdcard/Download/{gguf_file.name}" and res.route == "shared storage"
    assert res.verified and res.segments_verified == 4 and not leftovers(sim)
    scan = sim.phone.broadcasts[-1]
    assert scan["-a"] == "android.intent.action.MEDIA_SCANNER_SCAN_FILE"
    assert scan["-d"] == f"file:///storage/emulated/0/Download/{gguf_file.name}".replace("/storage/emulated/0", "/sdcard")
    assert any("Import Model" in s for s in res.next_steps) and any(gguf_file.name in s for s in res.next_steps)
    pushes = [p for p in seen if p.stage == "push"]
    assert pushes[-1].done == gguf_file.stat().st_size and pushes[-1].bytes_per_s > 0
    assert seen[-1].stage == "done"
    # the phone computed the checksums: dd | sha1sum over the partial file
    assert any(c[0] == "sha1sum" for c in sim.phone.log)


def test_chatterui_next_steps_say_the_download_may_go(sim, gguf_file):
    res = push(gguf_file, "chatterui", sim.serial, segment_bytes=SEG)
    steps = " ".join(res.next_steps)
    assert "Import Model" in steps and f"delete /sdcard/Download/{gguf_file.name}" in steps and "#505" in steps
    assert res.storage["copies"] == 2 and res.storage["fits"]


def test_pocketpal_route(sim, gguf_file, capsys):
    res = push(gguf_file, "pocketpal", sim.serial, segment_bytes=SEG)
    assert sim.phone.files("/sdcard/Download") == {gguf_file.name: gguf_file.read_bytes()}
    assert res.route == "shared storage" and res.verified and not leftovers(sim)
    scan = sim.phone.broadcasts[-1]
    assert scan["-a"] == "android.intent.action.MEDIA_SCANNER_SCAN_FILE" and scan["-d"].endswith(gguf_file.name)
    steps = res.next_steps
    assert "Models" in steps[0] and "tap +" in steps[0] and "'Add Local Model'" in steps[0]
    assert f"Download > {gguf_file.name}" in steps[1] and "Load" in steps[1]
    assert f"delete /sdcard/Download/{gguf_file.name}" in steps[2]
    assert res.storage["copies"] == 2                           # the download + PocketPal's own copy
    assert main(["push", str(gguf_file), "--app", "pocketpal", "--serial", sim.serial, "--force"]) == 0
    out = capsys.readouterr().out
    assert "next: In PocketPal open the menu" in out and "Add Local Model" in out


def test_storage_counts_the_apps_copy_and_force_overrides(sim, gguf_file, capsys):
    size = gguf_file.stat().st_size
    sim.phone.df_free = size + apps.STORAGE_MARGIN + (1 << 20)   # room for one copy, not for the import's second
    with pytest.raises(EdgeError, match=r"PocketPal AI needs .*2 x .*imported copy.*--force") as e:
        push(gguf_file, "pocketpal", sim.serial)
    assert "\n" not in str(e.value) and sim.phone.pushed_bytes == 0
    assert push(gguf_file, "llamacpp", sim.serial, segment_bytes=SEG).storage["copies"] == 1   # one copy fits
    res = push(gguf_file, "chatterui", sim.serial, force=True, segment_bytes=SEG)
    assert res.verified and any("pushing anyway (--force)" in w for w in res.warnings)
    # the CLI: one line, exit 2, and no progress bar before the error
    sim.phone.df_free = 1 << 20
    assert main(["push", str(gguf_file), "--app", "chatterui", "--serial", sim.serial]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge push: error: the phone has 1 MB free") and err.count("\n") == 1
    assert "free some space" in err and "B/s" not in err and "%|" not in err        # no tqdm bar


def test_llamacpp_route_and_cli_json(sim, gguf_file, capsys):
    assert main(["push", str(gguf_file), "--app", "llamacpp", "--serial", sim.serial, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["remote_path"] == f"/data/local/tmp/llama/{gguf_file.name}" and out["verified"]
    assert sim.phone.files("/data/local/tmp/llama") == {gguf_file.name: gguf_file.read_bytes()}
    assert "llama-cli" in out["next_steps"][0]


def test_anythingllm_root_copy(sim, gguf_file):
    sim.phone.rooted = True
    res = push(gguf_file, "anythingllm", sim.serial, segment_bytes=SEG)
    folder = f"/data/data/com.anythingllm/files/models/gguf/local/{gguf_file.stem}"
    assert res.route == "root copy" and res.remote_path == f"{folder}/{gguf_file.name}"
    assert sim.phone.files(folder) == {gguf_file.name: gguf_file.read_bytes()}
    assert sim.phone.files("/data/local/tmp/edge") == {}           # staging cleaned up
    assert any(c[0] == "chown" for c in sim.phone.log) and not leftovers(sim)


def test_anythingllm_run_as_copy(sim, gguf_file):
    sim.phone.debuggable.add("com.anythingllm")
    res = push(gguf_file, "anythingllm", sim.serial, dest="files/models/gguf/me/my model", segment_bytes=SEG)
    folder = "/data/data/com.anythingllm/files/models/gguf/me/my model"
    assert res.route == "run-as copy" and sim.phone.files(folder) == {gguf_file.name: gguf_file.read_bytes()}
    assert ["run-as", "com.anythingllm", "sh", "-c"] == next(c for c in sim.phone.log if c[0] == "run-as" and "sh" in c)[:4]


def test_anythingllm_without_root_needs_the_flag(sim, gguf_file, monkeypatch):
    with pytest.raises(EdgeError, match="--publish-hf"):
        push(gguf_file, "anythingllm", sim.serial)
    assert sim.phone.pushed_bytes == 0                              # nothing uploaded by surprise
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    import edge.publish
    from tests.hubsim import HubSim

    hub = HubSim()     # Hugging Face cannot be reached from here: a local stand-in of its HTTP API
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(edge.publish, "hf_api", lambda: HfApi(endpoint=hub.url, token="hf_test"))
    try:
        res = push(gguf_file, "anythingllm", sim.serial, publish_hf="me/tiny-gemma")
    finally:
        hub.close()
    assert res.route == "huggingface" and res.hf_repo == "me/tiny-gemma"
    repo = hub.repos["me/tiny-gemma"]
    assert repo["private"] is False                                  # AnythingLLM only reads public repos
    card = repo["files"]["README.md"].decode()
    assert "license: gemma" in card and "ai.google.dev/gemma/terms" in card and gguf_file.name in card
    assert repo["files"][gguf_file.name] == gguf_file.read_bytes()
    assert "me/tiny-gemma" in res.next_steps[0]
    with pytest.raises(EdgeError, match="only for --app anythingllm"):
        push(gguf_file, "chatterui", sim.serial, publish_hf="me/x")


def test_model_card_table_from_report():
    from edge.card import quality_table

    table = quality_table([{"name": "x-Q4_0", "path": "/runs/a/gguf/x-Q4_0.gguf", "size_bytes": 158e6, "bpw": 4.5,
                            "kld_mean": 0.0312, "task_accuracy": 0.94}])
    assert "| x-Q4_0.gguf | 158 MB | 4.50 | 0.0312 | – | – | 94% |" in table and "/runs" not in table


@pytest.mark.parametrize("shell_v2", [True, False], ids=["shell_v2", "shell_v1"])
def test_resume_after_dropped_link(adb_server, gguf_file, shell_v2):
    sim = AdbSim(Phone(shell_v2=shell_v2))
    adb_server.attach(sim)
    try:
        _resume(sim, gguf_file)
        v2 = [x for x in sim.phone.services if x.startswith("shell,v2,") and x.endswith(",raw")]
        assert bool(v2) == shell_v2          # real phones (Android 7+) speak shell protocol v2
        assert ("shell" in sim.phone.services) == (not shell_v2)
    finally:
        adb_server.detach(sim)
        sim.close()


def _resume(sim, gguf_file):
    size = gguf_file.stat().st_size
    sim.phone.drop_after = size // 2                    # pull the cable half-way
    res = push(gguf_file, "llamacpp", sim.serial, segment_bytes=SEG)
    assert res.retries == 1 and len(res.resumed_at) == 1 and 0 < res.resumed_at[0] < size
    assert sim.phone.pushed_bytes < 1.6 * size          # resumed, not restarted
    assert sim.phone.files("/data/local/tmp/llama") == {gguf_file.name: gguf_file.read_bytes()}
    assert not leftovers(sim)


def test_link_that_keeps_dropping_leaves_no_final_file(sim, gguf_file, monkeypatch):
    drops = {"n": 0}
    original = device.stream_append

    def flaky(*a, **kw):          # the phone drops the link on every attempt
        sim.phone.drop_after = sim.phone.pushed_bytes + 300_000
        drops["n"] += 1
        return original(*a, **kw)

    monkeypatch.setattr(device, "stream_append", flaky)
    with pytest.raises(EdgeError, match="dropped 3 times.*rerun"):
        push(gguf_file, "chatterui", sim.serial, segment_bytes=SEG, retries=2)
    assert drops["n"] == 3
    assert gguf_file.name not in sim.phone.files("/sdcard/Download")   # never a partial final file
    assert len(leftovers(sim)) == 1                                      # the resumable partial
    sim.phone.drop_after = None
    monkeypatch.setattr(device, "stream_append", original)
    before = sim.phone.pushed_bytes
    res = push(gguf_file, "chatterui", sim.serial, segment_bytes=SEG)    # a rerun resumes it
    assert res.resumed_at and sim.phone.pushed_bytes - before < gguf_file.stat().st_size
    assert sim.phone.files("/sdcard/Download")[gguf_file.name] == gguf_file.read_bytes()


def test_partial_of_a_changed_file_is_not_resumed_and_is_removed(sim, gguf_file, tmp_path):
    local = named_copy(gguf_file, tmp_path, "m.gguf")
    sim.phone.drop_after = 2_000_000
    with pytest.raises(EdgeError):
        push(local, "chatterui", sim.serial, segment_bytes=SEG, retries=0)
    old = leftovers(sim)
    assert len(old) == 1
    data = bytearray(local.read_bytes())
    data[-1] ^= 1
    local.write_bytes(bytes(data))                       # the file changed: another partial name
    os.utime(local, ns=(1, 1))
    res = push(local, "chatterui", sim.serial, segment_bytes=SEG)
    assert not res.resumed_at and not leftovers(sim)
    assert sim.phone.files("/sdcard/Download") == {"m.gguf": bytes(data)}


def test_corruption_is_caught_by_the_phone_checksum(sim, gguf_file):
    size = gguf_file.stat().st_size
    sim.phone.corrupt_after = 1_500_000                 # one flipped bit in segment 1
    res = push(gguf_file, "llamacpp", sim.serial, segment_bytes=SEG)
    assert sim.phone.files("/data/local/tmp/llama")[gguf_file.name] == gguf_file.read_bytes()
    assert res.verified and res.resumed_at == [SEG]     # cut at the bad segment, pushed from there
    assert sim.phone.pushed_bytes == 2 * size - SEG
    assert ["truncate", "-s", str(SEG)] == next(c for c in sim.phone.log if c[0] == "truncate")[:3]


def test_storage_full_before_and_during(sim, gguf_file):
    sim.phone.capacity = sim.phone.used() + 2_000_000
    with pytest.raises(EdgeError, match="B free.*needs"):
        push(gguf_file, "chatterui", sim.serial)
    assert sim.phone.pushed_bytes == 0
    sim.phone.df_free = 10 << 30                        # df says there is room; there is not
    with pytest.raises(EdgeError, match="No space left on device"):
        push(gguf_file, "chatterui", sim.serial, segment_bytes=SEG)
    assert gguf_file.name not in sim.phone.files("/sdcard/Download")


def test_unauthorized_phone(adb_server, gguf_file):
    locked = AdbSim(Phone(unauthorized=True))
    try:
        adb_server.attach(locked)
        with pytest.raises(EdgeError, match="unauthorized: unlock the phone and accept"):
            push(gguf_file, "chatterui", locked.serial)
    finally:
        adb_server.detach(locked)
        locked.close()


def test_throttled_link_is_honoured(sim, gguf_file):
    sim.phone.throttle_bps = 20e6
    res = push(gguf_file, "llamacpp", sim.serial, segment_bytes=SEG)
    assert res.mb_per_s < 20.5 and res.verified


def test_existing_file_needs_force(sim, gguf_file):
    push(gguf_file, "chatterui", sim.serial, segment_bytes=SEG)
    with pytest.raises(EdgeError, match="already exists.*--force"):
        push(gguf_file, "chatterui", sim.serial)
    res = push(gguf_file, "chatterui", sim.serial, force=True, segment_bytes=SEG)
    assert res.verified


def test_cancel_removes_the_partial(sim, gguf_file):
    cancel = threading.Event()

    def progress(p):
        if p.stage == "push" and p.done >= 1 << 20:
            cancel.set()

    with pytest.raises(EdgeError, match="cancelled"):
        push(gguf_file, "chatterui", sim.serial, progress=progress, cancel=cancel, segment_bytes=SEG)
    assert sim.phone.files("/sdcard/Download") == {} and not leftovers(sim)


@pytest.mark.parametrize("name", NASTY)
def test_hostile_file_names_arrive_intact_and_run_nothing(sim, gguf_file, tmp_path, name):
    if "/" in name:
        pytest.skip("not a file name")
    local = named_copy(gguf_file, tmp_path, name)
    sim.phone.rooted = True
    push(local, "chatterui", sim.serial, segment_bytes=4 << 20)
    push(local, "anythingllm", sim.serial, segment_bytes=4 << 20, dest="files/models/gguf/x/y")
    assert sim.phone.files("/sdcard/Download") == {name: gguf_file.read_bytes()}
    assert sim.phone.files("/data/data/com.anythingllm/files/models/gguf/x/y") == {name: gguf_file.read_bytes()}
    assert not any(p.name == "PWNED" for p in sim.phone.root.rglob("*"))
    assert not any(c[:1] == ["touch"] for c in sim.phone.log)


def test_bad_input(sim, gguf_file, tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model")
    with pytest.raises(EdgeError, match="not a GGUF"):
        push(bad, "chatterui", sim.serial)
    with pytest.raises(EdgeError, match="unknown app 'ollama'"):
        push(gguf_file, "ollama", sim.serial)
    with pytest.raises(EdgeError, match="absolute folder"):
        push(gguf_file, "chatterui", sim.serial, dest="Download")
    assert main(["push", str(bad), "--app", "chatterui", "--serial", sim.serial]) == 2
    with pytest.raises(EdgeError, match="--ctx 0 must be a positive number"):
        push(gguf_file, "chatterui", sim.serial, ctx=0)


def test_the_budget_check_is_made_at_the_given_n_ctx(sim, tmp_path, capsys):
    """`push(ctx=)` and `edge push --ctx` check the budget at that n_ctx, not at the default:
    a 2 GB file that fits the simulated Pixel 7 at 4096 is refused at 32768."""
    from edge.budget import verdict

    path = write_sparse_gguf(tmp_path / "one-b-F16.gguf", ONE_B_KV2)
    state = device.read_state(sim.serial)
    assert verdict(path, state, ctx=4096).verdict == "fits"
    assert push_mod.budget_verdict(path, state) == push_mod.budget_verdict(path, state, 4096)
    assert push_mod.budget_verdict(path, state, 4096)[0] == "fits"
    with pytest.raises(EdgeError, match=r"does not fit Pixel 7 by our budget \(needs [\d.]+ GB at n_ctx 32768"):
        push(path, "llamacpp", sim.serial, ctx=32768)
    assert main(["push", str(path), "--app", "llamacpp", "--serial", sim.serial, "--ctx", "32768"]) == 2
    assert "at n_ctx 32768" in capsys.readouterr().err
    assert not sim.phone.files(apps.route("llamacpp").folder) and not leftovers(sim)


def test_old_shell_without_head_c(adb_server, gguf_file):
    """Without `head -c`, `cat` ends on shell v2's close-stdin; a v1-only phone is refused."""
    for v2 in (True, False):
        sim = AdbSim(Phone(head_c=False, shell_v2=v2))
        adb_server.attach(sim)
        try:
            if v2:
                push(gguf_file, "chatterui", sim.serial, segment_bytes=SEG)
                assert sim.phone.files("/sdcard/Download") == {gguf_file.name: gguf_file.read_bytes()}
                assert any(c[:1] == ["cat"] for c in sim.phone.log)
            else:
                with pytest.raises(EdgeError, match="no `head -c`.*too old"):
                    push(gguf_file, "chatterui", sim.serial)
        finally:
            adb_server.detach(sim)
            sim.close()


def test_budget_verdict_gates_the_push(sim, gguf_file, monkeypatch):
    from edge import budget

    def fake(word):
        return lambda path, state, ctx: types.SimpleNamespace(verdict=word, ctx=ctx, peak_bytes=9e9, usable_bytes=7e9)

    monkeypatch.setattr(budget, "verdict", fake("does not fit"))
    with pytest.raises(EdgeError, match=r"does not fit Pixel 7 by our budget \(needs 9.00 GB at n_ctx 4096.*--force"):
        push(gguf_file, "chatterui", sim.serial)
    res = push(gguf_file, "chatterui", sim.serial, force=True, segment_bytes=SEG)
    assert res.budget == "does not fit" and any("budget" in w for w in res.warnings)
    monkeypatch.setattr(budget, "verdict", fake("tight"))
    res = push(gguf_file, "llamacpp", sim.serial, force=True, segment_bytes=SEG)
    assert res.budget == "tight" and any(w.startswith("budget: tight") for w in res.warnings)
    monkeypatch.setattr(budget, "verdict", fake("fits"))
    res = push(gguf_file, "llamacpp", sim.serial, force=True, segment_bytes=SEG)
    assert res.budget == "fits" and not any("budget" in w for w in res.warnings)


def test_a_budget_that_cannot_answer_is_a_warning(monkeypatch):
    from edge import budget

    def fails(path, state, ctx):
        raise EdgeError("device did not report its memory")

    monkeypatch.setattr(budget, "verdict", fails)
    assert push_mod.budget_verdict(None, None) == ("unknown", "budget: device did not report its memory")


def test_two_phones_need_a_serial(adb_server, sim, gguf_file):
    other = AdbSim(Phone(fixture="galaxy_a12"))
    try:
        adb_server.attach(other)
        with pytest.raises(EdgeError, match="2 phones connected.*--serial"):
            push(gguf_file, "chatterui")
        res = push(gguf_file, "chatterui", other.serial, segment_bytes=SEG)
        assert other.phone.files("/sdcard/Download") and not sim.phone.files("/sdcard/Download")
        assert res.serial == other.serial
    finally:
        adb_server.detach(other)
        other.close()


def test_cli_human_output(sim, gguf_file, capsys):
    assert main(["push", str(gguf_file), "--app", "chatterui", "--serial", sim.serial]) == 0
    cap = capsys.readouterr()
    assert f"pushed {gguf_file.name}" in cap.out and "SHA-1 verified on the phone" in cap.out
    assert "next: In ChatterUI" in cap.out and "push" in cap.err            # tqdm bar on stderr


def test_hf_failure_is_one_line(gguf_file, monkeypatch):
    import edge.publish

    class NoAuth:
        def create_repo(self, **kw):
            raise RuntimeError("401 Client Error: Unauthorized")

    monkeypatch.setattr(edge.publish, "hf_api", lambda: NoAuth())
    with pytest.raises(EdgeError, match="hf auth login"):
        apps.publish_hf(gguf_file, "me/x")
    with pytest.raises(EdgeError, match="USER/NAME"):
        apps.publish_hf(gguf_file, "not-a-repo")


@pytest.mark.parametrize("access", ["root", "run-as"])
def test_private_copy_exists_needs_force_before_pushing(sim, gguf_file, access):
    if access == "root":
        sim.phone.rooted = True
    else:
        sim.phone.debuggable.add("com.anythingllm")
    push(gguf_file, "anythingllm", sim.serial, segment_bytes=SEG)
    before = sim.phone.pushed_bytes
    with pytest.raises(EdgeError, match="already exists in AnythingLLM's data.*--force"):
        push(gguf_file, "anythingllm", sim.serial)
    assert sim.phone.pushed_bytes == before                  # refused before any byte moved
    assert push(gguf_file, "anythingllm", sim.serial, force=True, segment_bytes=SEG).verified


def test_segments_are_whole_mib_and_the_last_is_short():
    size = 253_056_736                                    # the embedded Q4_K_M GGUF
    segs = device.segments(size)
    assert segs[0][0] == 0 and segs[-1][1] == size
    assert all(b == c for (_, b), (c, _) in zip(segs, segs[1:]))          # contiguous
    assert all(a % (1 << 20) == 0 for a, _ in segs)                       # dd bs=1M can read them
    assert max(b - a for a, b in segs) == device.SEGMENT_BYTES
    assert segs[-1][1] - segs[-1][0] <= device.TAIL_BYTES
    assert device.segments(100, 1 << 20) == [(0, 100)]


def test_corruption_in_the_last_segment_is_caught_by_the_stream_command(sim, gguf_file):
    size = gguf_file.stat().st_size
    sim.phone.corrupt_after = size - 1000               # a flipped bit in the tail segment
    res = push(gguf_file, "llamacpp", sim.serial, segment_bytes=SEG)
    assert sim.phone.files("/data/local/tmp/llama")[gguf_file.name] == gguf_file.read_bytes()
    assert res.resumed_at == [3 * SEG] and sim.phone.pushed_bytes == 2 * size - 3 * SEG


@pytest.mark.slow          # the first push is slowed to about 11 s on purpose
def test_two_pushes_to_one_phone_path_at_once(sim, gguf_file, tmp_path, capsys, monkeypatch):
    """Two `edge push` of one file to one phone path at the same time (two processes, one real adb
    server, the simulated phone on a slow link): while the first moves bytes, the second is refused
    with one line and exit 2, with or without --force; the first delivers the whole file, verified,
    with no partial file left and no size complaint."""
    import subprocess
    import time

    from tests.conftest import EDGE, ROOT

    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / "cache"))       # where the lock lives, for both processes
    sim.phone.throttle_bps = 300e3                                    # 3.3 MB: about 11 s
    argv = ["push", str(gguf_file), "--app", "chatterui", "--serial", sim.serial]
    first = subprocess.Popen(EDGE + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while sim.phone.pushed_bytes == 0 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim.phone.pushed_bytes > 0, "the first push never started"
        for extra in ([], ["--force"]):
            assert main(argv + extra) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Traceback" not in err, err
            assert f"another `edge push` to {sim.serial}:/sdcard/Download/{gguf_file.name} is running" in err
            assert first.poll() is None, "the first push ended before the second was tried: slow the link"
        out, err = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert device.HASH_LABEL in out, out
    assert sim.phone.files("/sdcard/Download") == {gguf_file.name: gguf_file.read_bytes()}
    assert not leftovers(sim)
    assert " holds " not in out + err, err                               # no "holds N of M bytes"
