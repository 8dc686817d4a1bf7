"""edge.device against the simulated phone (edge/adbsim/) through a REAL adb server.

Needs the `adb` binary (scripts/setup.sh installs it); each test session runs its own adb
adb server on a free port (ANDROID_ADB_SERVER_PORT) and kills it afterwards.
"""

from __future__ import annotations

import json
import shutil

import pytest

from edge import device
from edge.cli import main
from edge.errors import EdgeError
from edge.adbsim import AdbSim, Phone, Shell

pytestmark = pytest.mark.skipif(shutil.which("adb") is None, reason="adb not installed (scripts/setup.sh)")

NASTY = ["my model.gguf", "it's.gguf", 'say "hi".gguf', "a;touch PWNED;b.gguf", "$(touch PWNED).gguf",
         "`touch PWNED`.gguf", "line\nbreak.gguf", "x' ; touch PWNED ; '.gguf", "*.gguf", "-rf.gguf",
         "back\\slash $HOME.gguf", "brace{0}{n}%s.gguf"]


def test_parse_devices_states():
    text = ("List of devices attached\n"
            "R58M123ABC             device usb:1-1 product:a12 model:SM_A125F device:a12 transport_id:3\n"
            "emulator-5554          unauthorized transport_id:4\n"
            "192.168.1.9:5555       offline transport_id:5\n"
            "0123456789ABCDEF       no permissions (user in plugdev group); see [http://developer.android.com/tools/device.html]\n")
    devs = device.parse_devices(text)
    assert [(d.serial, d.state, d.transport) for d in devs] == [
        ("R58M123ABC", "device", "usb"), ("emulator-5554", "unauthorized", "usb"),
        ("192.168.1.9:5555", "offline", "tcp"), ("0123456789ABCDEF", "no permissions", "usb")]
    assert devs[0].model == "SM A125F"
    assert "RSA key" in devs[1].note and devs[0].note == ""


def test_devices_json_through_real_adb(sim, capsys):
    assert main(["devices", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    d = next(d for d in out["devices"] if d["serial"] == sim.serial)
    assert d["state"] == "device" and d["model"] == "Pixel 7" and d["android"] == "14"
    assert d["sdk"] == 34 and d["abi"] == "arm64-v8a"
    assert d["ram_total_bytes"] == 7652828 * 1024                 # MemTotal of the fixture
    assert d["storage_free_bytes"] == sim.phone.free() // 1024 * 1024   # df -k, computed by the phone


def test_devices_table_and_unauthorized(adb_server, capsys):
    locked = AdbSim(Phone(unauthorized=True))
    try:
        adb_server.attach(locked)
        assert main(["devices"]) == 0
        out = capsys.readouterr().out
        assert locked.serial in out and "unauthorized" in out and "RSA key" in out
        with pytest.raises(EdgeError, match="unauthorized.*RSA key"):
            device.pick_device(locked.serial)
    finally:
        adb_server.detach(locked)
        locked.close()


def test_pick_device_errors(sim):
    with pytest.raises(EdgeError, match="no device with serial 'nope'"):
        device.pick_device("nope")
    assert device.pick_device(sim.serial) == sim.serial


def test_shell_exit_status_and_output(sim):
    r = device.shell(sim.serial, ["getprop", "ro.product.model"])
    assert (r.rc, r.out) == (0, "Pixel 7\n")
    r = device.shell(sim.serial, ["ls", "/sdcard/nothing-here"])
    assert r.rc == 1 and "No such file" in r.out
    with pytest.raises(EdgeError, match="failed \\(exit 1\\)"):
        device.shell(sim.serial, ["rm", "/sdcard/nothing-here"], check=True)


def test_read_state_runs_readings_commands(sim):
    from edge.readings import COMMANDS, parse_state

    state = device.read_state(sim.serial)
    fixtures = sim.phone.fixtures
    expected = parse_state({k: fixtures.get(k, "") for k in COMMANDS}, serial=sim.serial)
    assert state.model == "Pixel 7" and state.mem_total_bytes == expected.mem_total_bytes
    assert state.thermal_status == expected.thermal_status and state.soc == expected.soc
    assert [c for c in sim.phone.log if c[0] == "<shell>"], "commands went through adb shell"


@pytest.mark.parametrize("name", NASTY)
def test_remote_quoting_runs_nothing(sim, name):
    path = "/sdcard/Download/" + name
    device.shell(sim.serial, ["touch", path], check=True)
    assert list(sim.phone.files("/sdcard/Download")) == [name]
    assert device.shell(sim.serial, ["test", "-f", path]).rc == 0
    assert not any(p.name == "PWNED" for p in sim.phone.root.rglob("*"))
    assert ["touch", path] in sim.phone.log       # the phone saw exactly one argument


def test_simulated_shell_would_run_an_injection():
    """The negative control: an UNquoted name does run its payload on the simulated phone,
    so the quoting test above can fail."""
    phone = Phone()
    try:
        sh = Shell(phone)
        sh.run("touch /sdcard/Download/a;touch /sdcard/PWNED1")
        sh.run("touch /sdcard/Download/$(touch /sdcard/PWNED2)x")
        sh.run("touch /sdcard/Download/my model.gguf")
        assert {"PWNED1", "PWNED2"} <= set(phone.files("/sdcard"))
        assert ["touch", "/sdcard/Download/my", "model.gguf"] in phone.log   # split in two
    finally:
        phone.cleanup()


def test_simulated_shell_permissions():
    phone = Phone(rooted=False)
    try:
        rc, out = Shell(phone).run("touch /data/data/com.anythingllm/files/x")
        assert rc == 1 and b"Permission denied" in out
        rc, out = Shell(phone).run("su -c id")
        assert rc == 127
        rc, out = Shell(phone).run("run-as com.anythingllm id")
        assert rc == 1 and b"not debuggable" in out
    finally:
        phone.cleanup()


def test_sync_service_push_pull_ls_with_plain_adb(sim, adb_server, tmp_path):
    """The simulator's sync: service (SYNC.TXT) as the real `adb push/pull/ls` use it."""
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 3000)             # 768,000 bytes: several DATA chunks
    out = adb_server.adb("-s", sim.serial, "push", str(src), "/sdcard/Download/sub dir/blob.bin")
    assert "1 file pushed" in out
    assert sim.phone.files("/sdcard/Download/sub dir") == {"blob.bin": src.read_bytes()}
    back = tmp_path / "back.bin"
    adb_server.adb("-s", sim.serial, "pull", "/sdcard/Download/sub dir/blob.bin", str(back))
    assert back.read_bytes() == src.read_bytes()
    assert "blob.bin" in adb_server.adb("-s", sim.serial, "ls", "/sdcard/Download/sub dir")
    sim.phone.capacity = sim.phone.used() + 100_000         # full: adbd answers FAIL, deletes the file
    out = adb_server.adb("-s", sim.serial, "push", str(src), "/sdcard/Download/full.bin")
    assert "No space left on device" in out and "full.bin" not in sim.phone.files("/sdcard/Download")
    out = adb_server.adb("-s", sim.serial, "push", str(src), "/data/data/com.anythingllm/files/x.bin")
    assert "Permission denied" in out


def test_devices_when_none(adb_server, capsys):
    assert main(["devices"]) == 0
    assert "no phones" in capsys.readouterr().out
    with pytest.raises(EdgeError, match="no phone connected"):
        device.pick_device()
