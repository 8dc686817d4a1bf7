"""`edge run`'s own cost: end-to-end wall time against the sum of its stages, and a rerun with
nothing changed. Prints a table.

    PYTHONPATH=. .venv/bin/python bench/pipeline.py                     # tiny Gemma 3 (fast)
    PYTHONPATH=. .venv/bin/python bench/pipeline.py --model embedded    # the real 270M (minutes)

Each `edge run` is a fresh process, as a user runs it; stage times come from run.json. Overhead =
wall time - sum of the stages (process start, imports, input checks, fingerprints, run.json).
Targets (issue 17): overhead <= 5% of the wall time; a rerun with nothing changed <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def edge_run(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge.cli", "run", *argv], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (tests/tiny.py) or a model spec such as 'embedded'")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--recipes", default="Q8_0")
    ap.add_argument("--reruns", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from edge.task import EVAL, TRAIN

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "tiny":
            from tests.tiny import save_tiny

            model = str(save_tiny(Path(tmp) / "tiny"))
        out = Path(tmp) / "run"
        argv = ["--data", str(TRAIN), "--eval", str(EVAL), "--out", str(out), "--model", model,
                "--steps", str(args.steps), "--recipes", args.recipes, "--device", "pixel_7"]
        first = edge_run(argv)
        stages = json.loads((out / "run.json").read_text())["stages"]
        secs = {name: e.get("seconds") or 0.0 for name, e in stages.items()}
        reruns = sorted(edge_run(argv) for _ in range(args.reruns))
    total = sum(secs.values())
    rows = [("stage", "seconds")] + [(n, f"{s:.1f}") for n, s in secs.items()]
    rows += [("sum of stages", f"{total:.1f}"), ("edge run, wall", f"{first:.1f}"),
             ("overhead", f"{first - total:.1f} ({(first - total) / first:.1%} of wall)"),
             (f"rerun, nothing changed (min/median of {args.reruns})",
              f"{reruns[0]:.2f} / {reruns[len(reruns) // 2]:.2f}")]
    w = max(len(r[0]) for r in rows)
    print(f"edge run on {args.model}: {args.steps} steps, recipes {args.recipes}, one device")
    for a, b in rows:
        print(f"{a:<{w}}  {b}")


if __name__ == "__main__":
    main()
