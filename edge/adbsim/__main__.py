"""`python -m edge.adbsim [phone] [--throttle MB/s]`: serve a simulated phone until Ctrl-C;
then `adb connect` the address it prints."""

import argparse
import time

from .server import AdbSim


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m edge.adbsim", description="a simulated phone for `adb connect`")
    ap.add_argument("fixture", nargs="?", default="pixel_7", help="edge/adbsim/fixtures/<fixture>")
    ap.add_argument("--throttle", type=float, default=0.0, help="link speed in MB/s each way (0: unthrottled)")
    ap.add_argument("--capacity-gb", type=float, default=0.0, help="storage size (default: the fixture's)")
    args = ap.parse_args()
    kw = {"capacity": int(args.capacity_gb * 2**30)} if args.capacity_gb else {}
    sim = AdbSim(fixture=args.fixture, throttle_bps=args.throttle * 1e6 or None, **kw)
    print(f"simulated phone on {sim.serial}; run: adb connect {sim.serial}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sim.close()


if __name__ == "__main__":
    main()
