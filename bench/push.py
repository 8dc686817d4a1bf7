"""Push throughput: our path (stream + SHA-1 of every segment on the phone + rename) vs plain
`adb push` of the same file to the same simulated phone, in one run, through one real adb server.

    .venv/bin/python bench/push.py                 # the embedded 270M GGUF (253 MB), 3 link speeds
    .venv/bin/python bench/push.py --mb 64 --reps 1

The simulated phone (edge/adbsim/) runs in its own process, one per link speed, as a phone is
its own machine (in this process its threads would share our upload's GIL). It hashes with
Python's hashlib on this machine's CPU;
a phone hashes with its ARMv8 SHA-2 instructions (about 1 GB/s or more), so the unthrottled
row is a worst case for our verification, and the throttled rows (USB 2.0-like and faster)
are what a cable gives. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge import device  # noqa: E402
from edge.push import push  # noqa: E402
from edge.adbsim import AdbServer  # noqa: E402


def source_file(mb: int) -> Path:
    if not mb:
        try:
            from edge.models import embedded_gguf
            return Path(embedded_gguf())
        except Exception as e:  # no embedded model: fall back on random bytes
            print(f"(embedded GGUF unavailable: {e}; using 253 MB of random bytes)")
            mb = 253
    p = Path(tempfile.gettempdir()) / f"edge-bench-push-{mb}MB.gguf"
    if not p.exists() or p.stat().st_size != mb * 1_000_000:
        head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)      # a GGUF header, then random bytes
        p.write_bytes(head + os.urandom(mb * 1_000_000 - len(head)))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=0, help="size of a random file instead of the embedded GGUF")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rates", default="0,40,120", help="link speeds in MB/s, 0 = unthrottled")
    args = ap.parse_args()
    src = source_file(args.mb)
    size = src.stat().st_size
    server = AdbServer()
    rows = []
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            with phone_process(server, rate) as serial:
                t_plain, t_stream, t_up, t_push = [], [], [], []
                for k in range(args.reps):
                    d = f"/data/local/tmp/bench{k}"
                    t = time.monotonic()
                    r = subprocess.run(["adb", "-s", serial, "push", str(src), f"{d}/plain.gguf"],
                                       capture_output=True, text=True)
                    t_plain.append(time.monotonic() - t)
                    assert r.returncode == 0, r.stdout + r.stderr
                    t = time.monotonic()      # our transport alone: adb shell stdin, no checksums
                    device.shell(serial, ["mkdir", "-p", d], check=True)
                    device.stream_append(serial, src, f"{d}/stream.gguf", 0, size, lambda p: None, None)
                    t_stream.append(time.monotonic() - t)
                    t = time.monotonic()
                    device.upload(serial, src, f"{d}/ours.gguf")
                    t_up.append(time.monotonic() - t)
                    t = time.monotonic()
                    push(src, "llamacpp", serial, dest=d, force=True)
                    t_push.append(time.monotonic() - t)
                    device.shell(serial, ["rm", "-rf", d, "/data/local/tmp/llama"])
            p, st, u, f = (statistics.median(x) for x in (t_plain, t_stream, t_up, t_push))
            rows.append((rate, size / p / 1e6, size / st / 1e6, size / u / 1e6, size / f / 1e6, p / u, p / f))
            print(f"rate {rate or 'max'}: plain {p:.2f}s stream {st:.2f}s upload {u:.2f}s push {f:.2f}s", flush=True)
    finally:
        server.close()
    load = os.getloadavg()
    print(f"\nfile: {src.name} ({size / 1e6:.1f} MB); median of {args.reps}; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; adb {adb_version()}")
    print("| link | plain adb push | our stream, no checks | our upload (verified) | edge push (all checks) "
          "| upload / plain | push / plain |")
    print("|---|---|---|---|---|---|---|")
    for rate, p, st, u, f, ru, rf in rows:
        link = f"{rate:.0f} MB/s" if rate else "unthrottled"
        print(f"| {link} | {p:.1f} MB/s | {st:.1f} MB/s | {u:.1f} MB/s | {f:.1f} MB/s | {ru:.0%} | {rf:.0%} |")


@contextlib.contextmanager
def phone_process(server: AdbServer, rate_mb_s: float):
    """`python -m edge.adbsim` in its own process, attached to `server`; yields its serial."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "edge.adbsim", "pixel_7", "--throttle", str(rate_mb_s),
                             "--capacity-gb", "64"], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        yield server.connect(proc.stdout.readline().split(" on ")[1].split(";")[0])
    finally:
        proc.send_signal(signal.SIGINT)     # the simulator removes its storage on Ctrl-C
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def adb_version() -> str:
    out = subprocess.run(["adb", "version"], capture_output=True, text=True).stdout
    return next((ln.split()[-1] for ln in out.splitlines() if ln.startswith("Version")), "?")


if __name__ == "__main__":
    main()
