"""One fine-tune described by a JSON file, so that a launcher can start it in several processes.

    python -m edge.trainjob JOB.json      # what `edge run --gpus N` starts N times through torchrun

`edge finetune --gpus N` re-runs its own command line in each process; a caller that builds
`TrainSettings` itself (the `edge run` pipeline) writes them here instead, so every process
trains with exactly the settings a one-process run would use. JOB.json holds `train()`'s
arguments: model, data, out, settings (TrainSettings' fields), precision, resume, force.
Each process trains its share of every batch (edge.distributed); process 0 writes the result
(TrainResult's fields, without the model) to JOB.result.json. A run stopped by Ctrl-C or
SIGTERM saved a checkpoint and exits with 130, so the launcher reports an interruption.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

from edge.errors import EdgeError
from edge.fsutil import atomic_path

INTERRUPTED = 130


def result_path(job: str | Path) -> Path:
    return Path(job).with_suffix(".result.json")


def write_job(job: str | Path, *, model: str, data: str | Path, out: str | Path, settings,
              precision: str, resume: bool, force: bool) -> Path:
    """Write JOB.json for `run` (and remove an old result beside it)."""
    job = Path(job)
    spec = {"model": model, "data": str(data), "out": str(out), "settings": asdict(settings),
            "precision": precision, "resume": resume, "force": force}
    with atomic_path(job) as tmp:
        tmp.write_text(json.dumps(spec, indent=1))
    result_path(job).unlink(missing_ok=True)
    return job


def read_result(job: str | Path):
    """The TrainResult that process 0 wrote (model None)."""
    from edge.finetune import TrainResult

    f = result_path(job)
    try:
        values = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgeError(f"the fine-tune's processes ended without a result in {f}: {e}") from None
    return TrainResult(**{k: v for k, v in values.items() if k in {f.name for f in fields(TrainResult)}})


def run(job: str | Path) -> int:
    """Train as JOB.json says, as one process of those the launcher started."""
    from edge import distributed
    from edge.finetune import TrainSettings, train

    spec = json.loads(Path(job).read_text())
    settings = TrainSettings(**spec.pop("settings"))
    dist = distributed.current()
    with distributed.quiet_errors(dist):
        result = train(settings=settings, **spec)
    if dist.is_main:
        with atomic_path(result_path(job)) as tmp:
            tmp.write_text(json.dumps(result.record()))
    return 0 if result.stopped == "done" else INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m edge.trainjob JOB.json", file=sys.stderr)
        return 2
    try:
        return run(argv[0])
    except EdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
