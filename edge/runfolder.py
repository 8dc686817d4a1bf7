"""A run is a folder with a manifest (`run.json`): what was made, from what, how.

Stages record their outputs with `Run.record(stage, outputs=..., inputs=..., settings=...)`.
`run.json` is rewritten atomically after each stage, so a killed run never lists a
half-written file. The TUI, `edge budget` and `edge push` read it instead of guessing.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge import __version__
from edge.fsutil import sha256_file, write_text_atomic

MANIFEST = "run.json"


def _file_entry(path: Path, hash_limit: int = 2 << 30) -> dict:
    path = Path(path)
    entry = {"path": str(path), "size": path.stat().st_size if path.exists() else None}
    if path.is_file() and path.stat().st_size <= hash_limit:
        entry["sha256"] = sha256_file(path)
    return entry


@dataclass
class Run:
    root: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> "Run":
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        manifest = root / MANIFEST
        data = json.loads(manifest.read_text()) if manifest.is_file() else {}
        data.setdefault("toolkit_version", __version__)
        data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        data.setdefault("machine", {"python": platform.python_version(), "platform": platform.platform()})
        data.setdefault("stages", {})
        return cls(root, data)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def record(self, stage: str, outputs=(), inputs=(), settings: dict | None = None,
               seconds: float | None = None, summary: dict | None = None) -> None:
        """Add or replace one stage's entry and rewrite run.json atomically."""
        rel = lambda e: {**e, "path": str(Path(e["path"]).resolve().relative_to(self.root.resolve()))
                         if Path(e["path"]).resolve().is_relative_to(self.root.resolve()) else e["path"]}
        self.data["stages"][stage] = {
            "inputs": [rel(_file_entry(p)) for p in inputs],
            "outputs": [rel(_file_entry(p)) for p in outputs],
            "settings": settings or {},
            "seconds": seconds,
            "summary": summary or {},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.save()

    def save(self) -> None:
        write_text_atomic(self.root / MANIFEST, json.dumps(self.data, indent=2, default=str))

    def outputs(self, stage: str) -> list[Path]:
        entry = self.data["stages"].get(stage, {})
        return [self.root / o["path"] if not Path(o["path"]).is_absolute() else Path(o["path"])
                for o in entry.get("outputs", [])]
